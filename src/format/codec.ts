/**
 * Protobuf encoding of the index (proto/cdimg.proto), by d4fs's own coder in pb.ts:
 * the same bytes protobufjs writes, without loading protobufjs and the schema.
 */
import { corrupt } from '../errors';
import { sha256 } from '../util/digest';
import { decodeIndexPb, encodeIndexPb, encodeTreePb } from './pb';
import { Entry, Index } from './types';

export function encodeIndex(index: Index): Buffer {
  return encodeIndexPb(index);
}

/** Decode an index; `{ tree: false }`: ids and image information only (see decodeIndexPb). */
export function decodeIndex(raw: Buffer, opts: { tree?: boolean } = {}): Index {
  let obj: Index;
  try {
    obj = decodeIndexPb(raw, opts);
  } catch (e) {
    throw corrupt(`index does not decode: ${(e as Error).message}`, e);
  }
  if (!obj.image) throw corrupt('index has no image information');
  return obj;
}

/** The image id: sha256 over the tree (entries) and the config, independent of storage. */
export function computeImageId(entries: Entry[], configJson: Buffer): Buffer {
  return sha256(encodeTreePb(entries, configJson));
}

/**
 * Run the coders once now (compiles them), e.g. while waiting for workers,
 * rather than on the critical path of finishing a file.
 */
export function warmCodec(): void {
  const d = Buffer.alloc(32);
  const entry: Entry = { path: 'x', type: 1, mode: 0o644, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, size: 1, digest: d, linkTarget: '', devMajor: 0, devMinor: 0, xattrs: [{ name: 'user.x', value: d }], uname: '', gname: '' };
  const chunk = { offset: 0, storedSize: 1, storedDigest: d, rawSize: 1, rawDigest: d, codec: 0, baseDigest: d, baseOffset: 0, baseSize: 0 };
  const image = { sourceRef: '', manifestDigest: '', configDigest: '', configJson: d, layers: [{ digest: '', size: 1, mediaType: '', diffId: '' }], platform: '', manifestMediaType: '' };
  computeImageId([entry], d);
  encodeIndex({ formatVersion: 1, kind: 0, imageId: d, parentId: d, image, entries: [entry], blobs: [{ digest: d, size: 1, encoding: 0, chunks: [chunk] }], chunkSize: 1 } as unknown as Index);
}
