/**
 * `ctr-cli load` / `images` / `rmi` on the local store only (--no-containerd),
 * the containerd view of a d4fs image (pure functions), and the errors a user
 * sees when containerd is not there.
 *
 * Images: nginx v1 and v2 built from real Debian packages, converted to
 * .cdimg, and the v1→v2 delta.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { makeCdimgChain } from '../bench/distribution';
import { runCommand } from './helpers/containerd';
import { WorkerPool } from '../src/workers/pool';
import { LocalStore } from '../src/store/store';
import { CdimgReader } from '../src/format/reader';
import { D4fsError } from '../src/errors';
import {
  ContainerdClient,
  D4FS_LAYER_MEDIA_TYPE,
  buildContainerdImage,
  d4fsDiffId,
  loadImage,
  rewriteConfig,
  sha256Digest,
} from '../src/containerd';
import { CTR_CLI_JS } from './helpers/cli';

jest.setTimeout(300_000);

const CLI = CTR_CLI_JS;

let work: string;
let v1: string;
let delta: string;
let v1Id: string;
let v2Id: string;

/** Runs ctr-cli with `store` as $D4FS_STORE. */
function cli(store: string, args: string[]) {
  return runCommand(process.execPath, [CLI, ...args], { env: { ...process.env, D4FS_STORE: store }, timeoutMs: 120_000 });
}

beforeAll(async () => {
  work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-load-'));
  const pool = new WorkerPool(2);
  try {
    const chain = await makeCdimgChain(work, ['nginx-v1', 'nginx-v2'], pool);
    [v1] = chain.full;
    [delta] = chain.deltas;
    [v1Id, v2Id] = chain.imageIds;
  } finally {
    await pool.close();
  }
});

afterAll(async () => {
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

describe('ctr-cli load --no-containerd', () => {
  let store: string;
  beforeAll(() => {
    store = path.join(work, 'store');
  });

  test('a delta whose parent image is absent is refused with exit 5 and a clear message', async () => {
    const r = await cli(store, ['load', '--image', 'nginx:2', '--cdimg', delta, '--no-containerd']);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/is a delta from image sha256:[0-9a-f]{64}, which this machine does not hold: load that image .* first/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const s = await LocalStore.open(store);
    try {
      expect(s.files()).toEqual([]);
      expect(s.images()).toEqual([]);
    } finally {
      s.close();
    }
  });

  test('a full image loads and is named', async () => {
    const r = await cli(store, ['load', '--image', 'nginx:1', '--cdimg', v1, '--no-containerd', '--json']);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ name: 'nginx:1', imageId: v1Id, kind: 'full', store, containerd: null });
    expect(out.chain).toHaveLength(1);
    expect(out.chainBytes).toBe(fs.statSync(v1).size);
  });

  test('then the delta loads (D4C flag --imageTag), its chain is full + delta', async () => {
    const r = await cli(store, ['load', '--imageTag', 'nginx:2', '--cdimg', delta, '--no-containerd']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/loaded nginx:2/);
    expect(r.stdout).toContain(`image id     ${v2Id}`);
    expect(r.stdout).toContain(`delta from ${v1Id}`);
    expect(r.stdout).toMatch(/chain {8}full\+1 delta/);
    const s = await LocalStore.open(store);
    try {
      expect(s.chainFor(v2Id).map((f) => f.kind)).toEqual(['full', 'delta']);
    } finally {
      s.close();
    }
  });

  test('loading the same file again is idempotent; a name without tag gets :latest', async () => {
    const r = await cli(store, ['load', '--image', 'nginx', '--cdimg', v1, '--no-containerd', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).name).toBe('nginx:latest');
    const s = await LocalStore.open(store);
    try {
      expect(s.files()).toHaveLength(2);
    } finally {
      s.close();
    }
  });

  test('images lists names, ids, chains and sizes', async () => {
    const r = await cli(store, ['images']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+IMAGE ID\s+CHAIN\s+FILES\s+SIZE$/);
    expect(lines.slice(1).map((l) => l.split(/\s+/)[0])).toEqual(['nginx:1', 'nginx:2', 'nginx:latest']);
    expect(lines[2]).toMatch(new RegExp(`^nginx:2\\s+${v2Id.slice(7, 19)}\\s+full\\+1 delta\\s+2\\s+\\d`));
    const j = JSON.parse((await cli(store, ['images', '--json'])).stdout);
    expect(j).toHaveLength(3);
    const n2 = j.find((x: { name: string }) => x.name === 'nginx:2');
    expect(n2.imageId).toBe(v2Id);
    expect(n2.chain.map((f: { kind: string }) => f.kind)).toEqual(['full', 'delta']);
    expect(n2.chainBytes).toBe(fs.statSync(v1).size + fs.statSync(delta).size);
  });

  test('rmi removes names; gc keeps what other names need, then collects', async () => {
    let r = await cli(store, ['rmi', 'nginx:1', 'nginx:latest', '--no-containerd', '--json']);
    expect(r.code).toBe(0);
    let out = JSON.parse(r.stdout);
    expect(out.removed.map((x: { name: string }) => x.name)).toEqual(['nginx:1', 'nginx:latest']);
    expect(out.collected).toEqual([]); // nginx:2's chain starts with the v1 file
    r = await cli(store, ['rmi', 'nginx:2', '--no-containerd']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/removed nginx:2 \([0-9a-f]{12}\) from local store/);
    expect(r.stdout).toMatch(/collected 2 files/);
    expect(fs.readdirSync(path.join(store, 'files'))).toEqual([]);
    r = await cli(store, ['rmi', 'nginx:2', '--no-containerd']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/no image named nginx:2 in the local store/);
    out = JSON.parse((await cli(store, ['images', '--json'])).stdout);
    expect(out).toEqual([]);
  });

  test('usage errors exit 2', async () => {
    expect((await cli(store, ['load', '--cdimg', v1, '--no-containerd'])).code).toBe(2);
    // without --cdimg, NAME is an image the store must hold already
    const notHeld = await cli(store, ['load', '--image', 'nginx:1', '--no-containerd']);
    expect(notHeld.code).toBe(3);
    expect(notHeld.stderr).toMatch(/no image named nginx:1/);
    const bad = await cli(store, ['load', '--image', 'Nginx:1', '--cdimg', v1, '--no-containerd']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/invalid image name/);
  });

  test('a damaged .cdimg is refused (exit 6) and not stored', async () => {
    const broken = path.join(work, 'broken.cdimg');
    const buf = fs.readFileSync(v1);
    buf[buf.length - 100] ^= 0xff; // inside the index
    fs.writeFileSync(broken, buf);
    const r = await cli(store, ['load', '--image', 'broken:1', '--cdimg', broken, '--no-containerd']);
    expect(r.code).toBe(6);
    expect(fs.readdirSync(path.join(store, 'files'))).toEqual([]);
  });
});

describe('LocalStore.add: the store keeps its own checked copy', () => {
  const copyOf = async (name: string, damage?: (b: Buffer) => void): Promise<string> => {
    const at = path.join(work, name);
    const buf = await fsp.readFile(v1);
    damage?.(buf);
    await fsp.writeFile(at, buf);
    return at;
  };
  const leftovers = (root: string): string[] => fs.readdirSync(path.join(root, 'tmp'));

  test('a damaged file is refused (CORRUPT) and nothing is stored or left; moved, it goes back where it was; the stored copy is a file of its own', async () => {
    const root = path.join(work, 'store-damaged');
    const store = await LocalStore.open(root);
    try {
      const bad = await copyOf('damaged.cdimg', (b) => {
        b[b.length - 100] ^= 0xff; // inside the index
      });
      const checked: [string, string][] = [];
      const whenChecked = (rec: { imageId: string }, at: string): void => void checked.push([rec.imageId, at]);
      const e = await store.add(bad, { whenChecked }).then(() => undefined, (x: unknown) => x as D4fsError);
      expect(e?.kind).toBe('CORRUPT');
      expect(checked).toEqual([]); // a file that fails its checks is never announced
      expect(e?.message).toContain(bad);
      expect(fs.readdirSync(path.join(root, 'files'))).toEqual([]);
      expect(leftovers(root)).toEqual([]);
      const ino = fs.statSync(bad).ino;
      const e2 = await store.add(bad, { move: true }).then(() => undefined, (x: unknown) => x as D4fsError);
      expect(e2?.kind).toBe('CORRUPT');
      expect(e2?.message).toContain(bad);
      expect(fs.statSync(bad).ino).toBe(ino);
      expect(fs.readdirSync(path.join(root, 'files'))).toEqual([]);
      expect(leftovers(root)).toEqual([]);
      // a good file: the stored copy is a file of its own, equal to it
      const good = await copyOf('good.cdimg');
      const f = await store.add(good, { whenChecked });
      // announced once, with the image it holds and where it was checked (ctr-cli load writes containerd's records meanwhile)
      expect(checked).toEqual([[f.imageId, good]]);
      expect(fs.statSync(f.path).ino).not.toBe(fs.statSync(good).ino);
      expect(fs.readFileSync(f.path).equals(fs.readFileSync(v1))).toBe(true);
      expect(leftovers(root)).toEqual([]);
    } finally {
      store.close();
    }
  });

  test('move renames a file only the caller names; a hard-linked file is copied, and its other name keeps its bytes', async () => {
    const root = path.join(work, 'store-move');
    const store = await LocalStore.open(root);
    try {
      const mine = await copyOf('mine.cdimg');
      const ino = fs.statSync(mine).ino;
      const f = await store.add(mine, { move: true });
      expect(fs.existsSync(mine)).toBe(false);
      expect(fs.statSync(f.path).ino).toBe(ino);
      expect(fs.readFileSync(f.path).equals(fs.readFileSync(v1))).toBe(true);
      await store.gc([]); // no name holds it: collected

      const linked = await copyOf('linked.cdimg');
      const other = path.join(work, 'linked-too.cdimg');
      await fsp.link(linked, other);
      const g = await store.add(linked, { move: true });
      expect(fs.existsSync(linked)).toBe(false); // moved: gone from where it was
      expect(fs.statSync(g.path).ino).not.toBe(fs.statSync(other).ino); // a copy: writing through the other name cannot change it
      const was = fs.readFileSync(other);
      fs.writeFileSync(other, Buffer.alloc(16));
      expect(fs.readFileSync(g.path).equals(was)).toBe(true);
      expect(leftovers(root)).toEqual([]);
    } finally {
      store.close();
    }
  });
});

describe('without containerd', () => {
  test('load says containerd cannot be reached (exit 11) and keeps the image in the store', async () => {
    const store = path.join(work, 'store-nc');
    const sock = path.join(work, 'no-containerd.sock');
    const r = await cli(store, ['load', '--image', 'nginx:1', '--cdimg', v1, '--address', sock]);
    expect(r.code).toBe(11);
    expect(r.stderr).toContain(`cannot reach containerd at ${sock} (is it running? --address)`);
    // the error says what state the image is in and how to finish
    expect(r.stderr).toContain('nginx:1 is in the local store but not in containerd: once that is fixed, `ctr-cli load nginx:1` finishes the load');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const again = await cli(store, ['load', 'nginx:1', '--address', sock]);
    expect(again.code).toBe(11);
    const j = JSON.parse((await cli(store, ['images', '--json'])).stdout);
    expect(j.map((x: { name: string }) => x.name)).toEqual(['nginx:1']);
  });

  test('a socket nobody listens on is UNAVAILABLE too', async () => {
    const sock = path.join(work, 'dead.sock');
    const net = await import('node:net');
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(sock, r));
    await new Promise<void>((r) => srv.close(() => r()));
    fs.writeFileSync(sock, ''); // a file where a socket should be
    const s = await LocalStore.open(path.join(work, 'store-nc'));
    try {
      const err = await loadImage({ store: s, name: 'nginx:1', address: sock }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(D4fsError);
      expect((err as D4fsError).kind).toBe('UNAVAILABLE');
      expect((err as Error).message).toContain(`cannot reach containerd at ${sock} (is it running? --address)`);
    } finally {
      s.close();
    }
    // A call on a lazily connected client fails the same way.
    const c = ContainerdClient.create({ address: path.join(work, 'nothing.sock'), timeoutMs: 5000 });
    try {
      const err = await c.images.get('x').catch((e: unknown) => e);
      expect((err as D4fsError).kind).toBe('UNAVAILABLE');
      expect((err as Error).message).toMatch(/cannot reach containerd at .*nothing\.sock \(is it running\? --address\)/);
    } finally {
      c.close();
    }
  });
});

describe('the containerd view of a d4fs image', () => {
  test('one pointer layer, the original config with one synthetic diff ID, consistent history', async () => {
    const r = await CdimgReader.open(v1);
    let orig: Record<string, unknown>;
    let built: ReturnType<typeof buildContainerdImage>;
    try {
      orig = JSON.parse(r.index.image.configJson.toString());
      built = buildContainerdImage({ imageId: r.imageId, rootDigest: r.rootDigest, configJson: r.index.image.configJson });
    } finally {
      await r.close();
    }
    const { layer, config, manifest, diffId, chainId } = built;
    expect(diffId).toBe(sha256Digest(`d4fs-image:${v1Id}`));
    expect(diffId).toBe(d4fsDiffId(v1Id));
    expect(chainId).toBe(diffId);
    for (const b of [layer, config, manifest]) {
      expect(b.descriptor.digest).toBe(sha256Digest(b.bytes));
      expect(b.descriptor.size).toBe(b.bytes.length);
    }
    expect(layer.bytes.length).toBeLessThan(512);
    expect(JSON.parse(layer.bytes.toString())).toEqual({ mediaType: D4FS_LAYER_MEDIA_TYPE, imageId: v1Id, rootDigest: expect.stringMatching(/^sha256:/) });

    const m = JSON.parse(manifest.bytes.toString());
    expect(m.schemaVersion).toBe(2);
    expect(m.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(m.config).toEqual(config.descriptor);
    expect(m.layers).toEqual([layer.descriptor]);
    expect(m.layers[0].mediaType).toBe(D4FS_LAYER_MEDIA_TYPE);

    const c = JSON.parse(config.bytes.toString());
    expect(c.rootfs).toEqual({ type: 'layers', diff_ids: [diffId] });
    expect((orig.rootfs as { diff_ids: string[] }).diff_ids.length).toBe(3);
    // Everything but rootfs and history is the original config.
    for (const k of Object.keys(orig)) if (k !== 'rootfs' && k !== 'history') expect(c[k]).toEqual(orig[k]);
    const hist = c.history as { empty_layer?: boolean; created_by?: string }[];
    expect(hist.filter((h) => !h.empty_layer)).toHaveLength(1);
    expect(hist.length).toBe((orig.history as unknown[]).length + 1);
    expect(hist[hist.length - 1].created_by).toMatch(/^d4fs: image sha256:[0-9a-f]{64}, 3 layers flattened$/);
  });

  test('deterministic, and history-less configs stay history-less', () => {
    const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: ['sha256:' + 'a'.repeat(64)] } }));
    const id = 'sha256:' + 'b'.repeat(64);
    const a = buildContainerdImage({ imageId: id, rootDigest: id, configJson: cfg });
    const b = buildContainerdImage({ imageId: id, rootDigest: id, configJson: cfg });
    expect(a.manifest.descriptor.digest).toBe(b.manifest.descriptor.digest);
    expect(rewriteConfig(cfg, id, a.diffId)).toEqual({ architecture: 'amd64', os: 'linux', config: { Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: [a.diffId] } });
    expect(() => buildContainerdImage({ imageId: id, rootDigest: id, configJson: Buffer.from('not json') })).toThrow(/config is not valid JSON/);
    expect(() => buildContainerdImage({ imageId: 'sha256:xyz', rootDigest: id, configJson: cfg })).toThrow(/invalid d4fs image id/);
  });
});
