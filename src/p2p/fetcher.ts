/**
 * Getting a blob onto this node: from the cache, else from the swarm, else
 * from the origin; never twice at once for one digest.
 *
 *   1. torrent metadata from the tracker (never from a peer) → swarm
 *      download; if the swarm stalls (no progress for `stallMs`), the
 *      missing pieces come from the origin with `Range`;
 *   2. no metadata yet, or metadata no node seeds yet (a d4fs-server's own
 *      file) → claim the blob at the tracker: the first node fetches it from
 *      the origin, verifies it, makes its torrent, publishes the metadata
 *      and seeds; the others wait for the metadata (or for the claim to
 *      lapse, if that node died) and take the swarm;
 *   3. no tracker, a tracker error, or a small blob → the origin.
 *
 * Whatever the path, the whole blob's sha256 is checked before it is
 * committed to the cache, served or seeded from the cache; a swarm download
 * that fails it is dropped and fetched again from the origin.
 */
import { createHash } from 'node:crypto';
import { createWriteStream, promises as fsp } from 'node:fs';
import { Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { corrupt, D4fsError, toD4fsError } from '../errors';
import { BlobCache, CachedBlob } from './cache';
import type { PeerMetrics } from './metrics';
import { Origin, originName, Origins } from './origin';
import { Swarm } from './swarm';
import { BlobTorrent, checkTorrent, makeTorrent } from './torrent';
import type { TrackerClient } from './tracker-client';

export interface FetchRequest {
  digest: string;
  /** Size when the caller knows it (from a manifest or a pull plan). */
  size?: number;
  origin: Origin;
  mediaType?: string;
}

export interface FetcherOptions {
  cache: BlobCache;
  origins: Origins;
  swarm?: Swarm;
  tracker?: TrackerClient;
  metrics: PeerMetrics;
  log: Logger;
  /** Swarm progress timeout before the origin fills in (ms). */
  stallMs: number;
  /** Blobs smaller than this go straight to the origin (not worth a swarm). */
  minSwarmBytes: number;
  /** Longest wait for another node's origin fetch before fetching ourselves (ms). */
  maxWaitMs?: number;
}

/** Per-blob progress, for `peer status` and the logs. */
export interface Transfer {
  digest: string;
  origin: string;
  size?: number;
  phase: 'waiting' | 'swarm' | 'origin' | 'verifying';
  fromPeers: number;
  fromOrigin: number;
  started: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Counts bytes as they pass. */
class Counting extends Transform {
  constructor(private readonly onBytes: (n: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.onBytes(chunk.length);
    cb(null, chunk);
  }
}

export class Fetcher {
  private readonly inflight = new Map<string, Promise<CachedBlob>>();
  readonly transfers = new Map<string, Transfer>();

  constructor(private readonly o: FetcherOptions) {}

  /** Whether a digest is being fetched (not collectable). */
  busy(digest: string): boolean {
    return this.inflight.has(digest);
  }

  /** The blob, on this node and verified. */
  async get(r: FetchRequest): Promise<CachedBlob> {
    const have = this.o.cache.get(r.digest);
    if (have) {
      this.o.cache.touch(r.digest);
      this.o.metrics.fetches.inc({ how: 'cache' });
      return have;
    }
    let p = this.inflight.get(r.digest);
    if (!p) {
      p = this.fetch(r).finally(() => {
        this.inflight.delete(r.digest);
        this.transfers.delete(r.digest);
      });
      this.inflight.set(r.digest, p);
    }
    return p;
  }

  private transfer(r: FetchRequest): Transfer {
    const t: Transfer = { digest: r.digest, origin: originName(r.origin), size: r.size, phase: 'waiting', fromPeers: 0, fromOrigin: 0, started: Date.now() };
    this.transfers.set(r.digest, t);
    return t;
  }

  private async fetch(r: FetchRequest): Promise<CachedBlob> {
    const tr = this.transfer(r);
    const { tracker, swarm } = this.o;
    if (!tracker || !swarm) {
      this.o.metrics.fallbacks.inc({ reason: 'no-tracker' });
      return this.fromOrigin(r, tr, false);
    }
    let size = r.size;
    if (size === undefined) size = await this.o.origins.size(r.origin, r.digest).catch(() => undefined);
    if (size !== undefined && size < this.o.minSwarmBytes) {
      this.o.metrics.fallbacks.inc({ reason: 'small' });
      return this.fromOrigin(r, tr, false);
    }
    const root = r.origin.kind === 'server' ? r.origin.root : undefined;
    const deadline = Date.now() + (this.o.maxWaitMs ?? 10 * 60_000);
    try {
      for (;;) {
        const meta = await tracker.getTorrent(r.digest, root);
        // metadata nobody seeds yet (a d4fs-server's own file): one node claims the origin fetch, the others wait for its seed
        const c = meta?.seeded ? undefined : await tracker.claim(r.digest);
        if (meta && (!c || (!c.granted && c.ready))) {
          let t: BlobTorrent | undefined;
          try {
            t = await checkTorrent(meta.bytes, r.digest, size);
          } catch (e) {
            this.o.log.warn({ digest: r.digest, err: (e as Error).message }, 'the tracker holds bad metadata for this blob: fetching from the origin');
            this.o.metrics.fallbacks.inc({ reason: 'corrupt' });
            return this.fromOrigin({ ...r, size }, tr, false);
          }
          return await this.fromSwarm({ ...r, size: t.size }, t, tr);
        }
        if (!c) continue;
        if (c.granted) return await this.fromOrigin({ ...r, size }, tr, true);
        if (c.ready) continue;
        if (Date.now() > deadline) {
          this.o.metrics.fallbacks.inc({ reason: 'waited-too-long' });
          return this.fromOrigin({ ...r, size }, tr, false);
        }
        await sleep(c.retryMs ?? 250);
      }
    } catch (e) {
      const err = toD4fsError(e);
      if (err.kind !== 'UNAVAILABLE' && err.kind !== 'UNAUTHENTICATED' && err.kind !== 'NOT_FOUND') throw err;
      if (this.o.cache.get(r.digest)) return this.o.cache.get(r.digest)!;
      this.o.log.warn({ digest: r.digest, err: err.message }, 'tracker unusable for this blob: fetching from the origin');
      this.o.metrics.fallbacks.inc({ reason: 'tracker-error' });
      return this.fromOrigin({ ...r, size }, tr, false);
    }
  }

  /** The whole blob from the origin; when `publish`, its torrent goes to the tracker and it is seeded (we hold the claim). */
  private async fromOrigin(r: FetchRequest, tr: Transfer, publish: boolean): Promise<CachedBlob> {
    const { tracker, swarm, cache } = this.o;
    tr.phase = 'origin';
    let renew: NodeJS.Timeout | undefined;
    if (publish && tracker) renew = setInterval(() => void tracker.claim(r.digest).catch(() => undefined), 4000);
    const tmp = cache.tempPath(r.digest);
    let blob: CachedBlob;
    try {
      const body = await this.o.origins.open(r.origin, r.digest);
      await pipeline(
        body,
        new Counting((n) => {
          tr.fromOrigin += n;
          this.o.metrics.bytes.inc({ source: 'origin' }, n);
        }),
        createWriteStream(tmp, { mode: 0o600 }),
      );
      tr.phase = 'verifying';
      blob = await cache.commit(tmp, r.digest, { size: r.size, mediaType: r.mediaType, fromOrigin: tr.fromOrigin });
      this.o.metrics.fetches.inc({ how: 'origin' });
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      if (publish) await tracker?.release(r.digest);
      throw e;
    } finally {
      if (renew) clearInterval(renew);
    }
    this.o.log.info({ digest: r.digest, origin: originName(r.origin), bytes: tr.fromOrigin }, 'blob fetched from the origin');
    if (tracker && swarm && blob.size >= this.o.minSwarmBytes) {
      const release = cache.pin(r.digest);
      try {
        const t = await makeTorrent(blob.path, r.digest);
        cache.setTorrent(r.digest, t.bytes, t.infoHash);
        await swarm.seed(t, cache.blobsDir);
        if (publish) await tracker.putTorrent(r.digest, t.bytes);
      } catch (e) {
        this.o.log.warn({ digest: r.digest, err: (e as Error).message }, 'could not share the blob with the swarm');
        if (publish) await tracker.release(r.digest);
      } finally {
        release();
      }
    }
    return cache.get(r.digest) ?? blob;
  }

  /** The blob from the swarm, the origin filling in what the swarm does not deliver. */
  private async fromSwarm(r: FetchRequest, t: BlobTorrent, tr: Transfer): Promise<CachedBlob> {
    const { cache, swarm } = this.o;
    tr.phase = 'swarm';
    const release = cache.pin(r.digest);
    try {
      const dl = await swarm!.download(t, cache.blobsDir, (have) => (tr.fromPeers = have));
      tr.fromPeers = dl.fromPeers;
      this.o.metrics.bytes.inc({ source: 'peers' }, dl.fromPeers);
      const path = cache.pathOf(r.digest);
      if (dl.status === 'stalled') {
        this.o.metrics.fallbacks.inc({ reason: 'stalled' });
        const ranges = Swarm.rangesOf(dl.missing, t.size);
        this.o.log.info({ digest: r.digest, missingPieces: dl.missing.length, ranges: ranges.length }, 'swarm stalled: the rest comes from the origin');
        tr.phase = 'origin';
        await this.fillFromOrigin(r, path, ranges, tr);
      }
      tr.phase = 'verifying';
      let blob: CachedBlob;
      try {
        blob = await cache.commit(path, r.digest, { size: t.size, mediaType: r.mediaType, fromPeers: tr.fromPeers, fromOrigin: tr.fromOrigin, torrent: t.bytes, infoHash: t.infoHash });
      } catch (e) {
        if (!(e instanceof D4fsError) || e.kind !== 'CORRUPT') throw e;
        await swarm!.stop(t.infoHash);
        this.o.log.error({ digest: r.digest, err: e.message }, 'the blob from the swarm fails its sha256: dropped, fetching it whole from the origin');
        this.o.metrics.fallbacks.inc({ reason: 'corrupt' });
        return await this.fromOrigin(r, tr, false);
      }
      this.o.metrics.fetches.inc({ how: dl.status === 'done' ? 'swarm' : 'swarm+origin' });
      this.o.log.info({ digest: r.digest, fromPeers: tr.fromPeers, fromOrigin: tr.fromOrigin }, dl.status === 'done' ? 'blob fetched from the swarm' : 'blob fetched from the swarm and, for what it did not deliver, the origin');
      await swarm!.seed(t, cache.blobsDir).catch((e: Error) => this.o.log.warn({ digest: r.digest, err: e.message }, 'could not seed'));
      return blob;
    } finally {
      release();
    }
  }

  /** Write the byte ranges the swarm did not deliver into the blob's file, from the origin. */
  private async fillFromOrigin(r: FetchRequest, path: string, ranges: Array<[number, number]>, tr: Transfer): Promise<void> {
    const fh = await fsp.open(path, 'r+').catch(async () => fsp.open(path, 'w+', 0o600));
    try {
      for (const [start, end] of ranges) {
        const body = await this.o.origins.open(r.origin, r.digest, [start, end]);
        let pos = start;
        for await (const c of body) {
          const chunk = c as Buffer;
          if (pos + chunk.length > end + 1) throw corrupt(`origin ${originName(r.origin)} sent more than the ${end - start + 1} bytes asked for`);
          await fh.write(chunk, 0, chunk.length, pos);
          pos += chunk.length;
          tr.fromOrigin += chunk.length;
          this.o.metrics.bytes.inc({ source: 'origin' }, chunk.length);
        }
        if (pos !== end + 1) throw corrupt(`origin ${originName(r.origin)} sent ${pos - start} of the ${end - start + 1} bytes asked for`);
      }
      if (r.size !== undefined) await fh.truncate(r.size);
    } finally {
      await fh.close();
    }
  }
}

/** sha256 of a buffer as a digest string. */
export const digestOfBuffer = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
