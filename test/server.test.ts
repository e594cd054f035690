/**
 * d4fs-server and its client, for real over 127.0.0.1: push of libssl v1 (full)
 * and the v1→v2, v2→v3 deltas; pulls planned from what the client holds and
 * merged; resumable and verified downloads; auth; concurrency; shutdown; gc.
 */
import { ClientStores, failure, onceAfter, partOf, rootOf, sameBytes } from './helpers/pulls';
import { execFile, spawn, ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import { networkInterfaces, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { CdimgChain, makeCdimgChain, startThrottlingProxy } from '../bench/distribution';
import { freePort } from './helpers/registry';
import { mergeDeltas } from '../src/delta/merge';
import { diffImages } from '../src/delta/diff';
import { patchImage } from '../src/delta/patch';
import { D4fsServer } from '../src/server/server';
import { Catalogue } from '../src/server/catalogue';
import { planChain } from '../src/distribution/planner';
import { pushToServer } from '../src/distribution/push';
import { isLoopbackHost, parseTokenText, ServerClient } from '../src/distribution/client';
import { tokenOf } from '../src/commands/push';
import { pullFromServer, PullResult } from '../src/distribution/pull';
import { LocalStore } from '../src/store/store';
import { newToken } from '../src/server/auth';
import { packageRoot } from '../src/util/paths';
import type { FileInfo } from '../src/distribution/protocol';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
const SERVER_BIN = join(packageRoot(), 'dist', 'cli', 'd4fs-server.js');

let work: string;
let chain: CdimgChain;
let server: D4fsServer;
let tokensFile: string;
const RW = newToken();
const RO = newToken();
let V1: string;
let V2: string;
let V3: string;

const clients = new ClientStores(() => join(work, 'clients'));
const newStore = (name: string, files: string[] = []): Promise<LocalStore> => clients.make(name, files);

const pull = (store: LocalStore, image: string, extra: Partial<Parameters<typeof pullFromServer>[0]> = {}): Promise<PullResult> =>
  pullFromServer({ image, server: server.url, store, token: RO, noLoad: true, ...extra });

/** One raw HTTP exchange. */
function raw(base: string, method: string, path: string, o: { headers?: Record<string, string>; body?: Buffer } = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const u = new URL(base);
    // path as given (no URL normalisation of "..": the server must see what an attacker sends)
    const req = http.request({ host: u.hostname, port: u.port, path, method, headers: o.headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

const listDir = (d: string): Promise<string[]> => fsp.readdir(d).catch(() => []);

beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-server-test-'));
  chain = await makeCdimgChain(work, ['libssl-v1', 'libssl-v2', 'libssl-v3']);
  [V1, V2, V3] = chain.imageIds;
  tokensFile = join(work, 'tokens');
  await fsp.writeFile(tokensFile, `# test tokens\nrw ${RW} pusher\nro ${RO} puller\n`, { mode: 0o600 });
  // compose only: the tests compare the served merge with mergeDeltas' composition (auto/rediff have their own test)
  server = await D4fsServer.start({ root: join(work, 'srv'), listen: '127.0.0.1:0', tokensFile, maxUploadBytes: 64 * 2 ** 20, processMetrics: false, mergeStrategy: 'compose' });
}, 120_000);

afterAll(async () => {
  clients.closeAll();
  await server?.stop(1000);
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

describe('chain planner', () => {
  const d = (n: number): string => `sha256:${n.toString(16).padStart(64, '0')}`;
  const [A, B, C] = [d(0xa), d(0xb), d(0xc)];
  const f = (root: number, kind: 'full' | 'delta', parentId: string, imageId: string, size: number): FileInfo => ({ rootDigest: d(root), kind, parentId, imageId, size });

  test('cheapest in bytes, not in hops', () => {
    const files = [f(1, 'full', '', A, 1000), f(2, 'delta', A, B, 10), f(3, 'delta', B, C, 10), f(4, 'delta', A, C, 50)];
    expect(planChain(files, [A], C)?.files.map((x) => x.rootDigest)).toEqual([d(2), d(3)]);
    files[3].size = 15;
    expect(planChain(files, [A], C)?.files.map((x) => x.rootDigest)).toEqual([d(4)]);
    expect(planChain(files, [A], C)?.from).toBe(A);
  });

  test('from nothing: a full image plus deltas, or a full image when that is cheaper', () => {
    const files = [f(1, 'full', '', A, 100), f(2, 'delta', A, B, 10), f(3, 'delta', B, C, 10)];
    const p = planChain(files, [], C);
    expect(p?.from).toBeUndefined();
    expect(p?.files.map((x) => x.rootDigest)).toEqual([d(1), d(2), d(3)]);
    expect(p?.bytes).toBe(120);
    files.push(f(5, 'full', '', C, 110));
    expect(planChain(files, [], C)?.files.map((x) => x.rootDigest)).toEqual([d(5)]);
    expect(planChain(files, [B], C)?.files.map((x) => x.rootDigest)).toEqual([d(3)]);
  });

  test('ties are broken the same way whatever the order of the catalogue', () => {
    const files = [f(1, 'full', '', A, 100), f(9, 'delta', A, B, 10), f(7, 'delta', A, B, 10), f(8, 'delta', B, C, 5), f(6, 'delta', A, C, 15)];
    const want = planChain(files, [A], C)?.files.map((x) => x.rootDigest);
    // equal cost 15: one hop (6) beats two hops (7+8)
    expect(want).toEqual([d(6)]);
    for (let i = 0; i < 10; i++) {
      const shuffled = [...files].sort(() => Math.random() - 0.5);
      expect(planChain(shuffled, [A], C)?.files.map((x) => x.rootDigest)).toEqual(want);
    }
    // equal cost and hops: the smaller root digest
    expect(planChain(files, [A], B)?.files.map((x) => x.rootDigest)).toEqual([d(7)]);
  });

  test('a held target needs nothing; an unreachable one has no plan', () => {
    const files = [f(2, 'delta', A, B, 10)];
    expect(planChain(files, [B], B)?.files).toEqual([]);
    expect(planChain(files, [], B)).toBeUndefined();
  });
});

describe('d4fs-server', () => {
  test('push: a full image and two deltas; pushing again stores nothing new; a delta needs its parent', async () => {
    const p1 = await pushToServer({ file: chain.full[0], image: 'libssl:v1', server: server.url, token: RW });
    expect(p1).toMatchObject({ kind: 'full', imageId: V1, uploaded: true, repository: 'libssl', tag: 'v1' });
    const p2 = await pushToServer({ file: chain.deltas[0], image: 'libssl:v2', server: server.url, token: RW });
    expect(p2).toMatchObject({ kind: 'delta', parentId: V1, imageId: V2, uploaded: true });
    const p3 = await pushToServer({ file: chain.deltas[1], image: 'libssl:v3', server: server.url, token: RW });
    expect(p3).toMatchObject({ kind: 'delta', parentId: V2, imageId: V3, uploaded: true });
    const again = await pushToServer({ file: chain.deltas[1], image: 'libssl:v3', server: server.url, token: RW });
    expect(again.uploaded).toBe(false);
    expect(await listDir(server.blobs.blobDir)).toHaveLength(3);
    expect(await listDir(server.blobs.tmpDir)).toEqual([]);
    const tags = JSON.parse((await raw(server.url, 'GET', '/v1/repositories/libssl/tags', { headers: { Authorization: `Bearer ${RO}` } })).body.toString());
    expect(tags.tags.map((t: { tag: string; imageId: string }) => [t.tag, t.imageId])).toEqual([['v1', V1], ['v2', V2], ['v3', V3]]);

    // a server that does not know v2 refuses the v2→v3 delta and keeps nothing
    const other = await D4fsServer.start({ root: join(work, 'srv-other'), listen: '127.0.0.1:0', tokensFile, processMetrics: false });
    try {
      const e = await failure(pushToServer({ file: chain.deltas[1], image: 'libssl:v3', server: other.url, token: RW }));
      expect(e.kind).toBe('FAILED_PRECONDITION');
      expect(e.message).toMatch(/push that image/);
      expect(await listDir(other.blobs.blobDir)).toEqual([]);
      expect(await listDir(other.blobs.tmpDir)).toEqual([]);
    } finally {
      await other.stop(1000);
    }
  });

  test('a client holding v1 pulls v3 as one merged delta that patches to the bytes of v3', async () => {
    const store = await newStore('hold-v1', [chain.full[0]]);
    const r = await pull(store, 'libssl:v3');
    expect(r).toMatchObject({ name: 'libssl:v3', imageId: V3, from: V1, upToDate: false, loaded: false });
    expect(r.files).toHaveLength(1);
    expect(r.files[0]).toMatchObject({ kind: 'delta', merged: true, parentId: V1, imageId: V3, downloaded: true });
    expect(r.bytes).toBe(r.files[0].size);
    const got = store.filePath(r.files[0].rootDigest);
    // exactly the composition of the two pushed deltas …
    const local = join(work, 'merged-local.cdimg');
    await mergeDeltas({ deltas: chain.deltas, out: local });
    expect(await sameBytes(got, local)).toBe(true);
    // … and smaller than the two deltas together
    const [s12, s23] = await Promise.all(chain.deltas.map(async (p) => (await fsp.stat(p)).size));
    expect(r.bytes).toBeLessThan(s12 + s23);
    // v1 + merged delta rebuilds v3 byte for byte
    const rebuilt = join(work, 'rebuilt-v3.cdimg');
    await patchImage({ base: chain.full[0], deltas: [got], out: rebuilt });
    expect(await sameBytes(rebuilt, chain.full[2])).toBe(true);
    expect(store.resolveName('libssl:v3')).toBe(V3);
    // nothing to do the second time
    const again = await pull(store, 'libssl:v3');
    expect(again).toMatchObject({ upToDate: true, bytes: 0 });
  });

  test('a fresh client gets the full image (plus the merged delta for a later version, unless a full one is cheaper)', async () => {
    const s1 = await newStore('fresh-v1');
    const loads: { name: string; imageId: string; namespace?: string }[] = [];
    const loader = async (o: { name: string; imageId: string; namespace?: string }): Promise<never> => {
      loads.push({ name: o.name, imageId: o.imageId, namespace: o.namespace });
      return {} as never;
    };
    const r1 = await pull(s1, 'libssl:v1', { noLoad: false, loader, load: { namespace: 'test' } });
    // the pull hands the stored, tagged image to the containerd loader
    expect(r1.loaded).toBe(true);
    expect(loads).toEqual([{ name: 'libssl:v1', imageId: V1, namespace: 'test' }]);
    expect(r1.files.map((f) => [f.kind, f.merged])).toEqual([['full', false]]);
    expect(r1.from).toBeNull();
    expect(await sameBytes(s1.filePath(r1.files[0].rootDigest), chain.full[0])).toBe(true);

    const s3 = await newStore('fresh-v3');
    const r3 = await pull(s3, 'libssl:v3');
    expect(r3.files.map((f) => [f.kind, f.merged])).toEqual([['full', false], ['delta', true]]);
    expect(await s3.verifyChain(V3)).toHaveLength(2);

    // with a full v3 on the server, the fresh client takes just that
    await pushToServer({ file: chain.full[2], image: 'libssl:v3', server: server.url, token: RW });
    const s3b = await newStore('fresh-v3-full');
    const r3b = await pull(s3b, 'libssl:v3');
    expect(r3b.files.map((f) => [f.kind, f.imageId])).toEqual([['full', V3]]);
    expect(await sameBytes(s3b.filePath(r3b.files[0].rootDigest), chain.full[2])).toBe(true);
  });

  test('merge strategy auto: the first pull gets the composed merge at once, later pulls a background rediff that is smaller and patches to v3', async () => {
    const s = await D4fsServer.start({ root: join(work, 'srv-auto'), listen: '127.0.0.1:0', tokensFile, readOpen: true, processMetrics: false });
    try {
      await pushToServer({ file: chain.full[0], image: 'libssl:v1', server: s.url, token: RW });
      await pushToServer({ file: chain.deltas[0], image: 'libssl:v2', server: s.url, token: RW });
      await pushToServer({ file: chain.deltas[1], image: 'libssl:v3', server: s.url, token: RW });
      const first = await pullFromServer({ image: 'libssl:v3', server: s.url, store: await newStore('auto-1', [chain.full[0]]), noLoad: true });
      await s.mergesIdle();
      const store = await newStore('auto-2', [chain.full[0]]);
      const second = await pullFromServer({ image: 'libssl:v3', server: s.url, store, noLoad: true });
      expect(second.files[0].merged).toBe(true);
      expect(second.bytes).toBeLessThan(first.bytes);
      // the re-diffed merge is exactly the direct v1→v3 delta
      const direct = join(work, 'direct-v1-v3.cdimg');
      await diffImages({ oldPath: chain.full[0], newPath: chain.full[2], out: direct });
      expect(await sameBytes(store.filePath(second.files[0].rootDigest), direct)).toBe(true);
      const rebuilt = join(work, 'rebuilt-auto.cdimg');
      await patchImage({ base: chain.full[0], deltas: [store.filePath(second.files[0].rootDigest)], out: rebuilt });
      expect(await sameBytes(rebuilt, chain.full[2])).toBe(true);
      // the composed merge stays downloadable (a download of it may be resuming)
      expect((await raw(s.url, 'HEAD', `/v1/blobs/${first.files[0].rootDigest}`)).status).toBe(200);
    } finally {
      await s.stop(1000);
    }
  });

  test('blobs: ETag, Range, If-Range, If-None-Match, HEAD', async () => {
    const root = await rootOf(chain.full[0]);
    const whole = await fsp.readFile(chain.full[0]);
    const auth = { Authorization: `Bearer ${RO}` };
    const path = `/v1/blobs/${root}`;
    const part = await raw(server.url, 'GET', path, { headers: { ...auth, Range: 'bytes=100-199' } });
    expect(part.status).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes 100-199/${whole.length}`);
    expect(part.headers.etag).toBe(`"${root}"`);
    expect(part.body.equals(whole.subarray(100, 200))).toBe(true);
    const tail = await raw(server.url, 'GET', path, { headers: { ...auth, Range: 'bytes=-10' } });
    expect(tail.body.equals(whole.subarray(whole.length - 10))).toBe(true);
    const stale = await raw(server.url, 'GET', path, { headers: { ...auth, Range: 'bytes=100-199', 'If-Range': '"sha256:other"' } });
    expect(stale.status).toBe(200);
    expect(stale.body.length).toBe(whole.length);
    expect((await raw(server.url, 'GET', path, { headers: { ...auth, Range: `bytes=${whole.length}-` } })).status).toBe(416);
    expect((await raw(server.url, 'GET', path, { headers: { ...auth, 'If-None-Match': `"${root}"` } })).status).toBe(304);
    const head = await raw(server.url, 'HEAD', path, { headers: auth });
    expect(head.status).toBe(200);
    expect(Number(head.headers['content-length'])).toBe(whole.length);
    expect(head.headers['x-d4fs-file-digest']).toMatch(/^sha256:[a-f0-9]{64}$/);
    expect((await raw(server.url, 'GET', `/v1/blobs/sha256:${'0'.repeat(64)}`, { headers: auth })).status).toBe(404);
  });

  test('a download cut mid-way resumes on the next run; a damaged partial download is detected and refetched', async () => {
    const proxy = await startThrottlingProxy(new URL(server.url).host, 40); // 5 MB/s: the 9.4 MiB full image takes ~2 s
    try {
      const store = await newStore('resume');
      const e = await failure(
        pullFromServer({ image: 'libssl:v1', server: `http://${proxy.host}`, store, token: RO, noLoad: true, retries: 0, onProgress: onceAfter(2_000_000, () => proxy.cut()) }),
      );
      expect(e.kind).toBe('UNAVAILABLE');
      const root = await rootOf(chain.full[0]);
      const partSize = (await fsp.stat(partOf(store, root))).size;
      expect(partSize).toBeGreaterThan(1_000_000); // bytes reported may still be in flight to the part file when the link is cut
      expect(partSize).toBeLessThan(9_000_000);
      expect(store.heldImageIds()).toEqual([]);
      const r = await pull(store, 'libssl:v1');
      expect(r.files[0]).toMatchObject({ resumedFrom: partSize, refetched: false });
      expect(r.bytes).toBe(r.files[0].size - partSize);
      expect(await sameBytes(store.filePath(root), chain.full[0])).toBe(true);

      // a partial download damaged on disk: the digest check catches it and the blob comes again
      const store2 = await newStore('damaged-part');
      const part = partOf(store2, root);
      await fsp.mkdir(dirname(part), { recursive: true });
      const bytes = (await fsp.readFile(chain.full[0])).subarray(0, 3_000_000);
      bytes[1_000_000] ^= 0xff;
      await fsp.writeFile(part, bytes);
      const r2 = await pull(store2, 'libssl:v1');
      expect(r2.files[0]).toMatchObject({ resumedFrom: 3_000_000, refetched: true });
      expect(await sameBytes(store2.filePath(root), chain.full[0])).toBe(true);
      expect(await listDir(dirname(part))).toEqual([]);
    } finally {
      await proxy.close();
    }
  });

  test('killing the server mid-download: the next pull (ctr-cli) resumes; SIGTERM stops it cleanly', async () => {
    const root = join(work, 'srv-child');
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const start = async (): Promise<ChildProcess> => {
      const child = spawn(process.execPath, [SERVER_BIN, '--root', root, '--listen', `127.0.0.1:${port}`, '--tokens', tokensFile, '--log-level', 'warn'], { stdio: 'ignore' });
      for (let i = 0; i < 100; i++) {
        const ok = await raw(url, 'GET', '/healthz').then((r) => r.status === 200, () => false);
        if (ok) return child;
        await new Promise((r) => setTimeout(r, 100));
      }
      child.kill('SIGKILL');
      throw new Error('d4fs-server did not start');
    };
    let child = await start();
    try {
      const cli = await run(process.execPath, [CLI, 'push', '--cdimg', chain.full[0], '--image', 'libssl:v1', '--server', url, '--json'], { env: { ...process.env, D4FS_TOKEN: RW } });
      expect(JSON.parse(cli.stdout)).toMatchObject({ kind: 'full', uploaded: true, imageId: V1 });
      const proxy = await startThrottlingProxy(`127.0.0.1:${port}`, 40);
      const storeDir = join(work, 'clients', 'killed');
      const store = await LocalStore.open(storeDir);
      try {
        const e = await failure(
          pullFromServer({ image: 'libssl:v1', server: `http://${proxy.host}`, store, token: RO, noLoad: true, retries: 0, onProgress: onceAfter(2_000_000, () => child.kill('SIGKILL')) }),
        );
        expect(e.kind).toBe('UNAVAILABLE');
      } finally {
        store.close();
        await proxy.close();
      }
      await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(undefined) : child.once('exit', r)));
      child = await start();
      const out = await run(process.execPath, [CLI, 'pull', '--image', 'libssl:v1', '--server', url, '--store', storeDir, '--no-load', '--json', '--token', RO]);
      const r = JSON.parse(out.stdout) as PullResult;
      expect(r.files[0].resumedFrom).toBeGreaterThan(1_000_000);
      expect(r.bytes).toBe(r.files[0].size - r.files[0].resumedFrom);
      const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      // wrong tokens through the CLI: exit codes of UNAUTHENTICATED and PERMISSION_DENIED
      child = await start();
      const code = (args: string[]) => run(process.execPath, [CLI, ...args]).then(() => 0, (err: { code: number }) => err.code);
      expect(await code(['push', '--cdimg', chain.deltas[0], '--image', 'libssl:v2', '--server', url, '--token', 'x'.repeat(20)])).toBe(9);
      expect(await code(['push', '--cdimg', chain.deltas[0], '--image', 'libssl:v2', '--server', url, '--token', RO])).toBe(10);
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('a damaged blob on the server is refused by the client and nothing is stored', async () => {
    const root = await rootOf(chain.full[0]);
    const blob = server.blobs.pathOf(root);
    const fh = await fsp.open(blob, 'r+');
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, 5_000_000);
    await fh.write(Buffer.from([one[0] ^ 0x01]), 0, 1, 5_000_000);
    try {
      const store = await newStore('victim');
      const e = await failure(pull(store, 'libssl:v1'));
      expect(e.kind).toBe('CORRUPT');
      expect(e.message).toMatch(/damaged/);
      expect(store.heldImageIds()).toEqual([]);
      expect(await listDir(dirname(partOf(store, root)))).toEqual([]);
    } finally {
      await fh.write(one, 0, 1, 5_000_000);
      await fh.close();
    }
  });

  test('401 and 403: missing, wrong and read-only tokens change nothing; bad names and sizes are refused', async () => {
    const before = server.catalogue.stats();
    const blobsBefore = await listDir(server.blobs.blobDir);
    const fresh = await newStore('no-auth');
    expect((await failure(pushToServer({ file: chain.deltas[0], image: 'libssl:v9', server: server.url }))).kind).toBe('UNAUTHENTICATED');
    expect((await failure(pushToServer({ file: chain.deltas[0], image: 'libssl:v9', server: server.url, token: 'not-a-valid-token-at-all' }))).kind).toBe('UNAUTHENTICATED');
    expect((await failure(pushToServer({ file: chain.deltas[0], image: 'libssl:v9', server: server.url, token: RO }))).kind).toBe('PERMISSION_DENIED');
    expect((await failure(pullFromServer({ image: 'libssl:v1', server: server.url, store: fresh, noLoad: true }))).kind).toBe('UNAUTHENTICATED');
    expect((await failure(pullFromServer({ image: 'libssl:v1', server: server.url, store: fresh, noLoad: true, token: 'x'.repeat(16) }))).kind).toBe('UNAUTHENTICATED');
    const ro = { Authorization: `Bearer ${RO}` };
    const rw = { Authorization: `Bearer ${RW}` };
    const tagPut = await raw(server.url, 'PUT', '/v1/repositories/libssl/tags/v1', { headers: ro, body: Buffer.from(JSON.stringify({ imageId: V3 })) });
    expect(tagPut.status).toBe(403);
    expect((await raw(server.url, 'DELETE', '/v1/repositories/libssl/tags/v1', { headers: ro })).status).toBe(403);
    const anon = await raw(server.url, 'DELETE', '/v1/repositories/libssl/tags/v1');
    expect(anon.status).toBe(401);
    expect(anon.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(JSON.parse(anon.body.toString()).error.kind).toBe('UNAUTHENTICATED');
    // names, digests, sizes
    expect((await raw(server.url, 'GET', '/v1/repositories/LibSSL/tags', { headers: ro })).status).toBe(400);
    expect((await raw(server.url, 'GET', '/v1/repositories/libssl/tags/bad:tag', { headers: ro })).status).toBe(400);
    expect((await raw(server.url, 'GET', '/v1/repositories/a/../../etc/tags', { headers: ro })).status).toBe(400);
    expect((await raw(server.url, 'GET', '/v1/blobs/sha256:..%2f..%2fcatalogue.db', { headers: ro })).status).toBe(400);
    const huge = await raw(server.url, 'PUT', `/v1/repositories/libssl/blobs/sha256:${'1'.repeat(64)}`, { headers: { ...rw, 'Content-Length': String(2 ** 30), Expect: '100-continue' } });
    expect(huge.status).toBe(400);
    expect(JSON.parse(huge.body.toString()).error.kind).toBe('HOSTILE');
    const bigJson = await raw(server.url, 'POST', '/v1/repositories/libssl/pull', { headers: ro, body: Buffer.alloc(2 * 2 ** 20, 0x20) });
    expect(bigJson.status).toBe(400);
    const wrongDigest = await raw(server.url, 'PUT', `/v1/repositories/libssl/blobs/sha256:${'2'.repeat(64)}`, { headers: rw, body: await fsp.readFile(chain.deltas[0]) });
    expect(wrongDigest.status).toBe(422);
    const junk = await raw(server.url, 'PUT', `/v1/repositories/libssl/blobs/sha256:${'3'.repeat(64)}`, { headers: rw, body: Buffer.from('not a cdimg') });
    expect(junk.status).toBe(422);
    expect((await raw(server.url, 'GET', '/healthz')).status).toBe(200);
    // nothing changed
    expect(server.catalogue.stats()).toEqual(before);
    expect(await listDir(server.blobs.blobDir)).toEqual(blobsBefore);
    expect(await listDir(server.blobs.tmpDir)).toEqual([]);
    expect(server.catalogue.tag('libssl', 'v1').imageId).toBe(V1);
  });

  test('32 concurrent pulls of mixed versions all succeed and verify; identical chains share one merge', async () => {
    await server.runGc({ mergeTtlMs: 0, graceMs: 3_600_000 }); // empty the merge cache
    expect(server.catalogue.merges()).toEqual([]);
    const metric = async (outcome: string): Promise<number> => {
      const m = (await server.metrics.mergeRequests.get()).values.find((v) => v.labels.outcome === outcome);
      return m?.value ?? 0;
    };
    const miss0 = await metric('miss');
    const plans: { start: string[]; image: string; want: string }[] = [
      { start: [chain.full[0]], image: 'libssl:v3', want: V3 },
      { start: [], image: 'libssl:v2', want: V2 },
      { start: [chain.full[0], chain.deltas[0]], image: 'libssl:v3', want: V3 },
      { start: [chain.full[0]], image: 'libssl:v2', want: V2 },
    ];
    const jobs = await Promise.all(Array.from({ length: 32 }, async (_, i) => ({ store: await newStore(`conc-${i}`, plans[i % 4].start), ...plans[i % 4] })));
    const results = await Promise.all(jobs.map((j) => pull(j.store, j.image)));
    for (const [i, r] of results.entries()) {
      const j = jobs[i];
      expect(r.imageId).toBe(j.want);
      expect(j.store.resolveName(j.image)).toBe(j.want);
      await j.store.verifyChain(j.want);
    }
    // the eight v1→v3 pulls asked for the same chain: one merge
    expect((await metric('miss')) - miss0).toBe(1);
    expect(results.filter((_r, i) => i % 4 === 0).every((r) => r.files.length === 1 && r.files[0].merged)).toBe(true);
  });

  test('/metrics and /healthz', async () => {
    const m = await raw(server.url, 'GET', '/metrics');
    expect(m.status).toBe(200);
    const text = m.body.toString();
    expect(text).toMatch(/d4fs_http_requests_total\{method="POST",route="pull",status="200"\} \d+/);
    expect(text).toMatch(/d4fs_merge_cache_requests_total\{outcome="hit"\} [1-9]/);
    expect(text).toMatch(/d4fs_http_bytes_sent_total\{route="blob"\} [1-9]/);
    expect(text).toMatch(/d4fs_http_request_duration_seconds_bucket/);
    expect(text).toMatch(/d4fs_catalogue_objects\{type="files"\} 4/);
    expect(JSON.parse((await raw(server.url, 'GET', '/healthz')).body.toString())).toEqual({ status: 'ok' });
  });

  test('shutdown: an upload in flight finishes within the grace, or is cut and leaves nothing behind', async () => {
    const root = join(work, 'srv-stop');
    const body = await fsp.readFile(chain.full[0]);
    const digest = await rootOf(chain.full[0]);
    const startUpload = (url: string): { req: http.ClientRequest; done: Promise<number> } => {
      const req = http.request(new URL(`/v1/repositories/libssl/blobs/${digest}`, url), { method: 'PUT', headers: { Authorization: `Bearer ${RW}`, 'Content-Length': String(body.length) }, agent: false });
      const done = new Promise<number>((resolve) => {
        req.on('response', (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', () => resolve(-1));
      });
      req.write(body.subarray(0, 4_000_000));
      return { req, done };
    };
    const waitForTemp = async (s: D4fsServer): Promise<void> => {
      for (let i = 0; i < 100 && (await listDir(s.blobs.tmpDir)).length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    };
    // cut: the grace is over before the body is
    let s = await D4fsServer.start({ root, listen: '127.0.0.1:0', tokensFile, processMetrics: false });
    const cut = startUpload(s.url);
    await waitForTemp(s);
    await s.stop(200);
    expect(await cut.done).toBe(-1);
    expect(await listDir(s.blobs.tmpDir)).toEqual([]);
    expect(await listDir(s.blobs.blobDir)).toEqual([]);
    // finished: the rest of the body arrives during the grace and lands
    s = await D4fsServer.start({ root, listen: '127.0.0.1:0', tokensFile, processMetrics: false });
    const fin = startUpload(s.url);
    await waitForTemp(s);
    const stopping = s.stop(10_000);
    fin.req.end(body.subarray(4_000_000));
    expect(await fin.done).toBe(201);
    await stopping;
    expect(await listDir(s.blobs.blobDir)).toEqual([`${digest.slice(7)}.cdimg`]);
    const cat = Catalogue.open(join(root, 'catalogue.db'));
    expect(cat.file(digest)?.imageId).toBe(V1);
    cat.close();
  });

  test('TLS: HTTPS with a certificate the client trusts; refused without it', async () => {
    const key = join(work, 'tls.key');
    const cert = join(work, 'tls.crt');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const s = await D4fsServer.start({ root: join(work, 'srv'), listen: '127.0.0.1:0', tokensFile, tls: { cert, key }, processMetrics: false });
    try {
      expect(s.url).toMatch(/^https:/);
      const store = await newStore('tls', [chain.full[0]]);
      const r = await pullFromServer({ image: 'libssl:v2', server: s.url, store, token: RO, noLoad: true, caFile: cert });
      expect(r.imageId).toBe(V2);
      const e = await failure(pullFromServer({ image: 'libssl:v2', server: s.url, store: await newStore('tls-untrusted'), token: RO, noLoad: true }));
      expect(e.kind).toBe('UNAVAILABLE');
      expect(e.message).toMatch(/certificate/);
    } finally {
      await s.stop(1000);
    }
  });

  test('gc: files leading to no tag, stale merges, orphan blobs and temp files go; what tags need stays', async () => {
    const rw = { Authorization: `Bearer ${RW}` };
    expect((await raw(server.url, 'DELETE', '/v1/repositories/libssl/tags/v3', { headers: rw })).status).toBe(200);
    const orphan = join(server.blobs.blobDir, `${'e'.repeat(64)}.cdimg`);
    const temp = join(server.blobs.tmpDir, 'upload-1-stale.part');
    await fsp.writeFile(orphan, 'orphan');
    await fsp.writeFile(temp, 'stale');
    const past = new Date(Date.now() - 10_000);
    await fsp.utimes(orphan, past, past);
    await fsp.utimes(temp, past, past);
    const dry = await server.runGc({ graceMs: 0, dryRun: true });
    expect(await listDir(server.blobs.blobDir)).toContain(`${'e'.repeat(64)}.cdimg`);
    const r = (await server.runGc({ graceMs: 0 }))!;
    expect(r).toEqual({ ...(dry as object), dryRun: false, images: 1 });
    // v3's delta and full image lead to no tag now; v1 (tagged) and v1→v2 (tagged v2) stay
    expect(r.files).toHaveLength(2);
    expect(r.orphanBlobs).toEqual([`sha256:${'e'.repeat(64)}`]);
    expect(r.temps).toBe(1);
    expect(server.catalogue.merges().every((m) => m.imageId !== V3)).toBe(true);
    expect(server.catalogue.files().map((f) => f.imageId).sort()).toEqual([V1, V2].sort());
    const s = await newStore('after-gc');
    expect((await pull(s, 'libssl:v2')).imageId).toBe(V2);
    expect((await failure(pull(s, 'libssl:v3'))).kind).toBe('NOT_FOUND');
  });
});

describe('server client: where the token may go, and where it comes from', () => {
  const T = newToken();

  test('a token goes over plain http:// only to loopback hosts, unless insecureHttp; https and token-less clients anywhere', () => {
    for (const url of ['http://127.0.0.1:8081', 'http://127.9.8.7:1', 'http://localhost:8081', 'http://LOCALHOST.:1', 'http://[::1]:8081', 'http://[::ffff:127.0.0.1]:1', 'http://2130706433:1']) {
      expect(() => new ServerClient(url, { token: T }).close()).not.toThrow();
    }
    for (const url of ['http://example.com:8081', 'http://10.0.0.1:8081', 'http://192.0.2.1', 'http://[fe80::1]:1', 'http://[::ffff:10.0.0.1]:1', 'http://127.0.0.1.nip.io:1', 'http://localhost.example.com:1']) {
      let e: unknown;
      try {
        new ServerClient(url, { token: T });
      } catch (x) {
        e = x;
      }
      expect(e).toMatchObject({ kind: 'INVALID_ARGUMENT' });
      expect((e as Error).message).toMatch(/plain http.*--insecure-http/);
      expect((e as Error).message).not.toContain(T);
      expect(() => new ServerClient(url, { token: T, insecureHttp: true }).close()).not.toThrow();
      expect(() => new ServerClient(url, {}).close()).not.toThrow();
      expect(() => new ServerClient(url.replace('http:', 'https:'), { token: T }).close()).not.toThrow();
    }
    expect(isLoopbackHost('127.0.0.1')).toBe(true);
    expect(isLoopbackHost('128.0.0.1')).toBe(false);
    expect(isLoopbackHost('[0:0:0:0:0:0:0:1]')).toBe(true);
  });

  test('refused before any request is sent (push and pull, library and CLI); sent with --insecure-http', async () => {
    // a listener on a non-loopback address of this machine, if it has one; else an address nothing answers on
    const ext = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
    const seen: (string | undefined)[] = [];
    const trap = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(404, { 'Content-Type': 'application/json' }).end(JSON.stringify({ error: { kind: 'NOT_FOUND', message: 'trap' } }));
    });
    await new Promise<void>((r) => trap.listen(0, ext ?? '127.0.0.1', r));
    const url = ext ? `http://${ext}:${(trap.address() as import('node:net').AddressInfo).port}` : 'http://192.0.2.1:9';
    try {
      const refusedPush = await failure(pushToServer({ file: chain.deltas[0], image: 'libssl:v2', server: url, token: T }));
      expect(refusedPush.kind).toBe('INVALID_ARGUMENT');
      const refusedPull = await failure(pullFromServer({ image: 'libssl:v1', server: url, store: await newStore('insecure'), token: T, noLoad: true }));
      expect(refusedPull.kind).toBe('INVALID_ARGUMENT');
      const cli = await run(process.execPath, [CLI, 'push', '--cdimg', chain.deltas[0], '--image', 'libssl:v2', '--server', url], { env: { ...process.env, D4FS_TOKEN: T } }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      expect(cli.code).toBe(2);
      expect(cli.stderr).toMatch(/plain http.*--insecure-http/);
      expect(cli.stderr).not.toContain(T);
      expect(seen).toEqual([]); // nothing reached the listener
      if (ext) {
        // the user's explicit choice: the request goes, with the token
        const e = await failure(pullFromServer({ image: 'libssl:v1', server: url, store: await newStore('insecure-ok'), token: T, noLoad: true, insecureHttp: true }));
        expect(e.kind).toBe('NOT_FOUND');
        const out = await run(process.execPath, [CLI, 'pull', '--image', 'libssl:v1', '--server', url, '--store', join(work, 'clients', 'insecure-cli'), '--no-load', '--insecure-http', '--token', T]).catch((x: { code: number }) => x);
        expect((out as { code: number }).code).toBe(3);
        expect(seen).toEqual([`Bearer ${T}`, `Bearer ${T}`]);
      }
    } finally {
      trap.close();
    }
  });

  test('--token-file takes the line `ctr-cli serve token` prints, or a bare token; D4FS_TOKEN works too', async () => {
    // token text
    expect(parseTokenText(`rw ${T} ci\n`, 'f')).toBe(T);
    expect(parseTokenText(`${T}\n`, 'f')).toBe(T);
    expect(parseTokenText(`# for the CI\n\n  ro   ${T}  \n`, 'f')).toBe(T);
    for (const bad of ['', '# only a comment\n', `rw ${T}\nro ${T}\n`, `xx ${T} name`, 'ro', 'rw bad\u0001token']) {
      expect(() => parseTokenText(bad, 'f')).toThrow(expect.objectContaining({ kind: 'INVALID_ARGUMENT' }));
    }
    // what push and pull read: --token, else --token-file, else $D4FS_TOKEN (bare or as a line)
    const lineFile = join(work, 'token-line');
    const bareFile = join(work, 'token-bare');
    const line = (await run(process.execPath, [CLI, 'serve', 'token', '--access', 'rw', '--name', 'ci'])).stdout;
    const minted = line.split(/\s+/)[1];
    await fsp.writeFile(lineFile, line, { mode: 0o600 });
    await fsp.writeFile(bareFile, `${minted}\n`, { mode: 0o600 });
    expect(await tokenOf({ tokenFile: lineFile })).toBe(minted);
    expect(await tokenOf({ tokenFile: bareFile })).toBe(minted);
    expect(await tokenOf({ token: T, tokenFile: lineFile })).toBe(T);
    expect(await failure(tokenOf({ tokenFile: join(work, 'no-such-token-file') }))).toMatchObject({ kind: 'INVALID_ARGUMENT' });
    const saved = process.env.D4FS_TOKEN;
    try {
      process.env.D4FS_TOKEN = `ro ${T} x`;
      expect(await tokenOf({})).toBe(T);
      process.env.D4FS_TOKEN = T;
      expect(await tokenOf({})).toBe(T);
      delete process.env.D4FS_TOKEN;
      expect(await tokenOf({})).toBeUndefined();
    } finally {
      if (saved === undefined) delete process.env.D4FS_TOKEN;
      else process.env.D4FS_TOKEN = saved;
    }
    // end to end: the server learns the minted line (its tokens file, reloaded), the CLI pushes with the same line as --token-file
    await fsp.appendFile(tokensFile, line);
    await server.reloadTokens();
    const pushed = await run(process.execPath, [CLI, 'push', '--cdimg', chain.full[0], '--image', 'libssl:v1', '--server', server.url, '--token-file', lineFile, '--json']);
    expect(JSON.parse(pushed.stdout)).toMatchObject({ kind: 'full', imageId: V1, repository: 'libssl', tag: 'v1' });
    const pulled = await run(process.execPath, [CLI, 'pull', '--image', 'libssl:v1', '--server', server.url, '--store', join(work, 'clients', 'env-token'), '--no-load', '--json'], {
      env: { ...process.env, D4FS_TOKEN: `ro ${RO} puller` },
    });
    expect(JSON.parse(pulled.stdout)).toMatchObject({ imageId: V1 });
  });
});
