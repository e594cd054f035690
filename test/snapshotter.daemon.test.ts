/**
 * The d4fs-snapshotter process (dist/snapshotter/main.js): start-up, config
 * files, graceful and brutal stops, stale and live sockets, persistence.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_STORE, Kind, SnapshotsClient, resolveConfig, storesOf } from '../src/snapshotter';
import { endProcessesMentioning, mountsUnder, processesMentioning, runCommand, snapshotterEntryPoint, startSnapshotter } from './helpers/containerd';

jest.setTimeout(60_000);

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp('/tmp/d4sd-');
});
afterEach(async () => {
  expect(mountsUnder(dir)).toEqual([]);
  // the FUSE manager a snapshotter started outlives it by design (it serves running containers across
  // restarts): end what the test started, so that none is left running after the suite
  await endProcessesMentioning(dir);
  expect(processesMentioning(dir)).toEqual([]);
  await fsp.rm(dir, { recursive: true, force: true });
});

async function withClient<T>(sock: string, fn: (c: SnapshotsClient) => Promise<T>): Promise<T> {
  const c = new SnapshotsClient(sock, { timeoutMs: 10_000 });
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

describe('d4fs-snapshotter process', () => {
  test('serves, stops on SIGTERM (socket removed), keeps its snapshots across restarts and a SIGKILL', async () => {
    const root = path.join(dir, 'root');
    const sock = path.join(dir, 'run', 'd4fs.sock');
    let p = await startSnapshotter({ root, address: sock });
    expect(fs.statSync(sock).isSocket()).toBe(true);
    expect(fs.statSync(root).mode & 0o777).toBe(0o700);
    await withClient(sock, async (c) => {
      await c.prepare('a', '', { l: '1' });
      await c.commit('base', 'a', { l: '2' });
      await c.prepare('work', 'base');
    });
    expect(p.logs()).toMatch(/"msg":"ready"/);
    expect(await p.stop()).toBe(0);
    expect(fs.existsSync(sock)).toBe(false);

    p = await startSnapshotter({ root, address: sock });
    await withClient(sock, async (c) => {
      expect(await c.stat('base')).toMatchObject({ kind: Kind.Committed, labels: { l: '2' } });
      expect((await c.mounts('work'))[0].type).toBe('overlay');
    });
    await p.kill9();
    // the socket file stays behind after SIGKILL: the next start removes it
    expect(fs.existsSync(sock)).toBe(true);
    p = await startSnapshotter({ root, address: sock });
    expect(p.logs()).toMatch(/removed stale socket/);
    await withClient(sock, async (c) => expect((await c.list()).map((i) => i.name).sort()).toEqual(['base', 'work']));

    // a second instance on a live socket is refused and leaves the first alone
    const second = await runCommand(process.execPath, [snapshotterEntryPoint(), '--root', path.join(dir, 'root2'), '--address', sock], { timeoutMs: 20_000 });
    expect(second.code).toBe(5); // FAILED_PRECONDITION
    expect(second.stderr).toMatch(/already serving/);
    await withClient(sock, async (c) => expect((await c.stat('base')).name).toBe('base'));
    expect(await p.stop()).toBe(0);
  });

  test('reads a TOML or JSON config; flags win over the file', async () => {
    const tomlFile = path.join(dir, 'config.toml');
    await fsp.writeFile(
      tomlFile,
      [`root = "${dir}/from-toml"`, `address = "${dir}/toml.sock"`, 'log_level = "warn"', 'request_timeout = 30', 'async_remove = true'].join('\n'),
    );
    expect(resolveConfig({}, tomlFile)).toEqual({
      root: `${dir}/from-toml`,
      address: `${dir}/toml.sock`,
      logLevel: 'warn',
      requestTimeoutMs: 30_000,
      asyncRemove: true,
      upperdirLabel: false,
    });
    const jsonFile = path.join(dir, 'config.json');
    await fsp.writeFile(jsonFile, JSON.stringify({ root: `${dir}/from-json`, upperdir_label: true }));
    const fromJson = resolveConfig({ root: `${dir}/flag` }, jsonFile);
    expect(fromJson).toMatchObject({ root: `${dir}/flag`, upperdirLabel: true, address: '/run/d4fs/d4fs.sock' });

    // the process uses the file; --root overrides it
    const p = await startSnapshotter({ root: `${dir}/flag-root`, address: `${dir}/toml.sock`, args: ['--config', tomlFile] });
    await withClient(`${dir}/toml.sock`, (c) => c.prepare('x', ''));
    expect(fs.existsSync(`${dir}/flag-root/snapshots/1/fs`)).toBe(true);
    expect(fs.existsSync(`${dir}/from-toml`)).toBe(false);
    expect(await p.stop()).toBe(0);

    // the stores of d4fs images come from the configuration only: a path or a list, made absolute
    await fsp.writeFile(path.join(dir, 'stores.toml'), 'store = ["/srv/d4fs/store", "rel/store"]\n');
    expect(resolveConfig({}, path.join(dir, 'stores.toml')).stores).toEqual(['/srv/d4fs/store', path.resolve('rel/store')]);
    expect(resolveConfig({ stores: ['/flag/store'] }, path.join(dir, 'stores.toml')).stores).toEqual(['/flag/store']);
    expect(storesOf({})).toEqual([path.resolve(process.env.D4FS_STORE || DEFAULT_STORE)]);
    await fsp.writeFile(path.join(dir, 'bad-store.toml'), 'store = 3\n');
    expect(() => resolveConfig({}, path.join(dir, 'bad-store.toml'))).toThrow(/store must be a path or a list of paths/);

    // bad configurations are usage errors (exit code 2)
    await fsp.writeFile(path.join(dir, 'bad.toml'), 'rooot = "/x"\n');
    const bad = await runCommand(process.execPath, [snapshotterEntryPoint(), '--config', path.join(dir, 'bad.toml')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/unknown key "rooot"/);
    const badLevel = await runCommand(process.execPath, [snapshotterEntryPoint(), '--log-level', 'loud', '--root', dir, '--address', `${dir}/x.sock`]);
    expect(badLevel.code).toBe(2);
  });
});
