/**
 * What the wrapper codecs (./gzip-member.ts, ./zip-members.ts, ./llvm-bitcode.ts) share: their
 * stored bytes end with u8 inner codec (its cdimg.proto value) | the inner codec's bytes of the
 * form they code the content as, for patch codecs against the base's form.
 */
import { corrupt } from '../../errors';
import type { BytesCodec } from './types';

/**
 * A wrapper's stored bytes for the form the inner chooser coded: `head` (the wrapper's own fields,
 * if any), u8 inner codec, the inner bytes; the entry needs the base when the inner codec is a patch.
 */
export function innerEntry(head: Buffer, chosen: { codec: BytesCodec; data: Buffer }): { data: Buffer; usesBase: boolean } {
  return { data: Buffer.concat([head, Buffer.from([chosen.codec.proto]), chosen.data]), usesBase: chosen.codec.base !== 'none' };
}

/** `out`, the content a wrapper rebuilt, when it is `expectedSize` bytes long; CORRUPT (named `what`) otherwise. */
export function ofSize(out: Buffer, expectedSize: number, what: string): Buffer {
  if (out.length !== expectedSize) throw corrupt(`${what} rebuilds to ${out.length} bytes, expected ${expectedSize}`);
  return out;
}

/**
 * The form stored from byte `at` of `stored`: the inner codec named there decodes the rest,
 * against `formOf(base)` for a patch, to the size its bytes declare, which must be at most `max`.
 * CORRUPT (messages start with `what`) for a truncated entry, an unknown inner codec, a patch
 * without a base, or a size undeclared or over `max`.
 */
export function decodeInnerForm(stored: Buffer, at: number, base: Buffer | null, formOf: (base: Buffer) => Buffer, codecOf: (proto: number) => BytesCodec | undefined, max: number, what: string): Buffer {
  if (stored.length < at + 2) throw corrupt(`${what}: truncated`);
  const inner = codecOf(stored[at]);
  if (!inner) throw corrupt(`${what}: unknown inner codec ${stored[at]}`);
  const payload = stored.subarray(at + 1);
  if (inner.base !== 'none' && !base) throw corrupt(`${what}: patch without a base`);
  const size = inner.declaredSize(payload);
  if (size === null) throw corrupt(`${what}: inner ${inner.name} data does not declare its size`);
  if (size > max) throw corrupt(`${what}: inner content too large`);
  return inner.decode(payload, inner.base !== 'none' && base ? formOf(base) : null, size);
}
