/**
 * containerd filter syntax, as the List RPC evaluates it.
 */
import { D4fsError } from '../src/errors';
import { Kind, type SnapshotInfo, parseFilter, parseFilters, snapshotAdaptor } from '../src/snapshotter';
import { unquote } from '../src/snapshotter/filters';

const t = { seconds: 0, nanos: 0 };
function info(name: string, kind: Kind, parent = '', labels: Record<string, string> = {}): SnapshotInfo {
  return { name, kind, parent, labels, created: t, updated: t };
}

const snaps = [
  info('base', Kind.Committed, '', { 'containerd.io/snapshot.ref': 'sha256:aa', l: '1' }),
  info('3/default/sha256:bb', Kind.Committed, 'base', { 'containerd.io/snapshot.ref': 'sha256:bb' }),
  info('ctr', Kind.Active, '3/default/sha256:bb', { l: '2', 'x.y': 'dotted' }),
  info('v', Kind.View, 'base'),
];

function names(filters: string[]): string[] {
  const f = parseFilters(filters);
  return snaps.filter((s) => f.match(snapshotAdaptor(s))).map((s) => s.name);
}

describe('containerd filters', () => {
  test('no filter or an empty one matches everything', () => {
    expect(names([])).toEqual(snaps.map((s) => s.name));
    expect(names([''])).toEqual(snaps.map((s) => s.name));
  });

  test('equality on kind, name, parent', () => {
    expect(names(['kind==committed'])).toEqual(['base', '3/default/sha256:bb']);
    expect(names(['kind==active'])).toEqual(['ctr']);
    expect(names(['kind==view'])).toEqual(['v']);
    expect(names(['name==ctr'])).toEqual(['ctr']);
    expect(names(['parent==base'])).toEqual(['3/default/sha256:bb', 'v']);
  });

  test('quoted values and quoted label keys (what containerd sends for remote snapshots)', () => {
    expect(names(['labels."containerd.io/snapshot.ref"==sha256:bb,parent=="base"'])).toEqual(['3/default/sha256:bb']);
    expect(names(['parent=="3/default/sha256:bb"'])).toEqual(['ctr']);
    expect(names(['labels."containerd.io/snapshot.ref"==sha256:aa,parent==""'])).toEqual(['base']);
  });

  test('presence, inequality, regular expressions', () => {
    expect(names(['labels.l'])).toEqual(['base', 'ctr']);
    expect(names(['labels.l==2'])).toEqual(['ctr']);
    expect(names(['parent!=""'])).toEqual(['3/default/sha256:bb', 'ctr', 'v']);
    expect(names(['labels.l!=1'])).toEqual(['3/default/sha256:bb', 'ctr', 'v']);
    expect(names(['name~=^3/'])).toEqual(['3/default/sha256:bb']);
    expect(names(['name~=/^(ctr|v)$/'])).toEqual(['ctr', 'v']);
    expect(names(['labels.x.y==dotted'])).toEqual(['ctr']);
  });

  test("',' is AND, several filters are OR", () => {
    expect(names(['kind==committed,labels.l'])).toEqual(['base']);
    expect(names(['name==v', 'name==ctr'])).toEqual(['ctr', 'v']);
    expect(names(['kind==active , name==ctr'.replace(' , ', ',')])).toEqual(['ctr']);
  });

  test('whitespace around selectors is skipped', () => {
    expect(names(['  kind==view'])).toEqual(['v']);
  });

  test.each([
    'kind==',
    '==x',
    'kind=x',
    'kind===x',
    'labels."unterminated==x',
    'name==a b',
    'kind==committed,',
    'name=="bad\\q"',
    'name~=(',
    'name==/abc/',
  ])('%s is INVALID_ARGUMENT', (f) => {
    let err: unknown;
    try {
      parseFilter(f);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe('INVALID_ARGUMENT');
  });

  test('Go-style unquoting', () => {
    expect(unquote('"a\\"b\\n\\x41\\u00e9\\101"')).toBe('a"b\nAéA');
    expect(unquote('/a\\/b/')).toBe('a/b');
    expect(unquote('|x|')).toBe('x');
    expect(() => unquote('"a"b"')).toThrow();
  });
});
