/**
 * An OCI registry as the store of d4fs files: push of libssl v1 (full) and the
 * v1→v2, v2→v3 deltas as artifacts to Debian's docker-registry on 127.0.0.1
 * (anonymous and htpasswd), pulls that pick a chain from the versions held.
 */
import { ClientStores, failure, onceAfter, partOf, rootOf, sameBytes } from './helpers/pulls';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CdimgChain, makeCdimgChain, startThrottlingProxy } from '../bench/distribution';
import { startRegistry, TestRegistry } from './helpers/registry';
import { patchImage } from '../src/delta/patch';
import { MT } from '../src/oci/mediatypes';
import { RegistryClient } from '../src/oci/registry/client';
import { INDEX_ARTIFACT_TYPE, isContentTag } from '../src/distribution/artifact';
import { pullFromRegistry, pushToRegistry } from '../src/distribution/registry';
import type { PullResult } from '../src/distribution/pull';
import { LocalStore } from '../src/store/store';
import { packageRoot } from '../src/util/paths';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
const CREDS = 'd4fs:s3cret pass';

let work: string;
let chain: CdimgChain;
let open: TestRegistry;
let locked: TestRegistry;
let V1: string;
let V2: string;
let V3: string;

const clients = new ClientStores(() => join(work, 'clients'));
const newStore = (name: string, files: string[] = []): Promise<LocalStore> => clients.make(name, files);


beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-distribution-test-'));
  [open, locked, chain] = await Promise.all([startRegistry(), startRegistry({ auth: { user: 'd4fs', pass: 's3cret pass' } }), makeCdimgChain(work, ['libssl-v1', 'libssl-v2', 'libssl-v3'])]);
  [V1, V2, V3] = chain.imageIds;
}, 120_000);

afterAll(async () => {
  clients.closeAll();
  await open?.stop();
  await locked?.stop();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

describe('OCI registry as the store', () => {
  test('push v1, v1→v2, v2→v3 as artifacts; each tag is an index of the files leading to its version; pushing again changes nothing', async () => {
    const to = (tag: string): string => `docker://${open.host}/d4fs/libssl:${tag}`;
    const p1 = await pushToRegistry({ file: chain.full[0], to: to('v1') });
    expect(p1).toMatchObject({ kind: 'full', imageId: V1, uploaded: true, indexed: 1, contentTag: `d4fs-full-${V1.slice(7, 39)}` });
    const p2 = await pushToRegistry({ file: chain.deltas[0], to: to('v2') });
    expect(p2).toMatchObject({ kind: 'delta', parentId: V1, imageId: V2, indexed: 2 });
    const p3 = await pushToRegistry({ file: chain.deltas[1], to: to('v3') });
    expect(p3).toMatchObject({ kind: 'delta', parentId: V2, imageId: V3, indexed: 3, contentTag: `d4fs-delta-${V2.slice(7, 39)}-${V3.slice(7, 39)}` });
    const again = await pushToRegistry({ file: chain.deltas[1], to: to('v3') });
    expect(again).toMatchObject({ uploaded: false, manifestDigest: p3.manifestDigest, indexDigest: p3.indexDigest });

    const client = new RegistryClient(open.host);
    try {
      const tags = await client.listTags('d4fs/libssl');
      expect(tags.filter(isContentTag)).toHaveLength(3);
      expect(tags).toEqual(expect.arrayContaining(['v1', 'v2', 'v3']));
      const idx = await client.getManifest('d4fs/libssl', 'v3');
      expect(idx.mediaType).toBe(MT.OCI_INDEX);
      const doc = JSON.parse(idx.bytes.toString());
      expect(doc.artifactType).toBe(INDEX_ARTIFACT_TYPE);
      expect(doc.annotations['io.d4fs.image-id']).toBe(V3);
      expect(doc.manifests).toHaveLength(3);
    } finally {
      await client.close();
    }
    // a delta whose parent the repository lacks is refused before anything is uploaded
    const e = await failure(pushToRegistry({ file: chain.deltas[1], to: `docker://${open.host}/d4fs/other:v3` }));
    expect(e.kind).toBe('FAILED_PRECONDITION');
  });

  test('a client holding v1 pulls v3: the two deltas, which patch to the bytes of v3', async () => {
    const store = await newStore('hold-v1', [chain.full[0]]);
    const r = await pullFromRegistry({ from: `docker://${open.host}/d4fs/libssl:v3`, store, noLoad: true });
    expect(r).toMatchObject({ name: 'd4fs/libssl:v3', imageId: V3, from: V1, upToDate: false, loaded: false });
    expect(r.files.map((f) => [f.kind, f.parentId, f.imageId])).toEqual([
      ['delta', V1, V2],
      ['delta', V2, V3],
    ]);
    const [s12, s23] = await Promise.all(chain.deltas.map(async (p) => (await fsp.stat(p)).size));
    expect(r.bytes).toBe(s12 + s23);
    const rebuilt = join(work, 'rebuilt-v3.cdimg');
    await patchImage({ base: chain.full[0], deltas: r.files.map((f) => store.filePath(f.rootDigest)), out: rebuilt });
    expect(await sameBytes(rebuilt, chain.full[2])).toBe(true);
    expect((await pullFromRegistry({ from: `docker://${open.host}/d4fs/libssl:v3`, store, noLoad: true })).upToDate).toBe(true);
  });

  test('a fresh client gets the full image and the deltas; a content tag pulls one file', async () => {
    const store = await newStore('fresh');
    const r = await pullFromRegistry({ from: `${open.host}/d4fs/libssl:v2`, image: 'libssl:2', store, noLoad: true });
    expect(r.files.map((f) => f.kind)).toEqual(['full', 'delta']);
    expect(store.resolveName('libssl:2')).toBe(V2);
    await store.verifyChain(V2);
    const s1 = await newStore('fresh-content-tag');
    const r1 = await pullFromRegistry({ from: `${open.host}/d4fs/libssl:d4fs-full-${V1.slice(7, 39)}`, image: 'libssl:1', store: s1, noLoad: true });
    expect(r1.files.map((f) => [f.kind, f.imageId])).toEqual([['full', V1]]);
    expect(await sameBytes(s1.filePath(r1.files[0].rootDigest), chain.full[0])).toBe(true);
  });

  test('with htpasswd auth: push and pull with credentials; without them UNAUTHENTICATED', async () => {
    const to = (tag: string): string => `docker://${locked.host}/d4fs/libssl:${tag}`;
    const noCreds = join(work, 'empty-auth.json');
    await fsp.writeFile(noCreds, '{"auths":{}}');
    expect((await failure(pushToRegistry({ file: chain.full[0], to: to('v1'), registry: { authFile: noCreds } }))).kind).toBe('UNAUTHENTICATED');
    await pushToRegistry({ file: chain.full[0], to: to('v1'), registry: { creds: CREDS } });
    await pushToRegistry({ file: chain.deltas[0], to: to('v2'), registry: { creds: CREDS } });
    const store = await newStore('auth', [chain.full[0]]);
    expect((await failure(pullFromRegistry({ from: to('v2'), store, noLoad: true, registry: { creds: 'd4fs:wrong' } }))).kind).toBe('UNAUTHENTICATED');
    const r = await pullFromRegistry({ from: to('v2'), store, noLoad: true, registry: { creds: CREDS } });
    expect(r.files.map((f) => [f.kind, f.imageId])).toEqual([['delta', V2]]);
  });

  test('a registry download cut mid-way resumes with a Range request on the next run', async () => {
    await pushToRegistry({ file: chain.full[0], to: `docker://${open.host}/d4fs/resume:v1` });
    const root = await rootOf(chain.full[0]);
    const proxy = await startThrottlingProxy(open.host, 40); // 5 MB/s: the ~9 MiB full image takes ~2 s
    try {
      const store = await newStore('registry-resume');
      const e = await failure(pullFromRegistry({ from: `docker://${proxy.host}/d4fs/resume:v1`, store, noLoad: true, retries: 0, onProgress: onceAfter(2_000_000, () => proxy.cut()) }));
      expect(e.kind).toBe('UNAVAILABLE');
      const part = partOf(store, root);
      const partSize = (await fsp.stat(part)).size;
      expect(partSize).toBeGreaterThan(1_000_000); // bytes reported may still be in flight to the part file when the link is cut
      expect(partSize).toBeLessThan((await fsp.stat(chain.full[0])).size);
      expect(store.heldImageIds()).toEqual([]);

      const down0 = proxy.bytesDown();
      const r = await pullFromRegistry({ from: `docker://${proxy.host}/d4fs/resume:v1`, store, noLoad: true });
      expect(r.files[0]).toMatchObject({ resumedFrom: partSize, refetched: false, downloaded: true });
      expect(r.bytes).toBe(r.files[0].size - partSize);
      // only the rest crossed the link (plus manifests and headers)
      expect(proxy.bytesDown() - down0).toBeLessThan(r.files[0].size - partSize + 64 * 1024);
      expect(await sameBytes(store.filePath(root), chain.full[0])).toBe(true);
      await expect(fsp.stat(part)).rejects.toThrow(/ENOENT/);
    } finally {
      await proxy.close();
    }
  });

  test('ctr-cli push --to and pull --from; a damaged blob in the registry is refused', async () => {
    const storeDir = join(work, 'clients', 'cli');
    const to = `docker://${open.host}/d4fs/cli:v1`;
    const pushed = JSON.parse((await run(process.execPath, [CLI, 'push', '--cdimg', chain.full[0], '--to', to, '--json'])).stdout);
    expect(pushed).toMatchObject({ kind: 'full', imageId: V1 });
    const pulled = JSON.parse((await run(process.execPath, [CLI, 'pull', '--from', to, '--store', storeDir, '--no-load', '--json'])).stdout) as PullResult;
    expect(pulled).toMatchObject({ name: 'd4fs/cli:v1', imageId: V1 });

    // flip a byte of the v2→v3 delta where the registry keeps it
    const fileDigest = (await pushToRegistry({ file: chain.deltas[1], to: `docker://${open.host}/d4fs/libssl:v3` })).fileDigest.slice(7);
    const data = join(open.dataDir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', fileDigest.slice(0, 2), fileDigest, 'data');
    const bytes = await fsp.readFile(data);
    bytes[Math.floor(bytes.length / 2)] ^= 0x40;
    await fsp.writeFile(data, bytes);
    const store = await newStore('victim', [chain.full[0], chain.deltas[0]]);
    const e = await failure(pullFromRegistry({ from: `docker://${open.host}/d4fs/libssl:v3`, store, noLoad: true }));
    expect(e.kind).toBe('CORRUPT');
    expect(store.hasImage(V3)).toBe(false);
  });
});
