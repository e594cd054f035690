/**
 * The llvm-bitcode codec (issue 14 item 3): an LLVM bitcode file (PostgreSQL's JIT
 * bitcode, LTO objects) that rebuilds byte for byte from its expanded form
 * (src/delta/bitcode.ts: every value of the bitstream as a byte-aligned varint) is
 * stored as that form, encoded by a codec of bytes against the base's expanded form;
 * apply writes the bitstream back. On a sample of postgresql-15's changed `.bc` files
 * the patches of the expanded forms took 0.34x the bytes of the better of bsdiff and
 * zstd-patch 19 on the files as they are (CODECS.md, "LLVM bitcode").
 *
 * Stored layout: u8 inner codec (its cdimg.proto value) | inner bytes.
 *
 * A wrapper codec, as ./zip-members.ts: the registry imports it and hands it the codecs
 * of bytes (the chooser to encode with, the lookup of the inner codec to decode with).
 */
import { Codec } from '../../format/types';
import { expandBitcode, expandBitcodeForm, isBitcode, rebuildBitcode } from '../bitcode';
import { BytesCodec, defineCodec, InnerChooser } from './types';
import { decodeInnerForm, innerEntry, ofSize } from './wrapper';

/** Largest file expanded (a larger one takes the ordinary path; its expanded form is about as large). */
export const BITCODE_MAX = 64 * 1024 * 1024;

/**
 * The base as the inner codec sees it: its expanded form when it is bitcode, else as is. Not
 * checked to rebuild (a base is only what the inner patch refers to; both sides expand it alike),
 * which halves its cost.
 */
export function bitcodeInnerBase(base: Buffer): Buffer {
  return (base.length <= BITCODE_MAX ? expandBitcodeForm(base) : undefined) ?? base;
}

/** Encode `target` (bitcode) as its expanded form through `inner`, or undefined when it is not bitcode that rebuilds exactly. */
function encodeBitcode(base: Buffer, target: Buffer, inner: InnerChooser): { data: Buffer; usesBase: boolean } | undefined {
  if (target.length > BITCODE_MAX || !isBitcode(target)) return undefined;
  // expandBitcode has rebuilt the file from this form byte for byte, and the chooser decoded the inner bytes back to it
  const form = expandBitcode(target);
  if (!form) return undefined;
  const chosen = inner(base.length ? bitcodeInnerBase(base) : Buffer.alloc(0), form);
  return innerEntry(Buffer.alloc(0), chosen);
}

/** Rebuild the bitcode file from stored bytes (and the base, for inner patches). */
function decodeBitcode(stored: Buffer, base: Buffer | null, expectedSize: number, codecOf: (proto: number) => BytesCodec | undefined): Buffer {
  // a value of the form takes at most ten bytes and stands for at least eight bits of the file
  // (a 64-bit value as 2-bit VBR chunks: 16 bytes of file, 10 of form); blobs, prefix and suffix are as they are
  const form = decodeInnerForm(stored, 0, base, bitcodeInnerBase, codecOf, 10 * expectedSize + 4096, 'llvm bitcode');
  return ofSize(rebuildBitcode(form, expectedSize), expectedSize, 'llvm bitcode');
}

/** The llvm-bitcode row of the registry (./registry.ts): tried on whole contents, kept when smaller. */
export const llvmBitcode = defineCodec(Codec.LLVM_BITCODE, {
  role: 'wrapper',
  encode: encodeBitcode,
  decode: decodeBitcode,
  // on 188 changed .bc files of postgresql-15 the files' own bytes coded smaller than their
  // expanded forms in 6, by 1-2 bytes each (patches of 60-80 bytes): 8 bytes of 115 KB
  replaces: true,
});
