/**
 * Semantic validation of an index read from an untrusted file: every check a
 * consumer (unpack, FUSE, diff) relies on is made here, once.
 */
import { corrupt, hostile } from '../errors';
import { BASE_PREFIX_BYTES, Blob, Codec, Encoding, Entry, FileType, GROUP_MAX_RAW, GROUP_MAX_STORED, Index, Kind, LIMITS, READ_VERSIONS, checkedByRawDigest, codecFormat } from './types';
import { checkDeviceNumbers, checkLinkTarget, checkTreePath } from '../tree/paths';
import { computeImageId } from './codec';


const isDigest = (b: Buffer | undefined): boolean => !!b && b.length === 32;

export interface ValidatedIndex {
  index: Index;
  /** content digest (hex) → blob */
  blobs: Map<string, Blob>;
  /** path → entry */
  byPath: Map<string, Entry>;
}

/** The index's version, kind and ids: what a reader of its image information alone relies on. */
export function validateIndexHead(index: Index): void {
  if (!READ_VERSIONS.includes(index.formatVersion)) throw corrupt(`index says format version ${index.formatVersion}, expected one of ${READ_VERSIONS.join(', ')}`);
  if (index.kind !== Kind.FULL && index.kind !== Kind.DELTA) throw corrupt(`unknown image kind ${index.kind}`);
  if (!isDigest(index.imageId)) throw corrupt('index has no valid image id');
  if (index.kind === Kind.DELTA && !isDigest(index.parentId)) throw corrupt('delta has no valid parent id');
}

/**
 * The checks of a version 2 delta opened without its parent: its head and its
 * stored contents. Its tree (and so its image id) is checked when it is
 * opened with its parent (CdimgReader.open with `parent`).
 */
export function validateIndexContents(index: Index, blobSectionEnd: number, headerSize: number): Map<string, Blob> {
  validateIndexHead(index);
  if (index.formatVersion >= 2 && index.sectionDigest?.length !== 32) throw corrupt('index has no blob section digest');
  if ((index.treeEdit?.inserted.length ?? index.entries.length) > LIMITS.maxEntries) throw hostile('index has too many entries, over the limit');
  if (index.chunkSize <= 0 || index.chunkSize > LIMITS.maxChunkSize) throw corrupt(`invalid chunk size ${index.chunkSize}`);
  const blobs = new Map<string, Blob>();
  for (const b of index.blobs) {
    if (!isDigest(b.digest)) throw corrupt('blob with an invalid digest');
    const key = b.digest.toString('hex');
    if (blobs.has(key)) throw corrupt(`blob sha256:${key} listed twice`);
    if (!Number.isSafeInteger(b.size) || b.size < 0 || b.size > LIMITS.maxFileSize) throw hostile(`blob sha256:${key} declares an absurd size ${b.size}`);
    if (b.encoding === Encoding.SAME) {
      if (index.kind === Kind.FULL) throw corrupt(`full image refers to base content sha256:${key}`);
      if (b.chunks.length) throw corrupt(`SAME blob sha256:${key} has chunks`);
    } else if (b.encoding === Encoding.FULL || b.encoding === Encoding.PATCH) {
      if (index.kind === Kind.FULL && b.encoding === Encoding.PATCH) throw corrupt(`full image holds a patch for sha256:${key}`);
      let total = 0;
      for (const c of b.chunks) {
        if (!Number.isSafeInteger(c.offset) || !Number.isSafeInteger(c.storedSize) || c.offset < headerSize || c.offset + c.storedSize > blobSectionEnd) {
          throw hostile(`blob sha256:${key}: chunk offset ${c.offset}+${c.storedSize} lies outside the blob section`);
        }
        if (!Number.isSafeInteger(c.rawSize) || c.rawSize < 0 || c.rawSize > LIMITS.maxChunkSize) throw hostile(`blob sha256:${key}: absurd chunk size ${c.rawSize}`);
        if (!(isDigest(c.storedDigest) || (checkedByRawDigest(c.codec, index.formatVersion) && c.storedDigest.length === 0)) || !isDigest(c.rawDigest)) throw corrupt(`blob sha256:${key}: chunk without digests`);
        if (c.codec === Codec.GROUP) {
          // a member of a solid group: version 3, the whole (small) content, inside its group's bound
          if (index.formatVersion < 3) throw corrupt(`blob sha256:${key}: a group member in a version ${index.formatVersion} file`);
          if (b.chunks.length !== 1) throw corrupt(`blob sha256:${key}: a group member must be the whole content`);
          if (b.encoding === Encoding.PATCH && index.kind !== Kind.DELTA) throw corrupt(`blob sha256:${key}: a group coded against bases in a full image`);
          const g = c.groupOffset;
          if (g === undefined || !Number.isSafeInteger(g) || g < 0 || g + c.rawSize > GROUP_MAX_RAW || c.storedSize > GROUP_MAX_STORED) throw hostile(`blob sha256:${key}: group member outside its group's bounds`);
        }
        // what the chunk may refer to: the codec's row of CODEC_FORMATS
        const codec = codecFormat(c.codec);
        if (!codec) throw corrupt(`blob sha256:${key}: unknown codec ${c.codec}`);
        // a group member without a base is self-contained as far as this chunk says (its blob's encoding says whether its group has a dictionary)
        if (codec.base !== 'none' && !(c.codec === Codec.GROUP && c.baseDigest.length === 0)) {
          // a patch (required base), or a codec whose chunks may refer to a base (optional)
          const what = codec.base === 'required' ? 'patch' : codec.name;
          if (index.kind === Kind.FULL) throw corrupt(`full image holds a ${what} chunk for sha256:${key}`);
          // version 5: a base named by prefix until the chain below resolves it (bases.ts)
          const named = isDigest(c.baseDigest) || (index.formatVersion >= 5 && c.baseDigest.length === BASE_PREFIX_BYTES);
          if (codec.base === 'required' && !named) throw corrupt(`blob sha256:${key}: patch chunk without a base digest`);
          if (codec.base === 'optional' && c.baseDigest.length !== 0 && !named) throw corrupt(`blob sha256:${key}: ${what} chunk with an invalid base digest`);
          if (!Number.isSafeInteger(c.baseOffset) || !Number.isSafeInteger(c.baseSize) || c.baseSize > LIMITS.maxFileSize) throw hostile(`blob sha256:${key}: absurd base region`);
        }
        total += c.rawSize;
      }
      if (total !== b.size) throw corrupt(`blob sha256:${key}: chunks cover ${total} bytes, content is ${b.size}`);
      if (b.size > 0 && b.chunks.length === 0) throw corrupt(`blob sha256:${key} has no chunks`);
    } else {
      throw corrupt(`blob sha256:${key}: unknown encoding ${b.encoding}`);
    }
    blobs.set(key, b);
  }

  return blobs;
}

export function validateIndex(index: Index, blobSectionEnd: number, headerSize: number): ValidatedIndex {
  if (index.treeEdit) throw corrupt('a version 2 delta needs its parent to be validated');
  const blobs = validateIndexContents(index, blobSectionEnd, headerSize);
  // Version 2 builds entries from names under depths (compact.ts): each name is checked as a path
  // component there, and each entry's directory found before it and checked to be a directory.
  const pathsChecked = index.formatVersion >= 2;
  // version 2 shares one Buffer per digest between entries and blobs: found by identity, not by hex key
  const byObject = new Map<Buffer, Blob>();
  for (const b of blobs.values()) byObject.set(b.digest, b);
  if (index.entries.length > LIMITS.maxEntries) throw hostile(`index has ${index.entries.length} entries, over the limit`);
  const byPath = new Map<string, Entry>();
  let sawRoot = false;
  for (const e of index.entries) {
    if (e.path === '') {
      if (e.type !== FileType.DIR) throw corrupt('root entry is not a directory');
      sawRoot = true;
    } else if (!pathsChecked) {
      checkTreePath(e.path);
      const slash = e.path.lastIndexOf('/');
      const parent = slash < 0 ? '' : e.path.slice(0, slash);
      const p = byPath.get(parent);
      if (!p || p.type !== FileType.DIR) throw hostile(`entry "${e.path}": parent is missing or not a directory (entries must come after their directory)`);
    }
    if (byPath.has(e.path)) throw corrupt(`entry "${e.path}" listed twice`);
    if (!Number.isSafeInteger(e.size) || e.size < 0 || e.size > LIMITS.maxFileSize) throw hostile(`entry "${e.path}" declares an absurd size`);
    if (e.mode < 0 || e.mode > 0o7777) throw corrupt(`entry "${e.path}" has an invalid mode`);
    if (!Number.isSafeInteger(e.mtimeSec) || e.mtimeNsec < 0 || e.mtimeNsec >= 1e9) throw corrupt(`entry "${e.path}" has an invalid mtime`);
    for (const x of e.xattrs) {
      if (!x.name || x.name.includes('\0') || Buffer.byteLength(x.name) > 255 || x.value.length > LIMITS.maxXattrValue) throw hostile(`entry "${e.path}": invalid xattr`);
    }
    if (e.uname.includes('\0') || e.gname.includes('\0')) throw hostile(`entry "${e.path}": owner name contains a NUL byte`);
    switch (e.type) {
      case FileType.REG: {
        if (!isDigest(e.digest)) throw corrupt(`file "${e.path}" has no valid digest`);
        const b = byObject.get(e.digest) ?? blobs.get(e.digest.toString('hex'));
        if (!b) throw corrupt(`file "${e.path}": its content sha256:${e.digest.toString('hex')} is not described`);
        if (b.size !== e.size) throw corrupt(`file "${e.path}": size ${e.size} differs from its content's ${b.size}`);
        break;
      }
      case FileType.HARDLINK: {
        const t = byPath.get(e.linkTarget);
        if (!t || t.type !== FileType.REG) throw hostile(`hard link "${e.path}" points to "${e.linkTarget}", which is not an earlier regular file`);
        break;
      }
      case FileType.SYMLINK:
        checkLinkTarget(e.path, e.linkTarget);
        break;
      case FileType.CHAR:
      case FileType.BLOCK:
        checkDeviceNumbers(e.path, e.devMajor, e.devMinor);
        break;
      case FileType.DIR:
      case FileType.FIFO:
        break;
      default:
        throw corrupt(`entry "${e.path}" has unknown type ${e.type}`);
    }
    byPath.set(e.path, e);
  }
  if (!sawRoot) throw corrupt('index has no root entry');
  // The id is a claim until it is recomputed: it names the image in stores,
  // servers, registries and the snapshotter, so a file that carries another
  // image's id with a different tree or config is refused here, where every
  // reader of an untrusted file passes.
  if (!computeImageId(index.entries, index.image.configJson).equals(index.imageId)) {
    throw corrupt('the image id does not match the image\'s tree and config (forged or damaged index)');
  }
  return { index, blobs, byPath };
}
