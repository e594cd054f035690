/**
 * Tools of an attacker, for tests: rewrite a .cdimg's index (a forged id, a
 * hostile entry) and give it a valid root digest, so that only the checks
 * that look inside the index can catch it.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { computeImageId, decodeIndex, encodeIndex } from '../../src/format/codec';
import { parseHeader } from '../../src/format/reader';
import { encodeHeader } from '../../src/format/writer';
import { zstdContentSize, zstdFrame, zstdUnframe } from '../../src/format/zstd';
import { Codec, FORMAT_VERSION, HEADER_SIZE, Index } from '../../src/format/types';
import { sha256 } from '../../src/util/digest';

/**
 * Copy `src` to `dst` with its index changed by `mutate`. `fixId`: recompute
 * the image id from the mutated tree and config (a self-consistent hostile
 * file); otherwise the id stays what the original said (a forged id).
 */
export async function rewriteIndex(src: string, dst: string, mutate: (ix: Index) => void, opts: { fixId?: boolean; version?: 1 } = {}): Promise<void> {
  const buf = await fsp.readFile(src);
  const h = parseHeader(buf.subarray(0, HEADER_SIZE), buf.length, src);
  const raw = zstdUnframe(buf.subarray(h.indexOffset), h.indexRawLen);
  const ix = decodeIndex(raw);
  mutate(ix);
  if (opts.fixId) ix.imageId = computeImageId(ix.entries, ix.image.configJson);
  let section = buf.subarray(HEADER_SIZE, h.indexOffset);
  if (opts.version === 1 && ix.formatVersion !== 1) section = Buffer.concat([section, ...toVersion1(ix, buf, h.indexOffset)]);
  const newRaw = encodeIndex(ix, { sectionDigest: ix.sectionDigest ?? Buffer.alloc(0) });
  const stored = zstdFrame(newRaw, 3);
  const header = encodeHeader(HEADER_SIZE + section.length, stored.length, newRaw.length, sha256(newRaw), ix.formatVersion);
  await fsp.writeFile(dst, Buffer.concat([header, section, stored]));
}

/**
 * Make `ix` (the index of file `buf`, whose blob section ends at `sectionEnd`) a format version 1
 * index, which can say what version 2 cannot (a NUL in a link target, a path with ".."): every chunk
 * gets its stored digest back, and a member of a solid group (version 3) becomes a zstd frame of its
 * own. Returns those frames, to append to the blob section in this order.
 */
export function toVersion1(ix: Index, buf: Buffer, sectionEnd: number): Buffer[] {
  ix.formatVersion = 1;
  const extra: Buffer[] = [];
  let end = sectionEnd;
  for (const b of ix.blobs) {
    for (const c of b.chunks) {
      if (c.codec === Codec.GROUP) {
        const stored = buf.subarray(c.offset, c.offset + c.storedSize);
        const group = zstdUnframe(stored, zstdContentSize(stored) as number);
        const frame = zstdFrame(group.subarray(c.groupOffset as number, (c.groupOffset as number) + c.rawSize), 3);
        Object.assign(c, { codec: Codec.ZSTD, offset: end, storedSize: frame.length, storedDigest: sha256(frame), groupOffset: undefined });
        extra.push(frame);
        end += frame.length;
      }
      if (c.storedDigest.length === 0) c.storedDigest = sha256(buf.subarray(c.offset, c.offset + c.storedSize));
    }
  }
  return extra;
}

/**
 * A .cdimg whose header and small zstd index claim `rawLen` bytes of index
 * (zeros, with their true sha256 as root digest): a decompression bomb.
 * Made by the zstd CLI in a stream, so the test itself stays small.
 */
export function indexBomb(rawLen: number): Buffer {
  const stored = execFileSync('bash', ['-c', `head -c ${rawLen} /dev/zero | zstd -19 -q -c`], { maxBuffer: 1 << 30 });
  const h = createHash('sha256');
  const zeros = Buffer.alloc(1 << 20);
  for (let left = rawLen; left > 0; left -= zeros.length) h.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
  const header = encodeHeader(HEADER_SIZE, stored.length, rawLen, h.digest(), FORMAT_VERSION);
  return Buffer.concat([header, stored]);
}
