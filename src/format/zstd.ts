/**
 * Plain zstd frames of the .cdimg blob section: compression with content size
 * and checksum, and decompression into a buffer of exactly the expected size,
 * so a hostile frame can never make us allocate more than the index allows.
 */
import { Compressor } from 'zstd-napi';
import * as binding from 'zstd-napi/binding';
import { corrupt } from '../errors';

let cctx: Compressor | undefined;
let cctxLevel = -1;
let dctx: binding.DCtx | undefined;

/** One deterministic zstd frame (content size + checksum flags on). */
export function zstdFrame(data: Uint8Array, level: number): Buffer {
  if (!cctx) cctx = new Compressor();
  if (cctxLevel !== level) {
    cctx.setParameters({ compressionLevel: level, contentSizeFlag: true, checksumFlag: true });
    cctxLevel = level;
  }
  return cctx.compress(data);
}

/** Decode a frame that must yield exactly `expectedSize` bytes. */
export function zstdUnframe(frame: Uint8Array, expectedSize: number): Buffer {
  if (!dctx) dctx = new binding.DCtx();
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
