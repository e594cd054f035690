/**
 * The content cache's types, constants and small pure helpers (keys of
 * builds, chunk lookup, references to bytes in memory): what cache.ts's
 * ContentCache works with.
 */
import { createHash } from 'node:crypto';
import type { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import type { ChainIndex, Location } from './chain-index';
import type { FusePool } from './pool';
import type { DirectChunk, DirectSource } from './tasks';
import { type Chunk, Codec, Encoding } from '../format/types';

/** Longest chain of patch bases followed (a longer one is taken for a cycle). */
export const MAX_BASE_DEPTH = 64;
export const HEX_RE = /^[0-9a-f]{64}$/;

export interface ContentCacheOptions {
  dir: string;
  /** Upper bound of the cache's size in bytes (default 10 GiB). */
  maxBytes?: number;
  /** Upper bound of the small contents kept in memory (default 64 MiB; 0: none, every content goes through a cache file). */
  memoryBytes?: number;
  pool: FusePool;
  log: Logger;
}

/** Counters for tests and metrics. */
export interface CacheStats {
  /** Opens served by a complete content already in the cache. */
  hits: number;
  /** Opens that had to build (whole or first chunk) or wait for a build. */
  misses: number;
  wholeBuilds: number;
  chunkBuilds: number;
  failures: number;
  evictions: number;
  items: number;
  bytes: number;
  maxBytes: number;
  /** Small contents decoded on the serving thread into memory (see ./small.ts). */
  memoryDecodes: number;
  /** Opens served by a small content already in memory (counted in hits too). */
  memoryHits: number;
  /** Small-content decodes started ahead of a read (ContentCache.prefetchSmall). */
  prefetches: number;
  memoryItems: number;
  memoryBytes: number;
}

/** An open content: reads come from the cache file, building chunks on demand. */
export interface ContentRef {
  readonly size: number;
  /** True when every byte is in the cache (reads need no build). */
  readonly complete: boolean;
  /** Builds what a read of `len` bytes at `pos` needs (nothing for complete contents). */
  prepare(pos: number, len: number): Promise<void>;
  /** Reads up to `len` bytes at `pos` into `buf` (after prepare); resolves with the count (0 at the end). */
  readInto(buf: Buffer, len: number, pos: number): Promise<number>;
  /**
   * The bytes [pos, pos + len) (fewer at the end) as a view of memory the
   * reference holds, when it holds them in one piece (after prepare), else
   * undefined: a read is then answered without a copy. Valid until the next
   * await.
   */
  view?(pos: number, len: number): Buffer | undefined;
  /** Gives the reference back (idempotent). */
  release(): void;
}

export interface Item {
  hex: string;
  /**
   * Key in `partials` while the content is built chunk by chunk (see
   * partialKey); undefined for complete contents, which live in `items`.
   */
  key?: string;
  size: number;
  path: string;
  complete: boolean;
  /** Complete files found at start-up are verified on first use. */
  verified: boolean;
  refs: number;
  lastUsed: number;
  bytes: number;
  /** Shared read handle while referenced. */
  fh?: Promise<fsp.FileHandle>;
  verifying?: Promise<void>;
  partial?: PartialState;
}

/** A content built chunk by chunk. */
export interface PartialState {
  /** The chain and level the content was located from (chunk layout and bases). */
  chain: ChainIndex;
  loc: Location;
  offsets: number[];
  done: Uint8Array;
  remaining: number;
  inflight: Map<number, Promise<void>>;
  promoting?: Promise<void>;
  /** The whole failed its check against the digest (see ContentCache.promote): every later read of it fails with this. */
  failed?: Error;
}

export const EMPTY_REF: ContentRef = { size: 0, complete: true, prepare: async () => undefined, readInto: async () => 0, release: () => undefined };

/** A reference to verified bytes in memory (a small content, ./small.ts). */
export function memoryRef(data: Buffer): ContentRef {
  return {
    size: data.length,
    complete: true,
    prepare: async () => undefined,
    readInto: async (buf, len, pos) => (pos >= data.length ? 0 : data.copy(buf, 0, pos, Math.min(data.length, pos + len))),
    view: (pos, len) => data.subarray(Math.min(pos, data.length), Math.min(data.length, pos + len)),
    release: () => undefined,
  };
}

/** Key of a whole build: the content and the file whose blob is decoded. */
export function wholeKey(hex: string, file: string): string {
  return `${hex}\0${file}`;
}

/**
 * Key of a content built chunk by chunk: its digest, the file declaring its
 * blob and that blob's chunk list (raw digests and sizes). Two images share a
 * partial build only when their chains locate the content in the same file.
 */
export function partialKey(hex: string, loc: Location): string {
  const h = createHash('sha256').update(loc.file).update('\0');
  const n = Buffer.alloc(8);
  for (const c of loc.blob.chunks) {
    n.writeBigUInt64LE(BigInt(c.rawSize));
    h.update(c.rawDigest).update(n);
  }
  return `${hex}:${h.digest('hex')}`;
}

/** Index of the chunk holding byte `pos` (offsets ascending, first 0). */
export function chunkAt(offsets: number[], pos: number): number {
  let lo = 0;
  let hi = offsets.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (offsets[mid] <= pos) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

const directChunk = (c: Chunk): DirectChunk => ({
  offset: c.offset,
  storedSize: c.storedSize,
  storedDigest: c.storedDigest.toString('hex'),
  rawSize: c.rawSize,
  rawDigest: c.rawDigest.toString('hex'),
  codec: c.codec,
  baseDigest: c.baseDigest.toString('hex'),
  baseOffset: c.baseOffset,
  baseSize: c.baseSize,
  ...(c.groupOffset !== undefined ? { groupOffset: c.groupOffset } : {}),
});

/**
 * The stored chunks of `loc` (all, or chunk `only`) as a build thread reads them without an
 * index (./tasks.ts DirectSource). A member of a group coded against bases needs every
 * member's record: `members` (ChainIndex.groupMembers), or undefined (the thread's chain).
 */
export function directSource(loc: Location, only?: number, members?: Chunk[]): DirectSource | undefined {
  const grouped = loc.blob.encoding === Encoding.PATCH && loc.blob.chunks.some((c) => c.codec === Codec.GROUP);
  if (grouped && !members?.length) return undefined;
  const chunks = only === undefined ? loc.blob.chunks : [loc.blob.chunks[only]];
  return {
    file: loc.file,
    formatVersion: loc.formatVersion,
    ...(grouped ? { members: (members as Chunk[]).map(directChunk) } : {}),
    chunks: chunks.map(directChunk),
  };
}

