/**
 * Tests of the differ's thread tasks on contents read straight from their chunks
 * (`targetBlob`/`baseBlob`, what `cdimg diff` sends): the bytes do not depend on how a
 * content is cut into parts or batched, chunks are taken from the base only when their
 * digest says they are the same bytes, and damage is still CORRUPT.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zstdFrame } from '../format/zstd';
import { Codec, FileType, type Entry } from '../format/types';
import { D4fsError } from '../errors';
import { chunkBaseRange, contentKind, encodeChunk } from './codecs';
import { BaseFinder, partChunks } from './diff';
import { spawnSync } from 'node:child_process';
import { aloneCost, diffContent, diffContents, diffGroup, GROUP_MIN_ALONE_SHARE, GROUP_MIN_GAIN_SHARE, groupCanPay, groupWorthTrying, type DeltaChunkInfo, type DiffContentArgs, type FullBlobArg } from './tasks';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Deterministic text: words from a small vocabulary, a seeded generator. */
function text(bytes: number, seed: number): Buffer {
  const words = ['alpha', 'beta', 'gamma', 'delta', 'server', 'option', 'value', 'return', 'const', 'the', 'of', 'file', 'image', 'chunk'];
  let x = seed >>> 0 || 1;
  const out: string[] = [];
  let n = 0;
  while (n < bytes) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const w = words[x % words.length] + ((x >>> 8) % 7 === 0 ? '\n' : ' ');
    out.push(w);
    n += w.length;
  }
  return Buffer.from(out.join('')).subarray(0, bytes);
}

/** A file of zstd frames, one per chunk of `content`, and its record; `damage` replaces the stored bytes of those chunks. */
function storeChunks(path: string, content: Buffer, chunkSize: number, damage: number[] = []): FullBlobArg {
  const frames: Buffer[] = [];
  const chunks: FullBlobArg['chunks'] = [];
  let offset = 64; // as in a .cdimg, chunks do not start at 0
  for (let pos = 0, i = 0; pos < content.length; pos += chunkSize, i++) {
    const raw = content.subarray(pos, pos + chunkSize);
    let frame = zstdFrame(raw, 3);
    if (damage.includes(i)) frame = Buffer.alloc(frame.length, 0x5a);
    chunks.push({ offset, storedSize: frame.length, rawSize: raw.length, rawDigest: sha(raw) });
    frames.push(frame);
    offset += frame.length;
  }
  writeFileSync(path, Buffer.concat([Buffer.alloc(64), ...frames]));
  return { size: content.length, chunks };
}

/** What diffContent must give for a content coded in chunks against its base: each unit coded as encodeChunk does. */
function expected(base: Buffer, target: Buffer, chunkSize: number): { stored: Buffer; chunks: DeltaChunkInfo[] } {
  const kind = contentKind(target.subarray(0, 65536));
  const frames: Buffer[] = [];
  const chunks: DeltaChunkInfo[] = [];
  for (let pos = 0; pos < target.length; pos += chunkSize) {
    const raw = target.subarray(pos, pos + chunkSize);
    const r = chunkBaseRange(base.length, target.length, pos, raw.length);
    const { codec, data, usesBase } = encodeChunk(base.subarray(r.start, r.end), raw, { codec: 'auto', level: 'default', kind }, false);
    frames.push(data);
    chunks.push({ storedSize: data.length, storedDigest: sha(data), rawSize: raw.length, rawDigest: sha(raw), codec, baseOffset: usesBase ? r.start : 0, baseSize: usesBase ? r.end - r.start : 0, usesBase });
  }
  return { stored: Buffer.concat(frames), chunks };
}

describe('diffContent on chunks read straight from the files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'd4fs-tasks-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  // over bsdiff's whole-content limit (16 MiB), so coded unit by unit against base windows
  const chunkSize = 1 << 20;
  const base = text(18 * chunkSize + 12345, 7);
  const target = Buffer.from(base);
  // edits in chunks 3 and 11 (same length: the other chunks stay equal to the base's, at the same offsets)
  target.write('EDITED-EDITED', 3 * chunkSize + 1000);
  target.write('changed here too', 11 * chunkSize + 77);
  const oldPath = join(dir, 'old.bin');
  const newPath = join(dir, 'new.bin');
  const baseBlob = storeChunks(oldPath, base, chunkSize);
  const targetBlob = storeChunks(newPath, target, chunkSize);
  const args = (o: Partial<DiffContentArgs> = {}): DiffContentArgs => ({
    oldChain: [oldPath],
    newChain: [newPath],
    target: sha(target),
    base: sha(base),
    codec: 'auto',
    level: 'default',
    chunkSize,
    targetBlob,
    baseBlob,
    ...o,
  });
  const want = expected(base, target, chunkSize);

  /** The content coded in parts of `chunks` chunks, put back together. */
  async function inParts(chunks: number, a: DiffContentArgs = args()): Promise<{ stored: Buffer; chunks: DeltaChunkInfo[] }> {
    const frames: Buffer[] = [];
    const all: DeltaChunkInfo[] = [];
    for (let start = 0; start < target.length; start += chunks * chunkSize) {
      const r = await diffContent({ ...a, start, end: Math.min(start + chunks * chunkSize, target.length) });
      frames.push(Buffer.from(r.stored));
      all.push(...r.chunks);
    }
    return { stored: Buffer.concat(frames), chunks: all };
  }

  it('gives the same bytes whole and in parts of any size, each unit as encodeChunk codes it', async () => {
    const whole = await diffContent(args());
    expect(Buffer.from(whole.stored).equals(want.stored)).toBe(true);
    expect(whole.chunks).toEqual(want.chunks);
    for (const n of [1, 4, 16]) {
      const r = await inParts(n);
      expect(r.stored.equals(want.stored)).toBe(true);
      expect(r.chunks).toEqual(want.chunks);
    }
  });

  it('takes a chunk whose digest is a base chunk\'s from the base, and refuses a damaged chunk that differs', async () => {
    // chunk 5 equals the base's chunk 5: its stored bytes are not needed (the base chunk is checked against the same digest)
    const samePath = join(dir, 'new-damaged-same.bin');
    const sameBlob = storeChunks(samePath, target, chunkSize, [5]);
    const r = await diffContent(args({ newChain: [samePath], targetBlob: sameBlob }));
    expect(Buffer.from(r.stored).equals(want.stored)).toBe(true);
    // chunk 3 holds an edit: it must be decoded, and its damage is found
    const editedPath = join(dir, 'new-damaged-edited.bin');
    const editedBlob = storeChunks(editedPath, target, chunkSize, [3]);
    await expect(inParts(4, args({ newChain: [editedPath], targetBlob: editedBlob }))).rejects.toThrow(D4fsError);
    await expect(diffContent(args({ newChain: [editedPath], targetBlob: editedBlob }))).rejects.toMatchObject({ kind: 'CORRUPT' });
    // a damaged base chunk is found too
    const badBasePath = join(dir, 'old-damaged.bin');
    const badBase = storeChunks(badBasePath, base, chunkSize, [8]);
    await expect(diffContent(args({ oldChain: [badBasePath], baseBlob: badBase }))).rejects.toMatchObject({ kind: 'CORRUPT' });
  });

  it('codes a batch of small contents as it codes each alone, back to back', async () => {
    const items: DiffContentArgs[] = [];
    for (let i = 0; i < 6; i++) {
      const b = text(20000 + i * 3000, 100 + i);
      const t = Buffer.concat([b.subarray(0, 5000), Buffer.from(`edit ${i}\n`), b.subarray(5000)]);
      const bp = join(dir, `small-old-${i}.bin`);
      const tp = join(dir, `small-new-${i}.bin`);
      // one item without a base: stored whole
      const withBase = i !== 2;
      items.push({
        oldChain: [bp],
        newChain: [tp],
        target: sha(t),
        base: withBase ? sha(b) : '',
        codec: 'auto',
        level: 'default',
        chunkSize,
        targetBlob: storeChunks(tp, t, chunkSize),
        ...(withBase ? { baseBlob: storeChunks(bp, b, chunkSize) } : {}),
      });
    }
    const batch = await diffContents({ items });
    const alone = await Promise.all(items.map((a) => diffContent(a)));
    expect(Buffer.from(batch.stored).equals(Buffer.concat(alone.map((r) => Buffer.from(r.stored))))).toBe(true);
    expect(batch.items).toEqual(alone.map((r) => r.chunks));
    expect(batch.items[2][0].usesBase).toBe(false);
    expect(batch.items[0][0].usesBase).toBe(true);
  });
});

describe('partChunks', () => {
  it('makes two parts per thread, of 4 to 16 chunks', () => {
    expect(partChunks(64, 2)).toBe(16);
    expect(partChunks(64, 8)).toBe(4);
    expect(partChunks(16, 2)).toBe(4);
    expect(partChunks(1000, 2)).toBe(16);
    expect(partChunks(5, 1)).toBe(4);
  });
});

describe('BaseFinder', () => {
  const digest = Buffer.alloc(32, 1);
  const file = (path: string, size: number, type = FileType.REG): Entry => ({ path, type, mode: 0o644, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, size: type === FileType.REG ? size : 0, digest: type === FileType.REG ? digest : Buffer.alloc(0), linkTarget: '', devMajor: 0, devMinor: 0, xattrs: [], uname: '', gname: '' });
  const old = [file('', 0, FileType.DIR), file('usr', 0, FileType.DIR), file('usr/lib', 0, FileType.DIR), file('usr/lib/libssl.so.3', 1000), file('etc', 0, FileType.DIR), file('etc/app.conf', 500), file('opt', 0, FileType.DIR), file('opt/app.conf', 520), file('usr/lib/empty', 0)];
  const byPath = new Map(old.map((e) => [e.path, e]));

  it('finds the same bases with the reader\'s path map (every type) as with its own', () => {
    const own = new BaseFinder(old);
    const shared = new BaseFinder(old, byPath);
    const asks: [string[], number][] = [
      [['etc/app.conf'], 510],
      [['srv/app.conf'], 515],
      [['usr/lib/libssl.so.4'], 990],
      [['usr/lib'], 100], // a directory there: no base by path, none by name
      [['usr/lib/empty'], 10], // an empty file is never a base
      [['nothing/here'], 10],
      [['etc/app.conf'], 1 << 20], // implausible sizes
    ];
    for (const [paths, size] of asks) expect(shared.find(paths, size)?.path).toBe(own.find(paths, size)?.path);
    expect(shared.find(['srv/app.conf'], 515)?.path).toBe('opt/app.conf');
    expect(shared.find(['usr/lib/libssl.so.4'], 990)?.path).toBe('usr/lib/libssl.so.3');
    expect(shared.find(['usr/lib'], 100)).toBeUndefined();
  });
});

describe('diffGroup: when a group frame is tried', () => {
  it('always at best; otherwise unless the members alone are under GROUP_MIN_ALONE_SHARE x their level-1 patches', () => {
    let calls = 0;
    const one = (n: number) => () => {
      calls++;
      return n;
    };
    expect(groupWorthTrying('best', 1, one(1000))).toBe(true);
    expect(calls).toBe(0); // not even computed at best
    expect(groupWorthTrying('default', GROUP_MIN_ALONE_SHARE * 1000 - 1, one(1000))).toBe(false);
    expect(groupWorthTrying('default', GROUP_MIN_ALONE_SHARE * 1000, one(1000))).toBe(true);
    expect(groupWorthTrying('fast', 10, one(1000))).toBe(false);
    expect(calls).toBe(3);
  });

  it('not over near-identical members (alone under GROUP_MIN_GAIN_SHARE of the frame\'s input), but at best', () => {
    expect(groupCanPay('default', GROUP_MIN_GAIN_SHARE * 1e6, 1e6)).toBe(true);
    expect(groupCanPay('default', GROUP_MIN_GAIN_SHARE * 1e6 - 1, 1e6)).toBe(false);
    expect(groupCanPay('fast', 10, 1e6)).toBe(false);
    expect(groupCanPay('best', 0, 1e6)).toBe(true);
  });

  it('counts the stored digest of each member chunk coded alone otherwise than as a zstd frame', () => {
    const chunk = (codec: Codec): DeltaChunkInfo => ({ storedSize: 10, storedDigest: '', rawSize: 20, rawDigest: '', codec, baseOffset: 0, baseSize: 0, usesBase: codec !== Codec.ZSTD });
    expect(aloneCost(500, [[chunk(Codec.ZSTD)], [chunk(Codec.ZSTD), chunk(Codec.ZSTD)]])).toBe(500);
    expect(aloneCost(500, [[chunk(Codec.BSDIFF)], [chunk(Codec.ZSTD_PATCH), chunk(Codec.ZSTD)], [chunk(Codec.GROUP)]])).toBe(500 + 2 * 32);
  });

  const dir = mkdtempSync(join(tmpdir(), 'd4fs-group-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  /** diffGroup's arguments for pairs (base, target) each stored as one chunk in its own file. */
  function groupArgs(pairs: [Buffer, Buffer][], level: 'default' | 'best'): Parameters<typeof diffGroup>[0] {
    return {
      items: pairs.map(([b, t], i) => {
        const oldPath = join(dir, `old-${level}-${i}`);
        const newPath = join(dir, `new-${level}-${i}`);
        return {
          oldChain: [oldPath],
          newChain: [newPath],
          target: sha(t),
          base: sha(b),
          codec: 'auto' as const,
          level,
          chunkSize: 1 << 22,
          baseBlob: storeChunks(oldPath, b, 1 << 22),
          targetBlob: storeChunks(newPath, t, 1 << 22),
        };
      }),
    };
  }
  const gzip = (b: Buffer): Buffer => spawnSync('gzip', ['-9n', '-c'], { input: b }).stdout as Buffer;

  it('keeps man pages (.gz, coded alone as their text) alone without a frame, and groups the same edit across texts', async () => {
    // .gz files: alone, as decompressed text patched, they are far below any zstd stream of their compressed bytes
    const pages = [1, 2, 3, 4].map((k) => {
      const t = text(20_000, 40 + k);
      const edited = Buffer.concat([t.subarray(0, 9000), Buffer.from(`.SH NEW SECTION ${k}\n`), t.subarray(9000)]);
      return [gzip(t), gzip(edited)] as [Buffer, Buffer];
    });
    const a = groupArgs(pages, 'default');
    const alone = await diffContents(a);
    const g = await diffGroup(a);
    expect(g.grouped).toBe(false);
    expect(Buffer.from(g.stored).equals(Buffer.from(alone.stored))).toBe(true);
    expect(g.items).toEqual(alone.items);
    expect(g.codedAlone).toBe(pages.length);
    // at best the frame is coded too, and loses
    const best = await diffGroup(groupArgs(pages, 'best'));
    expect(best.grouped).toBe(false);

    // the same new paragraph in six texts: the group pays for it once
    const para = text(3000, 99);
    const texts = [1, 2, 3, 4, 5, 6].map((k) => {
      const t = text(8000, 60 + k);
      return [t, Buffer.concat([t.subarray(0, 4000), para, t.subarray(4000)])] as [Buffer, Buffer];
    });
    const ta = groupArgs(texts, 'default');
    const tg = await diffGroup(ta);
    expect(tg.grouped).toBe(true);
    expect(tg.stored.byteLength).toBeLessThan((await diffContents(ta)).stored.byteLength);
  });

  it('codes no frame over near-identical members at default (one changed word in 300 KB each); at best it does', async () => {
    // two versions of one file (a byte apart), both edited alike
    const pairs = [1, 2].map((k) => {
      const t = text(300_000, 500);
      t[10] = 0x30 + k;
      const edited = Buffer.from(t);
      edited.write('CHANGED', 150_000);
      return [t, edited] as [Buffer, Buffer];
    });
    const a = groupArgs(pairs, 'default');
    const alone = await diffContents(a);
    expect(aloneCost(alone.stored.byteLength, alone.items)).toBeLessThan(GROUP_MIN_GAIN_SHARE * 4 * 300_000);
    const g = await diffGroup(a);
    expect(g.grouped).toBe(false);
    expect(Buffer.from(g.stored).equals(Buffer.from(alone.stored))).toBe(true);
    // at best the frame is coded, and two members that differ alike pay once for the same edit
    const best = await diffGroup(groupArgs(pairs, 'best'));
    expect(best.grouped).toBe(true);
  });

  it('stops coding members alone once they cost more than the kept frame: the same group as coding them all', async () => {
    // the same new paragraph in twelve texts: the frame pays for it once, each member alone in full
    const para = text(6000, 7);
    const texts = Array.from({ length: 12 }, (_, k) => {
      const t = text(8000, 200 + k);
      return [t, Buffer.concat([t.subarray(0, 3000), para, t.subarray(3000)])] as [Buffer, Buffer];
    });
    const a = groupArgs(texts, 'default');
    const g = await diffGroup(a);
    expect(g.grouped).toBe(true);
    expect(g.codedAlone).toBeLessThan(texts.length);
    expect(g.codedAlone).toBeGreaterThan(0);
    const alone = await diffContents(a);
    // coding every member would have made the same decision: the frame is under their whole cost
    expect(g.stored.byteLength).toBeLessThan(aloneCost(alone.stored.byteLength, alone.items));
    // and under what the members coded before the stop cost (the reason it stopped)
    const firstOnes = await diffContents({ items: a.items.slice(0, g.codedAlone) });
    expect(g.stored.byteLength).toBeLessThan(aloneCost(firstOnes.stored.byteLength, firstOnes.items));
    // at best the frame is coded first, the same decision
    const best = await diffGroup(groupArgs(texts, 'best'));
    expect(best.grouped).toBe(true);
    expect(best.codedAlone).toBeLessThan(texts.length);
  });
});
