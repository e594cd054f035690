/**
 * Small contents served from memory (issue 18): a content stored in full as
 * one zstd chunk of at most SMALL_MAX_BYTES is read from its .cdimg, decoded
 * and checked against its digest by the serving thread itself, and kept in a
 * bounded LRU of verified bytes. No worker round trip, no cache file (and no
 * second cold inode to read it back from): the kernel's page cache keeps what
 * FUSE served, and the on-disk cache is for large and patched contents.
 *
 * The rule is that CPU work runs in worker threads; this is the exception,
 * kept because it is measured tiny and capped at SMALL_MAX_BYTES: on the 2
 * shared cores of the issue 18 machine, zstd decode + sha256 take ~10 + 7 µs
 * for 1 KiB of text, ~25 + 8 µs for 6 KiB, ~60 + 25 µs for 32 KiB, against
 * the ~1.1-1.4 ms a worker build cost (round trip, temp file, rename, then
 * reopening and reading back a second cold inode). Larger contents, patched
 * contents and contents of several chunks keep going through the workers.
 *
 * Trust: the bytes are verified as a whole against the content digest before
 * they are kept, so the LRU is shared by digest like the complete contents
 * of the on-disk cache. A decode is keyed by the digest and the file it
 * reads, so a hostile file cannot fail another image's decode of the digest.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { corrupt } from '../errors';
import { readZstdChunk } from '../format/reader';
import { Codec, Encoding } from '../format/types';
import { ByteLru } from '../util/lru';
import type { Location } from './chain-index';

/** Largest content served from memory. */
export const SMALL_MAX_BYTES = 32 * 1024;
/**
 * Largest stored group decoded on the serving thread (256 KiB). Decoding a group of
 * 128-192 KiB of text costs ~0.1-0.2 ms, once for all its members (format/group.ts).
 */
export const SMALL_GROUP_MAX_STORED = 256 * 1024;
/** Default bound of the in-memory LRU. */
export const SMALL_CACHE_BYTES = 64 * 1024 * 1024;
/** Open .cdimg files kept for reading small contents (closed when idle). */
const MAX_FILES = 32;
const FILE_IDLE_MS = 10_000;

/** True when the content located at `loc` is decoded on the serving thread (one FULL zstd chunk, small). */
export function servedFromMemory(loc: Location): boolean {
  const b = loc.blob;
  if (b.encoding !== Encoding.FULL || b.chunks.length !== 1 || b.size > SMALL_MAX_BYTES) return false;
  const c = b.chunks[0];
  // The stored size bounds the read's allocation: a frame of a small content is barely larger than it.
  if (c.codec === Codec.ZSTD) return c.rawSize === b.size && c.storedSize > 0 && c.storedSize <= 2 * SMALL_MAX_BYTES;
  // A member of a solid group: the group (at most SMALL_GROUP_MAX_STORED stored bytes; the writer
  // makes ~128-192 KiB of content) is decoded once here and its neighbours are then at hand.
  return c.codec === Codec.GROUP && c.rawSize === b.size && c.storedSize > 0 && c.storedSize <= SMALL_GROUP_MAX_STORED;
}

interface OpenFile {
  fh: Promise<fsp.FileHandle>;
  users: number;
  lastUse: number;
}

export class SmallContents {
  /** Verified contents by digest hex; one over a sixteenth of the bound is not kept. */
  private readonly lru: ByteLru;
  private readonly decoding = new Map<string, Promise<Buffer>>();
  private readonly files = new Map<string, OpenFile>();
  private sweeper?: NodeJS.Timeout;
  /** Contents decoded (each verified). */
  decodes = 0;

  constructor(readonly maxBytes = SMALL_CACHE_BYTES) {
    this.lru = new ByteLru(maxBytes, maxBytes / 16);
  }

  get bytes(): number {
    return this.lru.bytes;
  }

  get size(): number {
    return this.lru.size;
  }

  has(hex: string): boolean {
    return this.lru.has(hex);
  }

  /** The verified bytes of `hex` when held (marked recently used). */
  get(hex: string): Buffer | undefined {
    return this.lru.get(hex);
  }

  /** Drops every content `keep` does not want. */
  collect(keep: (hex: string) => boolean): void {
    this.lru.collect(keep);
  }

  /** Reads, decodes and verifies content `hex` at `loc` (servedFromMemory(loc) must hold), keeping it. */
  load(hex: string, loc: Location): Promise<Buffer> {
    const key = `${hex}\0${loc.file}`;
    let p = this.decoding.get(key);
    if (!p) {
      p = this.decode(hex, loc).finally(() => this.decoding.delete(key));
      this.decoding.set(key, p);
    }
    return p;
  }

  private async decode(hex: string, loc: Location): Promise<Buffer> {
    const c = loc.blob.chunks[0];
    const raw = await this.withFile(loc.file, (fh) => readZstdChunk(fh, loc.file, c));
    // The whole content against its digest (its one chunk's digest is usually that digest: checked already).
    if (raw.length !== loc.blob.size || (!c.rawDigest.equals(loc.blob.digest) && createHash('sha256').update(raw).digest('hex') !== hex)) {
      throw corrupt(`${loc.file}: content sha256:${hex} does not match its digest after decoding`);
    }
    this.decodes++;
    this.lru.set(hex, raw);
    return raw;
  }

  /** Runs `f` with a shared read handle of `path` (kept open a while for the next content). */
  private async withFile<T>(path: string, f: (fh: fsp.FileHandle) => Promise<T>): Promise<T> {
    let of = this.files.get(path);
    if (of) {
      this.files.delete(path);
      this.files.set(path, of);
    } else {
      const fh = fsp.open(path, 'r');
      of = { fh, users: 0, lastUse: Date.now() };
      const mine = of;
      fh.catch(() => {
        if (this.files.get(path) === mine) this.files.delete(path);
      });
      this.files.set(path, of);
      this.trimFiles();
      this.sweeper ??= setInterval(() => this.sweepFiles(), FILE_IDLE_MS / 2);
      this.sweeper.unref();
    }
    of.users++;
    try {
      return await f(await of.fh);
    } finally {
      of.users--;
      of.lastUse = Date.now();
      // Dropped from the map meanwhile (trimmed): closed by its last user.
      if (of.users === 0 && this.files.get(path) !== of) close(of);
    }
  }

  private trimFiles(): void {
    for (const [p, of] of this.files) {
      if (this.files.size <= MAX_FILES) break;
      if (of.users > 0) continue;
      this.files.delete(p);
      close(of);
    }
  }

  private sweepFiles(): void {
    const old = Date.now() - FILE_IDLE_MS;
    for (const [p, of] of this.files) {
      if (of.users > 0 || of.lastUse > old) continue;
      this.files.delete(p);
      close(of);
    }
    if (this.files.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  /** Closes the files kept open (the LRU stays). */
  closeFiles(): void {
    for (const [p, of] of this.files) {
      if (of.users > 0) continue;
      this.files.delete(p);
      close(of);
    }
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }
}

function close(of: OpenFile): void {
  of.fh.then((h) => h.close()).catch(() => undefined);
}
