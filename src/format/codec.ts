/**
 * Protobuf encoding of the index (proto/cdimg.proto), by d4fs's own coder in pb.ts:
 * the same bytes protobufjs writes, without loading protobufjs and the schema.
 */
import { createHash } from 'node:crypto';
import { corrupt, D4fsError } from '../errors';
import { sha256 } from '../util/digest';
import { decodeIndexPb, encodeIndexHeadPb, encodeIndexPb, encodeTreePb } from './pb';
import { decodeIndexV2, encodeIndexV2, treeOfFull } from './compact';
import { applyTreeEdit } from './tree-edit';
import { Blob, Encoding, Entry, FileType, Index, Kind } from './types';

/**
 * The raw index bytes of `index` in its format version. Version 2 needs the
 * blob section's digest, and for a delta its parent's entries (the tree is
 * written as an edit script against them).
 */
export function encodeIndex(index: Index, v2?: { sectionDigest: Buffer; parentEntries?: Entry[]; basePrefix?: (base: Buffer) => boolean }): Buffer {
  if (index.formatVersion === 1) return encodeIndexPb(index);
  if (!v2) throw new Error('format version 2 needs the blob section digest');
  return encodeIndexV2(index, v2.parentEntries, v2.sectionDigest, (w) => encodeIndexHeadPb(w, index), v2.basePrefix);
}

/**
 * Decode an index; `{ tree: false }`: ids and image information only (see
 * decodeIndexPb). A version 2 delta comes back with its `treeEdit` and no
 * entries: resolveDeltaTree gives it its tree from its parent's.
 * `{ contentsOnly: true }`: a version 2 index's stored contents without its
 * tree (workers that build contents of chains the main thread validated).
 */
export function decodeIndex(raw: Buffer, opts: { tree?: boolean; contentsOnly?: boolean } = {}): Index {
  let obj: Index;
  try {
    obj = decodeIndexPb(raw, { tree: opts.tree });
    if (obj.formatVersion >= 2 && (opts.tree ?? true)) {
      if (obj.entries.length || obj.blobs.length) throw new Error('a version 2 index with version 1 entries or blobs');
      const body = decodeIndexV2(raw, obj.kind, { tree: !opts.contentsOnly, version: obj.formatVersion });
      if (opts.contentsOnly) {
        obj.blobs = body.blobs;
        obj.sectionDigest = body.sectionDigest;
        return obj;
      }
      obj.blobs = body.blobs;
      obj.sectionDigest = body.sectionDigest;
      if (body.ops) obj.treeEdit = { ops: body.ops, inserted: body.tree };
      else {
        obj.entries = treeOfFull(body);
        // a delta written with its whole tree (a merge that never had its base's): SAME for what it does not store
        if (obj.kind === Kind.DELTA) obj.blobs = withSameBlobs(obj.entries, obj.blobs);
      }
    }
  } catch (e) {
    if (e instanceof D4fsError) throw e;
    throw corrupt(`index does not decode: ${(e as Error).message}`, e);
  }
  if (!obj.image) throw corrupt('index has no image information');
  return obj;
}

/**
 * A version 2 delta's index with its tree: the edit script applied to the
 * parent's entries, and a SAME blob for each content of the tree it does not
 * store (what version 1 listed). Returns a new object: the decoded one may be
 * shared. Validate the result (validateIndex checks the image id).
 */
export function resolveDeltaTree(index: Index, parentEntries: Entry[]): Index {
  if (!index.treeEdit) return index;
  const entries = applyTreeEdit(parentEntries, index.treeEdit);
  return { ...index, entries, blobs: withSameBlobs(entries, index.blobs), treeEdit: undefined };
}

/** `blobs` and a SAME blob for every content of `entries` they do not describe (version 2 stores only the others). */
function withSameBlobs(entries: Entry[], stored: Blob[]): Blob[] {
  const blobs: Blob[] = [...stored];
  const have = new Set(blobs.map((b) => b.digest.toString('latin1')));
  for (const e of entries) {
    if (e.type !== FileType.REG) continue;
    const k = e.digest.toString('latin1');
    if (have.has(k)) continue;
    have.add(k);
    blobs.push({ digest: e.digest, size: e.size, encoding: Encoding.SAME, chunks: [] });
  }
  return blobs;
}

/** The image id: sha256 over the tree (entries) and the config, independent of storage. */
export function computeImageId(entries: Entry[], configJson: Buffer): Buffer {
  // The sha256 of the Tree message (each entry a field of its own, then the config), hashed
  // ID_PIECE entries at a time: the same bytes without encoding a big tree at once (151k
  // entries, issue 18: a ~19 MB buffer and its copy, live at the peak RSS of a convert).
  if (entries.length <= ID_PIECE) return sha256(encodeTreePb(entries, configJson));
  const h = createHash('sha256');
  for (let i = 0; i < entries.length; i += ID_PIECE) h.update(encodeTreePb(entries.slice(i, i + ID_PIECE), NO_CONFIG));
  h.update(encodeTreePb([], configJson));
  return h.digest();
}

/** Entries per piece of computeImageId's Tree encoding. */
const ID_PIECE = 4096;
const NO_CONFIG = Buffer.alloc(0);

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
