/**
 * The FUSE manager: the process that serves every d4fs FUSE mount, apart
 * from the gRPC snapshotter (decision 7 of the design), so that restarting or
 * killing the snapshotter never breaks the files under running containers.
 *
 * It answers the JSON protocol of ./protocol.ts on a unix socket, keeps one
 * content cache and one worker pool for all its mounts, and records its
 * mounts in a state file (written atomically on every change) so that after
 * its own restart it mounts them again, detaching the dead mounts its
 * predecessor left first. It becomes ready (answers ping) only after that.
 *
 * Rule of the house: this process never touches a mountpoint it serves. It
 * learns what is mounted from /proc/self/mountinfo, detaches with umount(8)
 * in a child process, and stats a mountpoint only when nothing of its own is
 * mounted there.
 */
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { D4fsError, failedPrecondition, httpCodeOf, invalidArgument, notFound, toD4fsError, unavailable } from '../errors';
import { ContentCache } from './cache';
import { ChainIndex } from './chain-index';
import { chooseBinding, createImageFileSystem, fuse3LoadFailure, type FuseBindingName, trimMemory } from './binding';
import type { ImageFileSystem, OpTimeouts } from './imagefs';
import { cleanDeadMounts, d4fsMountsAt } from './mounts';
import { FusePool } from './pool';
import { fusePath } from './tree';
import { ensureSocketDir } from '../snapshotter/sockdir';
import { FileType } from '../format/types';
import {
  type CheckReply,
  isMountRequest,
  managerPaths,
  type MountRecord,
  type MountRequest,
  type PingReply,
  type PrefetchStats,
  PROTOCOL_VERSION,
  type StatsReply,
} from './protocol';

export interface FuseManagerOptions {
  /** State directory: socket, state file, pid file, cache. */
  root: string;
  /** Socket path (default <root>/manager.sock). */
  socket?: string;
  /** Cache directory (default <root>/cache). */
  cacheDir?: string;
  /** Bound of the content cache in bytes (default 10 GiB). */
  cacheMaxBytes?: number;
  /** Worker threads (default: one per core). */
  threads?: number;
  timeouts?: Partial<OpTimeouts>;
  /** FUSE binding (default: $D4FS_FUSE_BINDING, else fuse3 when it loads, else fuse-native). */
  binding?: FuseBindingName;
  /** Bytes an update's prefetch may build (default 512 MiB; 0: no prefetch). */
  prefetchMaxBytes?: number;
  log: Logger;
}

const DEFAULT_PREFETCH_BYTES = 512 * 1024 * 1024;
/** Contents built at once by a prefetch (the pool has one thread per core; reads come first). */
const PREFETCH_CONCURRENCY = 2;

interface Served {
  record: MountRecord;
  fs: ImageFileSystem;
}

const MAX_BODY = 1024 * 1024;
const FUSECTL = '/sys/fs/fuse/connections';

/** Builds after which the manager reclaims memory once the pool is idle (FuseManager.reclaimSoon). */
const RECLAIM_AFTER_BUILDS = 32;

export class FuseManager {
  private readonly mounts = new Map<string, Served>();
  /** Unmounted filesystems: kept serving whatever still references them (an overlay's lower dir). */
  private readonly detached = new Set<ImageFileSystem>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private stateWrite: Promise<void> = Promise.resolve();
  private server?: http.Server;
  private stopping?: Promise<void>;
  private readonly startedAt = new Date().toISOString();
  private readonly prefetched: PrefetchStats = { built: 0, bytes: 0, failed: 0, pending: 0 };
  private reclaimTimer?: NodeJS.Timeout;
  private readonly paths: ReturnType<typeof managerPaths>;
  readonly binding: FuseBindingName;

  private constructor(
    private readonly o: FuseManagerOptions,
    private readonly pool: FusePool,
    private readonly cache: ContentCache,
    private readonly log: Logger,
  ) {
    this.paths = managerPaths(o.root);
    if (o.socket) this.paths.socket = o.socket;
    this.binding = chooseBinding(o.binding);
    // After a burst of builds (a big file read cold: 64 chunk builds of 4 MiB), what they
    // freed is given back too: ~360 -> ~280 MiB RSS after 1,000 small files and the 256 MiB
    // file of the 151k-entry image read cold (issue 18). Small bursts are left alone (a
    // collection pauses this thread).
    pool.onIdle = (tasks) => {
      this.buildsSinceReclaim += tasks;
      if (this.buildsSinceReclaim >= RECLAIM_AFTER_BUILDS) this.reclaimSoon();
    };
  }

  /**
   * Starts a manager: refuses when one already answers on the socket,
   * restores the recorded mounts, then listens. Resolves when ready.
   */
  static async start(o: FuseManagerOptions): Promise<FuseManager> {
    await fsp.access('/dev/fuse').catch(() => {
      throw failedPrecondition('/dev/fuse is missing: load the fuse kernel module (modprobe fuse) to serve d4fs images');
    });
    // The root holds the socket (and the state, the cache): ours alone, 0700.
    await ensureSocketDir(o.root, { exclusive: true });
    const paths = managerPaths(o.root);
    const socket = path.resolve(o.socket ?? paths.socket);
    const socketDir = path.dirname(socket);
    if (socketDir !== path.resolve(o.root)) {
      // A long root's socket goes to a private directory under /run/d4fs, which must be ours too.
      if (!o.socket) await ensureSocketDir(path.dirname(socketDir));
      await ensureSocketDir(socketDir, { exclusive: !o.socket });
    }
    await clearStaleSocket(socket);
    await fsp.writeFile(paths.pid, `${process.pid}\n`);
    await ensureFusectl(o.log);
    const pool = new FusePool(o.threads);
    const cache = await ContentCache.open({ dir: o.cacheDir ?? paths.cache, maxBytes: o.cacheMaxBytes, pool, log: o.log });
    const m = new FuseManager(o, pool, cache, o.log);
    await m.restore();
    await m.listen();
    const why = m.binding === 'fuse3' ? undefined : fuse3LoadFailure();
    o.log.info({ socket, binding: m.binding, fuse3Unavailable: why, mounts: m.mounts.size, cache: cache.stats() }, 'fuse manager ready');
    return m;
  }

  // -------------------------------------------------------------------------
  // Operations
  // -------------------------------------------------------------------------

  /** Mounts `req` (idempotent for the same image; another image at the same place replaces it). */
  mount(req: MountRequest): Promise<MountRecord> {
    if (!isMountRequest(req)) throw invalidArgument('mount needs {mountpoint, chain: [absolute paths], imageId}');
    const mp = checkMountpoint(req.mountpoint);
    return this.locked(mp, async () => {
      const cur = this.mounts.get(mp);
      if (cur) {
        if (cur.record.imageId === req.imageId && (await d4fsMountsAt(mp)).length > 0) {
          // a lazy mount whose chain could not be opened is mounted again (and that mount reports why)
          if (req.lazy || (await cur.fs.ready.then(() => true, () => false))) return cur.record;
        }
        await this.unmountLocked(mp);
      }
      // Whatever d4fs mount is left there is dead (a previous manager's).
      const cleaned = await cleanDeadMounts(mp);
      if (cleaned) this.log.warn({ mountpoint: mp, cleaned }, 'detached dead mounts');
      // Nothing of ours is mounted at mp now: stat is safe.
      const st = await fsp.stat(mp).catch((e: unknown) => {
        throw notFound(`mountpoint ${mp}: ${(e as Error).message}`);
      });
      if (!st.isDirectory()) throw invalidArgument(`mountpoint ${mp} is not a directory`);
      // Lazy (fuse3 only): the kernel mount is made now and the chain opened meanwhile, its
      // requests waiting for it (ImageFileSystemBase.ready). Opening checks every file whole
      // (index against the root digest, decoded, validated, image id recomputed): 1.4-2.3 s for
      // a 151k-entry image, which `ctr-cli load` (whose own check of the file it has already
      // made) and a CRI pull no longer wait for (issue 18: load <= 1 s).
      const lazy = req.lazy === true && this.binding === 'fuse3';
      // Lazily, the chain is opened once the mount is made and answered: decoding the index takes
      // this thread for ~1 s, which would otherwise hold up the kernel's INIT of the mount.
      let start = (): void => undefined;
      const opening = lazy ? new Promise<void>((r) => (start = r)).then(() => ChainIndex.open(req.chain)) : ChainIndex.open(req.chain);
      let chain: ChainIndex | Promise<ChainIndex> = opening;
      if (!lazy) {
        chain = await opening;
        if (chain.imageId !== req.imageId) {
          throw failedPrecondition(`the chain ${req.chain.join(' → ')} leads to image ${chain.imageId}, not ${req.imageId}`);
        }
      }
      const fs = createImageFileSystem(this.binding, { mountpoint: mp, chain, imageId: req.imageId, cache: this.cache, log: this.log, timeouts: this.o.timeouts });
      await fs.mount();
      const record: MountRecord = { mountpoint: mp, chain: [...req.chain], imageId: req.imageId, mountedAt: new Date().toISOString() };
      this.mounts.set(mp, { record, fs });
      await this.saveState();
      // after this reply has gone out
      setImmediate(start);
      void fs.ready.then(
        async () => {
          this.prefetchUpdate(fs, await opening);
          this.reclaimSoon();
        },
        (e: unknown) => this.log.error({ mountpoint: mp, imageId: req.imageId, err: toD4fsError(e).message }, 'the chain of a lazy mount cannot be opened'),
      );
      return record;
    });
  }

  /**
   * Unmounts `mountpoint` (a no-op when it is not mounted), then drops the
   * cached contents no image still served needs.
   */
  unmount(mountpoint: string): Promise<void> {
    const mp = checkMountpoint(mountpoint);
    return this.locked(mp, async () => {
      await this.unmountLocked(mp);
      this.collectCache();
    });
  }

  /** Resolves when `mountpoint` is served by this manager and mounted in the kernel. */
  async check(mountpoint: string): Promise<CheckReply> {
    const mp = checkMountpoint(mountpoint);
    const cur = this.mounts.get(mp);
    if (!cur) throw notFound(`${mp} is not mounted by this FUSE manager`);
    const kernel = await d4fsMountsAt(mp);
    if (kernel.length === 0) throw unavailable(`${mp} is no longer mounted`);
    // a lazy mount serves once its chain is open: until then (and when it cannot be) it is not healthy
    await cur.fs.ready.catch((e: unknown) => {
      throw unavailable(`${mp} cannot serve image ${cur.record.imageId}: ${toD4fsError(e).message}`, e);
    });
    const reply: CheckReply = { mountpoint: mp, imageId: cur.record.imageId };
    const [major, minor] = kernel[kernel.length - 1].device.split(':');
    if (major === '0') {
      const waiting = await fsp.readFile(path.join(FUSECTL, minor, 'waiting'), 'utf8').catch(() => undefined);
      if (waiting !== undefined) reply.waiting = Number(waiting.trim());
    }
    return reply;
  }

  list(): MountRecord[] {
    return [...this.mounts.values()].map((s) => s.record);
  }

  ping(): PingReply {
    return { version: PROTOCOL_VERSION, pid: process.pid, startedAt: this.startedAt, mounts: this.mounts.size, binding: this.binding };
  }

  stats(): StatsReply {
    for (const fs of this.detached) if (!fs.serving()) this.detached.delete(fs);
    return {
      cache: this.cache.stats(),
      prefetch: { ...this.prefetched },
      mounts: [...this.mounts.values()].map((s) => ({ mountpoint: s.record.mountpoint, imageId: s.record.imageId, ...s.fs.stats() })),
      detached: this.detached.size,
    };
  }

  /**
   * Stops: closes the socket and unmounts everything (a mount whose server
   * is gone would only answer ENOTCONN). The state file is kept, so the next
   * manager mounts the same again, unless `forget`.
   */
  stop(opts: { forget?: boolean } = {}): Promise<void> {
    this.stopping ??= (async () => {
      await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
      const records = this.list();
      for (const mp of [...this.mounts.keys()]) {
        await this.locked(mp, () => this.unmountLocked(mp, false)).catch((e: unknown) => this.log.error({ err: e, mountpoint: mp }, 'unmount failed'));
      }
      await this.saveState(opts.forget ? [] : records);
      await this.pool.close().catch(() => undefined);
      this.cache.close(); // the .cdimg handles its in-memory path keeps open
      await fsp.rm(this.paths.socket, { force: true });
      await fsp.rm(this.paths.pid, { force: true });
      this.log.info({ forget: !!opts.forget }, 'fuse manager stopped');
    })();
    return this.stopping;
  }

  // -------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------

  /**
   * An update was mounted: `fs` serves an image that is a delta from one a
   * mount here has been serving. The new versions of the contents the old
   * image's users read (the programs and libraries a service starts with)
   * are built now, in the background, so that the updated service does not
   * wait for its patches when it starts. Best effort: failures only count
   * (a read builds the content again and reports the error); at most
   * prefetchMaxBytes, PREFETCH_CONCURRENCY at a time, and it stops when the
   * new mount goes away.
   */
  private prefetchUpdate(fs: ImageFileSystem, chain: ChainIndex): void {
    const budget = this.o.prefetchMaxBytes ?? DEFAULT_PREFETCH_BYTES;
    if (budget <= 0 || !chain.parentId) return;
    const old = [...this.mounts.values()].find((s) => s.fs.imageId === chain.parentId && s.fs !== fs)?.fs;
    if (!old || old.readLog.size === 0) return;
    const todo: { hex: string; size: number }[] = [];
    const seen = new Set<string>();
    let bytes = 0;
    for (const [oldHex, p] of old.readLog) {
      const n = fs.tree.lookup(fusePath(p));
      if (!n || n.entry.type !== FileType.REG || n.entry.size === 0) continue;
      const hex = n.entry.digest.toString('hex');
      if (hex === oldHex || seen.has(hex) || this.cache.has(hex)) continue;
      if (bytes + n.entry.size > budget) break;
      seen.add(hex);
      bytes += n.entry.size;
      todo.push({ hex, size: n.entry.size });
    }
    if (todo.length === 0) return;
    const t0 = Date.now();
    this.prefetched.pending += todo.length;
    let next = 0;
    let built = 0;
    const worker = async (): Promise<void> => {
      while (next < todo.length) {
        const { hex, size } = todo[next++];
        try {
          if (this.stopping || ![...this.mounts.values()].some((s) => s.fs === fs)) continue;
          const ref = await this.cache.acquire(hex, size, chain);
          try {
            await ref.prepare(0, size);
          } finally {
            ref.release();
          }
          built++;
          this.prefetched.built++;
          this.prefetched.bytes += size;
        } catch (e) {
          this.prefetched.failed++;
          this.log.debug({ digest: hex, err: (e as Error).message }, 'prefetch of an updated content failed');
        } finally {
          this.prefetched.pending--;
        }
      }
    };
    void Promise.all(Array.from({ length: Math.min(PREFETCH_CONCURRENCY, todo.length) }, worker)).then(() =>
      this.log.info({ mountpoint: fs.mountpoint, from: chain.parentId, contents: todo.length, built, bytes, ms: Date.now() - t0 }, 'prefetched the update of what the previous version read'),
    );
  }

  /** Removes the cached contents that no mounted or detached (still referenced) image holds. */
  private collectCache(): void {
    for (const fs of this.detached) if (!fs.serving()) this.detached.delete(fs);
    const serving = [...[...this.mounts.values()].map((s) => s.fs), ...this.detached];
    const removed = this.cache.collect((hex) => serving.some((fs) => fs.holds(hex)));
    if (removed > 0) this.log.info({ removed, cache: this.cache.stats() }, 'collected cached contents of unmounted images');
  }

  private async unmountLocked(mp: string, save = true): Promise<void> {
    const cur = this.mounts.get(mp);
    if (cur) {
      this.mounts.delete(mp);
      if ((await d4fsMountsAt(mp)).length > 0) await cur.fs.unmount();
      if (cur.fs.serving()) this.detached.add(cur.fs);
    }
    // Leftovers of a dead predecessor, or of a failed unmount.
    await cleanDeadMounts(mp);
    if (save) await this.saveState();
    this.reclaimSoon();
  }

  /**
   * A moment after a mount or an unmount: a full garbage collection (when the
   * process runs with --expose-gc, as the snapshotter starts it), then the
   * C heap's free memory back to the system. Decoding a 151k-entry image's
   * index leaves ~100 MiB of garbage in buffers that V8 would otherwise
   * collect only under pressure, and glibc keeps what they freed: 256 -> 205
   * MiB RSS right after the mount of that image (issue 18). The collection
   * pauses this thread once per mount (~0.1 s at that size).
   */
  /** Builds since the last reclamation (see the constructor's onIdle). */
  private buildsSinceReclaim = 0;

  private reclaimSoon(): void {
    if (this.reclaimTimer) clearTimeout(this.reclaimTimer);
    this.reclaimTimer = setTimeout(() => {
      this.reclaimTimer = undefined;
      this.buildsSinceReclaim = 0;
      const before = process.memoryUsage.rss();
      (globalThis as { gc?: () => void }).gc?.();
      trimMemory();
      this.log.debug({ rssBefore: before, rss: process.memoryUsage.rss() }, 'memory reclaimed');
    }, 1000);
    this.reclaimTimer.unref();
  }

  /** Runs `fn` with the mountpoint's lock (operations on one mountpoint are serialised). */
  private locked<T>(mp: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(mp) ?? Promise.resolve();
    const run = prev.catch(() => undefined).then(fn);
    const tail = run.catch(() => undefined);
    this.locks.set(mp, tail);
    void tail.then(() => {
      if (this.locks.get(mp) === tail) this.locks.delete(mp);
    });
    return run;
  }

  /** Mounts what the state file records (dropping what cannot be mounted any more). */
  private async restore(): Promise<void> {
    let records: MountRecord[] = [];
    try {
      const raw = JSON.parse(await fsp.readFile(this.paths.state, 'utf8')) as { mounts?: unknown };
      if (Array.isArray(raw.mounts)) records = raw.mounts.filter(isMountRequest) as MountRecord[];
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ err: e, state: this.paths.state }, 'unreadable state file; starting without mounts');
    }
    for (const r of records) {
      try {
        await this.mount({ mountpoint: r.mountpoint, chain: r.chain, imageId: r.imageId });
        this.log.info({ mountpoint: r.mountpoint, imageId: r.imageId }, 'restored mount');
      } catch (e) {
        this.log.error({ err: toD4fsError(e).message, mountpoint: r.mountpoint }, 'cannot restore mount; dropped');
        await cleanDeadMounts(r.mountpoint).catch(() => undefined);
      }
    }
    await this.saveState();
  }

  /** Writes the state file atomically (writes are serialised). */
  private saveState(records: MountRecord[] = this.list()): Promise<void> {
    const text = JSON.stringify({ version: PROTOCOL_VERSION, mounts: records }, null, 2) + '\n';
    this.stateWrite = this.stateWrite
      .catch(() => undefined)
      .then(async () => {
        const tmp = `${this.paths.state}.tmp-${process.pid}`;
        await fsp.writeFile(tmp, text, { mode: 0o600 });
        await fsp.rename(tmp, this.paths.state);
      });
    return this.stateWrite;
  }

  private async listen(): Promise<void> {
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((e: unknown) => this.log.error({ err: e }, 'request handler failed'));
    });
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.paths.socket, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await fsp.chmod(this.paths.socket, 0o600);
    this.server = server;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const reply = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    try {
      const body = req.method === 'POST' ? await readJson(req) : {};
      const route = `${req.method} ${(req.url ?? '').split('?')[0]}`;
      const mp = (body as { mountpoint?: unknown }).mountpoint;
      switch (route) {
        case 'GET /v1/ping':
          return reply(200, this.ping());
        case 'GET /v1/list':
          return reply(200, { mounts: this.list() });
        case 'GET /v1/stats':
          return reply(200, this.stats());
        case 'POST /v1/mount':
          return reply(200, await this.mount(body as MountRequest));
        case 'POST /v1/unmount':
          await this.unmount(String(mp ?? ''));
          return reply(200, {});
        case 'POST /v1/check':
          return reply(200, await this.check(String(mp ?? '')));
        case 'POST /v1/shutdown':
          reply(200, {});
          setImmediate(() => {
            // exit whether or not the stop went cleanly (its failures are logged by stop)
            void this.stop({ forget: !!(body as { forget?: unknown }).forget }).then(
              () => process.exit(0),
              () => process.exit(0),
            );
          });
          return;
        default:
          return reply(404, { error: { kind: 'NOT_FOUND', message: `no route ${route}` } });
      }
    } catch (e) {
      const err = toD4fsError(e);
      if (err.kind === 'INTERNAL') this.log.error({ err: e, url: req.url }, 'request failed');
      reply(httpCodeOf(err), { error: { kind: err.kind, message: err.message } });
    }
  }
}

/** Mountpoints are absolute, normalised paths. */
function checkMountpoint(mp: string): string {
  if (typeof mp !== 'string' || !path.isAbsolute(mp)) throw invalidArgument(`mountpoint must be an absolute path, got ${JSON.stringify(mp)}`);
  return path.resolve(mp);
}

function readJson(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    req.on('data', (d: Buffer) => {
      n += d.length;
      if (n > MAX_BODY) {
        reject(invalidArgument('request body too large'));
        req.destroy();
        return;
      }
      parts.push(d);
    });
    req.on('end', () => {
      try {
        const text = Buffer.concat(parts).toString('utf8');
        resolve(text ? JSON.parse(text) : {});
      } catch {
        reject(invalidArgument('request body is not JSON'));
      }
    });
    req.on('error', reject);
  });
}

/** Removes a socket nobody answers on; refuses when a manager is serving. */
async function clearStaleSocket(socket: string): Promise<void> {
  try {
    const st = await fsp.lstat(socket);
    if (!st.isSocket()) throw failedPrecondition(`${socket} exists and is not a socket`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(socket);
    const done = (v: boolean) => {
      c.destroy();
      resolve(v);
    };
    c.once('connect', () => done(true));
    c.once('error', () => done(false));
    c.setTimeout(2000, () => done(false));
  });
  if (live) throw new D4fsError('ALREADY_EXISTS', `a FUSE manager is already serving on ${socket}`);
  await fsp.rm(socket, { force: true });
}

/**
 * Mounts fusectl when it is not (as systemd does at boot): aborting a stuck
 * connection through it is the only way to free requests a dead or hung
 * server would leave blocked in the kernel.
 */
async function ensureFusectl(log: Logger): Promise<void> {
  try {
    if ((await fsp.readdir(FUSECTL)).length > 0) return;
    const mounted = (await fsp.readFile('/proc/self/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[2] === 'fusectl');
    if (mounted) return;
    const { execFile } = await import('node:child_process');
    await new Promise<void>((resolve, reject) =>
      execFile('mount', ['-t', 'fusectl', 'fusectl', FUSECTL], { timeout: 10_000 }, (err) => (err ? reject(err) : resolve())),
    );
    log.info({ path: FUSECTL }, 'mounted fusectl');
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'fusectl is not available: stuck FUSE connections cannot be aborted');
  }
}
