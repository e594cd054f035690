/**
 * The layer flattener (src/convert/flatten.ts) on its own: names ordered by
 * their UTF-8 bytes without encoding them, headers' metadata shared between
 * entries without mixing up their fields or xattrs, hard links, and each
 * content's digest bytes shared by its entries and the contents list.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { buildTar, readTar } from '../tar';
import { compareBytes, ContentRef, ContentSink, TreeBuilder } from './flatten';
import { FileType } from '../format/types';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

class HashSink implements ContentSink {
  async put(body: AsyncIterable<Buffer>): Promise<ContentRef> {
    const parts: Buffer[] = [];
    for await (const c of body) parts.push(c);
    return { digest: sha(Buffer.concat(parts)) };
  }
}

describe('compareBytes', () => {
  it('orders names as Buffer.compare orders their UTF-8 bytes', () => {
    const alphabet = ['a', 'b', 'Z', '.', '-', '\u0000', '\u007f', '\u0080', 'é', '\u07ff', '\u0800', '€', '\ud7ff', '\ue000', '\uffff', '😀', '𝄞', '\ud800', '\udc00'];
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const name = (): string => Array.from({ length: rnd(5) }, () => alphabet[rnd(alphabet.length)]).join('');
    const wrong: [string, string][] = [];
    for (let i = 0; i < 20000; i++) {
      const a = name();
      const b = name();
      if (Math.sign(compareBytes(a, b)) !== Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b)))) wrong.push([a, b]);
    }
    expect(wrong).toEqual([]);
  });
});

describe('TreeBuilder', () => {
  it('keeps each entry its own metadata and xattrs while sharing equal ones', async () => {
    const cap = Buffer.from([1, 2, 3]);
    const tar = buildTar([
      { header: { name: 'd/', type: 'dir', mtimeSec: 5 } },
      { header: { name: 'd/a', type: 'file', uid: 1, gid: 2, uname: 'u', gname: 'g', mtimeSec: 9 }, data: Buffer.from('same') },
      { header: { name: 'd/b', type: 'file', uid: 1, gid: 2, uname: 'u', gname: 'g', mtimeSec: 9 }, data: Buffer.from('same') },
      { header: { name: 'd/c', type: 'file', uid: 1, gid: 2, uname: 'u', gname: 'g', mtimeSec: 9, xattrs: new Map([['security.capability', cap]]) }, data: Buffer.from('other') },
      { header: { name: 'd/e', type: 'file', uid: 1, gid: 2, uname: 'ug', gname: '', mtimeSec: 9 }, data: Buffer.from('x') },
      { header: { name: 'd/h', type: 'link', linkname: 'd/c' } },
      { header: { name: 'd/\u00e9', type: 'file' }, data: Buffer.from('same') },
      { header: { name: 'd/z', type: 'file' }, data: Buffer.from('zz') },
    ]);
    const builder = new TreeBuilder(new HashSink());
    await builder.applyLayer(readTar(Readable.from([tar]), { what: 'test' }), 0, 'test');
    const { entries, contents } = builder.toEntries();
    const by = new Map(entries.map((e) => [e.path, e]));
    expect(entries.map((e) => e.path)).toEqual(['', 'd', 'd/a', 'd/b', 'd/c', 'd/e', 'd/h', 'd/z', 'd/\u00e9']);
    const [a, b, c, e, h] = ['d/a', 'd/b', 'd/c', 'd/e', 'd/h'].map((p) => by.get(p)!);
    expect([a.uid, a.gid, a.uname, a.gname, a.mtimeSec, a.xattrs]).toEqual([1, 2, 'u', 'g', 9, []]);
    expect([b.uname, b.gname, b.xattrs]).toEqual(['u', 'g', []]);
    expect(c.xattrs).toEqual([{ name: 'security.capability', value: cap }]);
    // "u"+"g" and "ug"+"" are different owners
    expect([e.uname, e.gname]).toEqual(['ug', '']);
    expect([h.type, h.linkTarget]).toEqual([FileType.HARDLINK, 'd/c']);
    expect(by.get('d')?.mtimeSec).toBe(5);
    // one digest Buffer per content, shared by its entries and the contents list
    expect(contents.map((x) => x.digest)).toEqual([sha(Buffer.from('same')), sha(Buffer.from('other')), sha(Buffer.from('x')), sha(Buffer.from('zz'))]);
    expect(a.digest).toBe(b.digest);
    expect(a.digest).toBe(contents[0].raw);
    expect(by.get('d/\u00e9')?.digest).toBe(a.digest);
    expect(a.digest.toString('hex')).toBe(sha(Buffer.from('same')));
  });
});
