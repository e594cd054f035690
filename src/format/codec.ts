/**
 * Protobuf coding of the index: decoding by protobufjs (loaded from
 * proto/cdimg.proto on first use), encoding by pbencode.ts (same bytes,
 * without loading protobufjs).
 */
import type * as protobuf from 'protobufjs';
import { join } from 'node:path';
import { corrupt } from '../errors';
import { protoDir } from '../util/paths';
import { sha256 } from '../util/digest';
import { Entry, Index } from './types';
import { encodeIndexPb, encodeTreePb } from './pbencode';

let root: protobuf.Root | undefined;
function types(): { Index: protobuf.Type; Tree: protobuf.Type } {
  if (!root) root = (require('protobufjs') as typeof protobuf).loadSync(join(protoDir(), 'cdimg.proto'));
  return { Index: root.lookupType('d4fs.cdimg.v1.Index'), Tree: root.lookupType('d4fs.cdimg.v1.Tree') };
}

/** protobufjs's types of the index (tests compare pbencode.ts's bytes with its encoder). */
export const protobufTypes = types;

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, bytes: Buffer, defaults: true, arrays: true };

export function encodeIndex(index: Index): Buffer {
  return encodeIndexPb(index);
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
  return sha256(encodeTreePb(entries, configJson));
}
