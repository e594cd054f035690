/**
 * Patch bases named by a prefix of their digest (format version 5).
 *
 * A patch in a delta is coded against a content of its parent image, and
 * every content of the parent image is named in full by some file of the
 * chain below (the full image, or the delta that brought it). A version 5
 * delta therefore names a base by the first BASE_PREFIX_BYTES (8) bytes of
 * its digest when those are unique among the parent image's contents (the
 * writer checks: `uniquePrefixes`), and a reader gets the whole digest back
 * from the chain below (`resolveBasePrefixes`): 24 bytes saved per base, 14.7
 * KB of tzdata's 50 KiB delta.
 *
 * Trust: a prefix only chooses which bytes the patch is applied to; what the
 * patch builds is still checked against its own full digest, so a prefix
 * resolved to other bytes (a collision, or a hostile file below) can only
 * make a build fail (CORRUPT), never serve other bytes. A prefix that two
 * different contents below share is refused when the chain is opened.
 */
import { corrupt } from '../errors';
import { BASE_PREFIX_BYTES, Encoding, type Index } from './types';

/** The key of a digest or prefix: its first 8 bytes, as an unsigned big-endian integer. */
function keyOf(d: Buffer): bigint {
  return d.readBigUInt64BE(0);
}

/** True when some chunk of `index` names its base by a prefix only. */
export function hasBasePrefixes(index: Index): boolean {
  for (const b of index.blobs) for (const c of b.chunks) if (c.baseDigest.length === BASE_PREFIX_BYTES) return true;
  return false;
}

/**
 * Replaces each base prefix of `index` by the full digest of the content of
 * `below` (the indexes of the files under it, any order) that it begins. A
 * prefix no content below begins is left as it is (the build that needs the
 * base fails, NOT_FOUND, as for any base the chain lacks; a merge of deltas
 * without their base image resolves what the deltas before hold and keeps
 * the rest). Throws CORRUPT when two different contents below begin with the
 * same prefix. Idempotent; changes the chunks in place.
 */
export function resolveBasePrefixes(index: Index, below: readonly Index[]): void {
  const wanted = new Map<bigint, Buffer | null>();
  for (const b of index.blobs) for (const c of b.chunks) if (c.baseDigest.length === BASE_PREFIX_BYTES) wanted.set(keyOf(c.baseDigest), null);
  if (wanted.size === 0) return;
  for (const ix of below) {
    for (const b of ix.blobs) {
      if (b.encoding === Encoding.SAME || b.digest.length < BASE_PREFIX_BYTES) continue;
      const k = keyOf(b.digest);
      if (!wanted.has(k)) continue;
      const had = wanted.get(k);
      if (had && !had.equals(b.digest)) {
        throw corrupt(`base sha256:${b.digest.subarray(0, BASE_PREFIX_BYTES).toString('hex')}… names two contents of the images below (sha256:${had.toString('hex')} and sha256:${b.digest.toString('hex')})`);
      }
      wanted.set(k, b.digest);
    }
  }
  // copies: a digest of an index below is a view of that index's digest table, which would stay
  // alive with this one (the FUSE manager keeps a chain's deltas' chunks, not the full image's index)
  const copies = new Map<bigint, Buffer>();
  for (const [k, d] of wanted) if (d) copies.set(k, Buffer.from(d));
  for (const b of index.blobs) {
    for (const c of b.chunks) {
      if (c.baseDigest.length !== BASE_PREFIX_BYTES) continue;
      const full = copies.get(keyOf(c.baseDigest));
      if (full) c.baseDigest = full;
    }
  }
}

/**
 * A test for the writer of a delta against the image whose contents are
 * `contents` (digests): true for a digest whose BASE_PREFIX_BYTES prefix no
 * other of them shares, which a version 5 delta may then name by prefix.
 */
export function uniquePrefixes(contents: Iterable<Buffer>): (digest: Buffer) => boolean {
  // built at the first base asked about: a delta without patches never pays for the image's contents
  let seen: Map<bigint, Buffer | null> | undefined;
  const build = (): Map<bigint, Buffer | null> => {
    const m = new Map<bigint, Buffer | null>();
    for (const d of contents) {
      if (d.length !== 32) continue;
      const k = keyOf(d);
      const had = m.get(k);
      if (had === undefined) m.set(k, d);
      else if (had !== null && !had.equals(d)) m.set(k, null);
    }
    return m;
  };
  return (digest) => digest.length === 32 && !!(seen ??= build()).get(keyOf(digest))?.equals(digest);
}
