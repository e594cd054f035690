/** Tests of zip archives coded as their members (zipmember.ts, codecs/zip-members.ts). */

import { Codec } from '../format/types';
import { prng } from '../../test/helpers/prng';
import { encodeChunk } from './codecs/choose';
import { codecByProto, decodeWith } from './codecs/registry';
import { expandZip, isZip, rebuildZip, zipInnerBase } from './zipmember';
import { type Member, zipOf } from '../../test/helpers/zip';

/** Java-like class files: shared constant pools, a few edits between versions. */
function classes(seed: number, n: number, edit: number): Member[] {
  const r = prng(seed);
  const words = Array.from({ length: 300 }, (_, i) => `org/apache/catalina/core/Standard${i}Valve`);
  return Array.from({ length: n }, (_, i) => {
    const parts: string[] = [];
    // an edit near the start of most members: their deflated bytes all differ from there on
    if (i % 4 !== 1) parts.push(`edit ${edit} ${Math.floor(r() * 1e9)}`);
    for (let k = 0; k < 400; k++) parts.push(words[(i * 31 + k * 7) % words.length], String((i * k) % 977));
    return { name: `org/apache/C${i}.class`, data: Buffer.from(parts.join('\u0001')), how: 'libz' as const, descriptor: i % 7 === 3 };
  });
}

describe('zip archives as their members', () => {
  const v1 = zipOf([{ name: 'META-INF/', data: Buffer.alloc(0), how: 'stored' }, ...classes(1, 60, 1)]);
  const v2members = classes(1, 60, 2);
  const v2 = zipOf([{ name: 'META-INF/', data: Buffer.alloc(0), how: 'stored' }, ...v2members, { name: 'notes.txt', data: Buffer.from('kept as it is\n'.repeat(50)), how: 'stored' }]);

  it('expands an archive whose members the system zlib rebuilds, and rebuilds it byte for byte', () => {
    expect(isZip(v2)).toBe(true);
    const e = expandZip(v2, true)!;
    expect(e).toBeDefined();
    expect(e.length).toBeGreaterThan(v2.length);
    expect(rebuildZip(e, v2.length).equals(v2)).toBe(true);
    // other levels are found too
    const l9 = zipOf(v2members.slice(0, 8).map((m, i) => ({ ...m, level: [9, 1, 4, 6][i % 4] })));
    expect(rebuildZip(expandZip(l9, true)!, l9.length).equals(l9)).toBe(true);
  });

  it('a delta of an archive is its members patched, far smaller than the archive patched, and decodes to the archive', () => {
    const coded = encodeChunk(v1, v2, { codec: 'auto', level: 'default' }, true);
    expect(coded.codec).toBe(Codec.ZIP_MEMBERS);
    expect(coded.usesBase).toBe(true);
    const plain = encodeChunk(v1, v2, { codec: 'auto', level: 'default' }, false);
    expect(coded.data.length * 3).toBeLessThan(plain.data.length);
    expect(decodeWith(codecByProto(coded.codec), coded.data, v1, v2.length).equals(v2)).toBe(true);
    // a new archive (no base): its members in a frame
    const alone = encodeChunk(Buffer.alloc(0), v2, { codec: 'auto', level: 'default' }, true);
    expect([Codec.ZIP_MEMBERS, Codec.ZSTD]).toContain(alone.codec);
    expect(decodeWith(codecByProto(alone.codec), alone.data, null, v2.length).equals(v2)).toBe(true);
  });

  it('members the system zlib does not rebuild stay compressed; an archive with none is not this codec\'s', () => {
    const mixed = zipOf([...v2members.slice(0, 10), ...v2members.slice(10, 20).map((m) => ({ ...m, how: 'node' as const }))]);
    const e = expandZip(mixed, true)!;
    expect(rebuildZip(e, mixed.length).equals(mixed)).toBe(true);
    // the table names the ten reproduced ones: the expanded form keeps the others deflated
    expect(e.readUInt8(5)).toBe(10);
    const none = zipOf(v2members.slice(0, 10).map((m) => ({ ...m, how: 'node' as const })));
    expect(expandZip(none, true)).toBeUndefined();
    expect(encodeChunk(v1, none, { codec: 'auto', level: 'default' }, true).codec).not.toBe(Codec.ZIP_MEMBERS);
    expect(expandZip(Buffer.from('not a zip at all, just text'), true)).toBeUndefined();
  });

  it('a base that is not an archive, or a hostile one, is used as it is, bounded', () => {
    expect(zipInnerBase(Buffer.from('plain')).toString()).toBe('plain');
    // a member claiming 2 GiB decompressed: skipped (its payload stays as it is)
    const bomb = zipOf(v2members.slice(0, 3));
    const cd = bomb.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    bomb.writeUInt32LE(0x7fffffff, cd + 24);
    const e = zipInnerBase(bomb);
    expect(e.length).toBeLessThan(bomb.length + 3 * 20_000);
    // a central directory pointing past the end: not read as an archive
    const broken = Buffer.from(v1);
    broken.writeUInt32LE(broken.length + 100, broken.length - 6);
    expect(zipInnerBase(broken).equals(broken)).toBe(true);
  });

  it('damaged stored bytes or a forged table are CORRUPT, never other bytes', () => {
    const coded = encodeChunk(v1, v2, { codec: 'auto', level: 'default' }, true);
    const codec = codecByProto(coded.codec);
    const r = prng(7);
    for (let i = 0; i < 24; i++) {
      const d = Buffer.from(coded.data);
      d[1 + Math.floor(r() * (d.length - 1))] ^= 1 << (i % 8);
      let out: Buffer | undefined;
      try {
        out = decodeWith(codec, d, v1, v2.length);
      } catch (e) {
        expect((e as { kind?: string }).kind).toBe('CORRUPT');
      }
      if (out) expect(out.equals(v2)).toBe(true);
    }
    const e = expandZip(v2, true)!;
    const forged = Buffer.from(e);
    forged[5] = 0x7f; // a member count the table does not hold
    expect(() => rebuildZip(forged, v2.length)).toThrow(expect.objectContaining({ kind: 'CORRUPT' }));
    const levelless = Buffer.from(e);
    // the levels follow the table: set the first to 0 (a base's "unknown")
    const lv = levelless.indexOf(0x86, 6);
    levelless[lv] = 0;
    expect(() => rebuildZip(levelless, v2.length)).toThrow(expect.objectContaining({ kind: 'CORRUPT' }));
    expect(() => rebuildZip(e, v2.length - 1)).toThrow(expect.objectContaining({ kind: 'CORRUPT' }));
    expect(() => rebuildZip(e.subarray(0, e.length - 10), v2.length)).toThrow(expect.objectContaining({ kind: 'CORRUPT' }));
  });
});
