/**
 * install_snapshotter.sh on temporary paths: it adds the proxy plugin stanza
 * once, creates the directories, installs the unit, and a second run changes
 * nothing at all. containerd itself must accept the resulting config.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { packageRoot } from '../src/util/paths';
import { runCommand } from './helpers/containerd';

jest.setTimeout(60_000);

const script = path.join(packageRoot(), 'install_snapshotter.sh');

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

async function install(config: string, args: string[] = []): Promise<string> {
  const r = await runCommand('bash', [script, ...args], { env: env(config) });
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

/** The CRI plugin's `containerd` table of a version 2 config. */
function criContainerd(config: string): Record<string, unknown> | undefined {
  const parsed = parseToml(fs.readFileSync(config, 'utf8')) as { plugins?: Record<string, { containerd?: Record<string, unknown> }> };
  return parsed.plugins?.['io.containerd.grpc.v1.cri']?.containerd;
}

/** Lines of `after` that differ from `before` (same line count assumed up to before's length), trimmed. */
function changedLines(before: string, after: string): string[] {
  const a = before.split('\n');
  const b = after.split('\n');
  return a.map((l, i) => (l === b[i] ? '' : `${l.trim()} -> ${(b[i] ?? '').trim()}`)).filter(Boolean);
}

describe('install_snapshotter.sh --cri', () => {
  test("containerd's default config: exactly the two CRI keys change, in place; containerd reads the result; a second run changes nothing", async () => {
    const config = path.join(dir, 'config.toml');
    const dflt = await runCommand('containerd', ['config', 'default']);
    expect(dflt.code).toBe(0);
    await fsp.writeFile(config, dflt.stdout);

    const out1 = await install(config, ['--cri']);
    expect(out1).toMatch(/set the CRI plugin's snapshotter to d4fs/);
    const text = fs.readFileSync(config, 'utf8');
    expect(criContainerd(config)).toMatchObject({ snapshotter: 'd4fs', disable_snapshot_annotations: false });
    // every other setting as it was: parsed, and line by line
    type Conf = { plugins: Record<string, Record<string, unknown>>; proxy_plugins?: unknown };
    const expected = parseToml(dflt.stdout) as Conf;
    Object.assign(expected.plugins['io.containerd.grpc.v1.cri'].containerd as object, { snapshotter: 'd4fs', disable_snapshot_annotations: false });
    expect({ ...(parseToml(text) as Conf), proxy_plugins: undefined }).toEqual({ ...expected, proxy_plugins: undefined });
    expect(changedLines(dflt.stdout, text).sort()).toEqual([
      'disable_snapshot_annotations = true -> disable_snapshot_annotations = false',
      'snapshotter = "overlayfs" -> snapshotter = "d4fs"',
    ]);

    const dump = await runCommand('containerd', ['--config', config, 'config', 'dump']);
    expect(dump.code).toBe(0);
    expect(dump.stdout).toMatch(/^\s*snapshotter = "d4fs"$/m);
    expect(dump.stdout).toMatch(/^\s*disable_snapshot_annotations = false$/m);
    expect(dump.stdout).toMatch(/\[proxy_plugins\.d4fs\]/);

    const before = state();
    const out2 = await install(config, ['--cri']);
    expect(out2).toMatch(/already sends CRI pulls through d4fs with the snapshot annotations; unchanged/);
    expect(state()).toEqual(before);
    // and without --cri nothing is undone
    await install(config);
    expect(state()).toEqual(before);
  });

  test("Debian's packaged config (no containerd table): the table is appended, the rest kept byte for byte", async () => {
    const config = path.join(dir, 'config.toml');
    const debian = 'version = 2\n# a comment the user wrote\n[plugins]\n  [plugins."io.containerd.grpc.v1.cri"]\n    [plugins."io.containerd.grpc.v1.cri".cni]\n      bin_dir = "/usr/lib/cni"\n      conf_dir = "/etc/cni/net.d"\n  [plugins."io.containerd.internal.v1.opt"]\n    path = "/var/lib/containerd/opt"\n';
    await fsp.writeFile(config, debian, { mode: 0o640 });
    await install(config, ['--cri']);
    const text = fs.readFileSync(config, 'utf8');
    expect(text.startsWith(debian)).toBe(true);
    expect(text.match(/\[plugins\."io\.containerd\.grpc\.v1\.cri"\.containerd\]/g)).toHaveLength(1);
    expect(criContainerd(config)).toEqual({ snapshotter: 'd4fs', disable_snapshot_annotations: false });
    const parsed = parseToml(text) as { plugins: Record<string, Record<string, Record<string, unknown>>> };
    expect(parsed.plugins['io.containerd.grpc.v1.cri'].cni).toEqual({ bin_dir: '/usr/lib/cni', conf_dir: '/etc/cni/net.d' });
    expect(fs.statSync(config).mode & 0o777).toBe(0o640);
    const dump = await runCommand('containerd', ['--config', config, 'config', 'dump']);
    expect(dump.code).toBe(0);
    expect(dump.stdout).toMatch(/^\s*snapshotter = "d4fs"$/m);
    const before = state();
    await install(config, ['--cri']);
    expect(state()).toEqual(before);
  });

  test('a missing config is created with the proxy plugin and the CRI settings', async () => {
    const config = path.join(dir, 'new', 'config.toml');
    await install(config, ['--cri']);
    expect(fs.readFileSync(config, 'utf8')).toMatch(/^version = 2\n/);
    expect(d4fsPlugin(config)).toMatchObject({ type: 'snapshot' });
    expect(criContainerd(config)).toEqual({ snapshotter: 'd4fs', disable_snapshot_annotations: false });
    const before = state();
    await install(config, ['--cri']);
    expect(state()).toEqual(before);
  });

  test.each([
    [
      'dotted keys in the plugin table',
      'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  containerd.snapshotter = "overlayfs"  # was\n  sandbox_image = "pause:3.6"\n',
      'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  containerd.snapshotter = "d4fs"\n  containerd.disable_snapshot_annotations = false\n  sandbox_image = "pause:3.6"\n',
    ],
    [
      'single-quoted table name, only one key present',
      "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.containerd]\n  disable_snapshot_annotations = false\n  default_runtime_name = 'runc'\n",
      "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.containerd]\n  snapshotter = \"d4fs\"\n  disable_snapshot_annotations = false\n  default_runtime_name = 'runc'\n",
    ],
    [
      'only a sub-table of it (runtimes), no final newline',
      'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"',
      'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n',
    ],
  ])('%s', async (_name, original, expectedStart) => {
    const config = path.join(dir, 'config.toml');
    await fsp.writeFile(config, original);
    await install(config, ['--cri']);
    const text = fs.readFileSync(config, 'utf8');
    expect(text.startsWith(expectedStart)).toBe(true);
    expect(criContainerd(config)).toMatchObject({ snapshotter: 'd4fs', disable_snapshot_annotations: false });
    const dump = await runCommand('containerd', ['--config', config, 'config', 'dump']);
    expect(dump.code).toBe(0);
    expect(dump.stdout).toMatch(/^\s*snapshotter = "d4fs"$/m);
    expect(dump.stdout).toMatch(/^\s*disable_snapshot_annotations = false$/m);
    const before = state();
    await install(config, ['--cri']);
    expect(state()).toEqual(before);
  });

  test('version 1 and version 3 configs get the table of their version', async () => {
    const v1 = path.join(dir, 'v1.toml');
    await fsp.writeFile(v1, '[plugins.cri.containerd]\n  snapshotter = "native"\n');
    await install(v1, ['--cri']);
    expect((parseToml(fs.readFileSync(v1, 'utf8')) as { plugins: { cri: { containerd: unknown } } }).plugins.cri.containerd).toEqual({
      snapshotter: 'd4fs',
      disable_snapshot_annotations: false,
    });
    const dump = await runCommand('containerd', ['--config', v1, 'config', 'dump']);
    expect(dump.code).toBe(0);
    expect(dump.stdout).toMatch(/^\s*snapshotter = "d4fs"$/m);

    const v3 = path.join(dir, 'v3.toml');
    await fsp.writeFile(v3, "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n");
    await install(v3, ['--cri']);
    expect((parseToml(fs.readFileSync(v3, 'utf8')) as { plugins: Record<string, unknown> }).plugins['io.containerd.cri.v1.images']).toEqual({
      snapshotter: 'd4fs',
      disable_snapshot_annotations: false,
    });
  });

  test('an inline table is refused before anything changes; unknown arguments are refused', async () => {
    const config = path.join(dir, 'config.toml');
    const inline = 'version = 2\n[plugins]\n  "io.containerd.grpc.v1.cri" = { sandbox_image = "pause:3.6" }\n';
    await fsp.writeFile(config, inline);
    const r = await runCommand('bash', [script, '--cri'], { env: env(config) });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/inline table.*by hand; nothing changed/);
    expect(fs.readFileSync(config, 'utf8')).toBe(inline);
    expect(fs.existsSync(path.join(dir, 'systemd'))).toBe(false);

    const bad = await runCommand('bash', [script, '--crii'], { env: env(config) });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unknown argument: --crii/);
  });

  test('warns when the CRI plugin is disabled', async () => {
    const config = path.join(dir, 'config.toml');
    await fsp.writeFile(config, 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n');
    const out = await install(config, ['--cri']);
    expect(out).toMatch(/warning: .* lists the CRI plugin in disabled_plugins/);
    expect(criContainerd(config)).toEqual({ snapshotter: 'd4fs', disable_snapshot_annotations: false });
  });
});
