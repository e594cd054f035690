/** Helpers of the FUSE suites (test/fuse.test.ts, test/fuse-trust.test.ts, test/fuse-memory.test.ts). */
import fsp from 'node:fs/promises';
import { createCipheriv, createHash } from 'node:crypto';
import { computeImageId } from '../../src/format/codec';
import * as T from '../../src/format/types';
import type { Blob, Chunk, Entry, ImageInfo } from '../../src/format/types';
import { CdimgWriter } from '../../src/format/writer';
import { zstdFrame } from '../../src/format/zstd';
import { sha256 } from '../../src/util/digest';
import { errorCodeOf } from './errors';

/** The code of the error reading `file` fails with ('' when it reads). */
export function readError(file: string): Promise<string> {
  return errorCodeOf(fsp.readFile(file));
}

/** What {@link writeManyFilesImage} wrote. */
export interface ManyFilesImage {
  imageId: string;
  /** Entries of the index (root, directories, files, symlinks, hard links, the big file). */
  entries: number;
  /** Paths (relative) and sha256 hex of some regular files: one per directory. */
  sample: { path: string; hex: string; size: number }[];
  /** The big file (relative path), when asked for. */
  big?: { path: string; hex: string; size: number };
}

/**
 * A full format-version-2 .cdimg of `dirs` directories × `perDir` small
 * text files of distinct contents (plus one symlink and one hard link per
 * directory, and an optional `bigBytes` file of incompressible bytes, the
 * same in every version, stored in 4 MiB chunks), written with the format's
 * own writer (`edited`: every edited-th small file gets one more line, for
 * a next version): the scale the FUSE manager's memory is measured at
 * (test/fuse-memory.test.ts) without converting an image.
 */
export async function writeManyFilesImage(out: string, o: { dirs: number; perDir: number; bigBytes?: number; edited?: number }): Promise<ManyFilesImage> {
  const chunkSize = T.DEFAULT_CHUNK_SIZE;
  const w = await CdimgWriter.create(out);
  const entries: Entry[] = [];
  const blobs: Blob[] = [];
  const sample: ManyFilesImage['sample'] = [];
  const base = { mode: 0o644, uid: 0, gid: 0, mtimeSec: 1_700_000_000, mtimeNsec: 123_456_789, size: 0, digest: Buffer.alloc(0), linkTarget: '', devMajor: 0, devMinor: 0, xattrs: [], uname: '', gname: '' };
  const dir = (p: string): Entry => ({ ...base, path: p, type: T.FileType.DIR, mode: 0o755 });
  /** Appends `data` as zstd chunks of chunkSize and describes its blob; returns its digest. */
  const store = async (data: Buffer): Promise<Buffer> => {
    const digest = sha256(data);
    const chunks: Chunk[] = [];
    const frames: Buffer[] = [];
    let at = w.offset;
    for (let off = 0; off < data.length; off += chunkSize) {
      const raw = data.subarray(off, off + chunkSize);
      const frame = zstdFrame(raw, 1);
      chunks.push({ offset: at, storedSize: frame.length, storedDigest: Buffer.alloc(0), rawSize: raw.length, rawDigest: sha256(raw), codec: T.Codec.ZSTD, baseDigest: Buffer.alloc(0), baseOffset: 0, baseSize: 0 });
      frames.push(frame);
      at += frame.length;
    }
    await w.appendv(frames);
    blobs.push({ digest, size: data.length, encoding: T.Encoding.FULL, chunks });
    return digest;
  };
  try {
    entries.push(dir(''));
    for (let d = 0; d < o.dirs; d++) {
      const dp = `d${String(d).padStart(4, '0')}`;
      entries.push(dir(dp));
      const files: Buffer[] = [];
      for (let f = 0; f < o.perDir; f++) {
        const p = `${dp}/file-${String(f).padStart(3, '0')}.txt`;
        const edit = o.edited && (d * o.perDir + f) % o.edited === 0 ? 'edited\n' : '';
        const data = Buffer.from(`${p}\n${'lorem ipsum dolor sit amet '.repeat(1 + ((d * 31 + f) % 7))}\n${edit}`);
        files.push(data);
        const digest = sha256(data);
        entries.push({ ...base, path: p, type: T.FileType.REG, size: data.length, digest });
        if (f === 0) sample.push({ path: p, hex: digest.toString('hex'), size: data.length });
      }
      // Written in one gathered write per directory.
      let at = w.offset;
      const frames = files.map((data) => zstdFrame(data, 1));
      files.forEach((data, i) => {
        const digest = entries[entries.length - o.perDir + i].digest;
        blobs.push({ digest, size: data.length, encoding: T.Encoding.FULL, chunks: [{ offset: at, storedSize: frames[i].length, storedDigest: Buffer.alloc(0), rawSize: data.length, rawDigest: digest, codec: T.Codec.ZSTD, baseDigest: Buffer.alloc(0), baseOffset: 0, baseSize: 0 }] });
        at += frames[i].length;
      });
      await w.appendv(frames);
      entries.push({ ...base, path: `${dp}/link`, type: T.FileType.SYMLINK, mode: 0o777, linkTarget: 'file-000.txt' });
      entries.push({ ...base, path: `${dp}/hard`, type: T.FileType.HARDLINK, linkTarget: `${dp}/file-001.txt` });
    }
    let big: ManyFilesImage['big'];
    if (o.bigBytes) {
      // Incompressible, and the same in every version: AES-CTR's key stream under a fixed key.
      const data = createCipheriv('aes-256-ctr', Buffer.alloc(32, 7), Buffer.alloc(16)).update(Buffer.alloc(o.bigBytes));
      const digest = await store(data);
      entries.push({ ...base, path: 'big.bin', type: T.FileType.REG, size: data.length, digest });
      big = { path: 'big.bin', hex: createHash('sha256').update(data).digest('hex'), size: data.length };
    }
    const configJson = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    const image: ImageInfo = { sourceRef: 'test/many-files', manifestDigest: '', configDigest: '', configJson, layers: [], platform: 'linux/amd64', manifestMediaType: '' };
    const imageId = computeImageId(entries, configJson);
    await w.finish({ formatVersion: T.FORMAT_VERSION, kind: T.Kind.FULL, imageId, parentId: Buffer.alloc(0), image, entries, blobs, chunkSize }, { indexLevel: 3 });
    return { imageId: `sha256:${imageId.toString('hex')}`, entries: entries.length, sample, big };
  } catch (e) {
    await w.abort();
    throw e;
  }
}
