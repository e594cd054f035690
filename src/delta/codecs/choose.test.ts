/**
 * The chooser's rule at `default` (issue 14, CODECS.md "Every content gets its best codec"):
 * every content of at least EVERY_CODEC_MIN bytes gets bsdiff (on text by hash chains) and the
 * strong zstd-patch next to the full frame, and keeps the smallest; executables keep bsdiff alone;
 * binary data that the level-1 probe calls unrelated gets a second
 * look at the level.
 */
import { randomBytes } from 'node:crypto';
import { chooseBest, contentKind, decodeEntry, encodePatch, EVERY_CODEC_MIN, LEVELS, patchPlan, PATCH_ENOUGH } from './index';
import { STRONG_MIN_SHARE, ZSTD_PATCH_STRONG_LEVEL } from './zstd-patch';
import { prng32 } from '../../../test/helpers/prng';

/** zstd-patch as the chooser codes it at `default`: the strong level unless the level-1 patch is under 1/64 of the target. */
function defaultZstdPatch(base: Buffer, target: Buffer): number {
  const probe = encodePatch(base, target, 'zstd-patch', 1).length;
  return encodePatch(base, target, 'zstd-patch', probe * STRONG_MIN_SHARE >= target.length ? ZSTD_PATCH_STRONG_LEVEL : LEVELS.default).length;
}

/**
 * Binary data (no magic, zero bytes): records of a 32-bit counter, a 32-bit value and eight bytes
 * of payload. The new version adds `shift` to every counter (like offsets after an insertion):
 * a change every 16 bytes that bsdiff's diff stream codes as a repeated small difference, and
 * that leaves zstd only matches shorter than a record.
 */
function records(n: number, shift: number, seed = 7): Buffer {
  const next = prng32(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i + 16 <= n; i += 16) {
    b.writeUInt32LE((i * 3 + shift) >>> 0, i);
    b.writeUInt32LE(next() & 0xffff, i + 4);
    b.writeUInt32LE(next() & 0x00ff00ff, i + 8);
    b.writeUInt32LE(0, i + 12);
  }
  return b;
}

/** Text of `lines` numbered lines, edited at every `every`-th line. */
function text(lines: number, every = 0, word = 'leaps'): Buffer {
  return Buffer.from(Array.from({ length: lines }, (_, i) => `line ${i}: the quick brown fox ${every && i % every === 0 ? word : 'jumps'} over the lazy dog\n`).join(''));
}

/** Something ELF-looking: machine code whose addresses moved. */
function elf(n: number, shift: number): Buffer {
  const b = Buffer.alloc(n);
  b.writeUInt32BE(0x7f454c46, 0);
  for (let i = 8; i + 4 <= n; i += 16) b.writeUInt32LE((i * 2654435761 + shift) >>> 0, i);
  return b;
}

/**
 * A target whose only common parts with `base` are 5-byte runs, each followed by a random byte:
 * level 1's matcher (6-byte minimum, long-distance matches of 64 bytes and more) finds none of
 * them and the level-1 probe calls the pair unrelated, while stronger levels find them all (as in
 * LLVM bitcode, whose common parts are short and not byte-aligned, CODECS.md).
 */
function shortRuns(base: Buffer, n: number, seed: number): Buffer {
  const next = prng32(seed);
  const out = Buffer.alloc(n);
  for (let o = 0; o + 6 <= n; o += 6) {
    const at = next() % (base.length - 5);
    base.copy(out, o, at, at + 5);
    out[o + 5] = next() & 0xff;
  }
  return out;
}

const opts = { codec: 'auto', level: 'default' } as const;

describe('chooseBest at default: every content gets its best codec', () => {
  it('tries bsdiff on non-executable data of EVERY_CODEC_MIN bytes or more and keeps it when it is the smallest', () => {
    const base = records(256 << 10, 0);
    const target = records(256 << 10, 4096);
    expect(contentKind(target)).toBe('binary');
    expect(patchPlan(base, target, opts)).toEqual(['bsdiff', 'zstd-patch']);
    const r = chooseBest(base, target, opts);
    // this fails if non-executables never get bsdiff
    expect(r.tried.bsdiff).toBeGreaterThan(0);
    expect(r.codec).toBe('bsdiff');
    const strong = encodePatch(base, target, 'zstd-patch', ZSTD_PATCH_STRONG_LEVEL).length;
    expect(r.data.length).toBeLessThan(strong);
    expect(decodeEntry(r.codec, r.data, base, target.length).equals(target)).toBe(true);
  });

  it('keeps the strong zstd-patch when it beats bsdiff on data', () => {
    // common parts of 5 bytes only: zstd 19 codes them as matches, bsdiff finds no match to align
    const next = prng32(31);
    const base = Buffer.alloc(64 << 10);
    for (let i = 0; i < base.length; i++) base[i] = next() & 0x3f;
    const target = shortRuns(base, 64 << 10, 32);
    const r = chooseBest(base, target, opts);
    expect(r.tried.bsdiff).toBeGreaterThan(r.data.length);
    expect(r.codec).toBe('zstd-patch');
    expect(r.data.length).toBeLessThanOrEqual(encodePatch(base, target, 'zstd-patch', ZSTD_PATCH_STRONG_LEVEL).length);
    expect(decodeEntry(r.codec, r.data, base, target.length).equals(target)).toBe(true);
  });

  it('codes text with bsdiff by hash chains, then zstd-patch (at level 12 when the probe is under 1/64 of it) unless bsdiff is far below the probe', () => {
    // every line renumbered: a change in every line, which bsdiff's diff stream does not code well
    const base = text(4000);
    const target = Buffer.from(base.toString().replace(/line (\d+)/g, (_m, d: string) => `line ${Number(d) + 1}`));
    expect(target.length).toBeGreaterThanOrEqual(EVERY_CODEC_MIN);
    expect(patchPlan(base, target, opts)).toEqual(['bsdiff', 'zstd-patch']);
    const r = chooseBest(base, target, opts);
    expect(r.tried.bsdiff).toBe(encodePatch(base, target, 'bsdiff', LEVELS.default, { bsdiffMatcher: 'hash' }).length);
    expect(r.tried.bsdiff).toBeGreaterThanOrEqual(PATCH_ENOUGH * encodePatch(base, target, 'zstd-patch', 1).length);
    expect(r.codec).toBe('zstd-patch');
    expect(r.tried['zstd-patch']).toBe(defaultZstdPatch(base, target));
    expect(r.tried['zstd-patch']).toBe(encodePatch(base, target, 'zstd-patch', LEVELS.default).length);
    expect(decodeEntry(r.codec, r.data, base, target.length).equals(target)).toBe(true);
    // a few edits: bsdiff is far below the probe, and zstd-patch is not tried again
    const few = text(4000, 100);
    const r2 = chooseBest(base, few, opts);
    expect(r2.codec).toBe('bsdiff');
    expect(r2.tried.bsdiff).toBeLessThan(PATCH_ENOUGH * encodePatch(base, few, 'zstd-patch', 1).length);
    expect(r2.tried['zstd-patch']).toBeUndefined();
    expect(decodeEntry(r2.codec, r2.data, base, few.length).equals(few)).toBe(true);
    // edited throughout (the probe is over 1/64 of the unit: zstd-patch's strong level): zstd-patch is
    // tried even after a bsdiff patch far below the probe, and the smaller kept
    const words = ['alpha', 'beta', 'gamma', 'select', 'insert', 'table', 'help', 'server'];
    const next = prng32(11);
    const lines = Array.from({ length: 6000 }, () => Array.from({ length: 3 + (next() % 8) }, () => words[next() % words.length]).join(' ') + ';');
    const b3 = Buffer.from(lines.join('\n'));
    const t3 = Buffer.from(lines.map((l, i) => (i % 6 === 0 ? l.replace(/\w+/, `edited${next() % 1000}`) : l)).join('\n'));
    const probe3 = encodePatch(b3, t3, 'zstd-patch', 1).length;
    expect(probe3 * STRONG_MIN_SHARE).toBeGreaterThanOrEqual(t3.length);
    const r3 = chooseBest(b3, t3, opts);
    expect(r3.tried.bsdiff).toBeLessThan(PATCH_ENOUGH * probe3);
    expect(r3.tried['zstd-patch']).toBe(encodePatch(b3, t3, 'zstd-patch', ZSTD_PATCH_STRONG_LEVEL).length);
    expect(r3.data.length).toBe(Math.min(r3.tried.bsdiff ?? Infinity, r3.tried['zstd-patch'] ?? Infinity, r3.tried.zstd ?? Infinity));
  });

  it('keeps the smaller of bsdiff and the strong zstd-patch whichever it is (both tried unless bsdiff is far below the probe)', () => {
    for (const [base, target] of [
      [records(64 << 10, 0, 3), records(64 << 10, 16, 3)],
      [Buffer.concat([records(32 << 10, 0, 5), text(600)]), Buffer.concat([records(32 << 10, 64, 5), text(600, 5)])],
    ]) {
      const r = chooseBest(base, target, opts);
      const bs = encodePatch(base, target, 'bsdiff', LEVELS.default).length;
      const zp = defaultZstdPatch(base, target);
      expect(r.tried.bsdiff).toBe(bs);
      const probe = encodePatch(base, target, 'zstd-patch', 1).length;
      if (bs >= PATCH_ENOUGH * probe) expect(r.tried['zstd-patch']).toBe(zp);
      expect(r.data.length).toBeLessThanOrEqual(Math.min(bs, r.tried['zstd-patch'] ?? Infinity, r.tried.zstd ?? Infinity));
    }
  });

  it('gives executables bsdiff alone (zstd-patch would not beat it)', () => {
    const base = elf(64 << 10, 1);
    const target = elf(64 << 10, 2);
    const r = chooseBest(base, target, opts);
    expect(r.codec).toBe('bsdiff');
    expect(r.tried['zstd-patch']).toBeUndefined();
  });

  it('codes data below EVERY_CODEC_MIN with the strong zstd-patch only', () => {
    const base = records(8 << 10, 0);
    const target = records(8 << 10, 16);
    expect(patchPlan(base, target, opts)).toEqual(['zstd-patch']);
    const r = chooseBest(base, target, opts);
    expect(r.tried.bsdiff).toBeUndefined();
    // a patch that is a real share of the unit: the strong level
    expect(encodePatch(base, target, 'zstd-patch', 1).length * STRONG_MIN_SHARE).toBeGreaterThanOrEqual(target.length);
    expect(r.tried['zstd-patch']).toBe(encodePatch(base, target, 'zstd-patch', ZSTD_PATCH_STRONG_LEVEL).length);
  });

  it('looks again at binary data the level-1 probe calls unrelated, and patches it when it is related', () => {
    const next = prng32(11);
    const base = Buffer.alloc(120_000);
    for (let i = 0; i < base.length; i++) base[i] = next() & 0xff;
    const target = shortRuns(base, 120_000, 12);
    expect(contentKind(target)).toBe('binary');
    // the probe sees nothing in common
    expect(encodePatch(base, target, 'zstd-patch', 1).length).toBeGreaterThan(0.9 * target.length);
    const r = chooseBest(base, target, opts);
    expect(r.codec).not.toBe('zstd');
    expect(r.data.length).toBeLessThan(0.9 * (r.tried.zstd ?? target.length));
    expect(decodeEntry(r.codec, r.data, base, target.length).equals(target)).toBe(true);
    // really unrelated data: the second look finds nothing, and only the full frame is kept
    const u = chooseBest(randomBytes(100_000), randomBytes(100_000), opts);
    expect(Object.keys(u.tried)).toEqual(['zstd']);
  });
});
