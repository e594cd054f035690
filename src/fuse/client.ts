/**
 * The snapshotter's side of the FUSE manager.
 *
 * ManagerClient speaks the manager's protocol (./protocol.ts) with a deadline
 * on every call. FuseFileSystem is the snapshot core's FileSystem for d4fs
 * images: it resolves the image a snapshot's labels name to a chain of .cdimg
 * files in the local stores of its own configuration and asks the manager to
 * mount it (the manager opens and verifies the files, and checks that the
 * chain leads to that image id).
 *
 * Labels are untrusted (decision 10 of the design): containerd passes every
 * layer annotation under containerd.io/snapshot/ of any image it pulls to
 * Prepare. So a label never names a path (the store label that `ctr-cli
 * load` writes is informational and not read here), and a snapshot is
 * served as a d4fs image only when it is that image's own snapshot: its
 * name (containerd.io/snapshot.ref when prepared) is the image's synthetic
 * chain id, d4fsDiffId(image id), which only the d4fs image's config names
 * (see ../containerd/image.ts and {@link d4fsImageOf}).
 *
 * The manager is started on demand, detached (it must outlive the
 * snapshotter), and is ready only when it answers a real call. When it dies
 * (calls are refused, or it stops answering and is killed), FuseFileSystem
 * detaches the dead mounts it left (ENOTCONN everywhere otherwise), starts a
 * new manager, which mounts its recorded mounts again, and mounts again every
 * mount it knows of. A watchdog pings the manager so this happens even when
 * nobody calls.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs, { promises as fsp } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Logger } from 'pino';
import { d4fsDiffId } from '../containerd/image';
import type { SignaturePolicy } from '../signing';
import { D4fsError, type ErrorKind, failedPrecondition, invalidArgument, notFound, toD4fsError, unavailable } from '../errors';
import { D4FS_IMAGE_ID, D4FS_PREFIX, SNAPSHOT_REF } from '../labels';
import type { FileSystem, MountOptions } from '../snapshotter/filesystem';
import { checkSocketDir, ensureSocketDir } from '../snapshotter/sockdir';
import type { Labels } from '../snapshotter/types';
import { LocalStore } from '../store/store';
import { cleanDeadMounts } from './mounts';
import { type CheckReply, managerPaths, type MountRecord, type MountRequest, type PingReply, type StatsReply } from './protocol';

/** Deadlines of manager calls, in ms. */
export interface CallTimeouts {
  ping: number;
  mount: number;
  unmount: number;
  check: number;
  /** Waiting for a freshly started manager to answer. */
  start: number;
}

export const DEFAULT_CALL_TIMEOUTS: Readonly<CallTimeouts> = { ping: 3000, mount: 60_000, unmount: 20_000, check: 5000, start: 30_000 };

/** Error codes meaning nobody serves the socket. */
const DOWN_CODES = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'ENOTCONN']);

/** True when `e` says the manager is not there (as opposed to an answer with an error). */
export function managerIsDown(e: unknown): boolean {
  return e instanceof D4fsError && e.detail?.down === true;
}

/** A client of one manager socket. */
export class ManagerClient {
  constructor(readonly socket: string) {}

  /** One call; rejects with the manager's error, DEADLINE_EXCEEDED, or UNAVAILABLE {down: true}. */
  call<T>(method: 'GET' | 'POST', route: string, body: unknown, timeoutMs: number, signal?: AbortSignal): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const text = body === undefined ? '' : JSON.stringify(body);
      let settled = false;
      const finish = (err: Error | undefined, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(value as T);
      };
      const req = http.request({
        socketPath: this.socket,
        method,
        path: route,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
        agent: false,
      });
      const timer = setTimeout(() => {
        finish(new D4fsError('DEADLINE_EXCEEDED', `FUSE manager: ${method} ${route} got no answer within ${timeoutMs} ms`));
        req.destroy();
      }, timeoutMs);
      const onAbort = () => {
        finish(new D4fsError('DEADLINE_EXCEEDED', `FUSE manager: ${method} ${route} cancelled`));
        req.destroy();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (DOWN_CODES.has(e.code ?? '')) finish(new D4fsError('UNAVAILABLE', `FUSE manager on ${this.socket} is not running (${e.code})`, { cause: e, detail: { down: true } }));
        else finish(toD4fsError(e));
      });
      req.on('response', (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('error', (e) => finish(new D4fsError('UNAVAILABLE', `FUSE manager connection lost: ${e.message}`, { cause: e, detail: { down: true } })));
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(parts).toString('utf8') || '{}');
          } catch {
            return finish(new D4fsError('INTERNAL', `FUSE manager: ${method} ${route}: answer is not JSON`));
          }
          const err = (parsed as { error?: { kind?: ErrorKind; message?: string } }).error;
          if ((res.statusCode ?? 500) >= 400 || err) {
            return finish(new D4fsError(err?.kind ?? 'INTERNAL', err?.message ?? `FUSE manager answered HTTP ${res.statusCode}`));
          }
          finish(undefined, parsed as T);
        });
      });
      req.end(text);
    });
  }

  ping(timeoutMs = DEFAULT_CALL_TIMEOUTS.ping): Promise<PingReply> {
    return this.call('GET', '/v1/ping', undefined, timeoutMs);
  }
  mount(req: MountRequest, timeoutMs = DEFAULT_CALL_TIMEOUTS.mount, signal?: AbortSignal): Promise<MountRecord> {
    return this.call('POST', '/v1/mount', req, timeoutMs, signal);
  }
  unmount(mountpoint: string, timeoutMs = DEFAULT_CALL_TIMEOUTS.unmount, signal?: AbortSignal): Promise<void> {
    return this.call('POST', '/v1/unmount', { mountpoint }, timeoutMs, signal);
  }
  check(mountpoint: string, timeoutMs = DEFAULT_CALL_TIMEOUTS.check, signal?: AbortSignal): Promise<CheckReply> {
    return this.call('POST', '/v1/check', { mountpoint }, timeoutMs, signal);
  }
  async list(timeoutMs = DEFAULT_CALL_TIMEOUTS.check): Promise<MountRecord[]> {
    return (await this.call<{ mounts: MountRecord[] }>('GET', '/v1/list', undefined, timeoutMs)).mounts;
  }
  stats(timeoutMs = DEFAULT_CALL_TIMEOUTS.check): Promise<StatsReply> {
    return this.call('GET', '/v1/stats', undefined, timeoutMs);
  }
  /** Asks the manager to unmount everything and exit (`forget`: drop its state file too). */
  shutdown(opts: { forget?: boolean } = {}, timeoutMs = DEFAULT_CALL_TIMEOUTS.unmount): Promise<void> {
    return this.call('POST', '/v1/shutdown', opts, timeoutMs);
  }
}

/** A d4fs image id as labels carry it. */
const IMAGE_ID_RE = /^sha256:[0-9a-f]{64}$/;

/**
 * The d4fs image whose snapshot `labels` describe, or undefined: the image id
 * label must be well formed and the snapshot's name (`containerd.io/snapshot.ref`:
 * the chain id containerd prepares) must be that image's synthetic chain id.
 * Any image's layer annotations can carry the image id label; only the
 * d4fs image's own config (rootfs.diff_ids = [d4fsDiffId(id)]) leads
 * containerd to prepare that chain id.
 */
export function d4fsImageOf(labels: Readonly<Labels>): string | undefined {
  const id = labels[D4FS_IMAGE_ID];
  if (typeof id !== 'string' || !IMAGE_ID_RE.test(id)) return undefined;
  return labels[SNAPSHOT_REF] === d4fsDiffId(id) ? id : undefined;
}

export interface FuseFileSystemOptions {
  /** The manager's state directory (socket, state, cache), e.g. <snapshotter root>/fuse. */
  root: string;
  /**
   * The local stores d4fs images are served from, searched in order (the
   * snapshotter's own configuration; a store is never taken from a label and
   * never created here).
   */
  stores: readonly string[];
  /** Signatures an image's files must carry to be mounted (none: no check). */
  policy?: SignaturePolicy;
  log: Logger;
  /** The manager's entry point (default: dist/snapshotter/fuse-manager.js next to this module). */
  managerEntry?: string;
  /** More arguments for the manager (e.g. ["--cache-max-bytes", "…"]). */
  managerArgs?: string[];
  /** Watchdog period in ms (default 5000; 0: no watchdog). */
  watchIntervalMs?: number;
  timeouts?: Partial<CallTimeouts>;
}

/** The FileSystem of d4fs images: FUSE mounts served by the FUSE manager process. */
export class FuseFileSystem implements FileSystem {
  readonly client: ManagerClient;
  private readonly paths: ReturnType<typeof managerPaths>;
  private readonly t: CallTimeouts;
  private readonly log: Logger;
  /** Mounts this snapshotter wants (remounted after a manager death). */
  private readonly known = new Map<string, MountRequest>();
  private starting?: Promise<PingReply>;
  private recovering?: Promise<void>;
  private learned = false;
  private child?: ChildProcess;
  private watchdog?: NodeJS.Timeout;
  private missedPings = 0;
  private closed = false;

  constructor(private readonly o: FuseFileSystemOptions) {
    this.paths = managerPaths(o.root);
    this.client = new ManagerClient(this.paths.socket);
    this.t = { ...DEFAULT_CALL_TIMEOUTS, ...o.timeouts };
    this.log = o.log.child({ component: 'fuse-client' });
  }

  /**
   * True when the snapshot being prepared with `labels` (and `target`'s
   * parents) is a d4fs image's own, to be provided as a FUSE mount: see
   * {@link d4fsImageOf}; a d4fs image is one layer, so it has no parent.
   * d4fs labels on any other snapshot are ignored (logged): it is unpacked
   * as usual.
   */
  accepts(labels: Readonly<Labels>, target?: { parentIds: readonly string[] }): boolean {
    const id = d4fsImageOf(labels);
    if (id && (target?.parentIds.length ?? 0) === 0) return true;
    if (Object.keys(labels).some((k) => k.startsWith(D4FS_PREFIX))) {
      this.log.warn(
        { ref: labels[SNAPSHOT_REF], imageId: labels[D4FS_IMAGE_ID], parents: target?.parentIds.length ?? 0 },
        'ignoring d4fs labels: the snapshot is not the named d4fs image\'s own (chain id or parent mismatch); unpacking it as usual',
      );
    }
    return false;
  }

  /**
   * Mounts the d4fs image of the snapshot `labels` describe at `mountpoint`
   * (idempotent). The image must be the snapshot's own (see d4fsImageOf; the
   * snapshot core passes the committed snapshot's name as
   * containerd.io/snapshot.ref when it mounts one again) and held by one of
   * the configured stores.
   */
  async mount(mountpoint: string, labels: Readonly<Labels>, signal?: AbortSignal, opts: MountOptions = {}): Promise<void> {
    const mp = path.resolve(mountpoint);
    const imageId = d4fsImageOf(labels);
    if (!imageId) {
      throw failedPrecondition(
        `snapshot ${JSON.stringify(labels[SNAPSHOT_REF] ?? '')} is not the snapshot of d4fs image ${JSON.stringify(labels[D4FS_IMAGE_ID] ?? '')}: ` +
          `its name must be the image's chain id (${labels[D4FS_IMAGE_ID] && IMAGE_ID_RE.test(labels[D4FS_IMAGE_ID]) ? d4fsDiffId(labels[D4FS_IMAGE_ID]) : 'sha256:…'})`,
      );
    }
    await this.mountImage(mp, imageId, signal, opts);
  }

  /**
   * Mounts d4fs image `imageId`, held by one of the configured stores, at
   * `mountpoint` (idempotent): for callers that established which image a
   * snapshot is themselves (the CRI pull, from the manifest it verified),
   * never from labels.
   */
  async mountImage(mountpoint: string, imageId: string, signal?: AbortSignal, opts: MountOptions = {}): Promise<void> {
    const mp = path.resolve(mountpoint);
    if (!IMAGE_ID_RE.test(imageId)) throw invalidArgument(`invalid d4fs image id ${JSON.stringify(imageId.slice(0, 80))}`);
    const req: MountRequest = { mountpoint: mp, imageId, chain: await resolveChain(this.o.stores, imageId, this.o.policy) };
    // remembered without `lazy`: a mount made again after a manager's death is waited for
    this.known.set(mp, req);
    try {
      await this.withManager((c) => c.mount(opts.lazy ? { ...req, lazy: true } : req, this.t.mount, signal));
    } catch (e) {
      this.known.delete(mp);
      throw e;
    }
  }

  /** Resolves when `mountpoint` is served; rejects otherwise (the core then mounts again). */
  async check(mountpoint: string, _labels: Readonly<Labels>, signal?: AbortSignal): Promise<void> {
    await this.withManager((c) => c.check(path.resolve(mountpoint), this.t.check, signal));
  }

  /** Unmounts `mountpoint`; never hangs past its deadline, even when the manager is gone. */
  async unmount(mountpoint: string, signal?: AbortSignal): Promise<void> {
    const mp = path.resolve(mountpoint);
    this.known.delete(mp);
    try {
      await this.withManager((c) => c.unmount(mp, this.t.unmount, signal));
    } catch (e) {
      // The manager cannot do it: detach whatever is left ourselves.
      this.log.warn({ err: toD4fsError(e).message, mountpoint: mp }, 'manager could not unmount; detaching directly');
      await cleanDeadMounts(mp, this.t.unmount);
    }
  }

  /** Starts the manager unless one answers; resolves with its ping once it is ready. */
  ensureManager(): Promise<PingReply> {
    this.starting ??= this.startManager().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /**
   * After the manager died or hung: kills what is left of it, detaches dead
   * mounts, starts a new manager and mounts everything known again.
   */
  recover(): Promise<void> {
    this.recovering ??= this.doRecover().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  /** Stops the watchdog (the manager keeps running: it serves running containers). */
  close(): void {
    this.closed = true;
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = undefined;
  }

  /** The pid of the running manager, from its pid file (undefined when none runs). */
  async managerPid(): Promise<number | undefined> {
    const pid = Number((await fsp.readFile(this.paths.pid, 'utf8').catch(() => '')).trim());
    return Number.isSafeInteger(pid) && pid > 0 && isManagerProcess(pid) ? pid : undefined;
  }

  // -------------------------------------------------------------------------

  /** Runs `fn` against a running manager; once more after recovering when the manager is down. */
  private async withManager<T>(fn: (c: ManagerClient) => Promise<T>): Promise<T> {
    if (this.recovering) await this.recovering;
    try {
      await this.ensureManager();
      return await fn(this.client);
    } catch (e) {
      if (!managerIsDown(e)) throw e;
      this.log.warn({ err: (e as Error).message }, 'FUSE manager is down; recovering');
      await this.recover();
      return fn(this.client);
    }
  }

  private async startManager(): Promise<PingReply> {
    // Only a socket in a directory nobody else can write to is the manager's.
    await checkSocketDir(path.dirname(this.paths.socket));
    let ping: PingReply;
    try {
      ping = await this.client.ping(this.t.ping);
    } catch (e) {
      if (!managerIsDown(e)) throw e;
      ping = await this.spawnManager();
    }
    if (!this.learned) {
      // Mounts the manager serves from before a restart of the snapshotter.
      this.learned = true;
      for (const r of await this.client.list().catch(() => [] as MountRecord[])) {
        if (!this.known.has(r.mountpoint)) this.known.set(r.mountpoint, { mountpoint: r.mountpoint, chain: r.chain, imageId: r.imageId });
      }
    }
    this.startWatchdog();
    return ping;
  }

  private async spawnManager(): Promise<PingReply> {
    await ensureSocketDir(this.o.root, { exclusive: true });
    const entry = this.o.managerEntry ?? path.resolve(__dirname, '..', '..', 'snapshotter', 'fuse-manager.js');
    const logFd = fs.openSync(this.paths.log, 'a');
    let child: ChildProcess;
    try {
      // --expose-gc: the manager collects once after each mount (FuseManager.reclaimSoon)
      child = spawn(process.execPath, ['--expose-gc', entry, '--root', this.o.root, '--log-level', this.o.log.level, ...(this.o.managerArgs ?? [])], {
        detached: true,
        stdio: ['ignore', logFd, logFd],
      });
    } finally {
      fs.closeSync(logFd);
    }
    child.unref();
    // Keep the handle: Node reaps the child when it exits (no zombie).
    this.child = child;
    let exited: string | undefined;
    child.once('exit', (code, sig) => {
      exited = `exited with ${code ?? sig}`;
      if (this.child === child) this.child = undefined;
    });
    this.log.info({ pid: child.pid, entry }, 'started FUSE manager');
    const deadline = Date.now() + this.t.start;
    for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
      try {
        return await this.client.ping(this.t.ping);
      } catch (e) {
        if (!managerIsDown(e) && toD4fsError(e).kind !== 'DEADLINE_EXCEEDED') throw e;
      }
      if (exited) {
        // Another manager may have won the race for the socket.
        const other = await this.client.ping(this.t.ping).catch(() => undefined);
        if (other) return other;
        throw unavailable(`FUSE manager ${exited} during start-up; see ${this.paths.log}:\n${await tail(this.paths.log)}`);
      }
      if (Date.now() > deadline) {
        throw unavailable(`FUSE manager did not answer within ${this.t.start} ms; see ${this.paths.log}`);
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  private async doRecover(): Promise<void> {
    // Still alive after all (e.g. a slow answer)? Then there is nothing to recover.
    const alive = await this.client.ping(this.t.ping).catch(() => undefined);
    if (alive) return;
    const pid = await this.managerPid();
    if (pid !== undefined) {
      this.log.warn({ pid }, 'FUSE manager does not answer: killing it');
      await killAndWait(pid);
    }
    const mountpoints = new Set([...this.known.keys(), ...(await recordedMountpoints(this.paths.state))]);
    for (const mp of mountpoints) {
      const n = await cleanDeadMounts(mp).catch((e: unknown) => {
        this.log.error({ err: e, mountpoint: mp }, 'cannot detach dead mount');
        return 0;
      });
      if (n) this.log.warn({ mountpoint: mp }, 'detached dead mount');
    }
    await this.ensureManager();
    for (const req of [...this.known.values()]) {
      try {
        await this.client.mount(req, this.t.mount);
      } catch (e) {
        this.log.error({ err: toD4fsError(e).message, mountpoint: req.mountpoint }, 'cannot mount again after manager restart');
      }
    }
    this.log.info({ mounts: this.known.size }, 'FUSE manager recovered');
  }

  private startWatchdog(): void {
    const every = this.o.watchIntervalMs ?? 5000;
    if (this.watchdog || this.closed || every <= 0) return;
    this.watchdog = setInterval(() => {
      if (this.recovering || this.starting) return;
      this.client.ping(this.t.ping).then(
        () => {
          this.missedPings = 0;
        },
        (e: unknown) => {
          // Refused: dead. Unanswered three times in a row: hung.
          if (managerIsDown(e) || ++this.missedPings >= 3) {
            this.missedPings = 0;
            this.log.warn({ err: (e as Error).message }, 'FUSE manager lost; recovering');
            this.recover().catch((re: unknown) => this.log.error({ err: re }, 'FUSE manager recovery failed'));
          }
        },
      );
    }, every);
    this.watchdog.unref();
  }
}

/**
 * The files of `imageId`'s chain in the first of `stores` that holds it, full
 * image first. A store without a catalogue holds nothing (and is not created
 * here). The files are not opened here: the manager opens, verifies (the image
 * id recomputed from the index) and checks them as a chain before it mounts,
 * and refuses a chain that does not lead to `imageId` (its errors come back to
 * the caller), so reading every index here as well would only double the cost
 * of a mount.
 */
async function resolveChain(stores: readonly string[], imageId: string, policy?: SignaturePolicy): Promise<string[]> {
  for (const root of stores) {
    if (!fs.existsSync(path.join(root, 'store.db'))) continue;
    const store = await LocalStore.open(root);
    try {
      const chain = store.chainFor(imageId);
      // with verify keys configured, every file of the chain needs a trusted signature (UNAUTHENTICATED otherwise)
      await store.checkChainSignatures(imageId, policy);
      return chain.map((f) => f.path);
    } catch (e) {
      if (toD4fsError(e).kind !== 'NOT_FOUND') throw e;
    } finally {
      store.close();
    }
  }
  throw notFound(`image ${imageId} is not held by the local store${stores.length === 1 ? '' : 's'} the snapshotter serves (${stores.join(', ') || 'none configured'})`);
}

async function recordedMountpoints(stateFile: string): Promise<string[]> {
  try {
    const raw = JSON.parse(await fsp.readFile(stateFile, 'utf8')) as { mounts?: { mountpoint?: unknown }[] };
    return (raw.mounts ?? []).map((m) => m.mountpoint).filter((m): m is string => typeof m === 'string' && path.isAbsolute(m));
  } catch {
    return [];
  }
}

/** True when `pid` runs the FUSE manager. */
function isManagerProcess(pid: number): boolean {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return cmd.includes('fuse-manager') && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function killAndWait(pid: number, ms = 10_000): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  const deadline = Date.now() + ms;
  while (isManagerProcess(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
}

async function tail(file: string, bytes = 4000): Promise<string> {
  const text = await fsp.readFile(file, 'utf8').catch(() => '');
  return text.slice(-bytes);
}
