/**
 * install_snapshotter.sh on temporary paths: it adds the proxy plugin stanza
 * once, creates the directories, installs the unit, and a second run changes
 * nothing at all. containerd itself must accept the resulting config.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { findPackageRoot } from '../src/snapshotter';
import { runCommand } from './helpers/containerd';

jest.setTimeout(60_000);

const script = path.join(findPackageRoot(__dirname), 'install_snapshotter.sh');

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp('/tmp/d4inst-');
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

function env(config: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    CONTAINERD_CONFIG: config,
    D4FS_ROOT: path.join(dir, 'var', 'lib', 'd4fs'),
    D4FS_ADDRESS: path.join(dir, 'run', 'd4fs', 'd4fs.sock'),
    SYSTEMD_UNIT_DIR: path.join(dir, 'systemd'),
  };
}

async function install(config: string): Promise<string> {
  const r = await runCommand('bash', [script], { env: env(config) });
  if (r.code !== 0) throw new Error(`install_snapshotter.sh exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** Every file under `dir` with its content, mode and mtime. */
function state(): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string) => {
    const st = fs.lstatSync(p);
    const rel = path.relative(dir, p) || '.';
    if (st.isDirectory()) {
      out[rel] = `d ${st.mode.toString(8)} ${st.mtimeMs}`;
      for (const n of fs.readdirSync(p).sort()) walk(path.join(p, n));
    } else {
      out[rel] = `f ${st.mode.toString(8)} ${st.mtimeMs} ${fs.readFileSync(p, 'utf8')}`;
    }
  };
  walk(dir);
  return out;
}

function d4fsPlugin(config: string): unknown {
  const parsed = parseToml(fs.readFileSync(config, 'utf8')) as { proxy_plugins?: Record<string, unknown> };
  return parsed.proxy_plugins?.d4fs;
}

describe('install_snapshotter.sh', () => {
  test('adds the stanza to an existing config once; running twice changes nothing', async () => {
    const config = path.join(dir, 'etc', 'containerd', 'config.toml');
    await fsp.mkdir(path.dirname(config), { recursive: true });
    const original = 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.6"\n\n[proxy_plugins]\n  [proxy_plugins.other]\n    type = "snapshot"\n    address = "/run/other.sock"';
    await fsp.writeFile(config, original, { mode: 0o600 });

    const out1 = await install(config);
    expect(out1).toMatch(/added the d4fs proxy plugin/);
    const text = fs.readFileSync(config, 'utf8');
    expect(text.startsWith(`${original}\n`)).toBe(true);
    expect(text.match(/\[proxy_plugins\.d4fs\]/g)).toHaveLength(1);
    expect(d4fsPlugin(config)).toEqual({ type: 'snapshot', address: path.join(dir, 'run', 'd4fs', 'd4fs.sock') });
    expect(fs.statSync(config).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(dir, 'var', 'lib', 'd4fs')).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(dir, 'run', 'd4fs')).isDirectory()).toBe(true);
    const unit = fs.readFileSync(path.join(dir, 'systemd', 'd4fs-snapshotter.service'), 'utf8');
    expect(unit).toMatch(new RegExp(`^ExecStart=${fs.realpathSync(process.execPath)} \\S+/dist/snapshotter/main\\.js --root ${dir}/var/lib/d4fs --address ${dir}/run/d4fs/d4fs.sock$`, 'm'));
    expect(unit).toMatch(/^\[Install\]\nWantedBy=multi-user\.target$/m);

    // containerd accepts the result
    const dump = await runCommand('containerd', ['--config', config, 'config', 'dump']);
    expect(dump.code).toBe(0);
    expect(dump.stdout).toMatch(/\[proxy_plugins\.d4fs\]/);
    expect(dump.stdout).toMatch(/\[proxy_plugins\.other\]/);

    const before = state();
    const out2 = await install(config);
    expect(out2).toMatch(/already configures the d4fs proxy plugin; unchanged/);
    expect(out2).toMatch(/is up to date/);
    expect(state()).toEqual(before);
  });

  test('creates a missing config (version 2), and recognises other spellings of the plugin', async () => {
    const config = path.join(dir, 'new', 'config.toml');
    await install(config);
    expect(fs.readFileSync(config, 'utf8')).toMatch(/^version = 2\n/);
    expect(d4fsPlugin(config)).toMatchObject({ type: 'snapshot' });
    const before = state();
    await install(config);
    expect(state()).toEqual(before);

    for (const variant of [
      '[proxy_plugins."d4fs"]\n  type = "snapshot"\n  address = "/elsewhere.sock"\n',
      '[proxy_plugins]\n  d4fs = { type = "snapshot", address = "/elsewhere.sock" }\n',
    ]) {
      const other = path.join(dir, 'variant.toml');
      await fsp.writeFile(other, variant);
      const out = await install(other);
      expect(out).toMatch(/already configures proxy plugin d4fs with address \/elsewhere\.sock/);
      expect(fs.readFileSync(other, 'utf8')).toBe(variant);
    }
  });
});
