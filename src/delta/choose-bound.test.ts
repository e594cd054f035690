/**
 * chooseBest's bound of a unit's level-1 full frame from the frame of a 1 MiB prefix
 * (codecs/choose.ts, frameSizeLowerBound): never above the whole frame, whatever the input,
 * and the choice it makes is the one the whole frame makes.
 */
import { randomBytes } from 'node:crypto';
import { chooseBest, FRAME_BOUND_PREFIX, frameSizeLowerBound, NEAR_IDENTICAL } from './codecs';
import { zstdFrame } from '../format/zstd';

/** Deterministic text with a seeded generator (words, numbers, line breaks). */
function text(bytes: number, seed: number): Buffer {
  let x = seed >>> 0 || 1;
  const parts: string[] = [];
  let n = 0;
  while (n < bytes) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const w = `${['server', 'value', 'the', 'option', 'return', 'chunk'][x % 6]}=${(x >>> 7).toString(36)}${x % 9 === 0 ? '\n' : ' '}`;
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

/** The blocks of a zstd frame (header and payload of each), after its frame header. */
function blocksOf(frame: Buffer): Buffer[] {
  const fhd = frame[4];
  const single = (fhd >> 5) & 1;
  const fcs = [single ? 1 : 0, 2, 4, 8][fhd >> 6];
  let at = 4 + 1 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3] + fcs;
  const blocks: Buffer[] = [];
  for (;;) {
    const h = frame.readUIntLE(at, 3);
    const size = (h >> 3) & 0x1fffff;
    const stored = ((h >> 1) & 3) === 1 ? 1 : size;
    blocks.push(frame.subarray(at, at + 3 + stored));
    at += 3 + stored;
    if (h & 1) return blocks;
  }
}

describe('frameSizeLowerBound', () => {
  const mib = 1 << 20;
  const inputs: [string, Buffer][] = [
    ['text', text(4 * mib, 1)],
    ['random', randomBytes(3 * mib)],
    ['zeros', Buffer.alloc(4 * mib)],
    ['text then random', Buffer.concat([text(FRAME_BOUND_PREFIX - 1000, 2), randomBytes(3 * mib)])],
    ['random then zeros', Buffer.concat([randomBytes(FRAME_BOUND_PREFIX + 70000), Buffer.alloc(3 * mib)])],
    ['binary-ish', Buffer.from(Array.from({ length: 2 * mib + 12345 }, (_, i) => (i * 2654435761) >>> 24 & (i % 3 ? 0xff : 0x0f)))],
    ['text switching every 96 KiB', Buffer.concat(Array.from({ length: 40 }, (_, i) => (i % 2 ? randomBytes(96 * 1024) : text(96 * 1024, i))))],
  ];
  it.each(inputs)('is at most the level-1 frame of the whole input (%s)', (_, data) => {
    const bound = frameSizeLowerBound(data);
    const whole = zstdFrame(data, 1);
    expect(bound).toBeLessThanOrEqual(whole.length);
    // why: every block of the prefix's frame but its last is a block of the whole frame, byte for byte
    const part = blocksOf(zstdFrame(data.subarray(0, FRAME_BOUND_PREFIX), 1));
    const all = blocksOf(whole);
    for (let i = 0; i < part.length - 1; i++) expect(part[i].equals(all[i])).toBe(true);
  });

  it('is 0 for inputs under two prefixes, and tells a near-identical 4 MiB text unit from a quarter of it', () => {
    expect(frameSizeLowerBound(text(2 * FRAME_BOUND_PREFIX - 1, 3))).toBe(0);
    const t = text(4 * mib, 4);
    expect(frameSizeLowerBound(t)).toBeGreaterThan(8192);
  });

  it('leaves the choice of a near-identical unit as the whole frame makes it', () => {
    const base = text(8 * mib, 5);
    const target = Buffer.from(base.subarray(2 * mib, 6 * mib));
    target.write('an edit', 1000);
    const r = chooseBest(base, target, { codec: 'auto', level: 'default' });
    expect(r.codec).toBe('zstd-patch');
    // the whole frame is not tried (a patch 4x under even the bound), as when full1 was computed whole;
    // nor bsdiff: the level-1 patch is under NEAR_IDENTICAL.bsdiffFrom
    expect(r.data.length).toBeLessThan(NEAR_IDENTICAL.bsdiffFrom);
    expect(r.tried).toEqual({ 'zstd-patch': r.data.length });
    // 60 edits: a level-1 patch over bsdiffFrom (still near-identical): bsdiff by hash chains too, the smaller kept
    const edited = Buffer.from(base.subarray(2 * mib, 6 * mib));
    for (let i = 0; i < 60; i++) edited.write('an edit', 1000 + i * 41011);
    const r2 = chooseBest(base, edited, { codec: 'auto', level: 'default' });
    expect(r2.tried['zstd-patch']).toBeGreaterThanOrEqual(NEAR_IDENTICAL.bsdiffFrom);
    expect(r2.tried['zstd-patch']).toBeLessThanOrEqual(NEAR_IDENTICAL.maxPatch);
    expect(Object.keys(r2.tried).sort()).toEqual(['bsdiff', 'zstd-patch']);
    expect(r2.codec).toBe('bsdiff');
    expect(r2.data.length).toBeLessThan(r2.tried['zstd-patch'] ?? 0);
  });
});
