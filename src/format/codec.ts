/** Protobuf encoding of the index (protobufjs, loaded from proto/cdimg.proto on first use). */
import type * as protobuf from 'protobufjs';
import { join } from 'node:path';
import { corrupt } from '../errors';
import { protoDir } from '../util/paths';
import { sha256 } from '../util/digest';
import { Entry, Index } from './types';

let root: protobuf.Root | undefined;
function types(): { Index: protobuf.Type; Tree: protobuf.Type } {
  if (!root) root = (require('protobufjs') as typeof protobuf).loadSync(join(protoDir(), 'cdimg.proto'));
  return { Index: root.lookupType('d4fs.cdimg.v1.Index'), Tree: root.lookupType('d4fs.cdimg.v1.Tree') };
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, bytes: Buffer, defaults: true, arrays: true };

export function encodeIndex(index: Index): Buffer {
  const T = types().Index;
  return Buffer.from(T.encode(T.fromObject(index as unknown as Record<string, unknown>)).finish());
}

export function decodeIndex(raw: Buffer): Index {
  const T = types().Index;
  let msg: protobuf.Message;
  try {
    msg = T.decode(raw);
  } catch (e) {
    throw corrupt(`index does not decode: ${(e as Error).message}`, e);
  }
  const obj = T.toObject(msg, TO_OBJECT) as unknown as Index;
  if (!obj.image) throw corrupt('index has no image information');
  return obj;
}

/** The image id: sha256 over the tree (entries) and the config, independent of storage. */
export function computeImageId(entries: Entry[], configJson: Buffer): Buffer {
  const T = types().Tree;
  return sha256(T.encode(T.fromObject({ entries, configJson } as unknown as Record<string, unknown>)).finish());
}

/**
 * Load the schema and generate the encoders now (about 8 ms), e.g. while
 * waiting for workers, rather than on the critical path of finishing a file.
 */
export function warmCodec(): void {
  const d = Buffer.alloc(32);
  const entry: Entry = { path: 'x', type: 1, mode: 0o644, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, size: 1, digest: d, linkTarget: '', devMajor: 0, devMinor: 0, xattrs: [{ name: 'user.x', value: d }], uname: '', gname: '' };
  const chunk = { offset: 0, storedSize: 1, storedDigest: d, rawSize: 1, rawDigest: d, codec: 0, baseDigest: d, baseOffset: 0, baseSize: 0 };
  const image = { sourceRef: '', manifestDigest: '', configDigest: '', configJson: d, layers: [{ digest: '', size: 1, mediaType: '', diffId: '' }], platform: '', manifestMediaType: '' };
  computeImageId([entry], d);
  encodeIndex({ formatVersion: 1, kind: 0, imageId: d, parentId: d, image, entries: [entry], blobs: [{ digest: d, size: 1, encoding: 0, chunks: [chunk] }], chunkSize: 1 } as unknown as Index);
}
