/**
 * Resumable, verified blob downloads, from d4fs-server or from an OCI
 * registry (a {@link BlobSource} says how to ask either for the bytes from
 * an offset on).
 *
 * A blob is downloaded to DIR/pull-<hex>.part, a name that depends only on
 * its root digest, so a pull that was interrupted (network cut, server or
 * client killed) resumes on the next run: the bytes already there are hashed
 * again and the rest is asked for with `Range: bytes=N-` (d4fs-server also
 * gets `If-Range: <etag>`; a source that no longer has that exact blob, or
 * that ignores ranges, answers with the whole blob and the download
 * restarts). The whole file is checked against the size and sha256 the
 * plan announced; a mismatch drops the part file and fetches the blob once
 * more from scratch, then gives up with CORRUPT. A lock file keeps two pulls
 * on one machine from writing the same part file.
 */
import { createHash, Hash } from 'node:crypto';
import * as http from 'node:http';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { Readable, Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { corrupt, D4fsError, unavailable } from '../errors';
import { hexOfDigest } from '../util/digest';
import { processExists } from '../util/process';
import type { RegistryClient } from '../oci/registry/client';
import { ServerClient } from './client';
import { blobPath, etagOf } from './protocol';

/** The bytes of a blob from an offset on, or the whole blob. */
export interface RangedBody {
  /** Offset of the body's first byte: the one asked for, or 0 when the whole blob comes. */
  start: number;
  body: Readable;
}

/** Where a blob's bytes come from. */
export interface BlobSource {
  /** Who serves them, for messages. */
  readonly origin: string;
  /**
   * The blob's bytes from `from` on; a source that cannot serve ranges
   * answers with the whole blob (start 0). A body failing mid-way is a
   * network failure (retried, resuming) unless it fails with a D4fsError of
   * another kind.
   */
  open(t: DownloadTarget, from: number): Promise<RangedBody>;
}

/** Checks a 206's Content-Range against the range asked for; returns the body's start. */
function rangeStart(contentRange: string | undefined, from: number, size: number, what: string): number {
  const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(contentRange ?? '');
  if (!m || Number(m[1]) !== from || Number(m[2]) !== size - 1 || Number(m[3]) !== size) {
    throw corrupt(`${what}: unexpected Content-Range ${String(contentRange)} for bytes ${from}-${size - 1}/${size}`);
  }
  return from;
}

/** d4fs-server: `GET /v1/blobs/…` with Range and If-Range on the blob's ETag. */
export function serverSource(client: ServerClient): BlobSource & { base: URL } {
  return {
    base: client.base,
    origin: client.base.origin,
    async open(t, from) {
      const etag = etagOf(t.rootDigest);
      const headers: Record<string, string> = from > 0 ? { Range: `bytes=${from}-`, 'If-Range': etag } : {};
      const res = await client.request('GET', blobPath(t.rootDigest), { headers });
      const what = `download of ${t.rootDigest}`;
      if (res.statusCode !== 200 && res.statusCode !== 206) throw await client.failure(res, what);
      const tag = res.headers.etag;
      if (tag !== undefined && tag !== etag) {
        res.resume();
        throw corrupt(`${what}: the server sends ${tag}, not ${etag}`);
      }
      try {
        const start = res.statusCode === 206 ? rangeStart(res.headers['content-range'], from, t.size, what) : 0;
        return { start, body: res };
      } catch (e) {
        res.resume();
        throw e;
      }
    },
  };
}

/**
 * The node's d4fs-peer in front of a d4fs-server (`--peer`): the same blob by
 * its file digest through the peer's cache and swarm
 * (`/d4fs/blobs/<file digest>?server=…&root=…`); the caller's token goes
 * along for the peer to use at the server. A peer that cannot be reached or
 * fails is left for this download and the server asked directly.
 */
export function peerSource(peer: string, server: BlobSource & { base: URL }, token?: string): BlobSource {
  let down = false;
  return {
    origin: `${server.origin} via peer ${new URL(peer).origin}`,
    async open(t, from) {
      if (down) return server.open(t, from);
      const url = new URL(`/d4fs/blobs/${t.fileDigest}`, peer);
      url.searchParams.set('server', server.base.origin);
      url.searchParams.set('root', t.rootDigest);
      url.searchParams.set('size', String(t.size));
      const headers: Record<string, string> = {};
      if (token) headers.Authorization = `Bearer ${token}`;
      if (from > 0) headers.Range = `bytes=${from}-`;
      let res: http.IncomingMessage;
      try {
        res = await new Promise<http.IncomingMessage>((resolve, reject) => {
          const req = http.get(url, { headers, timeout: 30 * 60_000 }, resolve);
          req.on('timeout', () => req.destroy(new Error('no answer')));
          req.on('error', reject);
        });
      } catch {
        down = true;
        return server.open(t, from);
      }
      if (res.statusCode !== 200 && res.statusCode !== 206) {
        res.resume();
        down = true;
        return server.open(t, from);
      }
      try {
        const start = res.statusCode === 206 ? rangeStart(res.headers['content-range'], from, t.size, `download of ${t.rootDigest} through the peer`) : 0;
        return { start, body: res };
      } catch (e) {
        res.resume();
        throw e;
      }
    },
  };
}

/** An OCI registry: the file's blob by its sha256, with `Range` (registries serve blobs with range support). */
export function registrySource(client: RegistryClient, repo: string): BlobSource {
  return {
    origin: client.registry,
    async open(t, from) {
      const r = await client.openBlobFrom(repo, t.fileDigest, t.size, from);
      return { start: r.start, body: r.body };
    },
  };
}


export interface DownloadTarget {
  rootDigest: string;
  /** sha256 of the whole file. */
  fileDigest: string;
  size: number;
}

export interface DownloadOptions {
  /** Network failures retried (resuming) within this call (default 2). */
  retries?: number;
  /** Delay before the first retry in ms (doubles; default 500). */
  retryDelayMs?: number;
  /** How long to wait for another pull holding the lock (default 10 minutes). */
  lockWaitMs?: number;
  /** Bytes of this blob present so far (resumed bytes included). */
  onProgress?: (done: number, total: number) => void;
}

export interface DownloadResult {
  /** The verified file (the caller moves it away). */
  path: string;
  /** Bytes moved over the network by this call. */
  downloaded: number;
  /** Bytes found from an earlier, interrupted run (0: none). */
  resumedFrom: number;
  /** Whether a damaged download was dropped and fetched again. */
  refetched: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Take DIR/<name>.lock (waiting while a live process holds it); returns the release function. */
async function lock(path: string, waitMs: number): Promise<() => Promise<void>> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      const fh = await fsp.open(path, 'wx', 0o600);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => fsp.rm(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = Number((await fsp.readFile(path, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 0 || !processExists(pid)) {
      await fsp.rm(path, { force: true }); // left by a process that is gone
      continue;
    }
    if (Date.now() > deadline) throw unavailable(`another pull (pid ${pid}) is downloading the same file for too long (lock ${path})`);
    await sleep(200);
  }
}

/** Hash what flows, counting it. */
class Tap extends Transform {
  n = 0;
  constructor(private readonly hash: Hash, private readonly limit: number, private readonly onBytes: (n: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.n + chunk.length > this.limit) {
      cb(corrupt(`the server sends more than the ${this.limit} bytes it announced`));
      return;
    }
    this.hash.update(chunk);
    this.n += chunk.length;
    this.onBytes(chunk.length);
    cb(null, chunk);
  }
}

/**
 * Remove partial downloads in `dir` that no pull is working on (no lock held
 * by a live process) and that are not in `keep` (root digests): left by
 * interrupted pulls whose plan has changed since (e.g. the server now serves
 * a smaller merge). Returns the number removed.
 */
export async function sweepParts(dir: string, keep: Iterable<string> = []): Promise<number> {
  const kept = new Set([...keep].map((d) => d.replace(/^sha256:/, '')));
  let n = 0;
  for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
    const m = /^pull-([a-f0-9]{64})\.part$/.exec(name);
    if (!m || kept.has(m[1])) continue;
    const pid = Number((await fsp.readFile(join(dir, `pull-${m[1]}.lock`), 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && processExists(pid)) continue;
    await fsp.rm(join(dir, name), { force: true });
    n++;
  }
  return n;
}

/** Size of a file, 0 when absent. */
const sizeOf = (p: string): Promise<number> => fsp.stat(p).then((s) => s.size, () => 0);

/** Download `t` into `dir` (see the module comment). */
export async function downloadBlob(source: BlobSource | ServerClient, t: DownloadTarget, dir: string, o: DownloadOptions = {}): Promise<DownloadResult> {
  const src = source instanceof ServerClient ? serverSource(source) : source;
  const hex = hexOfDigest(t.rootDigest);
  const part = join(dir, `pull-${hex}.part`);
  const release = await lock(join(dir, `pull-${hex}.lock`), o.lockWaitMs ?? 600_000);
  const result: DownloadResult = { path: part, downloaded: 0, resumedFrom: 0, refetched: false };
  const retries = o.retries ?? 2;
  let delay = o.retryDelayMs ?? 500;
  let failures = 0;
  let first = true;
  try {
    for (;;) {
      try {
        let have = await sizeOf(part);
        if (have > t.size) {
          await fsp.rm(part, { force: true });
          have = 0;
        }
        if (first) result.resumedFrom = have;
        first = false;
        let hash = createHash('sha256');
        if (have > 0) for await (const c of createReadStream(part, { end: have - 1 })) hash.update(c as Buffer);
        if (have < t.size) ({ size: have, hash } = await fetchRest(src, t, part, have, hash, result, o));
        const got = `sha256:${hash.digest('hex')}`;
        if (have === t.size && got === t.fileDigest) return result;
        await fsp.rm(part, { force: true });
        if (result.refetched) throw corrupt(`blob ${t.rootDigest} from ${src.origin} is damaged: its ${have} bytes hash to ${got}, the server announced ${t.size} bytes with ${t.fileDigest}`);
        result.refetched = true; // maybe only the part kept from an earlier run was bad: once more from scratch
      } catch (e) {
        if (!(e instanceof D4fsError) || e.kind !== 'UNAVAILABLE' || failures >= retries) throw e;
        failures++;
        await sleep(delay);
        delay *= 2;
      }
    }
  } finally {
    await release();
  }
}

/**
 * Fetch the bytes from `have` on and append them (or, when the source answers
 * with the whole blob, rewrite the part file). `prefix` holds the hash of the
 * first `have` bytes; returns the new size and the hash of the whole part.
 */
async function fetchRest(src: BlobSource, t: DownloadTarget, part: string, have: number, prefix: Hash, result: DownloadResult, o: DownloadOptions): Promise<{ size: number; hash: Hash }> {
  const what = `download of ${t.rootDigest} from ${src.origin}`;
  const { start, body } = await src.open(t, have);
  // start 0: the whole blob comes again (no range support, or the blob changed): start over.
  const hash = start > 0 ? prefix : createHash('sha256');
  const tap = new Tap(hash, t.size - start, (n) => {
    result.downloaded += n;
    o.onProgress?.(start + tap.n, t.size);
  });
  try {
    await pipeline(body, tap, createWriteStream(part, { flags: start > 0 ? 'a' : 'w', mode: 0o600 }));
  } catch (e) {
    if (e instanceof D4fsError) throw e;
    throw unavailable(`${what} was interrupted after ${start + tap.n} of ${t.size} bytes: ${(e as Error).message}`, e);
  }
  const size = start + tap.n;
  if (size < t.size) throw unavailable(`${what} ended after ${size} of ${t.size} bytes`);
  return { size, hash };
}
