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
 * Calls are synchronous and CPU-bound (level 6 runs at ~20-30 MB/s of input
 * here, as fast as Go itself): the input goes in pieces of GO_PIECE bytes so
 * that a thread serving other work is held ~10 ms at a time.
 */
import type * as DeflateAddon from 'd4fs-deflate';
import { failedPrecondition } from '../errors';

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

/** Deflate body Go's compress/flate writes at `level` for `input` (chunks of the tar, in order). */
export async function* goDeflate(level: number, input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const a = load();
  const e = a.goNew(level);
  for await (const chunk of input) {
    for (let at = 0; at < chunk.length; at += GO_PIECE) {
      const out = a.goWrite(e, chunk.subarray(at, at + GO_PIECE));
      if (out.length) yield out;
    }
  }
  const tail = a.goClose(e);
  if (tail.length) yield tail;
}

/**
 * What Go's encoder at `level` writes for `prefix`, the first bytes of the
 * input, before it is closed: whole blocks only, so a prefix of the body
 * it writes for any input that starts with `prefix` (empty when no block
 * was complete yet).
 */
export function goDeflatePrefix(level: number, prefix: Buffer): Buffer {
  const a = load();
  const e = a.goNew(level);
  const parts: Buffer[] = [];
  for (let at = 0; at < prefix.length; at += GO_PIECE) parts.push(a.goWrite(e, prefix.subarray(at, at + GO_PIECE)));
  // Not closed: the rest of the stream depends on input not seen here. The encoder is freed when collected.
  return Buffer.concat(parts);
}

/** The whole deflate body for `input` (tests, small data). */
export function goDeflateSync(level: number, input: Buffer): Buffer {
  const a = load();
  const e = a.goNew(level);
  const parts: Buffer[] = [];
  for (let at = 0; at < input.length; at += GO_PIECE) parts.push(a.goWrite(e, input.subarray(at, at + GO_PIECE)));
  parts.push(a.goClose(e));
  return Buffer.concat(parts);
}

/** klauspost/compress's levels reproduced: -2 (Huffman only), 0 (stored), 1-6 (its fast encoders; 5 is its default, what pgzip and umoci use), 7-9 (its lazy matcher). */
export const KP_LEVELS: readonly number[] = [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
/** pgzip's block sizes tried at detection, most likely first: umoci's 256 KiB, pgzip's default 1 MiB. */
export const PGZIP_BLOCKS: readonly number[] = [256 * 1024, 1024 * 1024];

/**
 * Deflate body klauspost/compress's flate writes at `level` for `input`: one stream (`pgzipBlock` 0,
 * klauspost's gzip) or pgzip's blocks of `pgzipBlock` bytes.
 */
export async function* kpDeflate(level: number, pgzipBlock: number, input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const a = load();
  const e = a.kpNew(level, pgzipBlock);
  for await (const chunk of input) {
    for (let at = 0; at < chunk.length; at += GO_PIECE) {
      const out = a.kpWrite(e, chunk.subarray(at, at + GO_PIECE));
      if (out.length) yield out;
    }
  }
  const tail = a.kpClose(e);
  if (tail.length) yield tail;
}

/** What kpDeflate writes for `prefix` before the input ends (a prefix of the body of any input starting with it). */
export function kpDeflatePrefix(level: number, pgzipBlock: number, prefix: Buffer): Buffer {
  const a = load();
  const e = a.kpNew(level, pgzipBlock);
  const parts: Buffer[] = [];
  for (let at = 0; at < prefix.length; at += GO_PIECE) parts.push(a.kpWrite(e, prefix.subarray(at, at + GO_PIECE)));
  return Buffer.concat(parts);
}
