/**
 * Format version 5. Patch bases named by prefix (bases.ts): written as 8
 * bytes only where the writer says the prefix is unique, resolved against
 * the indexes below (unresolved ones kept, ambiguous ones CORRUPT), refused
 * in files of earlier versions by the decoder's validation and the lean
 * check. Group members' offsets relative to the member listed before them
 * (compact.ts): the same offsets back in any listing order, out-of-bounds
 * ones refused by both checks.
 */
import { createHash, randomBytes } from 'node:crypto';
import { D4fsError } from '../errors';
import { hasBasePrefixes, resolveBasePrefixes, uniquePrefixes } from './bases';
import { decodeIndex, encodeIndex } from './codec';
import { validateIndex, validateIndexContents } from './validate';
import { checkIndexLean } from './check';
import { type Blob, Codec, Encoding, type Index, Kind, HEADER_SIZE, BASE_PREFIX_BYTES } from './types';

const sha = (s: string): Buffer => createHash('sha256').update(s).digest();

function full(digests: Buffer[]): Index {
  return {
    formatVersion: 5,
    kind: Kind.FULL,
    imageId: sha('image'),
    parentId: Buffer.alloc(0),
    image: { configJson: Buffer.from('{}'), manifestDigest: '', platform: { os: 'linux', architecture: 'amd64' } } as unknown as Index['image'],
    entries: [],
    blobs: digests.map((d, i): Blob => ({ digest: d, size: 10, encoding: Encoding.FULL, chunks: [{ offset: HEADER_SIZE + i * 10, storedSize: 10, storedDigest: Buffer.alloc(0), rawSize: 10, rawDigest: d, codec: Codec.ZSTD, baseDigest: Buffer.alloc(0), baseOffset: 0, baseSize: 0 }] })),
    chunkSize: 4 << 20,
  };
}

/** A delta of one patched content per base in `bases` (each 32 or BASE_PREFIX_BYTES bytes). */
function delta(bases: Buffer[], version = 5): Index {
  return {
    ...full([]),
    formatVersion: version,
    kind: Kind.DELTA,
    parentId: sha('parent'),
    parentImage: undefined,
    treeEdit: { ops: [], inserted: [] },
    blobs: bases.map((b, i): Blob => ({
      digest: sha(`new ${i}`),
      size: 100,
      encoding: Encoding.PATCH,
      chunks: [{ offset: HEADER_SIZE + i * 20, storedSize: 20, storedDigest: sha(`stored ${i}`), rawSize: 100, rawDigest: sha(`new ${i}`), codec: Codec.BSDIFF, baseDigest: b, baseOffset: 0, baseSize: 50 }],
    })),
  } as Index;
}

const bases = (ix: Index): string[] => ix.blobs.flatMap((b) => b.chunks.map((c) => c.baseDigest.toString('hex')));
const section = Buffer.alloc(32);

describe('base prefixes (format version 5)', () => {
  it('are written for the bases the writer names, read back as prefixes, and resolved against the indexes below', () => {
    const lower = [sha('a'), sha('b'), sha('c')];
    const ix = delta([lower[0], lower[2], lower[0]]);
    const only = uniquePrefixes(lower);
    const raw = encodeIndex(ix, { sectionDigest: section, basePrefix: (d) => only(d) && !d.equals(lower[2]) });
    const back = decodeIndex(raw);
    expect(bases(back)).toEqual([lower[0].subarray(0, 8), lower[2], lower[0].subarray(0, 8)].map((d) => d.toString('hex')));
    expect(hasBasePrefixes(back)).toBe(true);
    // well formed alone (a version 5 delta), and smaller than with whole digests: one prefix (for two
    // chunks) instead of a digest, 24 bytes, less the new field's tag and length
    expect(() => validateIndexContents(back, HEADER_SIZE + 1000, HEADER_SIZE)).not.toThrow();
    expect(checkIndexLean(raw, 5, HEADER_SIZE + 1000, HEADER_SIZE)).toBeTruthy();
    expect(encodeIndex(ix, { sectionDigest: section }).length - raw.length).toBeGreaterThanOrEqual(20);
    resolveBasePrefixes(back, [full([sha('x')]), full(lower)]);
    expect(bases(back)).toEqual([lower[0], lower[2], lower[0]].map((d) => d.toString('hex')));
    expect(hasBasePrefixes(back)).toBe(false);
    resolveBasePrefixes(back, [full(lower)]); // again: nothing changes
    expect(bases(back)).toEqual([lower[0], lower[2], lower[0]].map((d) => d.toString('hex')));
  });

  it('that nothing below begins stay prefixes; one that two contents below begin is CORRUPT', () => {
    const a = sha('a');
    const twin = Buffer.concat([a.subarray(0, 8), randomBytes(24)]);
    const ix = delta([a.subarray(0, 8), sha('gone').subarray(0, 8)]);
    resolveBasePrefixes(ix, [full([a])]);
    expect(bases(ix)).toEqual([a.toString('hex'), sha('gone').subarray(0, 8).toString('hex')]);
    const ix2 = delta([a.subarray(0, 8)]);
    let err: unknown;
    try {
      resolveBasePrefixes(ix2, [full([a]), full([twin])]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe('CORRUPT');
    expect((err as Error).message).toMatch(/names two contents/);
    // the writer never names by prefix a base whose prefix another content of the image shares
    const only = uniquePrefixes([a, twin, sha('b')]);
    expect([only(a), only(twin), only(sha('b')), only(sha('c'))]).toEqual([false, false, true, false]);
  });

  it('are refused in files of earlier versions: by the writer, the decoder\'s validation and the lean check', () => {
    const p = sha('p');
    const v5 = encodeIndex(delta([p]), { sectionDigest: section, basePrefix: () => true });
    expect(() => encodeIndex(delta([p.subarray(0, BASE_PREFIX_BYTES)], 4), { sectionDigest: section })).toThrow(/version 4/);
    // the same bytes saying version 4 (the version is the head's first field: rewritten by decoding and re-encoding the head)
    const ix = decodeIndex(v5);
    ix.formatVersion = 4;
    expect(() => validateIndexContents(ix, HEADER_SIZE + 1000, HEADER_SIZE)).toThrow(/without a base digest/);
    expect(checkIndexLean(v5, 5, HEADER_SIZE + 1000, HEADER_SIZE)).toBeTruthy();
    expect(checkIndexLean(v5, 4, HEADER_SIZE + 1000, HEADER_SIZE)).toBeUndefined();
  });
});

/** A delta storing `n` small contents in groups of `per` (members listed in `order`), as `version` writes it. */
function grouped(n: number, per: number, version: number, order: (i: number) => number = (i) => i): Index {
  const ix = delta([], version);
  const blobs: Blob[] = [];
  for (let i = 0; i < n; i++) {
    const d = sha(`member ${i}`);
    const g = Math.floor(i / per);
    const size = 100 + (i % 7) * 10;
    blobs.push({ digest: d, size, encoding: Encoding.FULL, chunks: [{ offset: HEADER_SIZE + g * 500, storedSize: 500, storedDigest: Buffer.alloc(0), rawSize: size, rawDigest: d, codec: Codec.GROUP, baseDigest: Buffer.alloc(0), baseOffset: 0, baseSize: 0, groupOffset: 0 }] });
  }
  // offsets in member order within each group
  const at = new Map<number, number>();
  for (const b of blobs) {
    const c = b.chunks[0];
    c.groupOffset = at.get(c.offset) ?? 0;
    at.set(c.offset, c.groupOffset + c.rawSize);
  }
  ix.blobs = blobs.map((_, i) => blobs[order(i)]);
  return ix;
}

const offsets = (ix: Index): string[] => ix.blobs.map((b) => `${b.digest.toString('hex').slice(0, 8)}@${b.chunks[0].offset}+${b.chunks[0].groupOffset}`);

describe('group offsets (format version 5)', () => {
  it('are written relative to the member before and read back the same, in any listing order; in order they cost nearly nothing', () => {
    const n = 600;
    const sizes: Record<number, number> = {};
    for (const version of [4, 5]) {
      for (const order of [(i: number) => i, (i: number) => (i * 7) % n]) {
        const ix = grouped(n, 30, version, order);
        const raw = encodeIndex(ix, { sectionDigest: section });
        const back = decodeIndex(raw);
        expect(offsets(back)).toEqual(offsets(ix));
        expect(checkIndexLean(raw, version, HEADER_SIZE + 20 * 500, HEADER_SIZE)).toBeTruthy();
        if (order(1) === 1) sizes[version] = raw.length;
      }
    }
    // 600 offsets of up to ~3,000: two bytes each in version 4, one (a zero) in version 5
    expect(sizes[4] - sizes[5]).toBeGreaterThanOrEqual(500);
  });

  it('that land outside their group are refused by the decoder\'s validation and by the lean check', () => {
    const ix = grouped(60, 30, 5);
    ix.blobs[31].chunks[0].groupOffset = -5; // relative: -(end of member 30) - 5
    const raw = encodeIndex(ix, { sectionDigest: section });
    const back = decodeIndex(raw);
    expect(back.blobs[31].chunks[0].groupOffset).toBe(-5);
    let err: unknown;
    try {
      validateIndex(back, HEADER_SIZE + 2 * 500, HEADER_SIZE);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(D4fsError);
    expect(['HOSTILE', 'CORRUPT']).toContain((err as D4fsError).kind);
    expect(checkIndexLean(raw, 5, HEADER_SIZE + 2 * 500, HEADER_SIZE)).toBeUndefined();
  });
});
