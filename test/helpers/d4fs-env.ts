/**
 * A reusable, fully private d4fs environment for end-to-end tests and
 * benchmarks: a private containerd (own root, state and sockets) with the
 * d4fs proxy snapshotter registered, the d4fs-snapshotter process serving
 * d4fs images over FUSE (its FUSE manager is a detached process of its own),
 * and a local store for `ctr-cli load`.
 *
 *     const env = await startD4fsEnv();
 *     await env.cliOk(['load', '--image', 'nginx:1', '--cdimg', file]);
 *     await env.ctrOk(['run', '--rm', '--snapshotter', 'd4fs', 'nginx:1', 'c1', 'true']);
 *     await env.stop();
 *
 * Everything lives under one fresh /tmp directory (`env.dir`); stop() ends
 * what the environment started (containerd and its shims, the snapshotter,
 * the FUSE manager, found by its pid file and by its command line naming
 * `env.dir`), detaches what is left mounted under the directory and removes
 * it.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ManagerClient } from '../../src/fuse/client';
import { D4FS_FSTYPE } from '../../src/fuse/mounts';
import { managerPaths } from '../../src/fuse/protocol';
import { isAtOrBelow, readMountInfoSync } from '../../src/util/mountinfo';
import {
  type CommandResult,
  type PrivateContainerd,
  type SnapshotterProcess,
  type StartContainerdOptions,
  isAlive,
  pidsMentioning,
  runCtrCli,
  startContainerd,
  startSnapshotter,
  unmountAllUnder,
} from './containerd';
import { eventually } from './wait';

/** Re-exported for bench/snapshotter.ts and test/cri-peer.test.ts, which import it from here. */
export { eventually };

/** A running private environment. */
export interface D4fsEnv {
  /** The directory holding everything (snapshotter root, store, socket). */
  readonly dir: string;
  /** The snapshotter's --root. */
  readonly root: string;
  /** The local store (D4FS_STORE of every ctr-cli call). */
  readonly store: string;
  /** The snapshotter's gRPC socket. */
  readonly socket: string;
  /** The FUSE manager's state directory (<root>/fuse). */
  readonly fuseRoot: string;
  /** The FUSE manager's content cache directory. */
  readonly cacheDir: string;
  /** The snapshotter's whole log, with keepSnapshotterLog. */
  readonly snapshotterLogFile?: string;
  readonly containerd: PrivateContainerd;
  /** The current snapshotter process (replaced by restartSnapshotter). */
  readonly snapshotter: SnapshotterProcess;
  /** A client of the FUSE manager's socket. */
  readonly manager: ManagerClient;
  /** Runs ctr-cli with the environment's store (and --address for commands that talk to containerd). */
  cli(args: string[], opts?: { timeoutMs?: number }): Promise<CommandResult>;
  /** Like cli, but rejects (with both logs) on a non-zero exit; resolves with stdout. */
  cliOk(args: string[], opts?: { timeoutMs?: number }): Promise<string>;
  /** Runs ctr against the private containerd. */
  ctr(args: string[], opts?: { timeoutMs?: number }): Promise<CommandResult>;
  /** Like ctr, but rejects (with containerd's and the snapshotter's logs) on a non-zero exit; resolves with stdout. */
  ctrOk(args: string[], opts?: { timeoutMs?: number }): Promise<string>;
  /** Starts the snapshotter again on the same root and socket (after kill9 or stop). */
  restartSnapshotter(): Promise<SnapshotterProcess>;
  /** The FUSE manager's pid from its pid file, when that process is alive. */
  managerPid(): number | undefined;
  /** d4fs FUSE mounts at or below `dir` (default: the environment's directory). */
  d4fsMounts(dir?: string): string[];
  /** Tails of the snapshotter's and the FUSE manager's logs, for failure messages. */
  logs(): string;
  /** Ends everything the environment started and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

export interface D4fsEnvOptions {
  /** Log level of the snapshotter and the FUSE manager (default "info"). */
  logLevel?: string;
  /** More arguments for d4fs-snapshotter. */
  snapshotterArgs?: string[];
  /**
   * More options for the private containerd (e.g. `cri` to enable the CRI
   * plugin); the d4fs proxy plugin is registered as always.
   */
  containerd?: Omit<StartContainerdOptions, 'snapshotterSocket'>;
  /**
   * Keep the snapshotter's whole log (every start of it) in
   * <dir>/snapshotter.log (`snapshotterLogFile`), not only the tail.
   */
  keepSnapshotterLog?: boolean;
}

/** d4fs FUSE mounts at or below `dir`, in mount order. */
export function d4fsMountsUnder(dir: string): string[] {
  const base = path.resolve(dir);
  return readMountInfoSync()
    .filter((m) => m.fstype === D4FS_FSTYPE && isAtOrBelow(m.mountpoint, base))
    .map((m) => m.mountpoint);
}

function tailOf(file: string, bytes: number): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.slice(-bytes);
  } catch {
    return '';
  }
}

/**
 * Starts a private containerd with the d4fs proxy snapshotter and the
 * snapshotter itself (FUSE on) in a fresh /tmp directory.
 */
export async function startD4fsEnv(opts: D4fsEnvOptions = {}): Promise<D4fsEnv> {
  const dir = await fsp.mkdtemp('/tmp/d4env-');
  const root = path.join(dir, 'root');
  const store = path.join(dir, 'store');
  const socket = path.join(dir, 'd4fs.sock');
  const fuseRoot = path.join(root, 'fuse');
  const paths = managerPaths(fuseRoot);
  // The snapshotter serves d4fs images from the store of its own configuration (never from a label).
  const snapshotterLogFile = opts.keepSnapshotterLog ? path.join(dir, 'snapshotter.log') : undefined;
  const snapshotterOpts = {
    root,
    address: socket,
    logLevel: opts.logLevel ?? 'info',
    args: ['--store', store, ...(opts.snapshotterArgs ?? [])],
    logFile: snapshotterLogFile,
  };

  let snapshotter: SnapshotterProcess;
  let containerd: PrivateContainerd | undefined;
  try {
    // as install_snapshotter.sh does on a node (mkdir -m 0700 $D4FS_ROOT)
    await fsp.mkdir(root, { recursive: true, mode: 0o700 });
    snapshotter = await startSnapshotter(snapshotterOpts);
    try {
      containerd = await startContainerd({ ...opts.containerd, snapshotterSocket: socket });
    } catch (e) {
      await snapshotter.stop().catch(() => undefined);
      throw e;
    }
  } catch (e) {
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    throw e;
  }
  const ctrd = containerd;
  const manager = new ManagerClient(paths.socket);

  const logs = (): string =>
    `--- snapshotter log ---\n${snapshotter.logs().slice(-6000)}\n--- FUSE manager log ---\n${tailOf(paths.log, 6000)}`;

  const cli = (args: string[], o: { timeoutMs?: number } = {}): Promise<CommandResult> => runCtrCli(args, { store, containerd: ctrd, timeoutMs: o.timeoutMs });
  const cliOk = async (args: string[], o: { timeoutMs?: number } = {}): Promise<string> => {
    const r = await cli(args, o);
    if (r.code !== 0) throw new Error(`ctr-cli ${args.join(' ')} exited ${r.code}: ${r.stderr}\n${logs()}`);
    return r.stdout;
  };
  const ctr = (args: string[], o: { timeoutMs?: number } = {}): Promise<CommandResult> => ctrd.ctr(args, { timeoutMs: o.timeoutMs ?? 300_000 });
  const ctrOk = (args: string[], o: { timeoutMs?: number } = {}): Promise<string> => ctrd.ctrOk(args, { timeoutMs: o.timeoutMs ?? 300_000, logs });
  const managerPid = (): number | undefined => {
    try {
      const pid = Number(fs.readFileSync(paths.pid, 'utf8').trim());
      return Number.isSafeInteger(pid) && pid > 0 && isAlive(pid) ? pid : undefined;
    } catch {
      return undefined;
    }
  };

  let stopped = false;
  const env: D4fsEnv = {
    dir,
    root,
    store,
    socket,
    fuseRoot,
    cacheDir: paths.cache,
    snapshotterLogFile,
    containerd: ctrd,
    get snapshotter() {
      return snapshotter;
    },
    manager,
    cli,
    cliOk,
    ctr,
    ctrOk,
    restartSnapshotter: async () => {
      snapshotter = await startSnapshotter(snapshotterOpts);
      return snapshotter;
    },
    managerPid,
    d4fsMounts: (d = dir) => d4fsMountsUnder(d),
    logs,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await ctrd.stop().catch(() => undefined);
      await snapshotter.stop().catch(() => undefined);
      // The FUSE manager outlives the snapshotter by design: end it (it
      // unmounts what it serves on SIGTERM), then whatever else names dir.
      const pid = managerPid();
      if (pid !== undefined) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          /* gone */
        }
        await eventually(() => !isAlive(pid), 10_000).catch(() => {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        });
      }
      for (const p of pidsMentioning(dir)) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      await unmountAllUnder(dir);
      await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
  return env;
}
