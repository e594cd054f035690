/**
 * The server's content-addressed blob store on disk:
 *
 *   ROOT/blobs/sha256/<hex>.cdimg   every stored .cdimg (pushed files and merge
 *                                   results), named by its root digest
 *   ROOT/tmp/                       uploads and merges being written
 *
 * Bytes arrive in a temp file while they are hashed; the file is verified
 * (root digest, structure, every stored chunk's digest), flushed, and lands by
 * an atomic rename, so a blob path holds a complete, verified file or nothing.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { Readable, Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CdimgReader } from '../format/reader';
import { corrupt, D4fsError, failedPrecondition, hostile } from '../errors';
import { hexOfDigest } from '../util/digest';
import { processExists } from '../util/process';
import type { FileInfo } from '../distribution/protocol';

/** What a verified temp file holds. */
export interface VerifiedFile extends FileInfo {
  fileDigest: string;
}

/** Counts and hashes bytes and refuses more than `limit`. */
class LimitedHasher extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  constructor(private readonly limit: number, private readonly what: string, private readonly onBytes?: (n: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.onBytes?.(chunk.length);
    if (this.bytes > this.limit) {
      cb(hostile(`${this.what} is larger than the limit of ${this.limit} bytes`));
      return;
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }
}

/**
 * Open a .cdimg and check every byte of it: the index against the root digest
 * (CdimgReader.open) and every stored chunk against its stored digest, so
 * that a file with a damaged byte anywhere is refused; no content is
 * decompressed (the server's check of an upload or a merge before it lands:
 * its cost is one read of the file). Error messages name the file
 * `what`, not its temp path. `ctr-cli cdimg verify` (verifyCdimg in
 * src/commands/cdimg.ts) goes further: it also decodes every full content and
 * checks it against its digest.
 */
export async function verifyStoredChunks(path: string, what: string): Promise<Omit<VerifiedFile, 'fileDigest'>> {
  const r = await CdimgReader.open(path).catch((e: unknown) => {
    if (e instanceof D4fsError) e.message = e.message.replace(path, what);
    throw e;
  });
  try {
    await r.verifySection();
    return { rootDigest: r.rootDigest, kind: r.isDelta ? 'delta' : 'full', imageId: r.imageId, parentId: r.parentId ?? '', size: r.fileSize };
  } catch (e) {
    throw named(e, path, what);
  } finally {
    await r.close();
  }
}

/** An error about the temp file `path` as the user knows it (`what`); anything but a D4fsError is CORRUPT. */
function named(e: unknown, path: string, what: string): D4fsError {
  if (e instanceof D4fsError) {
    e.message = e.message.replace(path, what);
    return e;
  }
  return corrupt(`${what}: ${(e as Error).message}`, e);
}

/**
 * A delta of format version 2 writes its tree against its parent's: open it
 * on `parentChain` (the paths of a chain leading to its parent, full image
 * first) so that its tree is rebuilt and its image id recomputed: a forged id
 * is CORRUPT. A file that carries its whole tree was checked when it was
 * opened alone (verifyStoredChunks). `parentChain` undefined: the server has
 * no chain to the parent from a full image, so the delta cannot be checked
 * and is refused (FAILED_PRECONDITION).
 */
export async function verifyDeltaTree(path: string, parentChain: string[] | undefined, what: string): Promise<void> {
  const alone = await CdimgReader.open(path);
  const needs = !alone.hasTree;
  const parentId = alone.parentId;
  await alone.close();
  if (!needs) return;
  if (!parentChain) {
    throw failedPrecondition(`${what}: a delta whose tree is written against image ${parentId}, and no chain of files on this server leads to that image from a full image: push the full image first`);
  }
  const below = await CdimgReader.openChain(parentChain, { reuse: true });
  try {
    const r = await CdimgReader.open(path, { parent: below.at(-1) });
    await r.close();
  } catch (e) {
    throw named(e, path, what);
  } finally {
    await Promise.all(below.map((b) => b.close()));
  }
}

/** The blob directory of a server root. */
export class BlobStore {
  readonly blobDir: string;
  readonly tmpDir: string;

  constructor(readonly root: string) {
    this.blobDir = join(root, 'blobs', 'sha256');
    this.tmpDir = join(root, 'tmp');
  }

  async init(): Promise<void> {
    await fsp.mkdir(this.blobDir, { recursive: true, mode: 0o755 });
    await fsp.mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
  }

  /** Path of a blob by root digest (validated: only sha256 hex reaches the filesystem). */
  pathOf(rootDigest: string): string {
    return join(this.blobDir, `${hexOfDigest(rootDigest)}.cdimg`);
  }

  /** A fresh temp path (same filesystem as the blobs, for atomic renames). */
  tempPath(kind: 'upload' | 'merge'): string {
    return join(this.tmpDir, `${kind}-${process.pid}-${randomBytes(8).toString('hex')}.part`);
  }

  /**
   * Write a request body to `tmp`, hashing it and refusing more than `limit`
   * bytes (`onBytes` sees every chunk, for metrics). Returns the size and the
   * sha256 of the bytes; the temp file is removed when anything fails.
   */
  async receive(body: Readable, tmp: string, limit: number, what: string, onBytes?: (n: number) => void): Promise<{ bytes: number; fileDigest: string }> {
    const hasher = new LimitedHasher(limit, what, onBytes);
    try {
      await pipeline(body, hasher, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
      const fh = await fsp.open(tmp, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      return { bytes: hasher.bytes, fileDigest: `sha256:${hasher.hash.digest('hex')}` };
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
  }

  /** Move a verified temp file into place (atomic; an identical blob already there is fine). */
  async land(tmp: string, rootDigest: string): Promise<string> {
    const dest = this.pathOf(rootDigest);
    await fsp.rename(tmp, dest);
    return dest;
  }

  /** Whether the blob file exists. */
  async has(rootDigest: string): Promise<boolean> {
    return fsp.stat(this.pathOf(rootDigest)).then(
      (s) => s.isFile(),
      () => false,
    );
  }

  /** Root digests of every blob file on disk, with size and mtime. */
  async list(): Promise<{ rootDigest: string; size: number; mtimeMs: number }[]> {
    const out: { rootDigest: string; size: number; mtimeMs: number }[] = [];
    for (const name of await fsp.readdir(this.blobDir)) {
      const m = /^([a-f0-9]{64})\.cdimg$/.exec(name);
      if (!m) continue;
      const st = await fsp.stat(join(this.blobDir, name)).catch(() => undefined);
      if (st?.isFile()) out.push({ rootDigest: `sha256:${m[1]}`, size: st.size, mtimeMs: st.mtimeMs });
    }
    return out;
  }

  /**
   * Remove temp files of processes that are gone (a crashed server's
   * uploads and merges); temp names carry the writer's pid.
   */
  async removeDeadTemps(): Promise<number> {
    let n = 0;
    for (const name of await fsp.readdir(this.tmpDir).catch(() => [] as string[])) {
      const m = /^\.?(?:upload|merge)-(\d+)-/.exec(name);
      if (!m || Number(m[1]) === process.pid || processExists(Number(m[1]))) continue;
      await fsp.rm(join(this.tmpDir, name), { force: true, recursive: true });
      n++;
    }
    return n;
  }

  /** Temp files older than `olderThanMs` (leftovers of crashes). */
  async staleTemps(olderThanMs: number): Promise<{ path: string; size: number }[]> {
    const out: { path: string; size: number }[] = [];
    const limit = Date.now() - olderThanMs;
    for (const name of await fsp.readdir(this.tmpDir).catch(() => [] as string[])) {
      const p = join(this.tmpDir, name);
      const st = await fsp.stat(p).catch(() => undefined);
      if (st && st.mtimeMs < limit) out.push({ path: p, size: st.isFile() ? st.size : 0 });
    }
    return out;
  }
}
