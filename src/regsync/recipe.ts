/**
 * Compression recipes: how to turn a rebuilt layer tar back into the exact
 * compressed blob the registry held, so that the layer digest — and with it
 * the manifest and its digest — stays the same.
 *
 * A gzip blob is header + raw deflate body + trailer (CRC-32 and size of the
 * tar). The header (mtime, OS, name, extra fields) is recorded verbatim and the
 * trailer is recomputed, so only the deflate body has to be reproduced. At diff
 * time every candidate compressor is tried against the original body and the
 * first one that reproduces it exactly is recorded:
 *
 *  - `node-zlib`: Node's bundled zlib (levels 1-9, memLevel 1-9, the five
 *    strategies, windowBits 15). Candidates are pruned cheaply: deflating a
 *    prefix of the tar without flushing yields a prefix of the final body, so
 *    a candidate whose prefix output differs is dropped early.
 *  - `gzip`: the GNU gzip program (levels 1-9, with and without --rsyncable),
 *    run with -n; its 10-byte header and its trailer are replaced. A run is
 *    killed at the first byte that differs.
 *
 *  - `go-flate`: Go's compress/flate (levels -2 to 9), what Go's
 *    compress/gzip writes (docker, BuildKit, containerd at their defaults);
 *    `klauspost-flate` and `pgzip`: klauspost/compress v1.15.12's flate at
 *    every level, alone (klauspost's gzip) or in pgzip's blocks (umoci): d4fs's
 *    own reimplementations of those encoders (./goflate.ts). Tried first when
 *    the header says a Go writer made it (OS 255; klauspost's writers also
 *    record the zero time as mtime 0x886e0900), pruned on a prefix.
 *
 *  - `record`: any other deflate stream (pigz, libdeflate, zopfli, 7-Zip,
 *    another klauspost version…) gets a reconstruction record
 *    (native/deflate/src/recon.c): block boundaries, Huffman headers and
 *    the LZ77 parse coded as corrections to a predictor run over the tar,
 *    shipped as a payload of the patch; apply rebuilds the stream from the
 *    tar and the record, bit for bit. Tried last: it costs bytes (0.5-10%
 *    of the layer) where the encoders above cost none.
 *
 *  - `members`: a layer of several gzip members (eStargz, concatenated gzip
 *    files): each member by Go's compress/flate or a record (./members.ts),
 *    described in one payload.
 *
 * Layers none of this reproduces are "not reproducible" (zstd layers,
 * deflate with constructs no encoder writes, data after the last member): the
 * apply side recompresses them with a deterministic fallback recipe and
 * rewrites the manifest.
 *
 * Everything here works on files (the tar and the original blob) and runs in a
 * worker thread or the main thread alike.
 */
import { spawn, spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { zstdCompressStream } from '../format/zstd';
import { corrupt, invalidArgument } from '../errors';
import { gzipHeaderLength } from '../delta/gzmember';
import { GO_LEVELS, goDeflate, goDeflatePrefix, KP_LEVELS, kpDeflate, kpDeflatePrefix, PGZIP_BLOCKS, recordDeflate, recordEncode } from './goflate';
import { decodeMembers, describeMembers, detectMembers, encodeMembers, gzipTrailer, membersBlob } from './members';

/** Node's zlib strategies by number (zlib.h). */
const STRATEGIES = [
  zlib.constants.Z_DEFAULT_STRATEGY,
  zlib.constants.Z_FILTERED,
  zlib.constants.Z_HUFFMAN_ONLY,
  zlib.constants.Z_RLE,
  zlib.constants.Z_FIXED,
];

/** A recipe that produces a layer blob from its tar. */
export type Recipe =
  | { kind: 'none' }
  | {
      kind: 'gzip';
      engine: 'node-zlib';
      /** zlib version that made the recipe (informational: the digest check is what counts). */
      zlib: string;
      level: number;
      memLevel: number;
      strategy: number;
      windowBits: number;
      /** gzip header bytes, base64. */
      header: string;
    }
  | {
      kind: 'gzip';
      engine: 'gzip';
      /** `gzip --version` first line of the program that made the recipe. */
      tool: string;
      level: number;
      rsyncable: boolean;
      /** gzip header bytes, base64. */
      header: string;
    }
  | {
      kind: 'gzip';
      engine: 'go-flate';
      /** Go's compress/flate level: -2 (Huffman only), 0-9 (-1, the default, recorded as 6). */
      level: number;
      /** gzip header bytes, base64. */
      header: string;
    }
  | {
      kind: 'gzip';
      /** klauspost/compress v1.15.12's flate, one stream (what its gzip writes). */
      engine: 'klauspost-flate';
      /** klauspost's level (-2 to 9; 5 is its default). */
      level: number;
      /** gzip header bytes, base64. */
      header: string;
    }
  | {
      kind: 'gzip';
      /** klauspost/pgzip v1.2.5: klauspost/compress v1.15.12's flate in blocks (see ./goflate.ts). */
      engine: 'pgzip';
      /** klauspost's level (-2 to 9; 5 is its default). */
      level: number;
      /** pgzip's block size in bytes. */
      blockSize: number;
      /** gzip header bytes, base64. */
      header: string;
    }
  | {
      kind: 'gzip';
      /** A reconstruction record of the deflate body (./goflate.ts, recordEncode), shipped as a payload. */
      engine: 'record';
      /** The payload that holds the record (-1 until the patch writer places it). */
      payload: number;
      /** Bytes of the deflate body the record rebuilds. */
      bodySize: number;
      /** gzip header bytes, base64. */
      header: string;
      /** The record's bytes, at hand (diff: made by detection; apply: read from the payload); never stored in the index. */
      record?: Buffer;
    }
  | {
      kind: 'gzip';
      /** Several gzip members, each rebuilt by Go's compress/flate or a record (./members.ts); described by a payload. */
      engine: 'members';
      /** The payload that describes the members (-1 until the patch writer places it). */
      payload: number;
      /** Bytes of the whole layer blob. */
      blobSize: number;
      /** Unused (each member has its own): the fallback header. */
      header: string;
      /** The description's bytes (encodeMembers), at hand as a record's are; never stored in the index. */
      record?: Buffer;
    }
  | { kind: 'zstd'; engine: 'zstd-napi'; level: number };

/** Recipes that carry a payload of the patch (their `record`): reconstruction records and gzip members' descriptions. */
export type PayloadRecipe = Extract<Recipe, { engine: 'record' | 'members' }>;

/** Whether a recipe carries a payload (needs index version 3). */
export function hasPayload(r: Recipe | undefined): r is PayloadRecipe {
  return r?.kind === 'gzip' && (r.engine === 'record' || r.engine === 'members');
}

/** Outcome of {@link detectRecipe}. */
export type Detection =
  | { reproducible: true; recipe: Recipe; tried: number }
  | { reproducible: false; reason: string; tried: number };

/** The header every fallback gzip blob gets: no name, mtime 0, XFL 0, OS unknown (255). */
export const FALLBACK_GZIP_HEADER = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);

/** The recipe used where the original compression cannot be reproduced. */
export function fallbackRecipe(compression: 'gzip' | 'zstd' | 'none'): Recipe {
  if (compression === 'none') return { kind: 'none' };
  if (compression === 'zstd') return { kind: 'zstd', engine: 'zstd-napi', level: 3 };
  return {
    kind: 'gzip',
    engine: 'node-zlib',
    zlib: process.versions.zlib ?? 'unknown',
    level: 6,
    memLevel: 8,
    strategy: zlib.constants.Z_DEFAULT_STRATEGY,
    windowBits: 15,
    header: FALLBACK_GZIP_HEADER.toString('base64'),
  };
}

/** Human description of a recipe, for reports. */
export function describeRecipe(r: Recipe): string {
  switch (r.kind) {
    case 'none':
      return 'uncompressed';
    case 'zstd':
      return `zstd level ${r.level} (zstd-napi)`;
    case 'gzip':
      if (r.engine === 'go-flate') return `Go compress/flate level ${r.level}`;
      if (r.engine === 'klauspost-flate') return `klauspost/compress flate level ${r.level} (v1.15.12)`;
      if (r.engine === 'pgzip') return `pgzip level ${r.level}, ${r.blockSize / 1024} KiB blocks (klauspost/compress v1.15.12)`;
      if (r.engine === 'record') return `deflate reconstruction record${r.record ? ` of ${r.record.length} bytes` : ''}`;
      if (r.engine === 'members') {
        if (!r.record) return 'gzip members, each rebuilt';
        try {
          return `${describeMembers(decodeMembers(r.record, r.blobSize))} (a description of ${r.record.length} bytes)`;
        } catch {
          return 'gzip members (a description that does not read)';
        }
      }
      return r.engine === 'gzip'
        ? `${r.tool.split(' ').slice(0, 2).join(' ')} -n -${r.level}${r.rsyncable ? ' --rsyncable' : ''}`
        : `node zlib ${r.zlib} level ${r.level} memLevel ${r.memLevel} strategy ${r.strategy}`;
  }
}

// ---------------------------------------------------------------------------
// Producing

const CHUNK = 1 << 20;

/** Stream a file in fixed-size chunks (deterministic chunking for stream compressors). */
async function* fileChunks(path: string): AsyncGenerator<Buffer> {
  const fh = await fsp.open(path, 'r');
  try {
    for (;;) {
      const buf = Buffer.allocUnsafe(CHUNK);
      const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
      if (bytesRead === 0) return;
      yield bytesRead === CHUNK ? buf : buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

/** CRC-32 and size (mod 2^32) of a file: the gzip trailer of its content. */
export async function gzipTrailerOf(path: string): Promise<Buffer> {
  let crc = 0;
  let size = 0;
  for await (const c of fileChunks(path)) {
    crc = zlib.crc32(c, crc);
    size += c.length;
  }
  return gzipTrailer(crc, size);
}

/**
 * Chunks of a transform fed with a file; stopping early (return) tears both
 * down, so no file handle is left to the garbage collector.
 */
async function* transformFile(t: NodeJS.ReadWriteStream & Readable, tarPath: string): AsyncGenerator<Buffer> {
  const src = Readable.from(fileChunks(tarPath));
  src.on('error', (e) => t.destroy(e));
  src.pipe(t);
  try {
    for await (const c of t) yield c as Buffer;
  } finally {
    src.destroy();
    t.destroy();
  }
}

/** Deflate body of a file by Node's zlib with the recipe's parameters. */
function nodeDeflateBody(r: Extract<Recipe, { engine: 'node-zlib' }>, tarPath: string): AsyncGenerator<Buffer> {
  const d = zlib.createDeflateRaw({ level: r.level, memLevel: r.memLevel, strategy: r.strategy, windowBits: r.windowBits, chunkSize: CHUNK });
  return transformFile(d, tarPath);
}

/** `gzip` program found on PATH, as its version line; undefined when absent. */
let gzipTool: string | null | undefined;
export function gzipProgram(): string | undefined {
  if (gzipTool === undefined) {
    const r = spawnSync('gzip', ['--version'], { encoding: 'utf8' });
    gzipTool = r.status === 0 && /gzip/i.test(r.stdout) ? r.stdout.split('\n')[0].trim() : null;
  }
  return gzipTool ?? undefined;
}

/**
 * Deflate body made by the gzip program: its output without its 10-byte
 * header and 8-byte trailer. The child is killed when the consumer stops.
 */
async function* gzipProgramBody(level: number, rsyncable: boolean, tarPath: string): AsyncGenerator<Buffer> {
  const args = ['-c', '-n', `-${level}`];
  if (rsyncable) args.push('--rsyncable');
  const child = spawn('gzip', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  child.stdin.on('error', () => undefined);
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  let gone = false;
  const stdinGone = new Promise<void>((r) => child.stdin.once('close', () => r()));
  void stdinGone.then(() => (gone = true));
  const feeding = (async () => {
    try {
      for await (const c of fileChunks(tarPath)) {
        if (gone || child.killed) return;
        if (!child.stdin.write(c)) await Promise.race([new Promise<void>((r) => child.stdin.once('drain', () => r())), stdinGone]);
      }
      child.stdin.end();
    } catch {
      // the child went away; its exit status tells
    }
  })();
  let head = Buffer.alloc(0);
  let tail = Buffer.alloc(0);
  let finished = false;
  try {
    for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
      let c = chunk;
      if (head.length < 10) {
        const take = Math.min(10 - head.length, c.length);
        head = Buffer.concat([head, c.subarray(0, take)]);
        c = c.subarray(take);
        if (head.length === 10 && (head[0] !== 0x1f || head[1] !== 0x8b || head[3] !== 0)) {
          throw corrupt('gzip program wrote an unexpected header');
        }
      }
      const all = tail.length ? Buffer.concat([tail, c]) : c;
      if (all.length > 8) {
        yield all.subarray(0, all.length - 8);
        tail = Buffer.from(all.subarray(all.length - 8));
      } else {
        tail = Buffer.from(all);
      }
    }
    await feeding;
    const code = await exited;
    if (code !== 0) throw corrupt(`gzip -${level} failed (exit ${code}): ${stderr.trim()}`);
    finished = true;
  } finally {
    if (!finished) {
      child.kill('SIGKILL');
      child.stdin.destroy();
      await feeding;
    }
  }
}

/** CRC-32 and size of what went through {@link countedChunks}: the gzip trailer, once the input is read to its end. */
interface Tally {
  crc: number;
  size: number;
  done: boolean;
}

/** fileChunks, tallying CRC-32 and size as the chunks go by (one read of the tar for both the body and the trailer). */
async function* countedChunks(path: string, t: Tally): AsyncGenerator<Buffer> {
  for await (const c of fileChunks(path)) {
    t.crc = zlib.crc32(c, t.crc);
    t.size += c.length;
    yield c;
  }
  t.done = true;
}

/**
 * Compressed body (between header and trailer for gzip) of the recipe applied
 * to a tar file; Go's and klauspost's encoders fill `tally` as they read it.
 */
function recipeBody(r: Recipe, tarPath: string, tally?: Tally): AsyncIterable<Buffer> {
  const input = (): AsyncIterable<Buffer> => (tally ? countedChunks(tarPath, tally) : fileChunks(tarPath));
  switch (r.kind) {
    case 'none':
      return fileChunks(tarPath);
    case 'zstd':
      return transformFile(zstdCompressStream({ compressionLevel: r.level, checksumFlag: true }), tarPath);
    case 'gzip':
      if (r.engine === 'go-flate') return goDeflate(r.level, input());
      if (r.engine === 'klauspost-flate') return kpDeflate(r.level, 0, input());
      if (r.engine === 'pgzip') return kpDeflate(r.level, r.blockSize, input());
      if (r.engine === 'record') {
        if (!r.record) throw invalidArgument('a record recipe without its record');
        return recordDeflate(r.record, r.bodySize, input());
      }
      if (r.engine === 'members') throw invalidArgument('a members recipe makes the whole blob (produceBlob), not a body');
      return r.engine === 'gzip' ? gzipProgramBody(r.level, r.rsyncable, tarPath) : nodeDeflateBody(r, tarPath);
  }
}

/**
 * The complete blob a recipe makes from a tar file (gzip: recorded header,
 * body, recomputed trailer). The caller hashes it and checks the digest.
 */
export async function* produceBlob(r: Recipe, tarPath: string): AsyncGenerator<Buffer> {
  validateRecipe(r);
  if (r.kind === 'gzip' && r.engine === 'members') {
    // every member its own header, body and trailer
    if (!r.record) throw invalidArgument('a members recipe without its description');
    yield* membersBlob(decodeMembers(r.record, r.blobSize), tarPath);
    return;
  }
  if (r.kind === 'gzip') yield Buffer.from(r.header, 'base64');
  const tally: Tally = { crc: 0, size: 0, done: false };
  for await (const c of recipeBody(r, tarPath, tally)) yield c;
  if (r.kind !== 'gzip') return;
  if (!tally.done) {
    yield await gzipTrailerOf(tarPath); // engines that read the tar themselves
    return;
  }
  yield gzipTrailer(tally.crc, tally.size);
}

/** Refuse recipes with values outside what the engines accept (they come from patch files). */
export function validateRecipe(r: Recipe): void {
  const int = (v: unknown, lo: number, hi: number): boolean => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
  const bad = (m: string): never => {
    throw invalidArgument(`invalid compression recipe: ${m}`);
  };
  if (!r || typeof r !== 'object') bad('not an object');
  switch (r.kind) {
    case 'none':
      return;
    case 'zstd':
      if (r.engine !== 'zstd-napi' || !int(r.level, 1, 19)) bad('zstd level');
      return;
    case 'gzip': {
      if (typeof r.header !== 'string' || r.header.length > 4096) bad('gzip header');
      const h = Buffer.from(r.header, 'base64');
      const probe = Buffer.concat([h, Buffer.alloc(8)]);
      if (gzipHeaderLength(probe) !== h.length) bad('gzip header is not a valid header');
      if (r.engine === 'node-zlib') {
        if (!int(r.level, 0, 9) || !int(r.memLevel, 1, 9) || !STRATEGIES.includes(r.strategy) || !int(r.windowBits, 9, 15)) bad('zlib parameters');
      } else if (r.engine === 'gzip') {
        if (!int(r.level, 1, 9) || typeof r.rsyncable !== 'boolean' || typeof r.tool !== 'string') bad('gzip parameters');
      } else if (r.engine === 'go-flate') {
        if (!GO_LEVELS.includes(r.level)) bad('Go compress/flate level');
      } else if (r.engine === 'klauspost-flate') {
        if (!KP_LEVELS.includes(r.level)) bad('klauspost/compress level');
      } else if (r.engine === 'pgzip') {
        if (!KP_LEVELS.includes(r.level)) bad('klauspost/compress level');
        if (!int(r.blockSize, 16385, 64 << 20)) bad('pgzip block size');
      } else if (r.engine === 'record') {
        if (!int(r.payload, -1, 999_999_999) || !int(r.bodySize, 2, MAX_RECORD_BODY)) bad('record payload or body size');
      } else if (r.engine === 'members') {
        if (!int(r.payload, -1, 999_999_999) || !int(r.blobSize, 20, MAX_RECORD_BODY)) bad('members payload or layer size');
      } else {
        bad(`unknown gzip engine ${String((r as { engine?: unknown }).engine)}`);
      }
      return;
    }
    default:
      bad(`unknown kind ${String((r as { kind?: unknown }).kind)}`);
  }
}

// ---------------------------------------------------------------------------
// Stored form

/*
 * How a recipe is stored in a patch index (FORMAT.md, "Recipes"): one short
 * string of space-separated fields instead of a JSON object,
 *
 *   ENGINE [INT ...] [@HEADER] [~INFO]
 *
 *   none | zstd LEVEL | go LEVEL | kp LEVEL | pgzip LEVEL BLOCKSIZE
 *   | zlib LEVEL MEMLEVEL STRATEGY WINDOWBITS | gzip LEVEL RSYNCABLE(0|1)
 *   | rec PAYLOAD BODYSIZE | gzm PAYLOAD BLOBSIZE
 *
 * HEADER is the gzip header in base64 without padding, left out when it is
 * the one the engine writes by default (defaultGzipHeader: Go's and
 * klauspost's writers with no name and a zero time, GNU gzip -n, d4fs's
 * fallback header for zlib); INFO, the rest of the string, is the zlib
 * version or the gzip program's version line (node-zlib and gzip only). A Go
 * layer's recipe is thus "go 6" (6 bytes of JSON). Readers also accept the
 * object form earlier patches stored ({@link readRecipe}).
 */

/** The mtime klauspost's gzip writers record for a zero time (Go's time.Time{}.Unix() as a uint32); Go's own records 0. */
const KLAUSPOST_ZERO_MTIME = 0x886e0900;

const STORED_ENGINES = { 'go-flate': 'go', 'klauspost-flate': 'kp', pgzip: 'pgzip', 'node-zlib': 'zlib', gzip: 'gzip', record: 'rec', members: 'gzm' } as const;
/** The stored form's syntax: engine, integers (canonical: no leading zeros, no "-0"), header, info. */
const STORED_RE = /^(none|zstd|go|kp|pgzip|zlib|gzip|rec|gzm)((?: (?:0|-?[1-9][0-9]{0,8}))*)(?: @([A-Za-z0-9+/]{14,4096}))?(?: ~([\x20-\x7e]{1,200}))?$/;
/** Longest stored recipe read (the header's 4096 characters of base64 and the info's 200 bound it anyway). */
const STORED_MAX = 4400;

/** The gzip header `engine` writes at `level` when nothing is set (no name, zero time): the header a stored recipe leaves out. */
export function defaultGzipHeader(engine: Extract<Recipe, { kind: 'gzip' }>['engine'], level: number): Buffer {
  if (engine === 'node-zlib' || engine === 'members') return FALLBACK_GZIP_HEADER;
  if (engine === 'record') return Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]); // gzip -n's, as pigz -n writes it
  // XFL: 2 for the best compression (9), 4 for the fastest (1), as Go's, klauspost's and GNU gzip's writers record it
  const xfl = level === 9 ? 2 : level === 1 ? 4 : 0;
  const h = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
  if (engine === 'klauspost-flate' || engine === 'pgzip') h.writeUInt32LE(KLAUSPOST_ZERO_MTIME, 4);
  if (engine === 'gzip') h[9] = 3; // Unix
  return h;
}

/** The stored form of a recipe (see above); {@link readRecipe} gives it back. */
export function storedRecipe(r: Recipe): string {
  validateRecipe(r);
  switch (r.kind) {
    case 'none':
      return 'none';
    case 'zstd':
      return `zstd ${r.level}`;
    case 'gzip': {
      const ints =
        r.engine === 'members'
          ? [r.payload, r.blobSize]
          : r.engine === 'record'
          ? [r.payload, r.bodySize]
          : r.engine === 'pgzip'
          ? [r.level, r.blockSize]
          : r.engine === 'node-zlib'
            ? [r.level, r.memLevel, r.strategy, r.windowBits]
            : r.engine === 'gzip'
              ? [r.level, r.rsyncable ? 1 : 0]
              : [r.level];
      let s = [STORED_ENGINES[r.engine], ...ints].join(' ');
      const header = Buffer.from(r.header, 'base64');
      if (r.engine !== 'members' && !header.equals(defaultGzipHeader(r.engine, r.engine === 'record' ? 0 : r.level))) s += ` @${header.toString('base64').replace(/=+$/, '')}`;
      const info = r.engine === 'node-zlib' ? r.zlib : r.engine === 'gzip' ? r.tool : undefined;
      // informational only: anything outside printable ASCII or too long is cut, never refused
      if (info !== undefined) s += ` ~${info.replace(/[^\x20-\x7e]/g, '?').slice(0, 200) || '?'}`;
      return s;
    }
  }
}

/**
 * A recipe as a patch index stores it (untrusted): the stored string or the
 * object form of earlier patches, checked strictly; throws INVALID_ARGUMENT
 * on anything else.
 */
export function readRecipe(v: unknown): Recipe {
  if (typeof v !== 'string') {
    validateRecipe(v as Recipe);
    return v as Recipe;
  }
  const bad = (m: string): never => {
    throw invalidArgument(`invalid compression recipe: ${m}`);
  };
  const m = v.length <= STORED_MAX ? STORED_RE.exec(v) : null;
  if (!m) return bad(`not a recipe: ${JSON.stringify(v.slice(0, 40))}${v.length > 40 ? '…' : ''}`);
  const [, engine, intText, headerText, info] = m;
  const ints = intText ? intText.slice(1).split(' ').map(Number) : [];
  const arity = (n: number): void => {
    if (ints.length !== n) bad(`${engine} takes ${n} numbers, not ${ints.length}`);
  };
  if (info !== undefined && engine !== 'zlib' && engine !== 'gzip') bad(`${engine} takes no version text`);
  if (headerText !== undefined && (engine === 'none' || engine === 'zstd' || engine === 'gzm')) bad(`${engine} takes no gzip header`);
  let header: Buffer | undefined;
  if (headerText !== undefined) {
    header = Buffer.from(headerText, 'base64');
    // canonical base64 only: what re-encodes to the same text (no stray trailing bits, no length that is not one)
    if (header.toString('base64').replace(/=+$/, '') !== headerText) bad('gzip header is not canonical base64');
  }
  let r: Recipe;
  const level = ints[0];
  const h = (e: Extract<Recipe, { kind: 'gzip' }>['engine']): string => (header ?? defaultGzipHeader(e, level)).toString('base64');
  switch (engine) {
    case 'none':
      arity(0);
      r = { kind: 'none' };
      break;
    case 'zstd':
      arity(1);
      r = { kind: 'zstd', engine: 'zstd-napi', level };
      break;
    case 'go':
      arity(1);
      r = { kind: 'gzip', engine: 'go-flate', level, header: h('go-flate') };
      break;
    case 'kp':
      arity(1);
      r = { kind: 'gzip', engine: 'klauspost-flate', level, header: h('klauspost-flate') };
      break;
    case 'pgzip':
      arity(2);
      r = { kind: 'gzip', engine: 'pgzip', level, blockSize: ints[1], header: h('pgzip') };
      break;
    case 'gzm':
      arity(2);
      if (ints[0] < 0) bad('a members payload is not negative');
      r = { kind: 'gzip', engine: 'members', payload: ints[0], blobSize: ints[1], header: h('members') };
      break;
    case 'rec':
      arity(2);
      if (ints[0] < 0) bad('a record payload is not negative');
      r = { kind: 'gzip', engine: 'record', payload: ints[0], bodySize: ints[1], header: h('record') };
      break;
    case 'zlib':
      arity(4);
      r = { kind: 'gzip', engine: 'node-zlib', zlib: info ?? 'unknown', level, memLevel: ints[1], strategy: ints[2], windowBits: ints[3], header: h('node-zlib') };
      break;
    default: // gzip
      arity(2);
      if (ints[1] !== 0 && ints[1] !== 1) bad('gzip --rsyncable is 0 or 1');
      r = { kind: 'gzip', engine: 'gzip', tool: info ?? 'gzip', level, rsyncable: ints[1] === 1, header: h('gzip') };
  }
  validateRecipe(r);
  return r;
}

// ---------------------------------------------------------------------------
// Detecting

/** Compare a produced stream with `length` bytes of a file from `offset`; stops at the first difference. */
async function sameAsFile(produced: AsyncIterable<Buffer>, fh: fsp.FileHandle, offset: number, length: number): Promise<boolean> {
  let pos = 0;
  const iter = produced[Symbol.asyncIterator]();
  try {
    for (;;) {
      const { value, done } = await iter.next();
      if (done) break;
      const c = value as Buffer;
      if (pos + c.length > length) return false;
      const orig = Buffer.allocUnsafe(c.length);
      const { bytesRead } = await fh.read(orig, 0, c.length, offset + pos);
      if (bytesRead !== c.length || !orig.equals(c)) return false;
      pos += c.length;
    }
    return pos === length;
  } finally {
    await iter.return?.(undefined);
  }
}

/** The zlib candidates, most likely first. */
function zlibCandidates(xfl: number): { level: number; memLevel: number; strategy: number }[] {
  // XFL 2 = "maximum compression", 4 = "fastest" (what zlib's own gzip writer records).
  const levels = xfl === 2 ? [9, 8, 7, 6, 5, 4, 3, 2, 1] : xfl === 4 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : [6, 9, 1, 5, 7, 8, 4, 3, 2];
  const out: { level: number; memLevel: number; strategy: number }[] = [];
  for (const memLevel of [8, 9, 7, 6, 5, 4, 3, 2, 1]) {
    for (const strategy of STRATEGIES) {
      for (const level of levels) {
        if (strategy === zlib.constants.Z_HUFFMAN_ONLY && level !== levels[0]) continue; // level is irrelevant
        out.push({ level, memLevel, strategy });
      }
    }
  }
  return out;
}


/** Go's levels to try, most likely first: Go records XFL 2 for level 9 and 4 for level 1 only. */
function goCandidates(xfl: number): number[] {
  if (xfl === 2) return [9];
  if (xfl === 4) return [1];
  return [6, 5, 2, 3, 4, 7, 8, 0, -2];
}

/** klauspost's levels to try, most likely first (its default 5 first; XFL 2 and 4 as Go's: level 9 and 1). */
function kpCandidates(xfl: number): number[] {
  if (xfl === 2) return [9];
  if (xfl === 4) return [1];
  return [5, 6, 4, 3, 2, 7, 8, 0, -2].filter((l) => KP_LEVELS.includes(l));
}

/** Sync-flush markers (an empty stored block: 00 00 ff ff) looked at for pgzip's block size. */
const PGZIP_MARKERS = 3;
/** Bytes inflated at most to read a block size (bounds what a hostile layer can make detection allocate; blocks of pgzip are ~0.1-4 MiB). */
const PGZIP_MAX_PROBE = 16 << 20;

/**
 * pgzip block sizes to try for a body starting with `bodyHead`: the sizes
 * seen in practice (PGZIP_BLOCKS), then any the body itself shows. pgzip ends
 * every block with a sync flush, so the input inflated up to one of the first
 * markers is a block's size (a marker's bytes may also occur inside
 * compressed data: such a size is simply one more candidate the prefix check
 * refuses).
 */
function pgzipBlocks(bodyHead: Buffer): number[] {
  const out = [...PGZIP_BLOCKS];
  const marker = Buffer.from([0, 0, 0xff, 0xff]);
  for (let at = bodyHead.indexOf(marker), n = 0; at >= 0 && n < PGZIP_MARKERS; at = bodyHead.indexOf(marker, at + 1), n++) {
    try {
      const size = zlib.inflateRawSync(bodyHead.subarray(0, at + 4), { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: PGZIP_MAX_PROBE }).length;
      // the first block, or the first two or three when it is found at a later marker
      for (const k of [1, 2, 3]) {
        const b = size / k;
        if (Number.isInteger(b) && b > 16384 && !out.includes(b)) out.push(b);
      }
    } catch {
      // not a marker: compressed bytes that look like one
    }
  }
  return out;
}

/** Largest deflate body a record is made for: the encoder holds the body in memory, and the stored form's integers have 9 digits. */
export const MAX_RECORD_BODY = 999_999_999;

/**
 * A reconstruction record of the body (`bodyLen` bytes at `hlen` of the open blob), confirmed by
 * rebuilding the body from the tar with it; or why there is none.
 */
async function recordRecipe(fh: fsp.FileHandle, hlen: number, bodyLen: number, h64: string, tarPath: string, tarSize: number): Promise<{ recipe: Recipe } | { reason: string }> {
  if (bodyLen > MAX_RECORD_BODY) return { reason: `no reconstruction record for a body of more than ${MAX_RECORD_BODY} bytes` };
  const body = Buffer.allocUnsafe(bodyLen);
  const { bytesRead } = await fh.read(body, 0, bodyLen, hlen);
  if (bytesRead !== bodyLen) return { reason: 'the layer blob changed while it was read' };
  const made = recordEncode(body);
  if (typeof made === 'string') return { reason: `no reconstruction record: ${made}` };
  if (made.size !== tarSize) return { reason: `the deflate stream inflates to ${made.size} bytes, the tar has ${tarSize}` };
  const recipe: Recipe = { kind: 'gzip', engine: 'record', payload: -1, bodySize: bodyLen, header: h64, record: made.record };
  // the record is checked as every recipe is: the body it rebuilds from the tar must be the original
  if (!(await sameAsFile(recipeBody(recipe, tarPath), fh, hlen, bodyLen))) return { reason: 'the reconstruction record did not rebuild the body (a d4fs bug: please report it)' };
  return { recipe };
}

/** Options of {@link detectRecipe}. */
export interface DetectOptions {
  /** Make a reconstruction record when no encoder reproduces the layer (default true). */
  records?: boolean;
  /** Try the gzip program too (default: when it is on PATH). */
  gzipProgram?: boolean;
  /** Try Go's and klauspost's encoders (default true). */
  goEncoders?: boolean;
}

/**
 * Find a recipe that reproduces `blobPath` (the original compressed layer)
 * from `tarPath` (its verified uncompressed tar), or say why there is none.
 */
export async function detectRecipe(blobPath: string, tarPath: string, compression: 'gzip' | 'zstd' | 'none', opts: DetectOptions = {}): Promise<Detection> {
  if (compression === 'none') return { reproducible: true, recipe: { kind: 'none' }, tried: 0 };
  if (compression === 'zstd') {
    return { reproducible: false, reason: 'zstd layers are not reproduced (recompressed with zstd level 3)', tried: 0 };
  }
  const blobSize = (await fsp.stat(blobPath)).size;
  const tarSize = (await fsp.stat(tarPath)).size;
  const fh = await fsp.open(blobPath, 'r');
  let tried = 0;
  try {
    const first = Buffer.alloc(Math.min(blobSize, 65536));
    await fh.read(first, 0, first.length, 0);
    const hlen = gzipHeaderLength(first);
    if (hlen < 0) return { reproducible: false, reason: 'gzip header not understood', tried };
    const trailer = Buffer.alloc(8);
    await fh.read(trailer, 0, 8, blobSize - 8);
    if (!trailer.equals(await gzipTrailerOf(tarPath))) {
      // several gzip members (eStargz, concatenated files), or data after the stream
      tried++;
      if (blobSize > MAX_RECORD_BODY) return { reproducible: false, reason: `several gzip members or data after the gzip stream, in a layer over ${MAX_RECORD_BODY} bytes`, tried };
      const blob = Buffer.allocUnsafe(blobSize);
      await fh.read(blob, 0, blobSize, 0);
      const m = await detectMembers(blob, tarPath, tarSize, opts.records !== false);
      if ('reason' in m) return { reproducible: false, reason: `several gzip members or data after the gzip stream: ${m.reason}`, tried };
      return { reproducible: true, recipe: { kind: 'gzip', engine: 'members', payload: -1, blobSize, header: FALLBACK_GZIP_HEADER.toString('base64'), record: encodeMembers(m.members) }, tried };
    }
    const header = first.subarray(0, hlen);
    const bodyLen = blobSize - hlen - 8;
    const xfl = header[8];
    const os = header[9];

    const prefixMax = Math.min(tarSize, 4 << 20);
    const prefix = Buffer.alloc(prefixMax);
    const tfh = await fsp.open(tarPath, 'r');
    try {
      await tfh.read(prefix, 0, prefixMax, 0);
    } finally {
      await tfh.close();
    }
    const bodyHead = Buffer.alloc(Math.min(bodyLen, 4 << 20));
    await fh.read(bodyHead, 0, bodyHead.length, hlen);

    // Go's encoders: first when the header says a Go writer made it (OS 255), else after zlib and gzip.
    // They write whole blocks (Go's: 16k tokens, 64 KiB at level 1; pgzip's: its block size): the
    // first ones, from a growing prefix until one is out, tell a wrong candidate at ~10-100 ms (pgzip's
    // prefix in one thread: with several, blocks come out in batches, later).
    const prefixMatches = (deflatePrefix: (p: Buffer) => Buffer): boolean => {
      for (const n of [256 << 10, 1 << 20, 4 << 20]) {
        const out = deflatePrefix(prefix.subarray(0, Math.min(n, prefixMax)));
        if (!bodyHead.subarray(0, out.length).equals(out)) return false;
        if (out.length > 0 || n >= prefixMax) return true;
      }
      return true;
    };
    const h64 = header.toString('base64');
    const candidates: { recipe: Recipe; prefix: (p: Buffer) => Buffer }[] = [];
    const goFirst = header.readUInt32LE(4) !== KLAUSPOST_ZERO_MTIME;
    const goCands = goCandidates(xfl).map((level) => ({ recipe: { kind: 'gzip', engine: 'go-flate', level, header: h64 } as Recipe, prefix: (p: Buffer) => goDeflatePrefix(level, p) }));
    const kpCands = kpCandidates(xfl).flatMap((level) => [
            ...pgzipBlocks(bodyHead).map((blockSize) => ({ recipe: { kind: 'gzip', engine: 'pgzip', level, blockSize, header: h64 } as Recipe, prefix: (p: Buffer) => kpDeflatePrefix(level, blockSize, p, 1) })),
            { recipe: { kind: 'gzip', engine: 'klauspost-flate', level, header: h64 } as Recipe, prefix: (p: Buffer) => kpDeflatePrefix(level, 0, p) },
          ]);
    if (opts.goEncoders !== false) candidates.push(...(goFirst ? [...goCands, ...kpCands] : [...kpCands, ...goCands]));
    const tryGo = async (): Promise<Detection | undefined> => {
      for (const c of candidates) {
        tried++;
        if (!prefixMatches(c.prefix)) continue;
        if (await sameAsFile(recipeBody(c.recipe, tarPath), fh, hlen, bodyLen)) return { reproducible: true, recipe: c.recipe, tried };
      }
      return undefined;
    };
    if (os === 255) {
      const go = await tryGo();
      if (go) return go;
    }

    // 1. Node's zlib, pruned on growing prefixes of the tar.
    let alive = zlibCandidates(xfl);
    for (const n of [64 << 10, 512 << 10, 4 << 20]) {
      const len = Math.min(n, prefixMax);
      const whole = len === tarSize;
      alive = alive.filter((c) => {
        tried++;
        const out = zlib.deflateRawSync(prefix.subarray(0, len), {
          ...c,
          windowBits: 15,
          finishFlush: whole ? zlib.constants.Z_FINISH : zlib.constants.Z_NO_FLUSH,
        });
        if (whole) return out.length === bodyLen && bodyHead.subarray(0, out.length).equals(out);
        return out.length <= bodyHead.length && bodyHead.subarray(0, out.length).equals(out);
      });
      if (alive.length === 0 || len === prefixMax) break;
    }
    for (const c of alive) {
      const recipe: Recipe = { kind: 'gzip', engine: 'node-zlib', zlib: process.versions.zlib ?? 'unknown', ...c, windowBits: 15, header: header.toString('base64') };
      if (tarSize <= prefixMax || (await sameAsFile(recipeBody(recipe, tarPath), fh, hlen, bodyLen))) {
        return { reproducible: true, recipe, tried };
      }
    }

    // 2. The gzip program.
    const tool = opts.gzipProgram === false ? undefined : gzipProgram();
    if (tool) {
      const levels = xfl === 2 ? [9, 6, 8, 7, 5, 4, 3, 2, 1] : xfl === 4 ? [1, 2, 3, 6, 9, 4, 5, 7, 8] : [6, 9, 1, 5, 7, 8, 4, 3, 2];
      for (const rsyncable of [false, true]) {
        for (const level of levels) {
          tried++;
          if (await sameAsFile(gzipProgramBody(level, rsyncable, tarPath), fh, hlen, bodyLen)) {
            return { reproducible: true, recipe: { kind: 'gzip', engine: 'gzip', tool, level, rsyncable, header: header.toString('base64') }, tried };
          }
        }
      }
    }
    if (os !== 255) {
      const go = await tryGo();
      if (go) return go;
    }
    const who =
      os === 255
        ? "the gzip header (OS 255) points to a Go compressor, but neither Go's compress/flate nor klauspost/compress v1.15.12 at any level (alone, or in pgzip's blocks of any size its sync flushes show) reproduces it (another version of klauspost's, or another encoder)"
        : 'no zlib, gzip or Go encoder reproduces the deflate stream (pigz, another deflate implementation, or another zlib version)';
    let why = `${tried} candidate compressors tried: ${who}`;
    if (opts.records !== false) {
      tried++;
      const rec = await recordRecipe(fh, hlen, bodyLen, h64, tarPath, tarSize);
      if ('recipe' in rec) return { reproducible: true, recipe: rec.recipe, tried };
      why += `; ${rec.reason}`;
    }
    return { reproducible: false, reason: why, tried };
  } finally {
    await fh.close();
  }
}
