/**
 * Resumable, verified blob downloads from d4fs-server.
 *
 * A blob is downloaded to DIR/pull-<hex>.part, a name that depends only on
 * its root digest, so a pull that was interrupted (network cut, server or
 * client killed) resumes on the next run: the bytes already there are hashed
 * again and the rest is asked for with `Range: bytes=N-` and `If-Range:
 * <etag>` (a server that no longer has that exact blob answers 200 and the
 * download restarts). The whole file is checked against the size and sha256
 * the server announced; a mismatch drops the part file and fetches the blob
 * once more from scratch, then gives up with CORRUPT. A lock file keeps two
 * pulls on one machine from writing the same part file.
 */
import { createHash, Hash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { corrupt, D4fsError, unavailable } from '../errors';
import { hexOfDigest } from '../util/digest';
import { ServerClient } from './client';
import { blobPath, etagOf } from './protocol';

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

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

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
    if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) {
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
    if (Number.isInteger(pid) && pid > 0 && alive(pid)) continue;
    await fsp.rm(join(dir, name), { force: true });
    n++;
  }
  return n;
}

/** Size of a file, 0 when absent. */
const sizeOf = (p: string): Promise<number> => fsp.stat(p).then((s) => s.size, () => 0);

/** Download `t` into `dir` (see the module comment). */
export async function downloadBlob(client: ServerClient, t: DownloadTarget, dir: string, o: DownloadOptions = {}): Promise<DownloadResult> {
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
        if (have < t.size) ({ size: have, hash } = await fetchRest(client, t, part, have, hash, result, o));
        const got = `sha256:${hash.digest('hex')}`;
        if (have === t.size && got === t.fileDigest) return result;
        await fsp.rm(part, { force: true });
        if (result.refetched) throw corrupt(`blob ${t.rootDigest} from ${client.base.origin} is damaged: its ${have} bytes hash to ${got}, the server announced ${t.size} bytes with ${t.fileDigest}`);
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
 * GET the bytes from `have` on and append them (or, when the server answers
 * with the whole blob, rewrite the part file). `prefix` holds the hash of the
 * first `have` bytes; returns the new size and the hash of the whole part.
 */
async function fetchRest(client: ServerClient, t: DownloadTarget, part: string, have: number, prefix: Hash, result: DownloadResult, o: DownloadOptions): Promise<{ size: number; hash: Hash }> {
  const etag = etagOf(t.rootDigest);
  const headers: Record<string, string> = {};
  if (have > 0) {
    headers.Range = `bytes=${have}-`;
    headers['If-Range'] = etag;
  }
  const res = await client.request('GET', blobPath(t.rootDigest), { headers });
  const what = `download of ${t.rootDigest}`;
  if (res.statusCode !== 200 && res.statusCode !== 206) throw await client.failure(res, what);
  const tag = res.headers.etag;
  if (tag !== undefined && tag !== etag) {
    res.resume();
    throw corrupt(`${what}: the server sends ${tag}, not ${etag}`);
  }
  let start = 0;
  if (res.statusCode === 206) {
    const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''));
    if (!m || Number(m[1]) !== have || Number(m[3]) !== t.size) {
      res.resume();
      throw corrupt(`${what}: unexpected Content-Range ${String(res.headers['content-range'])}`);
    }
    start = have;
  }
  // 200: the whole blob comes again (no range support, or If-Range did not match): start over.
  const hash = start > 0 ? prefix : createHash('sha256');
  const tap = new Tap(hash, t.size - start, (n) => {
    result.downloaded += n;
    o.onProgress?.(start + tap.n, t.size);
  });
  try {
    await pipeline(res, tap, createWriteStream(part, { flags: start > 0 ? 'a' : 'w', mode: 0o600 }));
  } catch (e) {
    if (e instanceof D4fsError) throw e;
    throw unavailable(`${what} was interrupted after ${start + tap.n} of ${t.size} bytes: ${(e as Error).message}`, e);
  }
  const size = start + tap.n;
  if (size < t.size) throw unavailable(`${what} ended after ${size} of ${t.size} bytes`);
  return { size, hash };
}
