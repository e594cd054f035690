/**
 * Large contents stored in full (several zstd frames, no patch) served
 * straight from their .cdimg (issue 18, cold sequential reads): a read
 * decodes the chunks it touches in the worker threads, which check each
 * against its chunk digest and move it to this thread; the read is answered
 * from memory, with no cache file. Measured (perf) on the first read of the
 * 256 MiB text file of the scale bench through the cache file: ~20 % of the
 * process's CPU went to writing the file (copy into the page cache) and ~6 %
 * to reading it back (the whole-content hash and every FUSE read), besides
 * ~19 % zstd and ~13 % sha256. A content that is itself a patch's base is
 * still built into the cache (ContentCache.pinWhole), as patches read bases
 * from files.
 *
 * Trust is that of a content built chunk by chunk (./cache.ts): each chunk is
 * checked against the chunk digest of the file that declares it, and shared
 * only with readers whose chain locates the content in that file with the
 * same chunks (partialKey). The whole is hashed as chunks come in order;
 * when that hash ends and does not match the content digest, the content is
 * refused (CORRUPT: EIO) from then on, to the read that completed it first.
 * The hash runs on this thread, a piece at a time between requests (about
 * 0.7 ms per MiB), as the partial builds' always has.
 *
 * Memory: decoded chunks are kept in one LRU of DIRECT_BYTES for all
 * contents; a read waits for the chunks it needs (decoded again when they
 * were dropped), a sequential read also starts the next ones.
 */
import { createHash, type Hash } from 'node:crypto';
import type { Logger } from 'pino';
import { corrupt } from '../errors';
import { Codec, Encoding } from '../format/types';
import { ByteLru } from '../util/lru';
import type { ChainIndex, Location } from './chain-index';
import { chunkAt, type ContentRef, directSource, HASH_PIECE, partialKey } from './cache-parts';
import type { FusePool } from './pool';

/** Decoded chunks kept for all direct contents (a sequential reader needs ~threads + 1 of them). */
export const DIRECT_BYTES = 48 * 1024 * 1024;

/** True when content `loc` is served straight from its file: stored in full in several zstd frames. */
export function servedDirect(loc: Location): boolean {
  const b = loc.blob;
  return b.encoding === Encoding.FULL && b.chunks.length > 1 && b.chunks.every((c) => c.codec === Codec.ZSTD && c.baseDigest.length === 0);
}

interface State {
  key: string;
  hex: string;
  chain: ChainIndex;
  loc: Location;
  offsets: number[];
  refs: number;
  inflight: Map<number, Promise<Buffer>>;
  /** sha256 of chunks [0, hashed). */
  hash: Hash;
  hashed: number;
  hashing?: Promise<void>;
  /** Set once every chunk was hashed: undefined (matched) or why the content is refused. */
  verdict?: { error?: Error };
  /** End of the last read (a read starting there is sequential). */
  lastEnd: number;
}

export interface DirectCounters {
  chunkBuilds: number;
  failures: number;
}

export class DirectContents {
  private readonly states = new Map<string, State>();
  private readonly chunks = new ByteLru(DIRECT_BYTES);

  constructor(
    private readonly pool: FusePool,
    private readonly counters: DirectCounters,
    private readonly log: Logger,
  ) {}

  /** A reference to content `hex` located at `loc` (servedDirect(loc) must hold). */
  ref(hex: string, chain: ChainIndex, loc: Location): ContentRef {
    const key = partialKey(hex, loc);
    let st = this.states.get(key);
    if (!st) {
      const offsets: number[] = [];
      let off = 0;
      for (const c of loc.blob.chunks) {
        offsets.push(off);
        off += c.rawSize;
      }
      if (off !== loc.blob.size) throw corrupt(`${loc.file}: chunks of sha256:${hex} add up to ${off} bytes, the content has ${loc.blob.size}`);
      st = { key, hex, chain, loc, offsets, refs: 0, inflight: new Map(), hash: createHash('sha256'), hashed: 0, lastEnd: -1 };
      this.states.set(key, st);
    }
    const state = st;
    state.refs++;
    let released = false;
    return {
      size: loc.blob.size,
      complete: false,
      direct: true,
      prepare: async (pos, len) => {
        await this.read(state, undefined, len, pos);
      },
      readInto: (buf, len, pos) => this.read(state, buf, len, pos),
      view: (pos, len) => this.view(state, pos, len),
      release: () => {
        if (released) return;
        released = true;
        if (--state.refs === 0 && this.states.get(state.key) === state) this.states.delete(state.key);
      },
    };
  }

  /** Bytes of decoded chunks held. */
  get bytes(): number {
    return this.chunks.bytes;
  }

  /** Drops the decoded chunks of contents nobody has open (the manager collects after unmounts). */
  collect(): void {
    this.chunks.collect((k) => this.states.has(k.slice(0, k.lastIndexOf('#'))));
  }

  private async read(st: State, buf: Buffer | undefined, len: number, pos: number): Promise<number> {
    if (st.verdict?.error) throw st.verdict.error;
    const size = st.loc.blob.size;
    if (pos >= size) return 0;
    const end = Math.min(size, pos + len);
    const n = st.offsets.length;
    const first = chunkAt(st.offsets, pos);
    const last = chunkAt(st.offsets, end - 1);
    const sequential = pos === 0 || pos === st.lastEnd;
    st.lastEnd = end;
    const wanted: Promise<Buffer>[] = [];
    for (let i = first; i <= last; i++) wanted.push(this.chunk(st, i));
    if (sequential) {
      // the next chunks too, as many as threads: their decodes overlap this read's copy and the next reads
      for (let i = last + 1; i <= Math.min(n - 1, last + Math.max(2, this.pool.threads)); i++) this.chunk(st, i).catch(() => undefined);
    }
    const got = await Promise.all(wanted);
    // the read of the last chunk waits for the hash to go as far as the chunks held take it:
    // a sequential reader learns the verdict there (a refused content fails that read)
    if (last === n - 1) {
      while (!st.verdict) {
        if (st.hashing) await st.hashing;
        else {
          // the next chunk to hash being decoded (by another read): its decode feeds the hash
          const next = st.inflight.get(st.hashed);
          if (!next) break; // stopped at a chunk nobody reads now
          await next.catch(() => undefined);
        }
      }
      if (st.verdict?.error) throw st.verdict.error;
    }
    if (!buf) return end - pos;
    let o = 0;
    for (let k = 0; k < got.length; k++) {
      const i = first + k;
      const from = Math.max(pos, st.offsets[i]) - st.offsets[i];
      const to = Math.min(end, st.offsets[i] + got[k].length) - st.offsets[i];
      o += got[k].copy(buf, o, from, to);
    }
    return o;
  }

  /** Bytes [pos, pos + len) as a view of one decoded chunk held, or undefined (see ContentRef.view). */
  private view(st: State, pos: number, len: number): Buffer | undefined {
    if (st.verdict?.error) return undefined;
    const size = st.loc.blob.size;
    if (pos >= size) return Buffer.alloc(0);
    const end = Math.min(size, pos + len);
    const i = chunkAt(st.offsets, pos);
    if (chunkAt(st.offsets, end - 1) !== i) return undefined;
    const b = this.chunks.get(`${st.key}#${i}`);
    return b?.subarray(pos - st.offsets[i], end - st.offsets[i]);
  }

  /** Chunk `i` of `st`, decoded and checked (from the LRU, or by a worker). */
  private chunk(st: State, i: number): Promise<Buffer> {
    const have = this.chunks.get(`${st.key}#${i}`);
    if (have) return Promise.resolve(have);
    let p = st.inflight.get(i);
    if (!p) {
      p = this.decode(st, i).finally(() => st.inflight.delete(i));
      st.inflight.set(i, p);
    }
    return p;
  }

  private async decode(st: State, i: number): Promise<Buffer> {
    this.counters.chunkBuilds++;
    let got: Uint8Array;
    try {
      got = await this.pool.run('decodeChunk', {
        chain: [...st.chain.paths],
        level: st.loc.level,
        digest: st.hex,
        bases: {},
        chunk: i,
        rawSize: st.loc.blob.chunks[i].rawSize,
        direct: directSource(st.loc, i),
      });
    } catch (e) {
      this.counters.failures++;
      throw e;
    }
    const b = Buffer.from(got.buffer, got.byteOffset, got.byteLength);
    if (b.length !== st.loc.blob.chunks[i].rawSize) {
      this.counters.failures++;
      throw corrupt(`${st.loc.file}: chunk ${i} of sha256:${st.hex} is ${b.length} bytes, its index says ${st.loc.blob.chunks[i].rawSize}`);
    }
    this.chunks.set(`${st.key}#${i}`, b);
    if (i === st.hashed) this.advanceHash(st, i, b);
    return b;
  }

  /**
   * Feeds the whole-content hash with chunk `i` (the next one) and those after it still
   * held; a chunk dropped before its turn stops the hash until a read decodes it again.
   */
  private advanceHash(st: State, i: number, first: Buffer): void {
    if (st.hashing || st.verdict) return;
    st.hashing = (async () => {
      let b: Buffer | undefined = first;
      let at = i;
      while (b && at === st.hashed) {
        for (let p = 0; p < b.length; p += HASH_PIECE) {
          st.hash.update(b.subarray(p, Math.min(b.length, p + HASH_PIECE)));
          // between pieces, requests are served
          if (p + HASH_PIECE < b.length) await new Promise<void>((r) => setImmediate(r));
        }
        st.hashed++;
        at++;
        if (st.hashed === st.offsets.length) {
          if (st.hash.digest('hex') === st.hex) st.verdict = {};
          else {
            this.counters.failures++;
            this.log.warn({ digest: st.hex, file: st.loc.file }, 'content read from its chunks does not match its digest; refused');
            st.verdict = { error: corrupt(`${st.loc.file}: content sha256:${st.hex} does not match its digest after all chunks were read`) };
          }
          return;
        }
        b = this.chunks.get(`${st.key}#${at}`);
      }
    })().finally(() => {
      st.hashing = undefined;
      // a chunk that landed while this ran
      const next = st.verdict ? undefined : this.chunks.get(`${st.key}#${st.hashed}`);
      if (next) this.advanceHash(st, st.hashed, next);
    });
  }
}
