/**
 * LLVM bitcode expanded to byte-aligned values and rebuilt (src/delta/bitcode.ts), and the
 * llvm-bitcode codec that patches the expanded forms (codecs/llvm-bitcode.ts): real bitcode
 * from `llvm-as` (Debian's llvm, installed by scripts/install-deps.sh) rebuilds byte for
 * byte, 64-bit constants included; a changed module is coded by the codec, smaller than its
 * bytes are by the other codecs, and decodes back; a file that does not rebuild exactly
 * is left to the other codecs; damaged or forged stored bytes are CORRUPT, never a crash.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { D4fsError } from '../errors';
import { Codec } from '../format/types';
import { expandBitcode, expandBitcodeForm, expandFormTs, isBitcode, rebuildBitcode, rebuildTs } from './bitcode';
import { bsdiffSaWith } from './codecs/native';
import { chooseBest, codecByProto, decodeWith, encodeChunk } from './codecs';
import { assemble as assembleIn, hasLlvmAs, llvmModule } from '../../test/helpers/llvm';

if (!hasLlvmAs) {
  // scripts/install-deps.sh installs Debian's llvm; say so loudly where it could not
  console.warn('SKIPPED: src/delta/bitcode.test.ts needs llvm-as (Debian package llvm), which this machine lacks');
}
const itLlvm = hasLlvmAs ? it : it.skip;

const dir = mkdtempSync(join(tmpdir(), 'd4fs-bitcode-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const assemble = (name: string, text: string): Buffer => assembleIn(dir, name, text);

/** `bc` in the wrapper header Darwin's tools write: magic, version, offset, size, cpu type; then padding. */
function wrapped(bc: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32LE(0x0b17c0de, 0);
  h.writeUInt32LE(0, 4);
  h.writeUInt32LE(20, 8);
  h.writeUInt32LE(bc.length, 12);
  h.writeUInt32LE(0x01000007, 16);
  return Buffer.concat([h, bc, Buffer.alloc(12)]);
}

const kindOf = (f: () => unknown): string => {
  try {
    f();
    return 'ok';
  } catch (e) {
    return e instanceof D4fsError ? e.kind : `not a D4fsError: ${String(e)}`;
  }
};

/** A LEB128 varint. */
function leb(x: number): number[] {
  const out: number[] = [];
  while (x >= 128) {
    out.push((x % 128) | 128);
    x = Math.floor(x / 128);
  }
  out.push(x);
  return out;
}

describe('LLVM bitcode expanded and rebuilt', () => {
  it('reads an array of zero-bit fields of any count as LLVM does (the literal 0), at once', () => {
    // a form: version 1, the magic as prefix, no suffix; a block (id 8, 4-bit abbreviation ids) defining
    // [array of fixed(0)] (each operand: not a literal, its encoding, a width for fixed) and a record of it
    // with 2^40 elements, then the block's end
    const form = Buffer.from([1, 4, 0x42, 0x43, 0xc0, 0xde, 0, 1, 8, 4, 2, 2, 0, 3, 0, 1, 0, 4, ...leb(2 ** 40), 0]);
    // (a loop over the elements would not end within the test's timeout)
    const stream = rebuildBitcode(form, 1024);
    expect(isBitcode(stream)).toBe(true);
    const back = expandBitcode(stream);
    expect(back?.equals(form)).toBe(true);
  });

  itLlvm('rebuilds bitcode from llvm-as byte for byte, bare and in a wrapper header; other bytes are not bitcode', () => {
    for (const b of [assemble('v1', llvmModule(40, false)), assemble('v2', llvmModule(40, true))]) {
      expect(isBitcode(b)).toBe(true);
      const form = expandBitcode(b);
      expect(form).toBeDefined();
      expect(rebuildBitcode(form as Buffer, b.length).equals(b)).toBe(true);
      const w = wrapped(b);
      const wf = expandBitcode(w);
      expect(wf).toBeDefined();
      expect(rebuildBitcode(wf as Buffer, w.length).equals(w)).toBe(true);
    }
    expect(expandBitcode(Buffer.from('not bitcode at all, just text'))).toBeUndefined();
    expect(expandBitcode(Buffer.alloc(0))).toBeUndefined();
  });

  itLlvm('leaves a file that would not rebuild exactly to the other codecs (a block length that is not the block\'s)', () => {
    const b = assemble('v1', llvmModule(10, false));
    // the first block's length word: after the magic, ENTER_SUBBLOCK (2 + 8 + 4 bits) aligned to 64 bits
    const odd = Buffer.from(b);
    odd.writeUInt32LE(odd.readUInt32LE(8) + 1, 8);
    expect(isBitcode(odd)).toBe(true);
    expect(expandBitcode(odd)).toBeUndefined();
    const r = encodeChunk(b, odd, { codec: 'auto', level: 'default' }, true);
    expect(r.codec).not.toBe(Codec.LLVM_BITCODE);
  });

  itLlvm('codes a changed module as the patch of its expanded form: smaller than its bytes coded, and decoded back', () => {
    const v1 = assemble('v1', llvmModule(200, false));
    const v2 = assemble('v2', llvmModule(200, true));
    const r = encodeChunk(v1, v2, { codec: 'auto', level: 'default' }, true);
    expect(r.codec).toBe(Codec.LLVM_BITCODE);
    expect(r.usesBase).toBe(true);
    expect(decodeWith(codecByProto(r.codec), r.data, v1, v2.length).equals(v2)).toBe(true);
    const plain = chooseBest(v1, v2, { codec: 'auto', level: 'default' });
    expect(r.data.length).toBeLessThan(plain.data.length);
    // a new file (no base) too
    const full = encodeChunk(Buffer.alloc(0), v2, { codec: 'auto', level: 'default' }, true);
    expect(full.codec).toBe(Codec.LLVM_BITCODE);
    expect(full.usesBase).toBe(false);
    expect(decodeWith(codecByProto(full.codec), full.data, null, v2.length).equals(v2)).toBe(true);
  });

  itLlvm('refuses damaged or forged stored bytes and forms as CORRUPT, never a crash or a hang', () => {
    const v1 = assemble('v1', llvmModule(30, false));
    const v2 = assemble('v2', llvmModule(30, true));
    const r = encodeChunk(v1, v2, { codec: 'auto', level: 'default' }, true);
    expect(r.codec).toBe(Codec.LLVM_BITCODE);
    const codec = codecByProto(Codec.LLVM_BITCODE);
    expect(kindOf(() => decodeWith(codec, r.data.subarray(0, 1), v1, v2.length))).toBe('CORRUPT');
    expect(kindOf(() => decodeWith(codec, r.data, null, v2.length))).toBe('CORRUPT'); // a patch without its base
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let k = 0; k < 200; k++) {
      const d = Buffer.from(r.data);
      d[rnd(d.length)] ^= 1 + rnd(255);
      // wrong bytes may come out (the reader checks every content against its digest), or CORRUPT
      const got = kindOf(() => decodeWith(codec, d, v1, v2.length));
      expect(['ok', 'CORRUPT']).toContain(got);
    }
    // forms: truncated, flipped, and forged (an array of a huge count, a value past its field)
    const form = expandBitcode(v2) as Buffer;
    for (const cut of [0, 1, 5, form.length >> 1, form.length - 1]) expect(['ok', 'CORRUPT']).toContain(kindOf(() => rebuildBitcode(form.subarray(0, cut), v2.length)));
    for (let k = 0; k < 200; k++) {
      const f = Buffer.from(form);
      f[rnd(f.length)] ^= 1 + rnd(255);
      expect(['ok', 'CORRUPT']).toContain(kindOf(() => rebuildBitcode(f, v2.length)));
    }
    expect(kindOf(() => rebuildBitcode(Buffer.from([2, 4, 0x42, 0x43, 0xc0, 0xde, 0]), 100))).toBe('CORRUPT'); // another form version
    // past the size the caller allows
    expect(kindOf(() => rebuildBitcode(form, v2.length - 1))).toBe('CORRUPT');
  });
});

describe("the addon's walk (native/bsdiff-sa/src/bitcode.c) against the TypeScript one", () => {
  const addon = bsdiffSaWith('bcExpand', 'bcRebuild');
  const native = (): NonNullable<typeof addon> => {
    if (!addon) throw new Error('the bsdiff-sa addon has no bcExpand/bcRebuild: npm ci builds it');
    return addon;
  };

  it('is built, and what the codec uses', () => {
    expect(addon).not.toBeNull();
  });

  itLlvm('gives the same forms and files on real bitcode, bare and in a wrapper header', () => {
    for (const [i, text] of [llvmModule(60, false), llvmModule(60, true, 3), llvmModule(5, true, 9)].entries()) {
      const b = assemble(`n${i}`, text);
      for (const file of [b, wrapped(b)]) {
        const ts = expandFormTs(file);
        expect(ts).toBeDefined();
        const c = native().bcExpand(file);
        expect(c?.equals(ts as Buffer)).toBe(true);
        expect(expandBitcodeForm(file)?.equals(ts as Buffer)).toBe(true);
        const back = native().bcRebuild(ts as Buffer, file.length);
        expect(back?.equals(file)).toBe(true);
        expect(rebuildTs(ts as Buffer, file.length).equals(file)).toBe(true);
      }
    }
  });

  itLlvm('on damaged files and forms gives the TypeScript walk\'s bytes, or leaves them to it (null), never other bytes', () => {
    const b = assemble('d1', llvmModule(30, true));
    const form = expandFormTs(b) as Buffer;
    let seed = 11;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const tsRebuild = (f: Buffer, max: number): Buffer | undefined => {
      try {
        return rebuildTs(f, max);
      } catch (e) {
        expect(e).toBeInstanceOf(D4fsError);
        return undefined;
      }
    };
    let agreed = 0;
    for (let k = 0; k < 300; k++) {
      // a file with a flipped byte (past the magic), or cut short
      const d = k % 3 === 2 ? b.subarray(0, 4 + rnd(b.length - 4)) : Buffer.from(b);
      if (k % 3 !== 2) d[4 + rnd(d.length - 4)] ^= 1 + rnd(255);
      const c = native().bcExpand(d);
      if (c) {
        expect(expandFormTs(d)?.equals(c)).toBe(true);
        agreed++;
      }
      // a form with a flipped byte, or cut short
      const f = k % 3 === 2 ? form.subarray(0, rnd(form.length)) : Buffer.from(form);
      if (k % 3 !== 2) f[rnd(f.length)] ^= 1 + rnd(255);
      const r = native().bcRebuild(f, b.length);
      if (r) {
        expect(tsRebuild(f, b.length)?.equals(r)).toBe(true);
        agreed++;
      }
    }
    // most damage is still read (a flipped value is another value): the comparison did compare
    expect(agreed).toBeGreaterThan(100);
    // past the size allowed, or an absurd size: left to the TypeScript walk, which refuses it
    expect(native().bcRebuild(form, b.length - 1)).toBeNull();
    expect(native().bcRebuild(form, -1)).toBeNull();
    expect(kindOf(() => rebuildBitcode(form, b.length - 1))).toBe('CORRUPT');
  });

  it('leaves a value past 2^64 to the TypeScript walk, which reads it (up to 80 bits) both ways', () => {
    // a form: version 1, the magic as prefix, no suffix; a block (id 8, 4-bit abbreviation ids) holding an
    // unabbreviated record (code 1) of one operand, 2^70 (VBR6 chunks), then the block's end
    const form = Buffer.from([1, 4, 0x42, 0x43, 0xc0, 0xde, 0, 1, 8, 4, 3, 1, 1, ...Array(10).fill(0x80), 1, 0]);
    expect(native().bcRebuild(form, 1024)).toBeNull();
    const stream = rebuildBitcode(form, 1024);
    expect(stream.equals(rebuildTs(form, 1024))).toBe(true);
    expect(native().bcExpand(stream)).toBeNull();
    expect(expandBitcode(stream)?.equals(form)).toBe(true);
  });
});
