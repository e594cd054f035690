/**
 * Worker-thread task of convert (and of whatever stores contents as full
 * zstd chunks): hash contents, cut them into chunks, compress each. Run by
 * the worker pool (src/workers/pool.ts), which loads this file in its
 * threads by path. Inputs and outputs are plain data (structured clone);
 * contents come either inline or as a staged file path.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { zstdBound, zstdFrame, zstdFrameInto, zstdUnframe } from '../format/zstd';
import { encodeGroup } from '../format/group';
import { writeFully } from '../util/fileio';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export interface ContentItem {
  /** inline content (small files) … */
  data?: Uint8Array;
  /** … or a file holding it */
  path?: string;
  /**
   * With `path`: write the frames to this file instead of returning them (a
   * 256 MiB content otherwise comes back as one 256 MiB buffer).
   */
  outPath?: string;
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
  /** per item: its content digest and its chunks in order; `outPath` when its frames went to that file */
  items: { digest: string; chunks: StoredChunkInfo[]; outPath?: string }[];
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
    // one buffer for every chunk read (each is hashed and compressed before the next is read)
    if (!readBuf || readBuf.length < Math.min(chunkSize, item.size)) readBuf = Buffer.allocUnsafeSlow(Math.min(chunkSize, item.size));
    let pos = 0;
    do {
      const len = Math.min(chunkSize, item.size - pos);
      const raw = readBuf.subarray(0, len);
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

/** Output buffer of compressContents, kept between tasks while small. */
let scratch: Buffer | undefined;
const SCRATCH_KEEP = 16 * 1024 * 1024;
/**
 * A staged content's chunks are read into `readBuf` and compressed into
 * `frameBuf`, both kept for the thread's life (a chunk each, 4 MiB by
 * default). A fresh pair per chunk was garbage that V8 collected only every
 * few chunks: ~38 MB of external memory in the thread that took the 25 MiB
 * files of the quick image of issue 18.
 */
let readBuf: Buffer | undefined;
let frameBuf: Buffer | undefined;

/** Upper bound of the frames of an inline content. */
function boundOf(size: number, chunkSize: number): number {
  const full = Math.floor(size / chunkSize);
  const rest = size - full * chunkSize;
  return full * zstdBound(chunkSize) + (rest > 0 || size === 0 ? zstdBound(rest) : 0);
}

/** Hash contents, split them into chunks and zstd each (verifying given digests). */
export async function compressContents(a: CompressArgs): Promise<CompressResult> {
  // Frames of inline contents go back to back into one buffer; staged (huge) contents get a buffer per frame.
  const bound = a.items.reduce((n, it) => n + (it.data ? boundOf(it.size, a.chunkSize) : 0), 0);
  const out = scratch && scratch.length >= bound ? scratch : Buffer.allocUnsafe(bound);
  if (bound <= SCRATCH_KEEP && out !== scratch) scratch = out;
  let pos = 0;
  const parts: Uint8Array[] = [];
  let runStart = 0;
  const items: CompressResult['items'] = [];
  for (const item of a.items) {
    const whole = createHash('sha256');
    const chunks: StoredChunkInfo[] = [];
    // A content of one chunk is that chunk: its digest is the chunk's raw digest (hashed once).
    const single = item.size <= a.chunkSize;
    const toFile = item.path && item.outPath ? await fsp.open(item.outPath, 'w', 0o600) : undefined;
    let filePos = 0;
    try {
    for await (const raw of chunksOf(item, a.chunkSize)) {
      whole.update(raw);
      let frame: Uint8Array;
      if (toFile) {
        const bound = zstdBound(raw.length);
        if (!frameBuf || frameBuf.length < bound) frameBuf = Buffer.allocUnsafeSlow(bound);
        frame = frameBuf.subarray(0, zstdFrameInto(frameBuf, raw, a.level));
        await writeFully(toFile, frame, filePos);
        filePos += frame.length;
      } else if (item.data) {
        const n = zstdFrameInto(out.subarray(pos), raw, a.level);
        frame = out.subarray(pos, pos + n);
        pos += n;
      } else {
        if (pos > runStart) parts.push(out.subarray(runStart, pos));
        frame = zstdFrame(raw, a.level);
        parts.push(frame);
        runStart = pos;
      }
      // no stored digest: format version 2 checks zstd chunks by their raw digest and the whole section by its digest
      chunks.push({ storedSize: frame.length, storedDigest: '', rawSize: raw.length, rawDigest: single ? '' : sha(raw) });
    }
    } finally {
      await toFile?.close();
    }
    const got = whole.digest('hex');
    if (item.digest && got !== item.digest) throw new Error(`content changed: expected ${item.digest}, got ${got}`);
    if (single) {
      if (chunks.length !== 1 || chunks[0].rawSize !== item.size) throw new Error(`content ${got}: expected one chunk of ${item.size} bytes`);
      chunks[0].rawDigest = got;
    }
    items.push(toFile ? { digest: got, chunks, outPath: item.outPath } : { digest: got, chunks });
  }
  if (pos > runStart) parts.push(out.subarray(runStart, pos));
  // One copy, into shared memory: posting it back to the caller then copies nothing.
  const stored = new Uint8Array(new SharedArrayBuffer(parts.reduce((n, p) => n + p.length, 0)));
  let at = 0;
  for (const p of parts) {
    stored.set(p, at);
    at += p.length;
  }
  return { stored, items };
}

export interface RegroupArgs {
  /** the members' zstd frames back to back, in group order */
  frames: Uint8Array;
  storedSizes: number[];
  rawSizes: number[];
  level: number;
}

/**
 * The solid group (format/group.ts) of contents compressed one by one: each
 * member's frame decoded (its zstd checksum checked), then the group encoded
 * as `cdimg patch` encodes it from the same bytes.
 */
export function regroup(a: RegroupArgs): { frame: Uint8Array } {
  const frames = Buffer.from(a.frames.buffer, a.frames.byteOffset, a.frames.byteLength);
  const members: Buffer[] = [];
  let o = 0;
  for (let k = 0; k < a.storedSizes.length; k++) {
    members.push(zstdUnframe(frames.subarray(o, o + a.storedSizes[k]), a.rawSizes[k]));
    o += a.storedSizes[k];
  }
  if (o !== frames.length) throw new Error(`regroup: ${frames.length} bytes of frames, their sizes say ${o}`);
  return { frame: encodeGroup(members, a.level) };
}
