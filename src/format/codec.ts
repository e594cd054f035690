/** Protobuf encoding of the index (protobufjs, loaded from proto/cdimg.proto). */
import * as protobuf from 'protobufjs';
import { join } from 'node:path';
import { corrupt } from '../errors';
import { protoDir } from '../util/paths';
import { sha256 } from '../util/digest';
import { Entry, Index } from './types';

let root: protobuf.Root | undefined;
function types(): { Index: protobuf.Type; Tree: protobuf.Type } {
  if (!root) root = protobuf.loadSync(join(protoDir(), 'cdimg.proto'));
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
