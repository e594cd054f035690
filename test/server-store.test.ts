/**
 * d4fs-server replicas sharing one OCI registry as their backing store
 * (`--store docker://REGISTRY/PREFIX`), for real: Debian's docker-registry on
 * 127.0.0.1, libssl v1 (full) and the v1→v2, v2→v3 deltas pushed through
 * replica A, pulled through replica B, which never saw a push; tags moving
 * between replicas; the same artifacts read by `pull --from`; a damaged blob
 * in the registry refused; a registry with htpasswd auth.
 */
import { failure } from './helpers/pulls';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CdimgChain, makeCdimgChain } from '../bench/distribution';
import { startRegistry, TestRegistry } from './helpers/registry';
import { patchImage } from '../src/delta/patch';
import { CdimgReader } from '../src/format/reader';
import { MT } from '../src/oci/mediatypes';
import { RegistryClient } from '../src/oci/registry/client';
import { isContentTag } from '../src/distribution/artifact';
import { readBody, ServerClient } from '../src/distribution/client';
import { pushToServer } from '../src/distribution/push';
import { pullFromServer, PullResult } from '../src/distribution/pull';
import { pullFromRegistry, pushToRegistry } from '../src/distribution/registry';
import { rewriteIndex } from './helpers/forge';
import { randomBytes } from 'node:crypto';
import { blobPath, PullPlanJson, TagJson } from '../src/distribution/protocol';
import { D4fsServer, ServerOptions } from '../src/server/server';
import { parseStoreUrl } from '../src/server/regstore';
import { newToken } from '../src/server/auth';
import { LocalStore } from '../src/store/store';

const RW = newToken();
const RO = newToken();
const REPO = 'd4fs/libssl';

let work: string;
let chain: CdimgChain;
let registry: TestRegistry;
let tokensFile: string;
let A: D4fsServer;
let B: D4fsServer;
let V1: string;
let V2: string;
let V3: string;
const servers: D4fsServer[] = [];
const stores: LocalStore[] = [];

/** A replica on its own root and port, backed by `reg` under PREFIX "d4fs". */
async function replica(name: string, reg: TestRegistry = registry, extra: Partial<ServerOptions> = {}): Promise<D4fsServer> {
  const s = await D4fsServer.start({
    root: join(work, 'replicas', name),
    listen: '127.0.0.1:0',
    tokensFile,
    processMetrics: false,
    store: { url: `docker://${reg.host}/d4fs`, ttlMs: 60_000 },
    ...extra,
  });
  servers.push(s);
  return s;
}

async function newStore(name: string, files: string[] = []): Promise<LocalStore> {
  const s = await LocalStore.open(join(work, 'clients', name));
  stores.push(s);
  for (const f of files) await s.add(f);
  return s;
}

const pull = (server: D4fsServer, store: LocalStore, image: string): Promise<PullResult> => pullFromServer({ image, server: server.url, store, token: RO, noLoad: true });
const sameBytes = async (a: string, b: string): Promise<boolean> => (await fsp.readFile(a)).equals(await fsp.readFile(b));
/** Root digest of a .cdimg. */
async function rootOf(path: string): Promise<string> {
  const r = await CdimgReader.open(path);
  await r.close();
  return r.rootDigest;
}

const cachedBlobs = async (s: D4fsServer): Promise<string[]> => (await s.blobs.list()).map((b) => b.rootDigest).sort();

async function tagOf(server: D4fsServer, tag: string): Promise<string> {
  const c = new ServerClient(server.url, { token: RO });
  try {
    return (await c.json<TagJson>('GET', `/v1/repositories/libssl/tags/${tag}`, 'tag')).imageId;
  } finally {
    c.close();
  }
}

beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-server-store-test-'));
  tokensFile = join(work, 'tokens');
  await fsp.writeFile(tokensFile, `rw ${RW} pusher\nro ${RO} puller\n`, { mode: 0o600 });
  [registry, chain] = await Promise.all([startRegistry(), makeCdimgChain(work, ['libssl-v1', 'libssl-v2', 'libssl-v3'])]);
  [V1, V2, V3] = chain.imageIds;
  // compose merges only: replica B's answer is compared byte for byte below
  [A, B] = await Promise.all([replica('a'), replica('b', registry, { mergeStrategy: 'compose' })]);
  expect(A.port).not.toBe(B.port);
}, 180_000);

afterAll(async () => {
  for (const s of stores) s.close();
  for (const s of servers) await s.stop(1000);
  await registry?.stop();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

describe('--store docker://REGISTRY/PREFIX', () => {
  test('the store URL: registry and prefix; tags and digests refused', () => {
    expect(parseStoreUrl('docker://127.0.0.1:5000/d4fs')).toEqual({ registry: '127.0.0.1:5000', prefix: 'd4fs' });
    expect(parseStoreUrl('registry.example/team/d4fs/')).toEqual({ registry: 'registry.example', prefix: 'team/d4fs' });
    expect(parseStoreUrl('docker://127.0.0.1:5000')).toEqual({ registry: '127.0.0.1:5000', prefix: '' });
    expect(() => parseStoreUrl('docker://127.0.0.1:5000/d4fs:v1')).toThrow(/prefix/);
    expect(() => parseStoreUrl('docker:///d4fs')).toThrow(/--store/);
  });

  test('pushes to replica A land in the registry: one artifact per file, one index per tag', async () => {
    const p1 = await pushToServer({ file: chain.full[0], image: 'libssl:v1', server: A.url, token: RW });
    const p2 = await pushToServer({ file: chain.deltas[0], image: 'libssl:v2', server: A.url, token: RW });
    const p3 = await pushToServer({ file: chain.deltas[1], image: 'libssl:v3', server: A.url, token: RW });
    expect([p1, p2, p3].map((p) => [p.kind, p.imageId, p.uploaded])).toEqual([
      ['full', V1, true],
      ['delta', V2, true],
      ['delta', V3, true],
    ]);
    const c = new RegistryClient(registry.host);
    try {
      const tags = await c.listTags(REPO);
      expect(tags.filter(isContentTag)).toHaveLength(3);
      expect(tags.filter((t) => !isContentTag(t)).sort()).toEqual(['v1', 'v2', 'v3']);
      const idx = await c.getManifest(REPO, 'v3');
      expect(idx.mediaType).toBe(MT.OCI_INDEX);
      const doc = JSON.parse(idx.bytes.toString()) as { manifests: unknown[]; annotations: Record<string, string> };
      expect(doc.annotations['io.d4fs.image-id']).toBe(V3);
      expect(doc.manifests).toHaveLength(3);
    } finally {
      await c.close();
    }
  });

  test('replica B, which never saw a push, serves a client holding v1 one merged delta that patches to the bytes of v3', async () => {
    expect(await cachedBlobs(B)).toEqual([]);
    const store = await newStore('b-hold-v1', [chain.full[0]]);
    const r = await pull(B, store, 'libssl:v3');
    expect(r).toMatchObject({ imageId: V3, from: V1, upToDate: false });
    expect(r.files).toHaveLength(1);
    expect(r.files[0]).toMatchObject({ kind: 'delta', parentId: V1, imageId: V3, merged: true });
    const rebuilt = join(work, 'b-v3.cdimg');
    await patchImage({ base: chain.full[0], deltas: [store.filePath(r.files[0].rootDigest)], out: rebuilt });
    expect(await sameBytes(rebuilt, chain.full[2])).toBe(true);
    await store.verifyChain(V3);
    // B fetched the two deltas it merged into its cache, and the full image below them: a delta of
    // format version 2 is verified (its tree rebuilt on its parent's, its image id recomputed)
    // before it is used, as an upload is, and that needs the chain from a full image
    expect(await cachedBlobs(B)).toEqual([...(await Promise.all([chain.full[0], ...chain.deltas].map(rootOf))), r.files[0].rootDigest].sort());
  });

  test('a fresh client pulls v2 through B: the full image and the delta, byte for byte what was pushed through A', async () => {
    const store = await newStore('b-fresh');
    const r = await pull(B, store, 'libssl:v2');
    expect(r.files.map((f) => [f.kind, f.imageId, f.merged])).toEqual([
      ['full', V1, false],
      ['delta', V2, false],
    ]);
    expect(await sameBytes(store.filePath(r.files[0].rootDigest), chain.full[0])).toBe(true);
    expect(await sameBytes(store.filePath(r.files[1].rootDigest), chain.deltas[0])).toBe(true);
  });

  test('the registry holds what `pull --from` reads: the same files without any server', async () => {
    const store = await newStore('from-registry', [chain.full[0]]);
    const r = await pullFromRegistry({ from: `docker://${registry.host}/${REPO}:v3`, store, noLoad: true });
    expect(r.files.map((f) => [f.kind, f.parentId, f.imageId])).toEqual([
      ['delta', V1, V2],
      ['delta', V2, V3],
    ]);
    await store.verifyChain(V3);
  });

  test('pushing again through B stores nothing new; a tag B sets is seen by A at once', async () => {
    const again = await pushToServer({ file: chain.deltas[1], image: 'libssl:stable', server: B.url, token: RW });
    expect(again).toMatchObject({ imageId: V3, uploaded: false, previous: null });
    const c = new RegistryClient(registry.host);
    try {
      expect((await c.listTags(REPO)).filter(isContentTag)).toHaveLength(3);
    } finally {
      await c.close();
    }
    expect(await tagOf(A, 'stable')).toBe(V3);
    const store = await newStore('a-stable');
    expect((await pull(A, store, 'libssl:stable')).imageId).toBe(V3);
  });

  test('a tag moved through A reaches a replica with a short TTL once the TTL is over', async () => {
    const C = await replica('c', registry, { store: { url: `docker://${registry.host}/d4fs`, ttlMs: 300 } });
    expect(await tagOf(C, 'stable')).toBe(V3);
    const moved = await pushToServer({ file: chain.deltas[0], image: 'libssl:stable', server: A.url, token: RW });
    expect(moved).toMatchObject({ imageId: V2, uploaded: false, previous: V3 });
    await new Promise((r) => setTimeout(r, 400));
    expect(await tagOf(C, 'stable')).toBe(V2);
  });

  test('deleting a tag through a replica is refused (it lives in the registry) and changes nothing', async () => {
    const c = new ServerClient(A.url, { token: RW });
    try {
      const e = await failure(c.json('DELETE', '/v1/repositories/libssl/tags/v1', 'delete'));
      expect(e.kind).toBe('UNSUPPORTED');
      expect(e.message).toMatch(/registry/);
    } finally {
      c.close();
    }
    expect(await tagOf(A, 'v1')).toBe(V1);
  });

  test('a damaged blob in the registry is refused by the replica that fetches it, and nothing lands in its cache', async () => {
    const D = await replica('d');
    const fileDigest = A.catalogue.file(await rootOf(chain.deltas[1]))!.fileDigest.slice(7);
    const data = join(registry.dataDir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', fileDigest.slice(0, 2), fileDigest, 'data');
    const good = await fsp.readFile(data);
    const bad = Buffer.from(good);
    bad[Math.floor(bad.length / 2)] ^= 0x40;
    await fsp.writeFile(data, bad);
    try {
      const store = await newStore('d-victim', [chain.full[0], chain.deltas[0]]);
      const e = await failure(pull(D, store, 'libssl:v3'));
      expect(e.kind).toBe('CORRUPT');
      expect(store.hasImage(V3)).toBe(false);
      expect(await cachedBlobs(D)).toEqual([]);
    } finally {
      await fsp.writeFile(data, good);
    }
    const store = await newStore('d-after', [chain.full[0], chain.deltas[0]]);
    expect((await pull(D, store, 'libssl:v3')).imageId).toBe(V3);
  });

  test('a delta with a forged image id, pushed straight into the registry, is refused by the replica that fetches it (its tree is rebuilt on its parent)', async () => {
    const forged = join(work, 'forged-v3.cdimg');
    const fakeId = randomBytes(32);
    await rewriteIndex(chain.deltas[1], forged, (ix) => {
      ix.imageId = fakeId;
    });
    // well formed alone (chunks, root digest): only the tree rebuilt on v2's gives it away
    const alone = await CdimgReader.open(forged);
    expect(alone.hasTree).toBe(false);
    await alone.close();
    // `ctr-cli push --to` checks nothing against the parent: the registry holds it under a tag
    await pushToRegistry({ file: forged, to: `docker://${registry.host}/${REPO}:forged` });
    const F = await replica('f');
    const store = await newStore('f-victim', [chain.full[0], chain.deltas[0]]);
    const e = await failure(pull(F, store, 'libssl:forged'));
    expect(e.kind).toBe('CORRUPT');
    expect(e.message).toMatch(/image id/);
    expect(store.hasImage(`sha256:${fakeId.toString('hex')}`)).toBe(false);
    expect(await cachedBlobs(F)).not.toContain(await rootOf(forged));
    // the genuine v3 still comes through that replica
    expect((await pull(F, store, 'libssl:v3')).imageId).toBe(V3);
  });

  test('a restarted replica serves a blob its mirror names before any new read; /metrics counts reads and fetched bytes', async () => {
    let H = await replica('h');
    const c = new ServerClient(H.url, { token: RO });
    const plan = await c.json<PullPlanJson>('POST', '/v1/repositories/libssl/pull', 'plan', { tag: 'v2', have: [] });
    c.close();
    expect(plan.files.map((f) => f.kind)).toEqual(['full', 'delta']);
    expect(await cachedBlobs(H)).toEqual([]);
    await H.stop(1000);
    servers.splice(servers.indexOf(H), 1);
    H = await replica('h');
    const c2 = new ServerClient(H.url, { token: RO });
    try {
      const res = await c2.request('GET', blobPath(plan.files[0].rootDigest));
      expect(res.statusCode).toBe(200);
      expect(res.headers.etag).toBe(`"${plan.files[0].rootDigest}"`);
      const body = await readBody(res, 64 * 2 ** 20);
      expect(body.equals(await fsp.readFile(chain.full[0]))).toBe(true);
      const metrics = (await readBody(await c2.request('GET', '/metrics'), 1 << 20)).toString();
      expect(metrics).toMatch(/^d4fs_store_reads_total\{result="ok"\} [1-9]/m);
      expect(metrics).toMatch(new RegExp(`^d4fs_store_fetched_bytes_total ${plan.files[0].size}$`, 'm'));
    } finally {
      c2.close();
    }
  });

  test('a registry with htpasswd auth: replicas with credentials share it; without them the server answers 503, not 401', async () => {
    const locked = await startRegistry({ auth: { user: 'd4fs', pass: 's3cret' } });
    try {
      const url = `docker://${locked.host}/d4fs`;
      const noCreds = join(work, 'empty-auth.json');
      await fsp.writeFile(noCreds, '{"auths":{}}');
      const [E, F, G] = await Promise.all([
        replica('e', locked, { store: { url, registry: { creds: 'd4fs:s3cret' } } }),
        replica('f', locked, { store: { url, registry: { creds: 'd4fs:s3cret' } } }),
        replica('g', locked, { store: { url, registry: { authFile: noCreds } } }),
      ]);
      await pushToServer({ file: chain.full[0], image: 'libssl:v1', server: E.url, token: RW });
      await pushToServer({ file: chain.deltas[0], image: 'libssl:v2', server: E.url, token: RW });
      const store = await newStore('locked', [chain.full[0]]);
      const r = await pull(F, store, 'libssl:v2');
      expect(r.files.map((f) => [f.kind, f.imageId])).toEqual([['delta', V2]]);
      expect(await sameBytes(store.filePath(r.files[0].rootDigest), chain.deltas[0])).toBe(true);
      const e = await failure(pull(G, await newStore('locked-out'), 'libssl:v2'));
      expect(e.kind).toBe('UNAVAILABLE');
      expect(e.message).toMatch(/credentials/);
    } finally {
      await locked.stop();
    }
  });
});
