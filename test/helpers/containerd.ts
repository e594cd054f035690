/**
 * Test helpers for the snapshotter: a private containerd, the
 * d4fs-snapshotter process, mounting the mounts a snapshotter returns, and a
 * tiny busybox OCI image.
 *
 * Everything here is private to the test: containerd runs with its own
 * --config (own root, state, gRPC and ttrpc sockets, opt dir) under a fresh
 * /tmp directory and never talks to a system containerd; `ctr run` gets its
 * FIFO and runc state directories there too. The only thing outside that
 * directory are the runc shims' sockets in /run/containerd/s/<sha256>, a path
 * containerd 1.6 hard-codes (the shims remove them on exit).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { SnapshotsClient, type Mount } from '../../src/snapshotter';
import { isAtOrBelow, readMountInfoSync } from '../../src/util/mountinfo';
import { packageRoot } from '../../src/util/paths';
import { CTR_CLI_JS } from './cli';
import { eventually } from './wait';

const execFileP = promisify(execFile);

/** Result of a command. */
export interface CommandResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** Runs a command to completion (never rejects for a non-zero exit). */
export async function runCommand(
  file: string,
  args: string[],
  opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<CommandResult> {
  try {
    const { stdout, stderr } = await execFileP(file, args, {
      cwd: opts.cwd,
      env: opts.env,
      timeout: opts.timeoutMs ?? 120_000,
      maxBuffer: 64 * 1024 * 1024,
    });
    return { stdout, stderr, code: 0 };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; code?: number | string; message: string };
    return {
      stdout: err.stdout ?? '',
      stderr: err.stderr || err.message,
      code: typeof err.code === 'number' ? err.code : 1,
    };
  }
}

/** ctr-cli commands that never talk to containerd (they take no --address). */
const LOCAL_CLI_COMMANDS = ['images', 'convert', 'cdimg', 'sign', 'keygen', 'verify-signature', 'serve', 'push', 'registry'];

/**
 * Runs the compiled ctr-cli with `store` as $D4FS_STORE; the commands that
 * talk to containerd get `--address` of the private `containerd`.
 */
export function runCtrCli(args: string[], o: { store: string; containerd: { address: string }; timeoutMs?: number }): Promise<CommandResult> {
  const address = LOCAL_CLI_COMMANDS.includes(args[0]) ? [] : ['--address', o.containerd.address];
  return runCommand(process.execPath, [CTR_CLI_JS, ...args, ...address], { env: { ...process.env, D4FS_STORE: o.store }, timeoutMs: o.timeoutMs ?? 300_000 });
}

/** Runs a command; rejects with its stderr when it fails. */
export async function mustRun(file: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await runCommand(file, args, opts);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

// ---------------------------------------------------------------------------
// Mount table
// ---------------------------------------------------------------------------

/** Mount points at or below `dir`, deepest (last mounted) first. */
export function mountsUnder(dir: string): string[] {
  const base = path.resolve(dir);
  return readMountInfoSync()
    .map((m) => m.mountpoint)
    .filter((mp) => isAtOrBelow(mp, base))
    .reverse();
}

/** Lazily unmounts everything at or below `dir`. */
export async function unmountAllUnder(dir: string): Promise<void> {
  for (const mp of mountsUnder(dir)) await runCommand('umount', ['-l', mp]);
}

/**
 * Performs `mounts` on `target` with mount(8), as containerd's mount.All
 * does. Long overlay lowerdir lists are shortened like containerd does: the
 * common parent directory becomes the working directory and the lowerdirs
 * are given relative to it.
 */
export async function mountAll(mounts: Mount[], target: string): Promise<void> {
  for (const m of mounts) {
    let options = m.options;
    let cwd: string | undefined;
    const lower = options.find((o) => o.startsWith('lowerdir='));
    if (m.type === 'overlay' && lower && options.join(',').length > 2048) {
      const dirs = lower.slice('lowerdir='.length).split(':');
      // All snapshot dirs look like <root>/snapshots/<id>/fs.
      cwd = path.dirname(path.dirname(dirs[0]));
      if (dirs.every((d) => d.startsWith(`${cwd}/`))) {
        options = options.map((o) => (o === lower ? `lowerdir=${dirs.map((d) => path.relative(cwd!, d)).join(':')}` : o));
      } else {
        cwd = undefined;
      }
    }
    await mustRun('mount', ['-t', m.type, '-o', options.join(','), m.source, target], { cwd });
  }
}

/** Unmounts `target` (must be mounted). */
export async function unmount(target: string): Promise<void> {
  await mustRun('umount', [target]);
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** Waits for `child` to exit (up to `ms`, then SIGKILL); resolves with its exit code. */
async function waitExit(child: ChildProcess, ms: number): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** PIDs (other than ours, zombies included) whose command line mentions `needle`. */
export function pidsMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes(needle)) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** `pid` and all its descendants. */
function processTree(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parentOf.set(Number(name), ppid);
    } catch {
      /* gone */
    }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) for (const [p, pp] of parentOf) if (pp === tree[i]) tree.push(p);
  return tree;
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/** A private containerd. */
export interface PrivateContainerd {
  /** gRPC socket. */
  address: string;
  root: string;
  state: string;
  /** The directory holding everything (config, root, state, sockets, log). */
  dir: string;
  /** The config file containerd runs with. */
  configFile: string;
  /**
   * With the CRI plugin: its registry hosts directory (`registry.config_path`),
   * where certs.d/HOST/hosts.toml files go (read by containerd at each pull).
   */
  certsDir?: string;
  /**
   * Runs `ctr --address <address> ...args`. For `run`, --fifo-dir and
   * --runc-root pointing into the private directory are added.
   */
  ctr(args: string[], opts?: { timeoutMs?: number }): Promise<CommandResult>;
  /**
   * Like ctr, but rejects on a non-zero exit, with containerd's log and
   * `logs()` (e.g. the snapshotter's) in the message; resolves with stdout.
   */
  ctrOk(args: string[], opts?: { timeoutMs?: number; logs?: () => string }): Promise<string>;
  /** The tail of containerd's log. */
  log(): string;
  /** Kills containerd and its shims, unmounts what is left under its dirs, removes them. */
  stop(): Promise<void>;
}

export interface StartContainerdOptions {
  /** Socket of a proxy snapshotter to register. */
  snapshotterSocket?: string;
  /** Name of the proxy snapshotter (default "d4fs"). */
  snapshotterName?: string;
  /**
   * Enables containerd's CRI plugin (disabled by default) with this
   * configuration; its gRPC services answer on `address` too.
   */
  cri?: CriPluginOptions;
  /**
   * Called with the config file once written, before containerd starts
   * (e.g. to let install_snapshotter.sh edit it).
   */
  configHook?: (configFile: string) => Promise<void>;
  /** containerd's log level (default "info"). */
  logLevel?: string;
}

/**
 * The CRI plugin's settings for a private containerd. What this machine
 * needs is fixed: `restrict_oom_score_adj = true` (runc cannot set the
 * sandbox's oom_score_adj of -998 without CAP_SYS_RESOURCE), no CNI (its
 * conf and bin dirs are empty private directories: host-network pods only),
 * runc's state, the pods' network namespace mounts and the registry hosts
 * directory inside the private directory.
 */
export interface CriPluginOptions {
  /** `sandbox_image`: a pause image containerd can pull (see test/helpers/pause.ts). */
  sandboxImage: string;
  /** `containerd.snapshotter` (default: the proxy snapshotter's name, or "overlayfs" without one). */
  snapshotter?: string;
  /** `containerd.disable_snapshot_annotations` (default false: Prepare carries the cri.* labels). */
  disableSnapshotAnnotations?: boolean;
  /**
   * `registry.config_path`, the certs.d directory of hosts.toml files
   * (default <dir>/certs.d, created empty: loopback registries are then
   * reached over plain http, other hosts need a certs.d/HOST/hosts.toml).
   */
  registryConfigPath?: string;
  /** `restrict_oom_score_adj` (default true; false makes every pod fail on this machine). */
  restrictOomScoreAdj?: boolean;
  /** More TOML lines inside [plugins."io.containerd.grpc.v1.cri"] (key = value lines only). */
  extraLines?: string[];
}

/** Name of the CRI plugin in containerd's config. */
const CRI_PLUGIN = 'plugins."io.containerd.grpc.v1.cri"';

function criConfig(dir: string, opts: StartContainerdOptions, cri: CriPluginOptions): string[] {
  const q = (s: string) => JSON.stringify(s);
  const snapshotter = cri.snapshotter ?? (opts.snapshotterSocket ? (opts.snapshotterName ?? 'd4fs') : 'overlayfs');
  return [
    '',
    `[${CRI_PLUGIN}]`,
    `  sandbox_image = ${q(cri.sandboxImage)}`,
    `  restrict_oom_score_adj = ${cri.restrictOomScoreAdj ?? true}`,
    '  disable_tcp_service = true',
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    '  netns_mounts_under_state_dir = true',
    ...(cri.extraLines ?? []).map((l) => `  ${l}`),
    '',
    `[${CRI_PLUGIN}.containerd]`,
    `  snapshotter = ${q(snapshotter)}`,
    `  disable_snapshot_annotations = ${cri.disableSnapshotAnnotations ?? false}`,
    '  default_runtime_name = "runc"',
    '',
    `[${CRI_PLUGIN}.containerd.runtimes.runc]`,
    '  runtime_type = "io.containerd.runc.v2"',
    '',
    `[${CRI_PLUGIN}.containerd.runtimes.runc.options]`,
    `  Root = ${q(path.join(dir, 'runc'))}`,
    '',
    `[${CRI_PLUGIN}.cni]`,
    `  bin_dir = ${q(path.join(dir, 'cni', 'bin'))}`,
    `  conf_dir = ${q(path.join(dir, 'cni', 'net.d'))}`,
    '',
    `[${CRI_PLUGIN}.registry]`,
    `  config_path = ${q(cri.registryConfigPath ?? path.join(dir, 'certs.d'))}`,
  ];
}

function containerdConfig(dir: string, opts: StartContainerdOptions): string {
  const q = (s: string) => JSON.stringify(s);
  const lines = [
    'version = 2',
    `root = ${q(path.join(dir, 'root'))}`,
    `state = ${q(path.join(dir, 'state'))}`,
    ...(opts.cri ? [] : ['disabled_plugins = ["io.containerd.grpc.v1.cri"]']),
    '',
    '[grpc]',
    `  address = ${q(path.join(dir, 'c.sock'))}`,
    '',
    '[ttrpc]',
    `  address = ${q(path.join(dir, 'c.sock.ttrpc'))}`,
    '',
    '[debug]',
    `  level = ${q(opts.logLevel ?? 'info')}`,
    '',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(path.join(dir, 'opt'))}`,
  ];
  if (opts.snapshotterSocket) {
    lines.push('', `[proxy_plugins.${opts.snapshotterName ?? 'd4fs'}]`, '  type = "snapshot"', `  address = ${q(opts.snapshotterSocket)}`);
  }
  if (opts.cri) lines.push(...criConfig(dir, opts, opts.cri));
  return lines.join('\n') + '\n';
}

/**
 * Starts a private containerd (own config, root, state and sockets, CRI
 * disabled) and waits until `ctr version` answers through its socket.
 */
export async function startContainerd(opts: StartContainerdOptions = {}): Promise<PrivateContainerd> {
  // The shims' hard-coded socket directory: removed again (when empty) only
  // if it did not exist before, so a system containerd's is never touched.
  const shimDirs = ['/run/containerd/s', '/run/containerd'].filter((d) => !fs.existsSync(d));
  const dir = await fsp.mkdtemp('/tmp/d4ct-');
  const root = path.join(dir, 'root');
  const state = path.join(dir, 'state');
  const address = path.join(dir, 'c.sock');
  const configFile = path.join(dir, 'config.toml');
  await fsp.writeFile(configFile, containerdConfig(dir, opts));
  const certsDir = opts.cri ? (opts.cri.registryConfigPath ?? path.join(dir, 'certs.d')) : undefined;
  if (opts.cri) {
    for (const d of [certsDir!, path.join(dir, 'cni', 'bin'), path.join(dir, 'cni', 'net.d')]) await fsp.mkdir(d, { recursive: true });
  }
  if (opts.configHook) {
    try {
      await opts.configHook(configFile);
    } catch (e) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw e;
    }
  }
  const logFile = path.join(dir, 'containerd.log');
  const logFd = fs.openSync(logFile, 'a');
  const child = spawn('containerd', ['--config', configFile], { stdio: ['ignore', logFd, logFd], detached: false });
  fs.closeSync(logFd);
  children.add(child);

  // `ctr run` would put its IO FIFOs and runc's state under /run/containerd:
  // keep them in the private directory too.
  const privateRun = ['--fifo-dir', path.join(dir, 'fifo'), '--runc-root', path.join(dir, 'runc')];
  const ctr = (args: string[], o: { timeoutMs?: number } = {}) => {
    const full = args[0] === 'run' ? ['run', ...privateRun, ...args.slice(1)] : args;
    return runCommand('ctr', ['--address', address, ...full], { timeoutMs: o.timeoutMs ?? 120_000 });
  };
  const log = () => {
    try {
      return fs.readFileSync(logFile, 'utf8').slice(-8000);
    } catch {
      return '';
    }
  };
  const ctrOk = async (args: string[], o: { timeoutMs?: number; logs?: () => string } = {}): Promise<string> => {
    const r = await ctr(args, o);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} exited ${r.code}: ${r.stderr}\n--- containerd log ---\n${log()}\n${o.logs?.() ?? ''}`);
    return r.stdout;
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // Shims (and anything they run) outlive containerd: end them first.
    for (const shim of pidsMentioning(`-address ${address}`)) for (const pid of processTree(shim).reverse()) killQuietly(pid, 'SIGKILL');
    child.kill('SIGTERM');
    await waitExit(child, 10_000);
    children.delete(child);
    await unmountAllUnder(dir);
    await fsp.rm(dir, { recursive: true, force: true });
    for (const d of shimDirs) await fsp.rmdir(d).catch(() => undefined);
  };

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const l = log();
      await stop();
      throw new Error(`containerd exited during start-up:\n${l}`);
    }
    const r = await ctr(['version'], { timeoutMs: 5000 });
    if (r.code === 0 && /Server:/.test(r.stdout)) break;
    if (Date.now() > deadline) {
      const l = log();
      await stop();
      throw new Error(`containerd did not answer within 30 s:\n${l}`);
    }
    await new Promise((r2) => setTimeout(r2, 200));
  }
  return { address, root, state, dir, configFile, certsDir, ctr, ctrOk, log, stop };
}

// ---------------------------------------------------------------------------
// d4fs-snapshotter process
// ---------------------------------------------------------------------------

/** A d4fs-snapshotter child process. */
export interface SnapshotterProcess {
  pid: number;
  /** Everything it wrote to stderr so far (tail). */
  logs(): string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait. */
  kill9(): Promise<void>;
}

export interface StartSnapshotterOptions {
  root: string;
  address: string;
  /** More command-line arguments (e.g. ["--config", file]). */
  args?: string[];
  /** Log level (default "debug"). */
  logLevel?: string;
  /**
   * Also append everything the process writes to stderr (its JSON log
   * lines) to this file, unabridged (see snapshotterCalls in cri.ts).
   */
  logFile?: string;
}

/** Path of the compiled entry point: <package root>/dist/snapshotter/main.js. */
export function snapshotterEntryPoint(): string {
  return path.join(packageRoot(), 'dist', 'snapshotter', 'main.js');
}

/**
 * Starts `node dist/snapshotter/main.js` and waits until a real gRPC call
 * (Stat of a missing key) answers NOT_FOUND on `address`.
 */
export async function startSnapshotter(opts: StartSnapshotterOptions): Promise<SnapshotterProcess> {
  const args = [snapshotterEntryPoint(), '--root', opts.root, '--address', opts.address, '--log-level', opts.logLevel ?? 'debug', ...(opts.args ?? [])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-64_000);
    if (opts.logFile) fs.appendFileSync(opts.logFile, d);
  });
  const proc: SnapshotterProcess = {
    pid: child.pid!,
    logs: () => stderr,
    stop: async () => {
      child.kill('SIGTERM');
      const code = await waitExit(child, 15_000);
      children.delete(child);
      return code;
    },
    kill9: async () => {
      child.kill('SIGKILL');
      await waitExit(child, 15_000);
      children.delete(child);
    },
  };

  const client = new SnapshotsClient(opts.address, { timeoutMs: 2000 });
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        children.delete(child);
        throw new Error(`d4fs-snapshotter exited with ${child.exitCode ?? child.signalCode} during start-up:\n${stderr}`);
      }
      try {
        await client.stat('startSnapshotter/probe');
      } catch (e) {
        if ((e as { kind?: string }).kind === 'NOT_FOUND') break;
      }
      if (Date.now() > deadline) {
        await proc.kill9();
        throw new Error(`d4fs-snapshotter did not answer within 20 s:\n${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    client.close();
  }
  return proc;
}

// ---------------------------------------------------------------------------
// A busybox image
// ---------------------------------------------------------------------------

/** Cache of downloaded packages: <package root>/.cache/snapshotter-test. */
function cacheDir(): string {
  return path.join(packageRoot(), '.cache', 'snapshotter-test');
}

/** Path of a downloaded busybox-static .deb (downloaded once with apt-get download). */
export async function busyboxDeb(): Promise<string> {
  const dir = cacheDir();
  await fsp.mkdir(dir, { recursive: true });
  const find = () => fs.readdirSync(dir).find((f) => /^busybox-static_.*\.deb$/.test(f));
  let deb = find();
  if (!deb) {
    const tmp = await fsp.mkdtemp(path.join(dir, 'dl-'));
    try {
      await mustRun('apt-get', ['download', '-q', 'busybox-static'], { cwd: tmp, timeoutMs: 300_000 });
      const got = fs.readdirSync(tmp).find((f) => f.endsWith('.deb'));
      if (!got) throw new Error('apt-get download busybox-static produced no .deb');
      await fsp.rename(path.join(tmp, got), path.join(dir, got));
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true });
    }
    deb = find()!;
  }
  return path.join(dir, deb);
}

/** Applets linked to busybox in the image's /bin. */
const APPLETS = ['sh', 'ls', 'cat', 'echo', 'mkdir', 'rm', 'sleep', 'mount', 'true'];

/**
 * Builds an OCI layout at `layout` with tag `tag` holding a two-layer busybox
 * image: layer 1 is busybox-static (dpkg-deb -x) with applet links and the
 * usual empty directories, layer 2 adds /etc/d4fs-release. The layers are
 * written with GNU tar and added with `umoci raw add-layer`.
 */
export async function buildBusyboxImage(layout: string, tag: string): Promise<void> {
  const deb = await busyboxDeb();
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-bb-'));
  try {
    const l1 = path.join(work, 'l1');
    const l2 = path.join(work, 'l2');
    await mustRun('dpkg-deb', ['-x', deb, l1]);
    const bin = path.join(l1, 'bin');
    await fsp.mkdir(bin, { recursive: true });
    for (const a of APPLETS) await fsp.symlink('busybox', path.join(bin, a));
    for (const d of ['tmp', 'proc', 'sys', 'dev', 'etc', 'root']) await fsp.mkdir(path.join(l1, d), { recursive: true });
    await fsp.chmod(path.join(l1, 'tmp'), 0o1777);
    await fsp.mkdir(path.join(l2, 'etc'), { recursive: true });
    await fsp.writeFile(path.join(l2, 'etc', 'd4fs-release'), 'd4fs test image\n');

    await mustRun('umoci', ['init', '--layout', layout]);
    await mustRun('umoci', ['new', '--image', `${layout}:${tag}`]);
    for (const [i, dir] of [l1, l2].entries()) {
      const tar = path.join(work, `layer${i}.tar`);
      await mustRun('tar', ['--create', `--file=${tar}`, `--directory=${dir}`, '--numeric-owner', '--sort=name', '.']);
      await mustRun('umoci', ['raw', 'add-layer', '--image', `${layout}:${tag}`, tar]);
    }
    await mustRun('umoci', [
      'config',
      '--image',
      `${layout}:${tag}`,
      '--config.cmd',
      '/bin/sh',
      '--config.env',
      'PATH=/bin:/usr/bin:/sbin:/usr/sbin',
    ]);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** FUSE mount points at or below `dir` (from /proc/self/mountinfo). */
export function fuseMountsUnder(dir: string): string[] {
  const base = path.resolve(dir);
  return readMountInfoSync()
    .filter((m) => (m.fstype === 'fuse' || m.fstype.startsWith('fuse.')) && isAtOrBelow(m.mountpoint, base))
    .map((m) => m.mountpoint);
}

/** PIDs (other than this one, zombies excluded) whose command line mentions `needle`. */
export function processesMentioning(needle: string): number[] {
  return pidsMentioning(needle).filter(isAlive);
}

/** True when `pid` exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Ends the processes whose command line mentions `needle` (e.g. a FUSE
 * manager, which outlives its snapshotter by design): SIGTERM, then SIGKILL
 * for those still there after `ms`.
 */
export async function endProcessesMentioning(needle: string, ms = 10_000): Promise<void> {
  for (const pid of processesMentioning(needle)) killQuietly(pid, 'SIGTERM');
  await eventually(() => processesMentioning(needle).length === 0, ms, `the processes mentioning ${needle} to end`).catch(() => {
    for (const pid of processesMentioning(needle)) killQuietly(pid, 'SIGKILL');
  });
}

/**
 * `ctr run --rm [runArgs] IMAGE ID /bin/sh -c SCRIPT`, resolving with what
 * the script wrote to stdout. The output goes to a file on a bind mount
 * (/.d4fs-out), not through ctr's stdio: ctr can lose the tail of a
 * short-lived container's output when the task exits before its I/O is
 * drained, which would make a check of the image's files fail for a reason
 * that has nothing to do with them. stderr still goes through ctr.
 */
export async function runCaptured(ctr: (args: string[]) => Promise<unknown>, runArgs: string[], image: string, id: string, script: string): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-out-'));
  try {
    await fsp.chmod(dir, 0o777); // scripts may run as another user
    await ctr(['run', '--rm', ...runArgs, '--mount', `type=bind,src=${dir},dst=/.d4fs-out,options=rbind:rw`, image, id, '/bin/sh', '-c', `exec >/.d4fs-out/stdout\n${script}`]);
    return await fsp.readFile(path.join(dir, 'stdout'), 'utf8');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
