/**
 * Worker-thread tasks of the FUSE content cache (run through FusePool, a
 * front of the worker pool of src/workers, never on the JavaScript thread
 * that serves FUSE requests; errors come back with their kind).
 *
 * The main thread plans: it finds where a content is stored in the chain and
 * makes sure every base a patch needs is already materialised, whole and
 * verified, in the cache. A task then decodes chunks with the delta module's
 * Chain (every stored chunk and every decoded chunk is verified against its
 * digest) and writes the result into the cache directory. Patch bases are
 * read from the cache files the main thread hands over instead of being
 * rebuilt through the chain: see {@link chainOf}.
 *
 * Inputs and outputs are plain data; chains and recently used bases are kept
 * per worker.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { Chain } from '../delta/chain';
import { corrupt, notFound } from '../errors';
import type { Blob } from '../format/types';
import { writeFully } from '../util/fileio';

/** Where the bases of a content's patches are: sha256 hex → path of the verified cache file. */
export type BasePaths = Record<string, string>;

/** Where a content is stored: the chain (full image first) and the level of the file holding its blob. */
export interface ContentSource {
  chain: string[];
  level: number;
  /** sha256 hex of the content. */
  digest: string;
  bases: BasePaths;
}

export interface BuildContentArgs extends ContentSource {
  /** Final path; the content is written next to it under a temporary name, verified, then renamed. */
  out: string;
}

export interface BuildChunkArgs extends ContentSource {
  /** Index of the chunk in the blob. */
  chunk: number;
  /** Byte offset of the chunk in the content. */
  offset: number;
  /** Existing file (of the content's full size) the chunk is written into at `offset`. */
  out: string;
}

export interface VerifyFileArgs {
  path: string;
  digest: string;
  size: number;
}

// ---------------------------------------------------------------------------
// Per-worker state
// ---------------------------------------------------------------------------

const MAX_CHAINS = 16;
const chains = new Map<string, Promise<Chain>>();

/** Verified cache files of contents, by sha256 hex (accumulated from the tasks' arguments). */
const basePaths = new Map<string, string>();

/** Bases recently read by this worker. */
const BASE_BUDGET = 192 * 1024 * 1024;
const bases = new Map<string, Buffer>();
let baseBytes = 0;

/**
 * An open chain, kept per worker (least recently used closed first). Its
 * `content` looks in the cache files first: a patch base the main thread
 * already materialised and verified is read, not rebuilt through every
 * level below. Contents are named by digest, so any verified copy is the
 * content; when the file has gone meanwhile (evicted), the chain rebuilds it.
 */
function chainOf(paths: string[]): Promise<Chain> {
  const key = paths.join('\0');
  let c = chains.get(key);
  if (c) {
    chains.delete(key);
    chains.set(key, c);
    return c;
  }
  // Indexes decoded once per thread: a base image's index serves every chain of its updates.
  // the manager's main thread opened and checked these chains whole: a build thread needs their stored contents only
  c = Chain.open(paths, { reuse: true, contentsOnly: true }).then((chain) => {
    const rebuild = chain.content.bind(chain);
    chain.content = async (digest: Buffer, level?: number, depth?: number): Promise<Buffer> => {
      const hex = digest.toString('hex');
      const cached = await loadBase(hex);
      return cached ?? rebuild(digest, level, depth);
    };
    return chain;
  });
  c.catch(() => chains.delete(key));
  chains.set(key, c);
  while (chains.size > MAX_CHAINS) {
    const [oldest, old] = chains.entries().next().value as [string, Promise<Chain>];
    chains.delete(oldest);
    old.then((x) => x.close()).catch(() => undefined);
  }
  return c;
}

/** A verified content from the cache files handed over, or undefined. */
async function loadBase(hex: string): Promise<Buffer | undefined> {
  const hit = bases.get(hex);
  if (hit) {
    bases.delete(hex);
    bases.set(hex, hit);
    return hit;
  }
  const p = basePaths.get(hex);
  if (!p) return undefined;
  let data: Buffer;
  try {
    data = await fsp.readFile(p);
  } catch {
    basePaths.delete(hex);
    return undefined;
  }
  if (data.length <= BASE_BUDGET / 2) {
    bases.set(hex, data);
    baseBytes += data.length;
    for (const [k, v] of bases) {
      if (baseBytes <= BASE_BUDGET) break;
      bases.delete(k);
      baseBytes -= v.length;
    }
  }
  return data;
}

/** The chain and blob of a content source (bases registered). */
async function open(a: ContentSource): Promise<{ chain: Chain; blob: Blob }> {
  for (const [hex, p] of Object.entries(a.bases)) basePaths.set(hex, p);
  const chain = await chainOf(a.chain);
  const reader = chain.readers[a.level];
  const blob = reader?.blob(a.digest);
  if (!blob) throw notFound(`content sha256:${a.digest} is not stored at level ${a.level} of the chain`);
  return { chain, blob };
}


function tempName(out: string): string {
  return join(dirname(out), `.tmp-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2)}`);
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

/** Materialises a whole content into `out` (temp file, verified, renamed). Returns its size. */
export async function buildContent(a: BuildContentArgs): Promise<number> {
  const { chain, blob } = await open(a);
  const tmp = tempName(a.out);
  const fh = await fsp.open(tmp, 'wx', 0o600);
  try {
    // chain.chunk verifies each chunk against its own digest; a content of one chunk whose
    // digest is the content's is thereby verified, and is not hashed a second time.
    const once = blob.chunks.length === 1 && blob.chunks[0].rawDigest.toString('hex') === a.digest;
    const h = once ? undefined : createHash('sha256');
    let pos = 0;
    for (const c of blob.chunks) {
      const raw = await chain.chunk(a.level, c);
      h?.update(raw);
      await writeFully(fh, raw, pos);
      pos += raw.length;
    }
    if (pos !== blob.size || (h ? h.digest('hex') : a.digest) !== a.digest) {
      throw corrupt(`${a.chain[a.level]}: content sha256:${a.digest} does not match its digest after decoding`);
    }
    await fh.close();
    await fsp.rename(tmp, a.out);
    return pos;
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

/** Materialises one chunk of a content into `out` at `offset`. Returns the chunk's size. */
export async function buildChunk(a: BuildChunkArgs): Promise<number> {
  const { chain, blob } = await open(a);
  const c = blob.chunks[a.chunk];
  if (!c) throw notFound(`content sha256:${a.digest} has no chunk ${a.chunk}`);
  const raw = await chain.chunk(a.level, c);
  // The chunk's digest is checked by chain.chunk; its size decides where the next chunk goes.
  if (raw.length !== c.rawSize) throw corrupt(`${a.chain[a.level]}: chunk ${a.chunk} of sha256:${a.digest} is ${raw.length} bytes, its index says ${c.rawSize}`);
  const fh = await fsp.open(a.out, 'r+');
  try {
    await writeFully(fh, raw, a.offset);
  } finally {
    await fh.close();
  }
  return raw.length;
}

/**
 * Opens a chain in this thread ahead of its first content (a new mount's
 * indexes are decoded here while nothing waits on them). Returns true.
 */
export async function warmChain(a: { chain: string[] }): Promise<boolean> {
  await chainOf(a.chain);
  return true;
}

/** True when the file at `path` has `size` bytes whose sha256 is `digest`. */
export async function verifyFile(a: VerifyFileArgs): Promise<boolean> {
  const st = await fsp.stat(a.path);
  if (st.size !== a.size) return false;
  const h = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    createReadStream(a.path, { highWaterMark: 1024 * 1024 })
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve());
  });
  return h.digest('hex') === a.digest;
}

/** Drops the per-worker base cache (tests, memory pressure). */
export function dropBases(): number {
  const n = bases.size;
  bases.clear();
  baseBytes = 0;
  return n;
}
