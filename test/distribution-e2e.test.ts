/**
 * Distribution end to end, for real: d4fs-server on 127.0.0.1 holding libssl
 * v1 (full) and the v1→v2, v2→v3 deltas; a private containerd with the d4fs
 * snapshotter over FUSE; a client store that gets v1 with
 * `ctr-cli pull --server … --address …` (loaded into containerd), then
 * updates to v3 the same way — one merged delta over the wire — and
 * `ctr run --rm --snapshotter d4fs libssl:v3` shows the v3 library. At the
 * end `ctr-cli rmi` leaves no image, snapshot, FUSE mount or process behind.
 *
 * Needs root, /dev/fuse and containerd (test/helpers/capabilities.ts): on a
 * machine without them the suite is skipped, loudly.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { CdimgChain, makeCdimgChain } from '../bench/distribution';
import { type PrivateContainerd, type SnapshotterProcess, endProcessesMentioning, fuseMountsUnder, mountsUnder, processesMentioning, runCaptured, runCommand, startContainerd, startSnapshotter, unmountAllUnder } from './helpers/containerd';
import { describeIfCapable } from './helpers/capabilities';
import { fileDigestIn } from './helpers/cdimg';
import { CTR_CLI_JS } from './helpers/cli';
import { eventually } from './helpers/wait';
import { ContainerdClient, d4fsDiffId } from '../src/containerd';
import { SnapshotsClient } from '../src/snapshotter';
import { D4fsServer } from '../src/server/server';
import { newToken } from '../src/server/auth';
import { pushToServer } from '../src/distribution/push';
import type { PullResult } from '../src/distribution/pull';
import { LocalStore } from '../src/store/store';

jest.setTimeout(600_000);

const CLI = CTR_CLI_JS;
/** The file that changes between the libssl versions (a regular file in libssl3). */
const LIBSSL = 'usr/lib/x86_64-linux-gnu/libssl.so.3';

describeIfCapable('test/distribution-e2e.test.ts', ['root', 'fuse', 'containerd'])('d4fs-server → ctr-cli pull → containerd (FUSE snapshotter) → ctr run', () => {
  let dir: string;
  let store: string;
  let chain: CdimgChain;
  let server: D4fsServer | undefined;
  let snapshotter: SnapshotterProcess | undefined;
  let containerd: PrivateContainerd | undefined;
  let client: ContainerdClient;
  let backend: SnapshotsClient;
  let V1: string;
  let V2: string;
  let V3: string;
  const hex: Record<'v1' | 'v3', string> = { v1: '', v3: '' };

  /** `ctr-cli pull --image IMG --server URL --store STORE --address SOCK --json` (loads into containerd). */
  async function cliPull(image: string): Promise<PullResult> {
    const r = await runCommand(process.execPath, [CLI, 'pull', '--image', image, '--server', server!.url, '--store', store, '--address', containerd!.address, '--json'], { timeoutMs: 300_000 });
    if (r.code !== 0) throw new Error(`ctr-cli pull ${image} exited ${r.code}: ${r.stderr}\n--- snapshotter log ---\n${snapshotter!.logs().slice(-6000)}`);
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as PullResult;
  }

  /** ctr must succeed; returns stdout. */
  const ctr = (args: string[]): Promise<string> =>
    containerd!.ctrOk(args, { timeoutMs: 300_000, logs: () => `--- snapshotter log ---\n${snapshotter!.logs().slice(-6000)}` });

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4e2e-');
    store = path.join(dir, 'store');
    chain = await makeCdimgChain(dir, ['libssl-v1', 'libssl-v2', 'libssl-v3']);
    [V1, V2, V3] = chain.imageIds;
    hex.v1 = await fileDigestIn(chain.full[0], LIBSSL);
    hex.v3 = await fileDigestIn(chain.full[2], LIBSSL);

    const token = newToken();
    await fsp.writeFile(path.join(dir, 'tokens'), `rw ${token} e2e\n`, { mode: 0o600 });
    server = await D4fsServer.start({ root: path.join(dir, 'server'), listen: '127.0.0.1:0', tokensFile: path.join(dir, 'tokens'), readOpen: true, processMetrics: false });
    await pushToServer({ file: chain.full[0], image: 'libssl:v1', server: server.url, token });
    await pushToServer({ file: chain.deltas[0], image: 'libssl:v2', server: server.url, token });
    await pushToServer({ file: chain.deltas[1], image: 'libssl:v3', server: server.url, token });
    // only the server's files lead to v2 and v3 from now on
    for (const f of chain.full.slice(1)) await fsp.rm(f);

    const sock = path.join(dir, 'd4fs.sock');
    snapshotter = await startSnapshotter({ root: path.join(dir, 'snapshotter'), address: sock, args: ['--store', store] });
    containerd = await startContainerd({ snapshotterSocket: sock });
    client = await ContainerdClient.connect({ address: containerd.address });
    backend = new SnapshotsClient(sock);
  });

  afterAll(async () => {
    client?.close();
    backend?.close();
    await containerd?.stop();
    const code = await snapshotter?.stop();
    await server?.stop(1000);
    if (dir) {
      const left = mountsUnder(dir);
      await unmountAllUnder(dir);
      // A FUSE manager may outlive the snapshotter by design (it serves
      // running containers across restarts): end what this test started.
      await endProcessesMentioning(dir);
      await unmountAllUnder(dir);
      await fsp.rm(dir, { recursive: true, force: true });
      expect(left).toEqual([]);
      expect(processesMentioning(dir)).toEqual([]);
    }
    expect(code).toBe(0);
  });

  test('a fresh client pulls libssl:v1 (the full image), loaded into containerd; ctr run shows the v1 library', async () => {
    expect(hex.v3).not.toBe(hex.v1);
    const r = await cliPull('libssl:v1');
    expect(r).toMatchObject({ name: 'libssl:v1', imageId: V1, from: null, upToDate: false, loaded: true });
    expect(r.files.map((f) => [f.kind, f.imageId, f.downloaded])).toEqual([['full', V1, true]]);
    expect(r.bytes).toBe((await fsp.stat(chain.full[0])).size);
    expect(r.load).toMatchObject({ chainId: d4fsDiffId(V1), snapshot: 'provided' });
    expect(fuseMountsUnder(dir)).toHaveLength(1);
    const out = await runCaptured(ctr, ['--snapshotter', 'd4fs'], 'libssl:v1', 'e2e-v1', `sha256sum /${LIBSSL}`);
    expect(out.trim().split(/\s+/)[0]).toBe(hex.v1);
  });

  test('holding v1, the client pulls libssl:v3 as one merged delta, loads it; ctr run shows the v3 library', async () => {
    const r = await cliPull('libssl:v3');
    expect(r).toMatchObject({ name: 'libssl:v3', imageId: V3, from: V1, upToDate: false, loaded: true });
    expect(r.files).toHaveLength(1);
    const [f] = r.files;
    expect(f).toMatchObject({ kind: 'delta', parentId: V1, imageId: V3, merged: true, downloaded: true });
    // one merged delta: never more than the two deltas it replaces, far less than the full v3
    const [s12, s23] = await Promise.all(chain.deltas.map(async (p) => (await fsp.stat(p)).size));
    expect(r.bytes).toBe(f.size);
    expect(r.bytes).toBeLessThanOrEqual(s12 + s23);
    expect(r.load).toMatchObject({ chainId: d4fsDiffId(V3), snapshot: 'provided' });
    expect(fuseMountsUnder(dir)).toHaveLength(2);

    const out = await runCaptured(ctr, ['--snapshotter', 'd4fs'], 'libssl:v3', 'e2e-v3', `sha256sum /${LIBSSL}`);
    expect(out.trim().split(/\s+/)[0]).toBe(hex.v3);
    // v1 still runs with its own library next to it
    const old = await runCaptured(ctr, ['--snapshotter', 'd4fs'], 'libssl:v1', 'e2e-v1b', `sha256sum /${LIBSSL}`);
    expect(old.trim().split(/\s+/)[0]).toBe(hex.v1);

    // the store rebuilds v3 from v1 and the merged delta, every digest checked; v2 was never fetched
    const s = await LocalStore.open(store);
    try {
      expect(s.hasImage(V2)).toBe(false);
      await s.verifyChain(V3);
    } finally {
      s.close();
    }
    // a second pull is a no-op
    const again = await cliPull('libssl:v3');
    expect(again).toMatchObject({ imageId: V3, upToDate: true, bytes: 0 });
  });

  test('rmi: no image, no snapshot, no FUSE mount, no container left', async () => {
    const r = await runCommand(process.execPath, [CLI, 'rmi', 'libssl:v1', 'libssl:v3', '--store', store, '--address', containerd!.address], { timeoutMs: 300_000 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await client.images.list()).toEqual([]);
    expect(await client.snapshots('d4fs').list()).toEqual([]);
    await eventually(async () => (await backend.list()).length === 0);
    await eventually(() => fuseMountsUnder(dir).length === 0);
    expect(mountsUnder(containerd!.dir)).toEqual([]);
    expect((await ctr(['containers', 'list', '-q'])).trim()).toBe('');
  });
});
