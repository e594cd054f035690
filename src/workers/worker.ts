/**
 * Task functions run inside worker threads (see pool.ts). Inputs and outputs
 * are plain data; large buffers travel as transferred ArrayBuffers.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { zstdFrame as compressFull, zstdUnframe as decompressFull } from '../format/zstd';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export interface CompressFileArgs {
  path: string;
  size: number;
  /** expected sha256 hex of the whole content */
  digest: string;
  level: number;
  chunkSize: number;
}

export interface StoredChunkInfo {
  storedSize: number;
  storedDigest: string;
  rawSize: number;
  rawDigest: string;
}

export interface CompressFileResult {
  /** all stored chunks back to back (transferred) */
  stored: Uint8Array;
  chunks: StoredChunkInfo[];
}

/** Read a staged file, split into chunks, zstd each; verifies the content digest. */
export async function compressFile(a: CompressFileArgs): Promise<CompressFileResult> {
  const fh = await fsp.open(a.path, 'r');
  const whole = createHash('sha256');
  const frames: Buffer[] = [];
  const chunks: StoredChunkInfo[] = [];
  try {
    let pos = 0;
    do {
      const len = Math.min(a.chunkSize, a.size - pos);
      const raw = Buffer.allocUnsafeSlow(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(raw, got, len - got, pos + got);
        if (bytesRead === 0) throw new Error(`staged content ${a.digest} is shorter than ${a.size} bytes`);
        got += bytesRead;
      }
      whole.update(raw);
      const frame = compressFull(raw, a.level);
      frames.push(frame);
      chunks.push({ storedSize: frame.length, storedDigest: sha(frame), rawSize: len, rawDigest: sha(raw) });
      pos += len;
    } while (pos < a.size);
  } finally {
    await fh.close();
  }
  const got = whole.digest('hex');
  if (got !== a.digest) throw new Error(`staged content changed: expected ${a.digest}, got ${got}`);
  const total = frames.reduce((n, f) => n + f.length, 0);
  const stored = new Uint8Array(total);
  let o = 0;
  for (const f of frames) {
    stored.set(f, o);
    o += f.length;
  }
  // Structured clone copies `stored` once; cheap next to compressing it.
  return { stored, chunks };
}

export interface DecodeChunkArgs {
  stored: Uint8Array;
  rawSize: number;
  rawDigest: string;
}

/** Decompress one ZSTD chunk and verify it. */
export function decodeChunk(a: DecodeChunkArgs): Uint8Array {
  const raw = decompressFull(Buffer.from(a.stored.buffer, a.stored.byteOffset, a.stored.byteLength), a.rawSize);
  if (sha(raw) !== a.rawDigest) throw new Error(`chunk decodes to the wrong content (expected ${a.rawDigest})`);
  const out = new Uint8Array(raw.length);
  out.set(raw);
  return out;
}
