/**
 * Plain zstd frames of the .cdimg blob section: compression with content size
 * and checksum, and decompression into a buffer of exactly the expected size,
 * so a hostile frame can never make us allocate more than the index allows.
 * Uses zstd-napi's native binding directly (loaded on first use): no JS
 * wrapper to load in every worker, no scratch buffer and trimming copy per
 * frame.
 */
import type * as Binding from 'zstd-napi/binding';
import { corrupt } from '../errors';

let z: typeof Binding | undefined;
const binding = (): typeof Binding => (z ??= require('zstd-napi/binding') as typeof Binding);

let cctx: Binding.CCtx | undefined;
let cctxLevel = -1;
let dctx: Binding.DCtx | undefined;

function compressor(level: number): Binding.CCtx {
  const b = binding();
  if (!cctx || cctxLevel !== level) {
    cctx ??= new b.CCtx();
    cctx.reset(b.ResetDirective.parameters);
    cctx.setParameter(b.CParameter.compressionLevel, level);
    cctx.setParameter(b.CParameter.contentSizeFlag, 1);
    cctx.setParameter(b.CParameter.checksumFlag, 1);
    cctxLevel = level;
  }
  return cctx;
}

/** Largest frame `n` bytes can compress to. */
export function zstdBound(n: number): number {
  return binding().compressBound(n);
}

/** Compress `data` as one frame into `dst` (at least zstdBound(data.length) long); returns the frame's length. */
export function zstdFrameInto(dst: Uint8Array, data: Uint8Array, level: number): number {
  return compressor(level).compress2(dst, data);
}

/** One deterministic zstd frame (content size + checksum flags on). */
export function zstdFrame(data: Uint8Array, level: number): Buffer {
  const dst = Buffer.allocUnsafe(zstdBound(data.length));
  const n = zstdFrameInto(dst, data, level);
  return n < dst.length * 0.75 ? Buffer.from(dst.subarray(0, n)) : dst.subarray(0, n);
}

/** Decode a frame that must yield exactly `expectedSize` bytes. */
export function zstdUnframe(frame: Uint8Array, expectedSize: number): Buffer {
  if (!dctx) dctx = new (binding().DCtx)();
  const out = Buffer.allocUnsafe(expectedSize);
  let n: number;
  try {
    n = dctx.decompress(out, frame);
  } catch (e) {
    throw corrupt(`zstd frame does not decode: ${(e as Error).message}`, e);
  }
  if (n !== expectedSize) throw corrupt(`zstd frame decodes to ${n} bytes, expected ${expectedSize}`);
  return out;
}
