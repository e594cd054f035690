/**
 * Go tools' gzip, reproduced (issue 16): the deflate streams that Go's
 * compress/gzip (docker, BuildKit, containerd), klauspost/compress's gzip
 * and klauspost/pgzip (umoci, with 256 KiB blocks) write, byte for byte, so
 * that `registry apply` rebuilds such layers with their original digests.
 * The encoders are C (native/deflate, package d4fs-deflate): a
 * reimplementation of Go 1.19's compress/flate at every level (its
 * algorithm has not changed since Go 1.7), and of klauspost/compress
 * v1.15.12's flate at every level (5 is its default), alone or in
 * pgzip's blocks (v1.2.5); this is the one module that loads them.
 *
 * Calls are synchronous and CPU-bound (Go's level 6 runs at ~25-30 MB/s of
 * input here, faster than Go itself): the input goes in pieces of GO_PIECE
 * bytes so that a thread serving other work is held ~10 ms at a time (pgzip:
 * a call that completes a batch of blocks compresses them all, in native
 * threads, one block each).
 */
import type * as DeflateAddon from 'd4fs-deflate';
import { corrupt, failedPrecondition } from '../errors';

type Addon = typeof DeflateAddon;

let addon: Addon | undefined;
let loadError: Error | undefined;

function load(): Addon {
  if (addon) return addon;
  if (loadError) throw loadError;
  try {
    addon = require('d4fs-deflate') as Addon;
    return addon;
  } catch (e) {
    loadError = failedPrecondition(`the d4fs-deflate addon (native/deflate) is not built: ${(e as Error).message}`);
    throw loadError;
  }
}

/** Go's compression levels: -2 (Huffman only), 0 (stored), 1 (BestSpeed) to 9 (BestCompression); -1, the default, is 6. */
export const GO_LEVELS: readonly number[] = [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
/** Input bytes per call into the encoder. */
const GO_PIECE = 256 * 1024;

/** One open encoder of the addon: bytes in, the compressed bytes produced so far out. */
interface Encoder {
  write(b: Buffer): Buffer;
  close(): Buffer;
}

function goEncoder(level: number): Encoder {
  const a = load();
  const e = a.goNew(level);
  return { write: (b) => a.goWrite(e, b), close: () => a.goClose(e) };
}

function kpEncoder(level: number, pgzipBlock: number, threads = 0): Encoder {
  const a = load();
  const e = a.kpNew(level, pgzipBlock, threads);
  return { write: (b) => a.kpWrite(e, b), close: () => a.kpClose(e) };
}

/** The whole body `enc` writes for `input`, GO_PIECE bytes per call. */
async function* deflateStream(enc: Encoder, input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for await (const chunk of input) {
    for (let at = 0; at < chunk.length; at += GO_PIECE) {
      const out = enc.write(chunk.subarray(at, at + GO_PIECE));
      if (out.length) yield out;
    }
  }
  const tail = enc.close();
  if (tail.length) yield tail;
}

/**
 * What `enc` writes for `prefix`, the first bytes of the input, before it is
 * closed: whole blocks only, so a prefix of the body it writes for any input
 * that starts with `prefix` (empty when no block was complete yet). Not
 * closed: the rest depends on input not seen here; the encoder is freed when
 * collected.
 */
function deflatePrefix(enc: Encoder, prefix: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let at = 0; at < prefix.length; at += GO_PIECE) parts.push(enc.write(prefix.subarray(at, at + GO_PIECE)));
  return Buffer.concat(parts);
}

/** Deflate body Go's compress/flate writes at `level` for `input` (chunks of the tar, in order). */
export function goDeflate(level: number, input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  return deflateStream(goEncoder(level), input);
}

/** What Go's encoder at `level` writes for `prefix` before the input ends (see deflatePrefix). */
export function goDeflatePrefix(level: number, prefix: Buffer): Buffer {
  return deflatePrefix(goEncoder(level), prefix);
}

/** The whole deflate body for `input` (tests, small data). */
export function goDeflateSync(level: number, input: Buffer): Buffer {
  const enc = goEncoder(level);
  return Buffer.concat([deflatePrefix(enc, input), enc.close()]);
}

/** klauspost/compress's levels reproduced: -2 (Huffman only), 0 (stored), 1-6 (its fast encoders; 5 is its default, what pgzip and umoci use), 7-9 (its lazy matcher). */
export const KP_LEVELS: readonly number[] = [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
/** pgzip's block sizes tried at detection, most likely first: umoci's 256 KiB, pgzip's default 1 MiB. */
export const PGZIP_BLOCKS: readonly number[] = [256 * 1024, 1024 * 1024];

/**
 * Deflate body klauspost/compress's flate writes at `level` for `input`: one stream (`pgzipBlock` 0,
 * klauspost's gzip) or pgzip's blocks of `pgzipBlock` bytes. pgzip's blocks depend only on their input and
 * the previous block's tail, so the addon compresses `threads` of them at once in native threads (0: one
 * per processor); the output is the same for any number.
 */
export function kpDeflate(level: number, pgzipBlock: number, input: AsyncIterable<Buffer>, threads = 0): AsyncGenerator<Buffer> {
  return deflateStream(kpEncoder(level, pgzipBlock, threads), input);
}

/** What kpDeflate writes for `prefix` before the input ends (see deflatePrefix; pgzip: whole batches of `threads` blocks only). */
export function kpDeflatePrefix(level: number, pgzipBlock: number, prefix: Buffer, threads = 0): Buffer {
  return deflatePrefix(kpEncoder(level, pgzipBlock, threads), prefix);
}

/**
 * The reconstruction record of a raw deflate body (native/deflate/src/recon.c): what rebuilds the
 * body exactly from its uncompressed bytes (`size` of them), or why it cannot be recorded.
 * Synchronous and CPU-bound (~5 MB/s of body): call it in a worker thread.
 */
export function recordEncode(body: Buffer): { record: Buffer; size: number } | string {
  return load().recEncode(body);
}

/** The deflate stream at the start of `body` (a gzip member's; more may follow): its length and inflated size, or why it is not one. */
export function recordScan(body: Buffer): { consumed: number; size: number } | string {
  return load().recScan(body);
}

/**
 * The deflate body `record` describes, rebuilt from `input` (the uncompressed bytes, in order);
 * at most `maxOut` bytes. A record that does not fit the bytes is CORRUPT.
 */
export async function* recordDeflate(record: Uint8Array, maxOut: number, input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const a = load();
  const d = a.recNew(record, maxOut);
  const native = <T>(f: () => T): T => {
    try {
      return f();
    } catch (e) {
      throw corrupt(`deflate reconstruction record: ${(e as Error).message}`);
    }
  };
  for await (const chunk of input) {
    for (let at = 0; at < chunk.length; at += GO_PIECE) {
      const out = native(() => a.recWrite(d, chunk.subarray(at, at + GO_PIECE)));
      if (out.length) yield out;
    }
  }
  const tail = native(() => a.recClose(d));
  if (tail.length) yield tail;
}
