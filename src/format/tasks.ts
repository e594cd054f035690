/**
 * Worker-thread task of the readers of .cdimg files (unpack, verify,
 * export): decoding a stored zstd chunk. Run by the worker pool
 * (src/workers/pool.ts), which loads this file in its threads by path.
 */
import { createHash } from 'node:crypto';
import { zstdUnframe } from './zstd';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export interface DecodeChunkArgs {
  stored: Uint8Array;
  rawSize: number;
  rawDigest: string;
}

/** Decompress one ZSTD chunk and verify it. */
export function decodeChunk(a: DecodeChunkArgs): Uint8Array {
  const raw = zstdUnframe(Buffer.from(a.stored.buffer, a.stored.byteOffset, a.stored.byteLength), a.rawSize);
  if (sha(raw) !== a.rawDigest) throw new Error(`chunk decodes to the wrong content (expected ${a.rawDigest})`);
  return raw;
}

/**
 * This file as a task module of the worker pool (src/workers/pool.ts,
 * `TaskModule`, written out here: `format` is below `workers`).
 */
export const FORMAT_TASKS: { readonly file: string; readonly tasks?: { decodeChunk: typeof decodeChunk } } = { file: __filename };
