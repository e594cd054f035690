/**
 * The content cache of the FUSE manager: one directory of materialised file
 * contents keyed by their sha256, shared by every mount and every image
 * version (decision 1 of the design).
 *
 *     <dir>/<hex>            complete contents, verified before first use
 *     <dir>/partial/<hex>.N  large contents being built chunk by chunk
 *
 * Small contents stored in full as one zstd chunk (at most 32 KiB) are
 * decoded and verified on the serving thread into a bounded LRU in memory,
 * with no cache file (./small.ts). Other contents of one chunk are built
 * whole when first opened (decompress, or patch a base) by a worker thread,
 * into a temporary file that is verified against the digest and then
 * renamed. Larger contents get a sparse file of their full size and a bitmap
 * of built chunks: a read builds only the chunks it touches (each verified
 * against its chunk digest), a sequential one also reads ahead a window of
 * chunks; when the last one lands a worker thread checks the whole file
 * against the digest (reads do not wait for it) and the file is renamed into
 * place. Every base a patch
 * needs is itself materialised through the cache first (so a chain of any
 * depth costs one patch per level, once). Concurrent requests for the same
 * content or chunk share one build.
 *
 * Trust (decision 10 of the design): a .cdimg is untrusted, and an image may
 * claim any content digest for bytes of its own. Only what has been checked
 * against the content digest as a whole is shared by digest: the complete
 * contents. A content being built chunk by chunk has so far only been checked
 * against the chunk digests of the file that declares it, so it is shared
 * only with readers whose image locates the content in that same file (the
 * same blob and chunk list): it is keyed by digest, declaring file and chunk
 * layout, never by digest alone. An image that claims another image's digest
 * for different bytes thus serves those bytes (its own, as its chunk digests
 * say) to itself until its whole-content check, made once the last chunk
 * has landed, fails; then the file is dropped, never shared, and every later
 * read of that content from that file fails (EIO). Builds of a whole content
 * are likewise keyed by the
 * file they decode, so that a hostile file cannot make another image's build
 * of the same digest fail.
 *
 * Size is bounded: when the cache grows past `maxBytes`, contents nobody has
 * open are removed, least recently used first. Files found at start-up are
 * verified again before they are served; leftovers of builds are removed.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { corrupt, notFound } from '../errors';
import { Codec, Encoding } from '../format/types';
import type { ChainIndex, Location } from './chain-index';
import type { FusePool } from './pool';
import { SMALL_CACHE_BYTES, SMALL_MAX_BYTES, SmallContents, servedFromMemory } from './small';
import type { BasePaths } from './tasks';
import { chunkAt, directSource, EMPTY_REF, HEX_RE, MAX_BASE_DEPTH, memoryRef, partialKey, wholeKey, type CacheStats, type ContentCacheOptions, type ContentRef, type Item, type PartialState } from './cache-parts';

export type { CacheStats, ContentCacheOptions, ContentRef } from './cache-parts';

/** Small-content decodes prefetchSmall starts at most at once. */
const PREFETCH_MAX = 8;
/** Contents remembered as having failed their whole check (ContentCache.refused); one forgotten is built and checked again when read. */
const REFUSED_MAX = 1024;

/** The group coded against bases content `loc` is a member of, as a key (file and offset), or undefined. */
function groupKeyOf(loc: Location): string | undefined {
  const c = loc.blob.chunks[0];
  if (loc.blob.encoding !== Encoding.PATCH || loc.blob.chunks.length !== 1 || c.codec !== Codec.GROUP) return undefined;
  return `${loc.file}\0${c.offset}`;
}

export class ContentCache {
  /** Complete contents by sha256 hex: verified as a whole (or verified on first use), shared by every image. */
  private readonly items = new Map<string, Item>();
  /** Contents being built chunk by chunk, by partialKey: private to the file that declares their chunks. */
  private readonly partials = new Map<string, Item>();
  /** Whole builds in flight, by wholeKey (digest and the file decoded). */
  private readonly wholeBuilds = new Map<string, Promise<void>>();
  private readonly partialOpens = new Map<string, Promise<Item>>();
  /** Contents whose whole failed its check, by partialKey (declaring file and chunks): never built again (at most REFUSED_MAX, oldest forgotten first). */
  private readonly refused = new Map<string, Error>();
  /** Files being deleted, by content: a new build of the content waits for them. */
  private readonly removals = new Map<string, Promise<void>>();
  private partialSeq = 0;
  private clock = 0;
  private total = 0;
  private overBudgetLogged = false;
  private readonly counters = { hits: 0, misses: 0, wholeBuilds: 0, chunkBuilds: 0, failures: 0, evictions: 0, memoryHits: 0, prefetches: 0 };
  private prefetching = 0;
  /** Groups coded against bases whose members were built ahead (file and offset of the group: groupKeyOf). */
  private readonly groupsBuilt = new Set<string>();
  /** Those builds while they run. */
  private readonly groupBuilds = new Map<string, Promise<void>>();
  readonly maxBytes: number;
  /** Small contents, verified, in memory (undefined: disabled). */
  private readonly small?: SmallContents;

  private constructor(
    readonly dir: string,
    private readonly pool: FusePool,
    private readonly log: Logger,
    maxBytes: number,
    memoryBytes: number,
  ) {
    this.maxBytes = maxBytes;
    if (memoryBytes > 0) this.small = new SmallContents(memoryBytes);
  }

  /** Opens (creating) the cache directory, removes leftovers and indexes what is there. */
  static async open(o: ContentCacheOptions): Promise<ContentCache> {
    const cache = new ContentCache(o.dir, o.pool, o.log, o.maxBytes ?? 10 * 1024 ** 3, o.memoryBytes ?? SMALL_CACHE_BYTES);
    await fsp.mkdir(o.dir, { recursive: true, mode: 0o700 });
    await fsp.rm(join(o.dir, 'partial'), { recursive: true, force: true });
    await fsp.mkdir(join(o.dir, 'partial'), { mode: 0o700 });
    for (const name of await fsp.readdir(o.dir)) {
      const p = join(o.dir, name);
      if (name.startsWith('.tmp-')) {
        await fsp.rm(p, { force: true });
        continue;
      }
      if (!HEX_RE.test(name)) continue;
      const st = await fsp.stat(p);
      if (!st.isFile()) continue;
      cache.items.set(name, {
        hex: name,
        size: st.size,
        path: p,
        complete: true,
        verified: false,
        refs: 0,
        lastUsed: st.mtimeMs,
        bytes: st.size,
      });
      cache.total += st.size;
    }
    // Start-up order is by age; later uses get larger stamps.
    cache.clock = Date.now();
    cache.evict();
    return cache;
  }

  stats(): CacheStats {
    return {
      ...this.counters,
      items: this.items.size + this.partials.size,
      bytes: this.total,
      maxBytes: this.maxBytes,
      memoryDecodes: this.small?.decodes ?? 0,
      memoryItems: this.small?.size ?? 0,
      memoryBytes: this.small?.bytes ?? 0,
    };
  }

  /** True when the complete content `hex` is in the cache, on disk or in memory (nothing is built). */
  has(hex: string): boolean {
    return !!this.items.get(hex)?.complete || !!this.small?.has(hex);
  }

  /** Closes the files kept open for small contents (the manager's shutdown; contents stay). */
  close(): void {
    this.small?.closeFiles();
  }

  /** True when `item` is still the cache's entry under its key (not dropped, evicted or replaced). */
  private live(item: Item): boolean {
    return item.key !== undefined ? this.partials.get(item.key) === item : this.items.get(item.hex) === item;
  }

  /**
   * Starts decoding small content `hex` (`size` bytes) of `chain` into memory
   * when it would be served from memory and is not there yet, so that a read
   * soon after finds it (see Fuse3FileSystem's lookups). Never fails: a
   * content that cannot be decoded fails its read, as before. At most
   * PREFETCH_MAX decodes are started at once; past that it does nothing.
   */
  prefetchSmall(hex: string, size: number, chain: ChainIndex): void {
    const small = this.small;
    if (!small || size === 0 || size > SMALL_MAX_BYTES || this.prefetching >= PREFETCH_MAX || small.has(hex)) return;
    const loc = chain.locate(hex);
    if (!loc || loc.blob.size !== size || !servedFromMemory(loc)) return;
    this.prefetching++;
    this.counters.prefetches++;
    small
      .load(hex, loc)
      .catch(() => undefined)
      .finally(() => this.prefetching--);
  }

  /**
   * Opens content `hex` (`size` bytes) of an image whose chain is `chain`:
   * single-chunk contents are materialised now, larger ones on read.
   * Rejects (NOT_FOUND, CORRUPT, …) when the content cannot be built.
   */
  async acquire(hex: string, size: number, chain: ChainIndex): Promise<ContentRef> {
    if (size === 0) return EMPTY_REF;
    const mem = this.small?.get(hex);
    if (mem && mem.length === size) {
      this.counters.hits++;
      this.counters.memoryHits++;
      return memoryRef(mem);
    }
    const existing = this.items.get(hex);
    if (existing?.complete && existing.verified) this.counters.hits++;
    else this.counters.misses++;
    if (!existing?.complete || !existing.verified) {
      const loc = chain.locate(hex);
      if (!loc) throw notFound(`content sha256:${hex} is not in the chain ${chain.paths.join(' → ')}`);
      if (loc.blob.size !== size) throw corrupt(`content sha256:${hex} is ${loc.blob.size} bytes in ${loc.file}, the tree says ${size}`);
      if (this.small && servedFromMemory(loc)) {
        // Small, one zstd chunk: decoded here, kept in memory, no cache file (./small.ts). A
        // cache file of it found at start-up is not verified (read back) for this.
        try {
          return memoryRef(await this.small.load(hex, loc));
        } catch (e) {
          this.counters.failures++;
          throw e;
        }
      }
      if (!existing?.complete && loc.blob.chunks.length > 1) {
        // Built chunk by chunk from THIS chain's blob: its chunks are checked against the
        // chunk digests of the file that declares them (another image's partial build of
        // the same digest is never used), the whole against the digest at the end.
        for (let attempt = 0; attempt < 3 && !this.items.has(hex); attempt++) {
          const item = await this.openPartial(hex, chain, loc);
          // Evicted between its creation and now? Then open another.
          if (this.live(item)) return this.refTo(item);
        }
        // Completed (verified) meanwhile: served whole below.
        if (!this.items.has(hex)) throw corrupt(`content sha256:${hex} keeps disappearing from the cache (cache too small?)`);
      }
    }
    const item = await this.pinWhole(hex, chain, chain.topLevel, []);
    try {
      return this.refTo(item);
    } finally {
      this.unpin(item);
    }
  }

  // -------------------------------------------------------------------------
  // References
  // -------------------------------------------------------------------------

  private refTo(item: Item): ContentRef {
    item.refs++;
    this.touch(item);
    let released = false;
    return {
      size: item.size,
      get complete() {
        return item.complete;
      },
      prepare: async (pos, len) => {
        if (!item.complete && item.partial && pos < item.size) await this.ensureRange(item, pos, Math.min(item.size, pos + len));
      },
      readInto: (buf, len, pos) => this.read(item, buf, len, pos),
      release: () => {
        if (released) return;
        released = true;
        this.unpin(item);
      },
    };
  }

  private unpin(item: Item): void {
    item.refs--;
    if (item.refs === 0 && item.fh) {
      const fh = item.fh;
      item.fh = undefined;
      fh.then((h) => h.close()).catch(() => undefined);
    }
    if (item.refs === 0) this.evict();
  }

  private touch(item: Item): void {
    item.lastUsed = Math.max(++this.clock, Date.now());
    this.clock = item.lastUsed;
  }

  private async read(item: Item, buf: Buffer, len: number, pos: number): Promise<number> {
    if (pos >= item.size) return 0;
    const end = Math.min(item.size, pos + len);
    const fh = await this.handleOf(item);
    let done = 0;
    while (pos + done < end) {
      const { bytesRead } = await fh.read(buf, done, end - pos - done, pos + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  /** The item's shared read handle (its file may be renamed from partial/ meanwhile: retried). */
  private async handleOf(item: Item): Promise<fsp.FileHandle> {
    if (!item.fh) {
      const open = async (): Promise<fsp.FileHandle> => {
        const first = item.path;
        try {
          return await fsp.open(first, 'r');
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT' && item.path !== first) return fsp.open(item.path, 'r');
          throw e;
        }
      };
      item.fh = open();
      // A failed open is retried by the next read.
      item.fh.catch(() => {
        item.fh = undefined;
      });
    }
    return item.fh;
  }

  // -------------------------------------------------------------------------
  // Whole contents
  // -------------------------------------------------------------------------

  /** Makes content `hex` complete and verified in the cache and pins it (unpin when done). */
  private async pinWhole(hex: string, chain: ChainIndex, level: number, stack: string[]): Promise<Item> {
    for (let attempt = 0; ; attempt++) {
      const item = this.items.get(hex);
      if (item?.complete) {
        item.refs++;
        try {
          if (!item.verified) await this.verify(item);
        } catch (e) {
          this.unpin(item);
          throw e;
        }
        if (this.items.get(hex) === item) {
          this.touch(item);
          return item;
        }
        this.unpin(item);
      }
      if (attempt >= 3) throw corrupt(`content sha256:${hex} keeps disappearing from the cache (cache too small?)`);
      await this.buildWhole(hex, chain, level, stack);
    }
  }

  /** Verifies a complete file found at start-up; removes it when it does not match. */
  private verify(item: Item): Promise<void> {
    item.verifying ??= (async () => {
      const ok = await this.pool.run('verifyFile', { path: item.path, digest: item.hex, size: item.size }).catch(() => false);
      if (ok) {
        item.verified = true;
        return;
      }
      this.log.warn({ digest: item.hex, path: item.path }, 'cached content does not match its digest; rebuilding it');
      this.drop(item);
    })().finally(() => {
      item.verifying = undefined;
    });
    return item.verifying;
  }

  /**
   * Builds content `hex`, as stored in the chain from `level` down, into the
   * cache (one build per content and file at a time: a build that fails
   * because of one file's blob is not the build of another file's).
   */
  private buildWhole(hex: string, chain: ChainIndex, level: number, stack: string[]): Promise<void> {
    // Checked before joining a build in flight: waiting for our own build would never end.
    if (stack.includes(hex) || stack.length > MAX_BASE_DEPTH) {
      return Promise.reject(corrupt(`patch bases of sha256:${hex} form a cycle or a chain deeper than ${MAX_BASE_DEPTH}`));
    }
    const loc = chain.locate(hex, level);
    if (!loc) return Promise.reject(notFound(`content sha256:${hex} is not in the chain ${chain.paths.join(' → ')} (missing base?)`));
    const key = wholeKey(hex, loc.file);
    let p = this.wholeBuilds.get(key);
    if (!p) {
      p = this.doBuildWhole(hex, chain, loc, stack).finally(() => this.wholeBuilds.delete(key));
      this.wholeBuilds.set(key, p);
    }
    return p;
  }

  /** True while some whole build of content `hex` runs. */
  private building(hex: string): boolean {
    const prefix = wholeKey(hex, '');
    for (const k of this.wholeBuilds.keys()) if (k.startsWith(prefix)) return true;
    return false;
  }

  private async doBuildWhole(hex: string, chain: ChainIndex, loc: Location, stack: string[]): Promise<void> {
    // a member of a group whose members are being built ahead: that build gives it (pinWhole looks again)
    const ahead = this.groupBuilds.get(groupKeyOf(loc) ?? '');
    if (ahead) {
      await ahead;
      if (this.items.get(hex)?.complete) return;
    }
    if (loc.blob.chunks.length > 1) {
      // Large: build every chunk through the partial file, then promote it.
      const item = await this.openPartial(hex, chain, loc);
      if (!this.live(item) || item.complete) return; // evicted or completed meanwhile: pinWhole looks again
      item.refs++;
      try {
        await this.ensureRange(item, 0, item.size, [...stack, hex]);
        // the whole is wanted (a base, a whole build): its check too, which reads do not wait for
        const st = item.partial;
        if (st && st.remaining === 0 && !item.complete) await this.promote(item, st);
      } finally {
        this.unpin(item);
      }
      return;
    }
    const pinned: Item[] = [];
    try {
      const bases = await this.pinBases(loc, chain, [...stack, hex], pinned);
      const out = join(this.dir, hex);
      await this.removals.get(hex);
      this.counters.wholeBuilds++;
      const t0 = process.hrtime.bigint();
      let size: number;
      try {
        size = await this.pool.run('buildContent', { chain: [...chain.paths], level: loc.level, digest: hex, bases, out, direct: directSource(loc, undefined, chain.groupMembers(loc)) });
      } catch (e) {
        this.counters.failures++;
        throw e;
      }
      this.log.debug({ digest: hex, size, ms: Number(process.hrtime.bigint() - t0) / 1e6, file: loc.file }, 'materialised content');
      const prev = this.items.get(hex);
      if (prev) this.forget(prev);
      const item: Item = { hex, size, path: out, complete: true, verified: true, refs: 0, lastUsed: 0, bytes: size };
      this.touch(item);
      this.items.set(hex, item);
      this.total += size;
      this.evict();
      this.buildGroupMembers(hex, chain, loc, bases);
    } finally {
      for (const b of pinned) this.unpin(b);
    }
  }

  /**
   * After a member of a group coded against bases was built (its group decoded and every
   * member's base built on the way), its other members are built too, in the background,
   * by one task that decodes the group once, and kept as complete contents: a group is
   * built once, not once per member (issue 14). Best effort: a member that is not built
   * here is built by its own open.
   */
  private buildGroupMembers(hex: string, chain: ChainIndex, loc: Location, bases: BasePaths): void {
    const key = groupKeyOf(loc);
    if (key === undefined || this.groupsBuilt.has(key)) return;
    this.groupsBuilt.add(key);
    if (this.groupsBuilt.size > 4096) this.groupsBuilt.delete(this.groupsBuilt.values().next().value as string);
    const p = this.pool
      .run('buildGroupMembers', { chain: [...chain.paths], level: loc.level, digest: hex, bases, dir: this.dir, direct: directSource(loc, undefined, chain.groupMembers(loc)) })
      .then((written) => {
        for (const w of written) {
          // known already, or its old file is being removed (the removal could take the new file): left to its own open
          if (this.items.has(w.digest) || this.removals.has(w.digest) || !HEX_RE.test(w.digest)) continue;
          const item: Item = { hex: w.digest, size: w.size, path: join(this.dir, w.digest), complete: true, verified: true, refs: 0, lastUsed: 0, bytes: w.size };
          this.touch(item);
          this.items.set(w.digest, item);
          this.total += w.size;
        }
        this.evict();
      })
      .catch((e: unknown) => this.log.debug({ digest: hex, err: (e as Error).message }, 'group members not built ahead'))
      .finally(() => this.groupBuilds.delete(key));
    this.groupBuilds.set(key, p);
  }

  /** Materialises and pins the bases the patch chunks of `loc` need; returns their paths. */
  private async pinBases(loc: Location, chain: ChainIndex, stack: string[], pinned: Item[], only?: number[]): Promise<BasePaths> {
    const needed = new Set<string>();
    const chunks = only ? only.map((i) => loc.blob.chunks[i]) : loc.blob.chunks;
    for (const c of chunks) if (c.codec !== Codec.ZSTD && c.baseDigest.length > 0) needed.add(c.baseDigest.toString('hex'));
    // a member of a group coded against bases: every member's base makes the group's dictionary
    for (const m of chain.groupMembers(loc)) if (m.baseDigest.length > 0) needed.add(m.baseDigest.toString('hex'));
    const bases: BasePaths = {};
    for (const b of needed) {
      const item = await this.pinWhole(b, chain, loc.level, stack);
      pinned.push(item);
      bases[b] = item.path;
    }
    return bases;
  }

  // -------------------------------------------------------------------------
  // Chunked contents
  // -------------------------------------------------------------------------

  /**
   * The partial item of a large content as `loc` declares it (created as a
   * sparse file of its size): shared only by readers whose chain locates the
   * content in the same file with the same chunks.
   */
  private async openPartial(hex: string, chain: ChainIndex, loc: Location): Promise<Item> {
    const key = partialKey(hex, loc);
    const no = this.refused.get(key);
    if (no) {
      this.counters.failures++;
      throw no;
    }
    const have = this.partials.get(key);
    if (have) return have;
    let p = this.partialOpens.get(key);
    if (!p) {
      p = (async () => {
        const path = join(this.dir, 'partial', `${hex}.${++this.partialSeq}`);
        const fh = await fsp.open(path, 'w', 0o600);
        try {
          await fh.truncate(loc.blob.size);
        } finally {
          await fh.close();
        }
        const offsets: number[] = [];
        let off = 0;
        for (const c of loc.blob.chunks) {
          offsets.push(off);
          off += c.rawSize;
        }
        if (off !== loc.blob.size) throw corrupt(`${loc.file}: chunks of sha256:${hex} add up to ${off} bytes, the content has ${loc.blob.size}`);
        const item: Item = {
          hex,
          key,
          size: loc.blob.size,
          path,
          complete: false,
          verified: false,
          refs: 0,
          lastUsed: 0,
          bytes: 0,
          partial: { chain, loc, offsets, done: new Uint8Array(offsets.length), remaining: offsets.length, inflight: new Map() },
        };
        this.touch(item);
        this.partials.set(key, item);
        return item;
      })().finally(() => this.partialOpens.delete(key));
      this.partialOpens.set(key, p);
    }
    return p;
  }

  /** Builds the chunks of a partial item covering [start, end). */
  private async ensureRange(item: Item, start: number, end: number, stack: string[] = []): Promise<void> {
    const st = item.partial;
    if (!st || item.complete) return;
    if (st.failed) throw st.failed;
    const first = chunkAt(st.offsets, start);
    const last = chunkAt(st.offsets, Math.max(start, end - 1));
    const waits: Promise<void>[] = [];
    for (let i = first; i <= last; i++) if (!st.done[i]) waits.push(this.ensureChunk(item, st, i, stack));
    // Sequential reads (from the start, or in a chunk whose predecessor is built) also
    // start the next chunk, so that its build overlaps with this one's instead of waiting
    // for the read that needs it (a sequential reader otherwise builds one chunk at a time
    // and leaves a core idle: the first open of a patched esbuild binary, 3 chunks of
    // context-mixed bsdiff, ~250 -> ~200 ms; src/delta/CODECS.md). Random reads build only
    // what they touch. A failed read-ahead is forgotten: the read that needs the chunk
    // builds it again and reports the error.
    // The window is as many chunks as worker threads (at least 2): with one, a sequential reader
    // of a 256 MiB file waited 80-190 ms at every 4 MiB boundary (issue 18). Read-ahead never
    // starts the last chunk nobody has asked for: completing a content (and its whole-digest
    // check) is left to a read that needs the last chunk, so a reader of a part of a file never
    // pays for parts it does not read.
    if (start === 0 || (first > 0 && st.done[first - 1])) {
      const ahead = Math.max(2, this.pool.threads);
      for (let next = last + 1; next <= last + ahead && next < st.offsets.length; next++) {
        if (st.done[next] || st.inflight.has(next)) continue;
        // chunks not built and not being built, `next` included
        if (st.remaining - st.inflight.size <= 1) break;
        this.ensureChunk(item, st, next, stack).catch(() => undefined);
      }
    }
    await Promise.all(waits);
    if (st.failed) throw st.failed;
  }

  private ensureChunk(item: Item, st: PartialState, i: number, stack: string[]): Promise<void> {
    let p = st.inflight.get(i);
    if (!p) {
      p = this.buildChunk(item, st, i, stack).finally(() => st.inflight.delete(i));
      st.inflight.set(i, p);
    }
    return p;
  }

  private async buildChunk(item: Item, st: PartialState, i: number, stack: string[]): Promise<void> {
    if (stack.length > MAX_BASE_DEPTH) throw corrupt(`patch bases of sha256:${item.hex} form a chain deeper than ${MAX_BASE_DEPTH}`);
    const pinned: Item[] = [];
    try {
      const bases = await this.pinBases(st.loc, st.chain, [...stack, item.hex], pinned, [i]);
      this.counters.chunkBuilds++;
      let n: number;
      try {
        n = await this.pool.run('buildChunk', {
          chain: [...st.chain.paths],
          level: st.loc.level,
          digest: item.hex,
          chunk: i,
          offset: st.offsets[i],
          bases,
          out: item.path,
          direct: directSource(st.loc, i),
        });
      } catch (e) {
        this.counters.failures++;
        throw e;
      }
      if (n !== st.loc.blob.chunks[i].rawSize) {
        // The worker checks this before writing; never count a chunk of the wrong size as built.
        this.counters.failures++;
        throw corrupt(`${st.loc.file}: chunk ${i} of sha256:${item.hex} is ${n} bytes, its index says ${st.loc.blob.chunks[i].rawSize}`);
      }
      if (!st.done[i] && this.live(item)) {
        st.done[i] = 1;
        st.remaining--;
        item.bytes += n;
        this.total += n;
        // The last chunk: the whole is checked by a worker thread, reads do not wait (promote).
        if (st.remaining === 0) this.promote(item, st).catch(() => undefined);
        this.evict();
      }
    } finally {
      for (const b of pinned) this.unpin(b);
    }
  }

  /**
   * All chunks built: verify the whole content and move it into place. Only
   * now does it become the content of its digest, shared by every image; a
   * content whose chunks matched their (self-declared) chunk digests but whose
   * whole does not match its digest is dropped, and every later read of it
   * from that file fails (`failed`, `refused`).
   *
   * The check runs in a worker thread (verifyFile reads the file back from the
   * page cache) once the last chunk has landed, and reads do not wait for it:
   * each chunk they get has been checked against its chunk digest already.
   * Before, this thread hashed the chunks as they landed and the read of the
   * last chunk waited for the whole check: a cold sequential read of issue
   * 18's 256 MiB text file took 0.71-0.76 s, 0.56-0.58 s now (both cores were
   * busy: the hash was 0.19 s of CPU in the read, its read-back another
   * copy of the file; interleaved runs of a harness, ext4 "cold" at 2-4 GB/s
   * on this VM whose host caches the disk).
   */
  private promote(item: Item, st: PartialState): Promise<void> {
    st.promoting ??= (async () => {
      const ok = await this.pool.run('verifyFile', { path: item.path, digest: item.hex, size: item.size });
      if (!ok) {
        this.counters.failures++;
        st.failed = corrupt(`${st.loc.file}: content sha256:${item.hex} does not match its digest after all chunks were built`);
        this.refuse(item.key as string, st.failed);
        this.drop(item);
        this.log.warn({ digest: item.hex, file: st.loc.file }, 'content built from its chunks does not match its digest; dropped');
        throw st.failed;
      }
      const gone = () => corrupt(`content sha256:${item.hex} was evicted while it was being built`);
      // Dropped meanwhile: its file is going, whatever the chunks say.
      if (!this.live(item)) throw gone();
      const final = join(this.dir, item.hex);
      await this.removals.get(item.hex);
      if (!this.live(item)) throw gone();
      await fsp.rename(item.path, final);
      // Another complete copy (built from another file meanwhile) had the same, verified bytes: replaced.
      const prev = this.items.get(item.hex);
      if (prev) this.forget(prev);
      this.partials.delete(item.key as string);
      item.key = undefined;
      item.path = final;
      item.complete = true;
      item.verified = true;
      item.partial = undefined;
      this.items.set(item.hex, item);
      this.log.debug({ digest: item.hex, size: item.size }, 'content complete');
    })().catch((e: unknown) => {
      // Not checked (the file could not be read, the pool closed): it may be tried again, and
      // the item evicted meanwhile. One that failed its check is gone already.
      if (!st.failed) st.promoting = undefined;
      throw e;
    });
    return st.promoting;
  }

  // -------------------------------------------------------------------------
  // Size bound
  // -------------------------------------------------------------------------

  /**
   * Removes every content that nobody has open, that is not being built or
   * verified, and that `keep` does not want (e.g. contents of images that are
   * no longer mounted). Returns the number of contents removed.
   */
  collect(keep: (hex: string) => boolean): number {
    this.small?.collect(keep);
    let n = 0;
    for (const item of [...this.items.values(), ...this.partials.values()]) {
      if (!this.removable(item) || keep(item.hex)) continue;
      this.drop(item);
      n++;
    }
    return n;
  }

  /** True when `item` may be removed now (unreferenced, no build or verification running). */
  private removable(i: Item): boolean {
    return i.refs === 0 && !i.verifying && !(i.partial && (i.partial.inflight.size > 0 || i.partial.promoting)) && !this.building(i.hex);
  }

  /** Removes unreferenced contents, least recently used first, until under the bound. */
  private evict(): void {
    if (this.total <= this.maxBytes) {
      this.overBudgetLogged = false;
      return;
    }
    const target = Math.floor(this.maxBytes * 0.9);
    const candidates = [...this.items.values(), ...this.partials.values()].filter((i) => this.removable(i)).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const item of candidates) {
      if (this.total <= target) break;
      this.drop(item);
      this.counters.evictions++;
    }
    if (this.total > this.maxBytes && !this.overBudgetLogged) {
      this.overBudgetLogged = true;
      this.log.warn({ bytes: this.total, maxBytes: this.maxBytes }, 'content cache over its bound: everything left is in use');
    }
  }

  /**
   * Forgets an item and deletes its file. An item that is no longer the
   * cache's (replaced by another copy of the content at the same path) only
   * goes: the file there is the other copy's.
   */
  private drop(item: Item): void {
    if (!this.forget(item)) return;
    const prev = this.removals.get(item.hex) ?? Promise.resolve();
    const p = prev
      .then(() => fsp.rm(item.path, { force: true }))
      .catch((e: unknown) => this.log.warn({ err: e, path: item.path }, 'cannot remove cached content'))
      .finally(() => {
        if (this.removals.get(item.hex) === p) this.removals.delete(item.hex);
      });
    this.removals.set(item.hex, p);
  }

  /** Remembers that the content `key` (partialKey) failed its whole check. */
  private refuse(key: string, err: Error): void {
    this.refused.set(key, err);
    for (const k of this.refused.keys()) {
      if (this.refused.size <= REFUSED_MAX) break;
      this.refused.delete(k);
    }
  }

  /** Removes `item` from the cache's maps (false when it was not there any more). */
  private forget(item: Item): boolean {
    if (!this.live(item)) return false;
    if (item.key !== undefined) this.partials.delete(item.key);
    else this.items.delete(item.hex);
    this.total -= item.bytes;
    return true;
  }
}
