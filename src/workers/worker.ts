/**
 * Task functions run inside worker threads (see pool.ts). Inputs and outputs
 * are plain data (structured clone); contents come either inline or as a
 * staged file path.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { zstdFrame, zstdUnframe } from '../format/zstd';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export interface ContentItem {
  /** inline content (small files) … */
  data?: Uint8Array;
  /** … or a file holding it */
  path?: string;
  size: number;
  /** expected sha256 hex of the whole content; '' to compute it */
  digest: string;
}

export interface CompressArgs {
  items: ContentItem[];
  level: number;
  chunkSize: number;
}

export interface StoredChunkInfo {
  storedSize: number;
  storedDigest: string;
  rawSize: number;
  rawDigest: string;
}

export interface CompressResult {
  /** all stored chunks of all items back to back */
  stored: Uint8Array;
  /** per item: its content digest and its chunks in order */
  items: { digest: string; chunks: StoredChunkInfo[] }[];
}

async function* chunksOf(item: ContentItem, chunkSize: number): AsyncGenerator<Buffer> {
  if (item.data) {
    const d = Buffer.from(item.data.buffer, item.data.byteOffset, item.data.byteLength);
    if (d.length !== item.size) throw new Error(`content ${item.digest}: ${d.length} bytes, expected ${item.size}`);
    let pos = 0;
    do {
      yield d.subarray(pos, Math.min(pos + chunkSize, d.length));
      pos += chunkSize;
    } while (pos < d.length);
    return;
  }
  if (!item.path) throw new Error(`content ${item.digest}: neither data nor path`);
  const fh = await fsp.open(item.path, 'r');
  try {
    let pos = 0;
    do {
      const len = Math.min(chunkSize, item.size - pos);
      const raw = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(raw, got, len - got, pos + got);
        if (bytesRead === 0) throw new Error(`staged content ${item.digest} is shorter than ${item.size} bytes`);
        got += bytesRead;
      }
      yield raw;
      pos += len;
    } while (pos < item.size);
  } finally {
    await fh.close();
  }
}

/** Hash contents, split them into chunks and zstd each (verifying given digests). */
export async function compressContents(a: CompressArgs): Promise<CompressResult> {
  const frames: Buffer[] = [];
  const items: CompressResult['items'] = [];
  for (const item of a.items) {
    const whole = createHash('sha256');
    const chunks: StoredChunkInfo[] = [];
    for await (const raw of chunksOf(item, a.chunkSize)) {
      whole.update(raw);
      const frame = zstdFrame(raw, a.level);
      frames.push(frame);
      chunks.push({ storedSize: frame.length, storedDigest: sha(frame), rawSize: raw.length, rawDigest: sha(raw) });
    }
    const got = whole.digest('hex');
    if (item.digest && got !== item.digest) throw new Error(`content changed: expected ${item.digest}, got ${got}`);
    items.push({ digest: got, chunks });
  }
  // Structured clone copies `stored` once; cheap next to compressing it.
  return { stored: Buffer.concat(frames), items };
}

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
