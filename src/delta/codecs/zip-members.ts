/**
 * The zip-members codec (issue 14 item 3): a zip archive (.jar, .war, .whl, .apk) whose
 * deflated members the system's zlib rebuilds byte for byte is stored as its expanded
 * form (src/delta/zipmember.ts: a table, then the archive with those members
 * decompressed), encoded by a codec of bytes against the base's expanded form; apply
 * deflates the members again. On libtomcat10-java's jars, members decompressed patch to
 * 0.18x the bytes of the jars as they are (`zstd -19 --patch-from`, CODECS.md).
 *
 * Stored layout: u8 inner codec (its cdimg.proto value) | inner bytes.
 *
 * A wrapper codec, as ./gzip-member.ts: the registry imports it and hands it the codecs
 * of bytes (the chooser to encode with, the lookup of the inner codec to decode with).
 */
import { corrupt } from '../../errors';
import { Codec } from '../../format/types';
import { expandZip, isZip, rebuildZip, ZIP_MAX_EXPANDED, zipInnerBase } from '../zipmember';
import { BytesCodec, defineCodec, InnerChooser } from './types';
import { decodeInnerForm, innerEntry } from './wrapper';

/** Encode `target` (a zip archive) as its expanded form through `inner`, or undefined when no member can be rebuilt exactly. */
function encodeZipMembers(base: Buffer, target: Buffer, inner: InnerChooser): { data: Buffer; usesBase: boolean } | undefined {
  if (!isZip(target)) return undefined;
  const expanded = expandZip(target, true);
  if (!expanded) return undefined;
  const chosen = inner(base.length ? zipInnerBase(base) : Buffer.alloc(0), expanded);
  const entry = innerEntry(Buffer.alloc(0), chosen);
  // what is stored must give the archive back, byte for byte: the inner codec's bytes were
  // decoded and checked by the chooser, so the expanded form is rebuilt (each member deflated again)
  if (!rebuildZip(expanded, target.length).equals(target)) throw corrupt('zip members do not rebuild to the original archive');
  return entry;
}

/** Rebuild the archive from stored bytes (and the base, for inner patches). */
function decodeZipMembers(stored: Buffer, base: Buffer | null, expectedSize: number, codecOf: (proto: number) => BytesCodec | undefined): Buffer {
  // the expanded form: the archive's own bytes plus at most ZIP_MAX_EXPANDED decompressed, and its table
  const expanded = decodeInnerForm(stored, 0, base, zipInnerBase, codecOf, expectedSize + ZIP_MAX_EXPANDED + 64 * 1024 * 1024, 'zip members');
  return rebuildZip(expanded, expectedSize);
}

/** The zip-members row of the registry (./registry.ts): tried on whole contents, kept when smaller. */
export const zipMembers = defineCodec(Codec.ZIP_MEMBERS, {
  role: 'wrapper',
  encode: encodeZipMembers,
  decode: decodeZipMembers,
});
