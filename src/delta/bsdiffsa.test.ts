/**
 * The native bsdiff encoder (native/bsdiff-sa), container v2 and its context-mixing
 * diff coder: round trips through d4fs's TypeScript bspatch, refusals, hostile input,
 * and a cross-check against bsdiff-node.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import * as zstdSimple from 'zstd-napi';
import {
  BSDIFF2_CONTAINER_MAGIC,
  applyPatch,
  bsdiffEngine,
  bsdiffStreams,
  encodePatch,
  _internal,
} from './codecs';
import { CMB_SEGMENT, cmbDecodeDiff, cmbEncodeDiff, cmbSegments, cmDecodeDiff, cmEncodeDiff, cmNativeAvailable, oldUnderDiff } from './codecs/bsdiff-cm';
import { BsdiffSa, bsdiffSa } from './codecs/native';
import { D4fsError } from '../errors';
import { prng } from '../../test/helpers/prng';

// The addon as its one declaration types it (native/bsdiff-sa/index.d.ts), with `diff`
// loosened: the tests below also call it with arguments of the wrong types.
const sa = bsdiffSa() as Omit<BsdiffSa, 'diff'> & { diff(...args: unknown[]): ReturnType<BsdiffSa['diff']> };

const REPO = path.resolve(__dirname, '..', '..', '..');
const CACHE = path.join(REPO, '.cache', 'codec-test');

/**
 * Something like machine code between two builds: a random "program" with 4-byte
 * little-endian "addresses" every 16 bytes; the new one has insertions, deletions,
 * scattered byte edits, and every address after an insertion shifted.
 */
function fakeBinaries(size: number, seed: number): { base: Buffer; target: Buffer } {
  const r = prng(seed);
  const base = Buffer.alloc(size);
  for (let i = 0; i < size; i++) base[i] = r() < 0.3 ? 0 : Math.floor(r() * 256);
  for (let i = 0; i + 8 <= size; i += 16) {
    base[i] = 0xe8;
    base.writeUInt32LE(Math.floor(r() * 0x100000), i + 1);
  }
  const parts: Buffer[] = [];
  let pos = 0;
  let shift = 0;
  while (pos < size) {
    const len = Math.min(size - pos, 2000 + Math.floor(r() * 30000));
    const piece = Buffer.from(base.subarray(pos, pos + len));
    for (let i = 0; i + 8 <= piece.length; i += 16) if (piece[i] === 0xe8) piece.writeUInt32LE((piece.readUInt32LE(i + 1) + shift) >>> 0, i + 1);
    for (let k = 0; k < 3; k++) piece[Math.floor(r() * piece.length)] ^= 0x5a;
    parts.push(piece);
    pos += len;
    const ins = r() < 0.5 ? Math.floor(r() * 300) : 0;
    if (ins) parts.push(randomFrom(r, ins));
    shift += ins;
    if (r() < 0.2) pos += Math.floor(r() * 200); // a deletion
  }
  return { base, target: Buffer.concat(parts) };
}

/**
 * Source-like text and an edited version: lines of words and numbers; the new one has a few
 * lines changed, inserted and deleted every ~20 KB, and a renamed identifier in a run of lines.
 */
function textPair(size: number, seed: number): { base: Buffer; target: Buffer } {
  const r = prng(seed);
  const words = ['const', 'return', 'function', 'value', 'options', 'this', 'module', 'export', 'if', 'else', 'await', 'node'];
  const lines: string[] = [];
  let n = 0;
  while (n < size) {
    const k = 2 + Math.floor(r() * 9);
    const l = `${'  '.repeat(Math.floor(r() * 4))}${Array.from({ length: k }, () => (r() < 0.2 ? String(Math.floor(r() * 10000)) : words[Math.floor(r() * words.length)])).join(' ')};`;
    lines.push(l);
    n += l.length + 1;
  }
  const out = [...lines];
  for (let i = 0; i < out.length; i += 300 + Math.floor(r() * 400)) {
    const op = Math.floor(r() * 3);
    if (op === 0) out[i] = `${out[i]} // changed ${Math.floor(r() * 1000)}`;
    else if (op === 1) out.splice(i, 0, `inserted ${Math.floor(r() * 1e6)};`);
    else out.splice(i, 1);
  }
  for (let i = 1000; i < Math.min(out.length, 1100); i++) out[i] = out[i].replace(/options/g, 'settings');
  return { base: Buffer.from(lines.join('\n')), target: Buffer.from(out.join('\n')) };
}

/** sha256 (first 16 hex digits) of the streams of the golden-scan test's four diffs, as the byte-at-a-time scan made them. */
const GOLDEN_SCANS = ['39bf1f22f0917cda', '7fe45ea0f82f03b5', '05362bfd2400569a', '7c3e50e4e44fa3f1'];

function randomFrom(r: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

/** The `code` of what `f` throws (undefined when it does not throw). */
function errorCode(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as NodeJS.ErrnoException).code;
  }
  return undefined;
}

function expectCorrupt(f: () => unknown): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(D4fsError);
  expect((err as D4fsError).kind).toBe('CORRUPT');
}

/**
 * Applies 100 copies of `patch`, each with one random bit flipped: every one must be refused
 * as CORRUPT or give exactly `target` (never a wrong result). Returns how many were refused.
 */
function flipsRefused(base: Buffer, patch: Buffer, target: Buffer, seed: number): number {
  const r = prng(seed);
  let refused = 0;
  for (let k = 0; k < 100; k++) {
    const bad = Buffer.from(patch);
    const bit = Math.floor(r() * bad.length * 8);
    bad[bit >> 3] ^= 1 << (bit & 7);
    try {
      expect(applyPatch(base, bad, 'bsdiff', target.length).equals(target)).toBe(true);
    } catch (e) {
      expect((e as D4fsError).kind).toBe('CORRUPT');
      refused++;
    }
  }
  return refused;
}

/** Reference bspatch over raw BSDIFF40 streams (no container), for stream-level checks. */
function bspatchRaw(base: Buffer, s: { ctrl: Buffer; diff: Buffer; extra: Buffer }): Buffer {
  const rd = (b: Buffer, o: number): number => (b[o + 7] & 0x80 ? -1 : 1) * b.readUIntLE(o, 6);
  const out: number[] = [];
  let op = 0;
  let dp = 0;
  let ep = 0;
  for (let t = 0; t < s.ctrl.length; t += 24) {
    const x = rd(s.ctrl, t);
    const y = rd(s.ctrl, t + 8);
    const z = rd(s.ctrl, t + 16);
    for (let k = 0; k < x; k++) out.push((s.diff[dp++] + (op + k >= 0 && op + k < base.length ? base[op + k] : 0)) & 255);
    for (let k = 0; k < y; k++) out.push(s.extra[ep++]);
    op += x + z;
  }
  expect(dp).toBe(s.diff.length);
  expect(ep).toBe(s.extra.length);
  return Buffer.from(out);
}

describe('native encoder bsdiff-sa', () => {
  it('is the engine in use, built against libdivsufsort', () => {
    expect(bsdiffEngine().engine).toBe('bsdiff-sa');
    expect(sa.version).toMatch(/libdivsufsort \d/);
  });

  const cases: Array<[string, () => { base: Buffer; target: Buffer }]> = [
    ['random, unrelated', () => ({ base: randomBytes(50_000), target: randomBytes(40_000) })],
    ['edited binary-like', () => fakeBinaries(300_000, 7)],
    ['empty base', () => ({ base: Buffer.alloc(0), target: randomBytes(1000) })],
    ['empty target', () => ({ base: randomBytes(1000), target: Buffer.alloc(0) })],
    ['both empty', () => ({ base: Buffer.alloc(0), target: Buffer.alloc(0) })],
    ['one byte each', () => ({ base: Buffer.from('a'), target: Buffer.from('b') })],
    ['tiny', () => ({ base: Buffer.from('hello world'), target: Buffer.from('hello there world!') })],
    ['identical', () => {
      const b = fakeBinaries(100_000, 3).base;
      return { base: b, target: Buffer.from(b) };
    }],
    ['zeros with a few changes', () => {
      const base = Buffer.alloc(1 << 20);
      const target = Buffer.from(base);
      for (let i = 0; i < 50; i++) target[(i * 20_011) % target.length] = i + 1;
      return { base, target };
    }],
  ];

  it.each(cases)('streams reproduce the target exactly: %s', (_name, make) => {
    const { base, target } = make();
    const s = sa.diff(base, target);
    expect(s.ctrl.length % 24).toBe(0);
    expect(bspatchRaw(base, s).equals(target)).toBe(true);
  });

  it.each(cases)('round-trips through the TypeScript bspatch at default and best: %s', (_name, make) => {
    const { base, target } = make();
    for (const level of [12, 19]) {
      const p = encodePatch(base, target, 'bsdiff', level);
      expect(p.toString('latin1', 0, 8)).toBe(BSDIFF2_CONTAINER_MAGIC);
      expect(applyPatch(base, p, 'bsdiff', target.length).equals(target)).toBe(true);
      expect(encodePatch(base, target, 'bsdiff', level).equals(p)).toBe(true); // deterministic
    }
  });

  it('identical inputs give one copy and no extra bytes', () => {
    const b = fakeBinaries(200_000, 11).base;
    const s = sa.diff(b, b);
    expect(s.extra.length).toBe(0);
    expect(s.diff.length).toBe(b.length);
    expect(s.diff.every((v) => v === 0)).toBe(true);
    expect(encodePatch(b, b, 'bsdiff', 12).length).toBeLessThan(200);
  });

  it('round-trips a large input (12 MiB) and is much smaller than the target', () => {
    const { base, target } = fakeBinaries(12 << 20, 5);
    const p = encodePatch(base, target, 'bsdiff', 12);
    expect(applyPatch(base, p, 'bsdiff', target.length).equals(target)).toBe(true);
    expect(p.length).toBeLessThan(target.length / 10);
  });

  it('both packings (split zstd streams and the context-mixing coder) decode', () => {
    const { base, target } = fakeBinaries(400_000, 9);
    const s = bsdiffStreams(base, target);
    const split = _internal.bsdiffPack(s, base, target, 19, false, 'split');
    const cm = _internal.bsdiffPack(s, base, target, 19, false, 'cm');
    expect(split[24 + 12]).toBe(1); // runs section: zstd
    expect(cm[24 + 12]).toBe(3); // runs section: context mixing
    for (const p of [split, cm]) expect(applyPatch(base, p, 'bsdiff', target.length).equals(target)).toBe(true);
    expect(cm.length).toBeLessThan(split.length);
  });

  it('agrees with bsdiff-node: both decode, and the native patch is not larger', () => {
    const pairs: Array<{ base: Buffer; target: Buffer }> = [fakeBinaries(500_000, 21)];
    const lib = (v: string) => path.join(CACHE, `x-libssl3_${v}-1~deb12u2_amd64`, 'usr/lib/x86_64-linux-gnu/libssl.so.3');
    if (fs.existsSync(lib('3.0.20')) && fs.existsSync(lib('3.0.22'))) pairs.push({ base: fs.readFileSync(lib('3.0.20')), target: fs.readFileSync(lib('3.0.22')) });
    for (const { base, target } of pairs) {
      const mine = encodePatch(base, target, 'bsdiff', 12);
      const theirs = encodePatch(base, target, 'bsdiff', 12, { bsdiffEngine: 'bsdiff-node' });
      expect(applyPatch(base, mine, 'bsdiff', target.length).equals(target)).toBe(true);
      expect(applyPatch(base, theirs, 'bsdiff', target.length).equals(target)).toBe(true);
      expect(mine.length).toBeLessThanOrEqual(theirs.length * 1.05);
      // the raw streams cover the same target
      const a = bsdiffStreams(base, target);
      const b = bsdiffStreams(base, target, { bsdiffEngine: 'bsdiff-node' });
      expect(a.diff.length + a.extra.length).toBe(target.length);
      expect(b.diff.length + b.extra.length).toBe(target.length);
    }
  });

  // Parts of at least 256 KiB: these targets get 2 to 4 parts.
  const splitCases: Array<[string, () => { base: Buffer; target: Buffer }]> = [
    ['edited binary-like (the parts meet past each boundary)', () => fakeBinaries(1_200_000, 21)],
    ['unrelated random data (the parts never meet: the first scans everything)', () => ({ base: randomBytes(300_000), target: randomBytes(600_000) })],
    ['periodic data', () => ({ base: Buffer.alloc(700_000, 'abcabcabd'), target: Buffer.alloc(800_000, 'abcabd') })],
    ['binary-like with a long unrelated stretch across a boundary', () => {
      const { base, target } = fakeBinaries(1_100_000, 5);
      randomBytes(200_000).copy(target, 450_000);
      return { base, target };
    }],
    ['a second alignment that also fits just before the boundary of two parts', () => {
      // base: random with a stretch of period 16 ending at m + 16; target: base without its 16 bytes at m,
      // m just past the middle of the target (where a second part starts): the first part's scan and the
      // second's emit at different places there and must not be spliced at the first later position.
      const size = 1_000_000;
      const base = randomBytes(size);
      const m = Math.floor((size - 16) / 2) + 500;
      for (let x = m - 1000 + 16; x < m + 16; x++) base[x] = base[x - 16];
      return { base, target: Buffer.concat([base.subarray(0, m), base.subarray(m + 16)]) };
    }],
  ];

  it.each(splitCases)('the scan split over threads gives the same streams as one thread: %s', (_name, make) => {
    const { base, target } = make();
    const one = sa.diff(base, target, { threads: 1 });
    expect(bspatchRaw(base, one).equals(target)).toBe(true);
    for (const threads of [2, 3, 4, 16]) {
      const r = sa.diff(base, target, { threads });
      expect([r.ctrl.equals(one.ctrl), r.diff.equals(one.diff), r.extra.equals(one.extra), threads]).toEqual([true, true, true, threads]);
    }
  });

  it('threads: bad counts are refused; a deadline stops every part', () => {
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { threads: 0 })).toThrow(/threads/);
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { threads: 65 })).toThrow(/threads/);
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { threads: 'all' })).toThrow(/threads/);
    expect(errorCode(() => sa.diff(randomBytes(2 << 20), randomBytes(2 << 20), { deadlineMs: 1, threads: 4 }))).toBe('ETIMEDOUT');
    const { base, target } = fakeBinaries(600_000, 9);
    expect(bspatchRaw(base, sa.diff(base, target, { threads: 2 })).equals(target)).toBe(true);
  });

  it('refuses bad arguments with an exception, never a crash', () => {
    expect(() => sa.diff('abc', Buffer.alloc(1))).toThrow(/Uint8Array/);
    expect(() => sa.diff(Buffer.alloc(1))).toThrow(/two Uint8Arrays/);
    expect(() => sa.diff(new Uint16Array(4), Buffer.alloc(1))).toThrow(/Uint8Array/);
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), 5)).toThrow(/options/);
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { minGain: 0 })).toThrow(/minGain/);
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { deadlineMs: -1 })).toThrow(/deadlineMs/);
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { deadlineMs: 'soon' })).toThrow(/deadlineMs/);
    expect(errorCode(() => sa.diff(randomBytes(2 << 20), randomBytes(2 << 20), { deadlineMs: 1 }))).toBe('ETIMEDOUT');
    // still usable afterwards
    expect(sa.diff(Buffer.from('abc'), Buffer.from('abd')).diff.length).toBeGreaterThan(0);
  });

  it('accepts any Uint8Array view (offsets into a larger buffer)', () => {
    const big = randomBytes(10_000);
    const base = big.subarray(100, 5100);
    const target = Buffer.concat([big.subarray(200, 3000), Buffer.from('inserted'), big.subarray(3000, 5000)]);
    const s = sa.diff(new Uint8Array(base.buffer, base.byteOffset, base.length), target);
    expect(bspatchRaw(base, s).equals(target)).toBe(true);
  });

  it('the scan gives the patches it gave before its extensions went a word at a time (digests of the streams)', () => {
    // digests of the streams the byte-at-a-time scan (before this change) made for these inputs
    const digest = (s: { ctrl: Buffer; diff: Buffer; extra: Buffer }): string => createHash('sha256').update(s.ctrl).update(s.diff).update(s.extra).digest('hex').slice(0, 16);
    const { base, target } = fakeBinaries(600_000, 9);
    const t1 = textPair(300_000, 21);
    const got = [sa.diff(base, target), sa.diff(base, target, { matcher: 1 }), sa.diff(t1.base, t1.target), sa.diff(t1.base, t1.target, { matcher: 1 })].map(digest);
    expect(got).toEqual(GOLDEN_SCANS);
  });

  it('the hash matcher: round trips on every kind of pair, same streams on any thread count, close to the suffix array on text', () => {
    const r = prng(77);
    const rnd = randomFrom(r, 300_000);
    const flipped = Buffer.from(rnd);
    for (let k = 0; k < 300; k++) flipped[(k * 997) % flipped.length] ^= 1;
    const t = textPair(400_000, 5);
    const bin = fakeBinaries(400_000, 3);
    const pairs: [Buffer, Buffer][] = [
      [t.base, t.target],
      [bin.base, bin.target],
      [rnd, flipped],
      [Buffer.concat([rnd.subarray(1000), rnd.subarray(0, 1000)]), rnd], // moved content
      [Buffer.alloc(100_000, 97), Buffer.alloc(120_000, 97)], // periodic
      [Buffer.from('ab'.repeat(50_000)), Buffer.from(`${'ab'.repeat(40_000)}x${'ab'.repeat(10_000)}`)],
      [randomFrom(r, 5000), randomFrom(r, 7000)], // unrelated
      [Buffer.alloc(0), Buffer.from('hello')],
      [Buffer.from('0123456789abcdef0123'), Buffer.alloc(0)],
      [Buffer.from('short'), Buffer.from('shorter')], // under the 16-byte key
    ];
    for (const [b, n] of pairs) {
      const one = sa.diff(b, n, { matcher: 1 });
      expect(bspatchRaw(b, one).equals(n)).toBe(true);
      const two = sa.diff(b, n, { matcher: 1, threads: 3 });
      expect(two.ctrl.equals(one.ctrl) && two.diff.equals(one.diff) && two.extra.equals(one.extra)).toBe(true);
    }
    // text near its base: within 25 % of the suffix array's packed patch, and the codec round-trips it
    const hash = encodePatch(t.base, t.target, 'bsdiff', 12, { bsdiffMatcher: 'hash' });
    const full = encodePatch(t.base, t.target, 'bsdiff', 12);
    expect(hash.length).toBeLessThanOrEqual(full.length * 1.25);
    expect(applyPatch(t.base, hash, 'bsdiff', t.target.length).equals(t.target)).toBe(true);
    // periodic input, where the newest positions of every key are near the base's end: linear work
    // (before HBACK the backward extension made this quadratic: ~28 s for these 4 MiB, past the deadline)
    const n = 4 << 20;
    const ab = Buffer.from('ab'.repeat(n / 2));
    const abx = Buffer.from(`${'ab'.repeat(n / 4)}x${'ab'.repeat(n / 4)}`);
    expect(bspatchRaw(ab, sa.diff(ab, abx, { matcher: 1, deadlineMs: 10_000 })).equals(abx)).toBe(true);
    // the matcher is checked, and the deadline applies to it
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { matcher: 2 })).toThrow(/matcher/);
    expect(() => sa.diff(Buffer.alloc(1), Buffer.alloc(1), { matcher: 'hash' })).toThrow(/matcher/);
    expect(errorCode(() => sa.diff(randomBytes(4 << 20), randomBytes(4 << 20), { deadlineMs: 1, matcher: 1 }))).toBe('ETIMEDOUT');
  });

  it('a minGain other than bsdiff\'s 8 still reproduces the target', () => {
    const { base, target } = fakeBinaries(200_000, 13);
    for (const minGain of [1, 4, 32, 1024]) expect(bspatchRaw(base, sa.diff(base, target, { minGain })).equals(target)).toBe(true);
  });
});

/** bsdiff streams of a fake binary pair, and the base bytes under the diff stream. */
function diffWithOldUnder(size: number, seed: number): { s: ReturnType<typeof bsdiffStreams>; ou: Uint8Array } {
  const { base, target } = fakeBinaries(size, seed);
  const s = bsdiffStreams(base, target);
  const rd = (o: number): number => (s.ctrl[o + 7] & 0x80 ? -1 : 1) * s.ctrl.readUIntLE(o, 6);
  const xs: number[] = [];
  const zs: number[] = [];
  for (let t = 0; t < s.ctrl.length; t += 24) {
    xs.push(rd(t));
    zs.push(rd(t + 16));
  }
  return { s, ou: oldUnderDiff(base, xs, zs, s.diff.length) };
}

describe('context-mixing diff coder', () => {
  it('round-trips diff streams and knows the base bytes under them', () => {
    const { s, ou } = diffWithOldUnder(200_000, 17);
    const packed = cmEncodeDiff(s.diff, ou);
    const back = cmDecodeDiff(packed, ou);
    expect(back.diff.equals(s.diff)).toBe(true);
    expect(back.consumed).toBe(packed.length);
    // empty and all-zero streams
    expect(cmDecodeDiff(cmEncodeDiff(Buffer.alloc(0), Buffer.alloc(0)), Buffer.alloc(0)).diff.length).toBe(0);
    const z = Buffer.alloc(100_000);
    const pz = cmEncodeDiff(z, randomBytes(z.length));
    expect(pz.length).toBeLessThan(200);
  });

  it('the C coder and the TypeScript coder agree bit for bit, both ways', () => {
    expect(cmNativeAvailable()).toBe(true);
    const real = diffWithOldUnder(300_000, 29);
    const cases: [string, Buffer, Uint8Array][] = [
      ['a real diff stream', real.s.diff, real.ou],
      ['random bytes (every byte non-zero or not at random)', randomBytes(50_000), randomBytes(50_000)],
      ['sparse random', Buffer.from(randomBytes(80_000).map((b) => (b < 20 ? b + 1 : 0))), randomBytes(80_000)],
      ['one byte', Buffer.from([9]), Buffer.from([1])],
      ['empty', Buffer.alloc(0), Buffer.alloc(0)],
    ];
    for (const [what, diff, ou] of cases) {
      const c = cmEncodeDiff(diff, ou);
      const t = cmEncodeDiff(diff, ou, 'typescript');
      expect({ what, same: c.equals(t) }).toEqual({ what, same: true });
      const byTs = cmDecodeDiff(c, ou, 'typescript');
      const byC = cmDecodeDiff(t, ou);
      expect({ what, ts: byTs.diff.equals(diff), c: byC.diff.equals(diff), consumed: [byTs.consumed, byC.consumed] }).toEqual({ what, ts: true, c: true, consumed: [c.length, c.length] });
    }
    // A coded stream cut short is refused by both, with the same error.
    const [, diff, ou] = cases[0];
    const cut = cmEncodeDiff(diff, ou).subarray(0, 100);
    for (const engine of ['native', 'typescript'] as const) {
      expect(() => cmDecodeDiff(cut, ou, engine)).toThrow(/coded diff stream ends early/);
    }
  });

  it('oldUnderDiff reads outside the base as zero', () => {
    const base = Buffer.from([1, 2, 3, 4]);
    // x=2 at 0 (1,2), seek -5 -> x=3 at -3 (0,0,0) -> x=2 at 0 (1,2) -> x=4 at 2 (3,4,0,0)
    const ou = oldUnderDiff(base, [2, 3, 2, 4], [-5, 0, 0, 0], 11);
    expect([...ou]).toEqual([1, 2, 0, 0, 0, 1, 2, 3, 4, 0, 0]);
  });
});

describe('block context-mixing diff coder (section method 4)', () => {
  /** The non-zero bytes of a diff stream (what the literals section holds). */
  const litsOf = (d: Uint8Array): Buffer => Buffer.from(d.filter((v) => v !== 0));
  /** Both engines on the same input: C result or error === TypeScript result or error. */
  function both(packed: Uint8Array, ou: Uint8Array, lits: Uint8Array): { c: string; ts: string } {
    const run = (engine: 'native' | 'typescript'): string => {
      try {
        return 'ok ' + cmbDecodeDiff(packed, ou, lits, engine).toString('base64');
      } catch (e) {
        expect((e as D4fsError).kind).toBe('CORRUPT');
        return 'CORRUPT';
      }
    };
    return { c: run('native'), ts: run('typescript') };
  }

  const r = prng(4242);
  const sparse = (n: number, density: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) if (r() < density) b[i] = 1 + Math.floor(r() * 255);
    return b;
  };
  const real = diffWithOldUnder(300_000, 31);

  it('the C coder and the TypeScript coder agree bit for bit, both ways', () => {
    expect(cmNativeAvailable()).toBe(true);
    const cases: [string, Buffer, Uint8Array][] = [
      ['a real diff stream', real.s.diff, real.ou],
      ['random bytes', randomBytes(50_000), randomBytes(50_000)],
      ['sparse random', sparse(80_000, 0.05), randomBytes(80_000)],
      ['every byte non-zero', Buffer.alloc(10_000, 0x33), randomBytes(10_000)],
      ['all zero', Buffer.alloc(100_003), randomBytes(100_003)],
      ['only the last byte of each block', Buffer.from(Array.from({ length: 4_000 }, (_, i) => (i % 8 === 7 ? 1 + (i % 200) : 0))), randomBytes(4_000)],
      ['one byte', Buffer.from([9]), Buffer.from([1])],
      ['nine bytes (a partial block)', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 5]), Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 9])],
      ['empty', Buffer.alloc(0), Buffer.alloc(0)],
    ];
    for (const [what, diff, ou] of cases) {
      const c = cmbEncodeDiff(diff, ou);
      const t = cmbEncodeDiff(diff, ou, 'typescript');
      expect({ what, same: c.equals(t) }).toEqual({ what, same: true });
      const byTs = cmbDecodeDiff(c, ou, litsOf(diff), 'typescript');
      const byC = cmbDecodeDiff(t, ou, litsOf(diff));
      expect({ what, ts: byTs.equals(diff), c: byC.equals(diff) }).toEqual({ what, ts: true, c: true });
    }
  });

  it('several segments: same bytes from both engines and from any number of C threads', () => {
    // 2 MiB + 3 bytes: two segments (the second one short and not a multiple of 8)
    for (const n of [CMB_SEGMENT + 3, 2 * CMB_SEGMENT + 4097]) {
      const diff = sparse(n, 0.03);
      const ou = randomBytes(n);
      const c1 = sa.cmbEncode(diff, ou, 1);
      expect(cmbSegments(n)).toBe(n > 2 * CMB_SEGMENT ? 3 : 2);
      expect(c1.readUInt32LE(0)).toBe(cmbSegments(n));
      for (const th of [2, 3, 8]) expect(sa.cmbEncode(diff, ou, th).equals(c1)).toBe(true);
      expect(cmbEncodeDiff(diff, ou, 'typescript').equals(c1)).toBe(true);
      for (const th of [1, 2, 4]) expect(sa.cmbDecode(c1, ou, litsOf(diff), th).equals(diff)).toBe(true);
      expect(cmbDecodeDiff(c1, ou, litsOf(diff), 'typescript').equals(diff)).toBe(true);
    }
  });

  it('is deterministic; an all-zero stream costs next to nothing', () => {
    const a = cmbEncodeDiff(real.s.diff, real.ou);
    expect(cmbEncodeDiff(real.s.diff, real.ou).equals(a)).toBe(true);
    const zero = cmbEncodeDiff(Buffer.alloc(200_000), randomBytes(200_000));
    expect(zero.length).toBeLessThan(300);
    // only zero / non-zero is coded: any other non-zero values give the same section
    expect(cmbEncodeDiff(real.s.diff.map((v) => (v ? 1 : 0)), real.ou).equals(a)).toBe(true);
  });

  it('refuses bad segment tables, truncation and trailing bytes in both engines', () => {
    const n = CMB_SEGMENT + 1000;
    const diff = sparse(n, 0.02);
    const ou = randomBytes(n);
    const good = cmbEncodeDiff(diff, ou);
    const l0 = good.readUInt32LE(4);
    const bad: [string, Buffer][] = [
      ['empty', Buffer.alloc(0)],
      ['count only', good.subarray(0, 4)],
      ['count too small', Buffer.concat([Buffer.from([1, 0, 0, 0]), good.subarray(4)])],
      ['count too large', Buffer.concat([Buffer.from([3, 0, 0, 0]), good.subarray(4)])],
      ['huge count', Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff]), good.subarray(4)])],
      ['truncated', good.subarray(0, good.length - 1)],
      ['trailing byte', Buffer.concat([good, Buffer.from([0])])],
      ['segment lengths shifted', (() => { const b = Buffer.from(good); b.writeUInt32LE(l0 + 1, 4); b.writeUInt32LE(b.readUInt32LE(8) - 1, 8); return b; })()],
      ['segment length past the end', (() => { const b = Buffer.from(good); b.writeUInt32LE(0xffffffff, 4); return b; })()],
      ['first segment cut to 3 bytes', (() => { const b = Buffer.from(good); b.writeUInt32LE(3, 4); b.writeUInt32LE(b.readUInt32LE(8) + l0 - 3, 8); return b; })()],
    ];
    const lits = litsOf(diff);
    for (const [what, b] of bad) expect({ what, ...both(b, ou, lits) }).toEqual({ what, c: 'CORRUPT', ts: 'CORRUPT' });
    // wrong stream length for the same section: the segment count no longer matches
    expect(both(good, ou.subarray(0, CMB_SEGMENT - 8), lits)).toEqual({ c: 'CORRUPT', ts: 'CORRUPT' });
    // literals that do not fit the coded pattern: one too few, one too many, a zero
    const zeroLit = Buffer.from(lits);
    zeroLit[5] = 0;
    for (const [what, l] of [['one too few', lits.subarray(1)], ['one too many', Buffer.concat([lits, Buffer.from([1])])], ['a zero literal', zeroLit]] as const) {
      expect({ what, ...both(good, ou, l) }).toEqual({ what, c: 'CORRUPT', ts: 'CORRUPT' });
    }
    expect(both(good, ou, lits)).toEqual({ c: 'ok ' + diff.toString('base64'), ts: 'ok ' + diff.toString('base64') });
  });

  it('damaged coded bytes: both engines give the same refusal or the same bytes, never a crash', () => {
    const good = cmbEncodeDiff(real.s.diff, real.ou);
    const rr = prng(77);
    let corrupt = 0;
    for (let k = 0; k < 40; k++) {
      const b = Buffer.from(good);
      const bit = 8 * 8 + Math.floor(rr() * (b.length - 8) * 8); // past the segment table
      b[bit >> 3] ^= 1 << (bit & 7);
      const res = both(b, real.ou, litsOf(real.s.diff));
      expect(res.c).toBe(res.ts);
      if (res.c === 'CORRUPT') corrupt++;
    }
    expect(corrupt).toBeGreaterThan(0);
  });

  it('garbage is bounded work: at most one decision per block plus nine per byte', () => {
    const n = 4 << 20;
    const ou = Buffer.alloc(n, 7);
    const garbage = Buffer.concat([Buffer.from([2, 0, 0, 0, 0x88, 0x13, 0, 0, 0x88, 0x13, 0, 0]), randomBytes(10_000)]);
    const t = Date.now();
    expect(both(garbage, ou, Buffer.alloc(0))).toEqual({ c: 'CORRUPT', ts: 'CORRUPT' });
    expect(Date.now() - t).toBeLessThan(20_000);
  });
});

describe('hostile bsdiff v2 containers', () => {
  const { base, target } = fakeBinaries(120_000, 23);
  const good = encodePatch(base, target, 'bsdiff', 12);

  it('uses the context-mixing coder for this input', () => {
    expect(good[24 + 12]).toBe(3);
  });

  it('method 4 (block model): round trip, default level above 2 MiB, flips and truncations refused', () => {
    // diff streams above 1 MiB get the coder without the split-stream alternative
    const { base, target } = fakeBinaries(1_100_000, 37);
    const s = bsdiffStreams(base, target);
    expect(s.diff.length).toBeGreaterThan(1 << 20);
    const p4 = _internal.bsdiffPack(s, base, target, 19, false, 'cmb');
    expect(p4[24 + 12]).toBe(4);
    expect(p4.readUInt32LE(24 + 12 + 8)).toBeGreaterThan(0);
    expect(p4[24 + 24]).toBe(1); // the non-zero bytes: zstd
    expect(p4.readUInt32LE(24 + 24 + 8)).toBeGreaterThan(0);
    expect(applyPatch(base, p4, 'bsdiff', target.length).equals(target)).toBe(true);
    expect(flipsRefused(base, p4, target, 123)).toBeGreaterThan(90);
    for (let n = 0; n < p4.length; n += Math.max(1, Math.floor(p4.length / 200))) expectCorrupt(() => applyPatch(base, p4.subarray(0, n), 'bsdiff', target.length));
    // the default level picks method 4 for a diff stream above 2 MiB, method 3 below
    const big = fakeBinaries(2_400_000, 41);
    const pb = encodePatch(big.base, big.target, 'bsdiff', 12);
    expect(pb[24 + 12]).toBe(4);
    expect(applyPatch(big.base, pb, 'bsdiff', big.target.length).equals(big.target)).toBe(true);
    // a patch applied offline (registry patches) gets method 3 at every length: smaller
    const po = encodePatch(big.base, big.target, 'bsdiff', 12, { offline: true });
    expect(po[24 + 12]).toBe(3);
    expect(po.length).toBeLessThan(pb.length);
    expect(applyPatch(big.base, po, 'bsdiff', big.target.length).equals(big.target)).toBe(true);
  });

  it('every truncation is refused', () => {
    for (let n = 0; n < good.length; n += Math.max(1, Math.floor(good.length / 300))) expectCorrupt(() => applyPatch(base, good.subarray(0, n), 'bsdiff', target.length));
    expectCorrupt(() => applyPatch(base, Buffer.concat([good, Buffer.from([0])]), 'bsdiff', target.length));
  });

  it('bit flips are refused, never a wrong result', () => {
    expect(flipsRefused(base, good, target, 99)).toBeGreaterThan(90);
  });

  function v2(target: number, n: number, sections: Array<[method: number, raw: number, data: Buffer]>, crc = 0): Buffer {
    const h = Buffer.alloc(72);
    h.write(BSDIFF2_CONTAINER_MAGIC, 0, 'latin1');
    h.writeUIntLE(target, 8, 6);
    h.writeUInt32LE(crc, 16);
    h.writeUInt32LE(n, 20);
    sections.forEach(([m, raw, d], i) => {
      h[24 + i * 12] = m;
      h.writeUIntLE(raw, 24 + i * 12 + 2, 6);
      h.writeUInt32LE(d.length, 24 + i * 12 + 8);
    });
    return Buffer.concat([h, ...sections.map((s) => s[2])]);
  }
  const stored = (b: Buffer): [number, number, Buffer] => [0, b.length, b];
  const empty = stored(Buffer.alloc(0));

  it('a hand-made stored container applies', () => {
    const old = Buffer.from('abcdef');
    // one triple: x=3 (diff 1,0,0 over "abc" -> "bbc"), y=2 ("XY"), z=0
    const control = Buffer.from([3, 2, 0]);
    const runs = Buffer.from([0]);
    const lits = Buffer.from([1]);
    const want = Buffer.from('bbcXY');
    const p = v2(5, 1, [stored(control), stored(runs), stored(lits), stored(Buffer.from('XY'))], zlib.crc32(want));
    expect(applyPatch(old, p, 'bsdiff', 5).equals(want)).toBe(true);
    // and with brotli and zstd sections
    const br = zlib.brotliCompressSync(Buffer.from('XY'));
    const zs = zstdSimple.compress(control, { checksumFlag: true });
    expect(applyPatch(old, v2(5, 1, [[1, 3, zs], stored(runs), stored(lits), [2, 2, br]], zlib.crc32(want)), 'bsdiff', 5).equals(want)).toBe(true);
  });

  it('refuses lengths beyond the target, unknown methods, misplaced coded sections and bad varints', () => {
    const old = Buffer.from('abcdef');
    const control = Buffer.from([3, 2, 0]);
    const ok: Array<[number, number, Buffer]> = [stored(control), stored(Buffer.from([0])), stored(Buffer.from([1])), stored(Buffer.from('XY'))];
    expectCorrupt(() => applyPatch(old, v2(5, 7, ok), 'bsdiff', 5)); // too many triples
    expectCorrupt(() => applyPatch(old, v2(5, 1, [[0, 1e12, Buffer.alloc(0)], ok[1], ok[2], ok[3]]), 'bsdiff', 5)); // huge raw length
    expectCorrupt(() => applyPatch(old, v2(5, 1, [[7, 3, control], ok[1], ok[2], ok[3]]), 'bsdiff', 5)); // unknown method
    expectCorrupt(() => applyPatch(old, v2(5, 1, [[3, 3, control], ok[1], ok[2], ok[3]]), 'bsdiff', 5)); // CM in the control section
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [3, 3, Buffer.alloc(8)], ok[2], ok[3]]), 'bsdiff', 5)); // CM with literals present
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [3, 4, Buffer.alloc(8)], empty, ok[3]]), 'bsdiff', 5)); // CM length != diff length
    expectCorrupt(() => applyPatch(old, v2(5, 1, [[4, 3, control], ok[1], ok[2], ok[3]]), 'bsdiff', 5)); // method 4 in the control section
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], ok[1], ok[2], [4, 2, Buffer.alloc(8)]]), 'bsdiff', 5)); // method 4 in the extra section
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [4, 3, Buffer.alloc(8)], stored(Buffer.from([1, 2, 3, 4])), ok[3]]), 'bsdiff', 5)); // method 4 with more literals than diff bytes
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [4, 4, Buffer.alloc(12)], empty, ok[3]]), 'bsdiff', 5)); // method 4 length != diff length
    {
      // a real method-4 section for the 3 diff bytes 1,0,0: decodes with its literal, refused without it or with two
      const sec = cmbEncodeDiff(Buffer.from([1, 0, 0]), Buffer.from('abc'));
      const want = Buffer.from('bbcXY');
      expect(applyPatch(old, v2(5, 1, [ok[0], [4, 3, sec], ok[2], ok[3]], zlib.crc32(want)), 'bsdiff', 5).equals(want)).toBe(true);
      expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [4, 3, sec], empty, ok[3]], zlib.crc32(want)), 'bsdiff', 5));
      expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [4, 3, sec], stored(Buffer.from([1, 1])), ok[3]], zlib.crc32(want)), 'bsdiff', 5));
    }
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [4, 3, Buffer.from([1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0])], empty, ok[3]]), 'bsdiff', 5)); // method 4, garbage segment
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], [5, 3, Buffer.alloc(8)], empty, ok[3]]), 'bsdiff', 5)); // unknown method 5
    expectCorrupt(() => applyPatch(old, v2(5, 1, [stored(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])), ok[1], ok[2], ok[3]]), 'bsdiff', 5)); // varint too long
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], stored(Buffer.from([9])), ok[2], ok[3]]), 'bsdiff', 5)); // literal past the diff stream
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], ok[1], stored(Buffer.from([0])), ok[3]]), 'bsdiff', 5)); // zero literal
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], ok[1], ok[2], stored(Buffer.from('XYZ'))]), 'bsdiff', 5)); // extra too long
    expectCorrupt(() => applyPatch(old, v2(5, 1, [ok[0], ok[1], ok[2], [2, 2, Buffer.from([1, 2, 3])]]), 'bsdiff', 5)); // damaged brotli
    expectCorrupt(() => applyPatch(old, v2(5, 1, ok, 12345), 'bsdiff', 5)); // CRC
    const withReserved = v2(5, 1, ok);
    withReserved[25] = 1;
    expectCorrupt(() => applyPatch(old, withReserved, 'bsdiff', 5));
  });

  it('garbage in a coded diff stream is bounded work and refused', () => {
    const n = 4 << 20;
    const old = Buffer.alloc(n, 7);
    const control = Buffer.from([0x80, 0x80, 0x80, 0x02, 0, 0]); // x = 4 MiB, y = 0, z = 0
    const t = Date.now();
    expectCorrupt(() => applyPatch(old, v2(n, 1, [stored(control), [3, n, randomBytes(5000)], empty, empty]), 'bsdiff', n));
    expectCorrupt(() => applyPatch(old, v2(n, 1, [stored(control), [4, n, Buffer.concat([Buffer.from([2, 0, 0, 0, 0x88, 0x13, 0, 0, 0x88, 0x13, 0, 0]), randomBytes(10_000)])], empty, empty]), 'bsdiff', n));
    expect(Date.now() - t).toBeLessThan(5_000);
  });
});
