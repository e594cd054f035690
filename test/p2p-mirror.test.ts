/**
 * The d4fs-peer's mirror face and cache, in-process, without the swarm (no
 * tracker: the BitTorrent engine is never loaded, so this runs inside jest):
 * the OCI API containerd uses (manifests by tag and digest with their
 * headers, blobs with Range, 206/416, HEAD, OCI error JSON), the last
 * manifest of a tag served when the registry is down, the registry client
 * reading through a mirror (and around a dead one), Range reads of the
 * registry client, the blob cache's verification and LRU collection, and
 * hosts.toml written and removed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { D4fsError } from '../src/errors';
import { RegistryClient } from '../src/oci/registry/client';
import { BlobCache } from '../src/p2p/cache';
import { installHostsToml } from '../src/p2p/hosts';
import { PeerDaemon } from '../src/p2p/peer';
import { buildOciLayout, freePort, pushOciLayout, startRegistry, TestRegistry } from './helpers/registry';

const log = pino({ level: 'silent' });
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function get(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('d4fs-peer mirror (cache only, no swarm)', () => {
  let reg: TestRegistry;
  let tmp: string;
  let peer: PeerDaemon;
  let layerDigest: string;
  let layerBytes: Buffer;
  let manifestDigest: string;
  const big = randomBytes(300_000);

  beforeAll(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-p2p-mirror-'));
    reg = await startRegistry();
    const layout = path.join(tmp, 'layout');
    await buildOciLayout(layout, 'v1', { 'data/big.bin': big, 'etc/hello': 'hello\n' });
    await pushOciLayout(layout, 'v1', reg.host, 'fleet/app:v1');
    const index = JSON.parse(await fsp.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    manifestDigest = index.manifests[0].digest;
    const manifest = JSON.parse(await fsp.readFile(path.join(layout, 'blobs', 'sha256', manifestDigest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
    layerDigest = manifest.layers[0].digest;
    layerBytes = await fsp.readFile(path.join(layout, 'blobs', 'sha256', layerDigest.slice(7)));
    peer = await PeerDaemon.start({
      cacheDir: path.join(tmp, 'cache'),
      cacheBytes: 1 << 30,
      listen: { host: '127.0.0.1', port: 0 },
      registries: [reg.host],
      servers: [],
      hostsDir: path.join(tmp, 'certs.d'),
      registryOptions: () => ({}),
      log,
    });
  }, 120_000);

  afterAll(async () => {
    await peer?.close();
    await reg?.stop();
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  test('GET /v2/ answers as a registry', async () => {
    const r = await get(`${peer.url}/v2/`);
    expect(r.status).toBe(200);
    expect(r.headers['docker-distribution-api-version']).toBe('registry/2.0');
  });

  test('a manifest by tag and by digest, with its type, length and digest headers', async () => {
    const byTag = await get(`${peer.url}/v2/fleet/app/manifests/v1?ns=${reg.host}`, { Accept: 'application/vnd.oci.image.manifest.v1+json' });
    expect(byTag.status).toBe(200);
    expect(byTag.headers['content-type']).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(byTag.headers['docker-content-digest']).toBe(manifestDigest);
    expect(Number(byTag.headers['content-length'])).toBe(byTag.body.length);
    expect(sha(byTag.body)).toBe(manifestDigest);
    const head = await get(`${peer.url}/v2/fleet/app/manifests/v1?ns=${reg.host}`, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['docker-content-digest']).toBe(manifestDigest);
    expect(head.body.length).toBe(0);
    const byDigest = await get(`${peer.url}/v2/fleet/app/manifests/${manifestDigest}?ns=${reg.host}`);
    expect(byDigest.body.equals(byTag.body)).toBe(true);
  });

  test('blobs whole and by Range (206), past the end (416), HEAD without fetching', async () => {
    const head = await get(`${peer.url}/v2/fleet/app/blobs/${layerDigest}?ns=${reg.host}`, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(Number(head.headers['content-length'])).toBe(layerBytes.length);
    const whole = await get(`${peer.url}/v2/fleet/app/blobs/${layerDigest}?ns=${reg.host}`);
    expect(whole.status).toBe(200);
    expect(sha(whole.body)).toBe(layerDigest);
    expect(whole.headers['docker-content-digest']).toBe(layerDigest);
    const part = await get(`${peer.url}/v2/fleet/app/blobs/${layerDigest}?ns=${reg.host}`, { Range: 'bytes=100-199' });
    expect(part.status).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes 100-199/${layerBytes.length}`);
    expect(part.body.equals(layerBytes.subarray(100, 200))).toBe(true);
    const tail = await get(`${peer.url}/v2/fleet/app/blobs/${layerDigest}?ns=${reg.host}`, { Range: 'bytes=-10' });
    expect(tail.body.equals(layerBytes.subarray(layerBytes.length - 10))).toBe(true);
    const beyond = await get(`${peer.url}/v2/fleet/app/blobs/${layerDigest}?ns=${reg.host}`, { Range: `bytes=${layerBytes.length + 5}-` });
    expect(beyond.status).toBe(416);
    expect(beyond.headers['content-range']).toBe(`bytes */${layerBytes.length}`);
    const st = (await get(`${peer.url}/status`)).body.toString();
    const status = JSON.parse(st) as { cache: { blobs: number }; totals: { fromOrigin: number } };
    expect(status.cache.blobs).toBeGreaterThanOrEqual(2); // the manifest and the layer
    expect(status.totals.fromOrigin).toBeGreaterThanOrEqual(layerBytes.length);
  });

  test('OCI error JSON: unknown blob, unknown tag, a registry not mirrored, a bad digest, a write', async () => {
    const missing = await get(`${peer.url}/v2/fleet/app/blobs/sha256:${'0'.repeat(64)}?ns=${reg.host}`);
    expect(missing.status).toBe(404);
    expect((JSON.parse(missing.body.toString()) as { errors: { code: string }[] }).errors[0].code).toBe('BLOB_UNKNOWN');
    const tag = await get(`${peer.url}/v2/fleet/app/manifests/nope?ns=${reg.host}`);
    expect(tag.status).toBe(404);
    expect((JSON.parse(tag.body.toString()) as { errors: { code: string }[] }).errors[0].code).toBe('MANIFEST_UNKNOWN');
    const other = await get(`${peer.url}/v2/fleet/app/manifests/v1?ns=registry.example`);
    expect(other.status).toBe(404);
    expect(other.body.toString()).toContain('does not mirror');
    const bad = await get(`${peer.url}/v2/fleet/app/blobs/sha256:xyz?ns=${reg.host}`);
    expect(bad.status).toBe(400);
    const put = await get(`${peer.url}/v2/fleet/app/blobs/uploads/`, {}, 'POST');
    expect(put.status).toBe(405);
  });

  test('the registry client reads through the mirror, and around it when the mirror is dead', async () => {
    const before = (JSON.parse((await get(`${peer.url}/status`)).body.toString()) as { cache: { blobs: number } }).cache.blobs;
    const via = new RegistryClient(reg.host, { mirror: peer.url });
    const doc = await via.getManifest('fleet/app', 'v1');
    expect(doc.digest).toBe(manifestDigest);
    const parts: Buffer[] = [];
    for await (const c of await via.openBlob('fleet/app', layerDigest)) parts.push(c as Buffer);
    expect(sha(Buffer.concat(parts))).toBe(layerDigest);
    const metrics = (await get(`${peer.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/d4fs_peer_http_requests_total\{route="blob",status="200"\} [1-9]/);
    expect(metrics).toContain(`d4fs_peer_cached_blob_received_bytes{digest="${layerDigest}",source="origin"} ${layerBytes.length}`);
    await via.close();
    const deadPort = await freePort();
    const around = new RegistryClient(reg.host, { mirror: `http://127.0.0.1:${deadPort}` });
    expect((await around.getManifest('fleet/app', 'v1')).digest).toBe(manifestDigest);
    await around.close();
    const after = (JSON.parse((await get(`${peer.url}/status`)).body.toString()) as { cache: { blobs: number } }).cache.blobs;
    expect(after).toBe(before);
  });

  test('Range reads of the registry client (openBlobRange) and a range past the end', async () => {
    const c = new RegistryClient(reg.host);
    const parts: Buffer[] = [];
    for await (const x of await c.openBlobRange('fleet/app', layerDigest, 1000, 1999)) parts.push(x as Buffer);
    expect(Buffer.concat(parts).equals(layerBytes.subarray(1000, 2000))).toBe(true);
    await expect(c.openBlobRange('fleet/app', layerDigest, 10, 5)).rejects.toThrow(/bad byte range/);
    await c.close();
  });

  test('hosts.toml names the mirror for the registry, and goes when the peer stops', async () => {
    const file = path.join(tmp, 'certs.d', reg.host, 'hosts.toml');
    const text = await fsp.readFile(file, 'utf8');
    expect(text).toContain(`server = "http://${reg.host}"`);
    expect(text).toContain(`[host."${peer.url}"]`);
    expect(text).toContain('capabilities = ["pull", "resolve"]');
  });

  test('the last manifest of a tag is served when the registry is down (never 404 for a tag it resolved)', async () => {
    const host = reg.host;
    const url = `${peer.url}/v2/fleet/app/manifests/v1?ns=${host}`;
    expect((await get(url)).status).toBe(200);
    await reg.stop();
    const r = await get(url);
    expect(r.status).toBe(200);
    expect(r.headers['docker-content-digest']).toBe(manifestDigest);
    // a blob it holds is still served; one it does not hold is 503 (unavailable), not 404
    expect((await get(`${peer.url}/v2/fleet/app/blobs/${layerDigest}?ns=${host}`)).status).toBe(200);
    const gone = await get(`${peer.url}/v2/fleet/app/blobs/sha256:${'1'.repeat(64)}?ns=${host}`);
    expect(gone.status).toBe(503);
    await peer.close();
    expect(fs.existsSync(path.join(tmp, 'certs.d', host, 'hosts.toml'))).toBe(false);
    peer = undefined as unknown as PeerDaemon;
    reg = undefined as unknown as TestRegistry;
  });
});

describe('hosts.toml of a registry that had one', () => {
  test('the original is kept aside and put back', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-hosts-'));
    try {
      await fsp.mkdir(path.join(dir, 'registry.example'));
      const own = 'server = "https://registry.example"\n[host."https://mirror.example"]\n  capabilities = ["pull"]\n';
      await fsp.writeFile(path.join(dir, 'registry.example', 'hosts.toml'), own);
      const remove = await installHostsToml(dir, ['registry.example', 'docker.io'], 'http://127.0.0.1:5050', () => undefined);
      const ours = await fsp.readFile(path.join(dir, 'registry.example', 'hosts.toml'), 'utf8');
      expect(ours).toContain('server = "https://registry.example"');
      expect(ours).toContain('[host."http://127.0.0.1:5050"]');
      expect(await fsp.readFile(path.join(dir, 'docker.io', 'hosts.toml'), 'utf8')).toContain('server = "https://registry-1.docker.io"');
      remove();
      expect(await fsp.readFile(path.join(dir, 'registry.example', 'hosts.toml'), 'utf8')).toBe(own);
      expect(fs.existsSync(path.join(dir, 'docker.io'))).toBe(false);
      await expect(installHostsToml(dir, ['../etc'], 'http://127.0.0.1:5050', () => undefined)).rejects.toThrow(/invalid registry name/);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('blob cache', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-cache-'));
  });
  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const put = async (cache: BlobCache, bytes: Buffer): Promise<string> => {
    const d = sha(bytes);
    const tmp = cache.tempPath(d);
    await fsp.writeFile(tmp, bytes);
    await cache.commit(tmp, d, { size: bytes.length });
    return d;
  };

  test('a blob is committed only when its sha256 and size match', async () => {
    const cache = new BlobCache(dir, 1 << 20);
    const bytes = randomBytes(1000);
    const d = sha(bytes);
    const tmp = cache.tempPath(d);
    await fsp.writeFile(tmp, Buffer.concat([bytes.subarray(0, 999), Buffer.from([bytes[999] ^ 1])]));
    const err = await cache.commit(tmp, d, {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe('CORRUPT');
    expect(cache.get(d)).toBeUndefined();
    expect(fs.existsSync(tmp)).toBe(false);
    await put(cache, bytes);
    expect(cache.get(d)?.size).toBe(1000);
    cache.close();
  });

  test('LRU collection down to the limit, never a pinned blob; uncommitted files go at start', async () => {
    const cache = new BlobCache(dir, 2500);
    const a = await put(cache, randomBytes(1000));
    await new Promise((r) => setTimeout(r, 5));
    const b = await put(cache, randomBytes(1000));
    await new Promise((r) => setTimeout(r, 5));
    const c = await put(cache, randomBytes(1000));
    const unpin = cache.pin(a); // the oldest is in use
    const stopped: string[] = [];
    const removed = await cache.collect(async (d) => void stopped.push(d));
    expect(removed).toEqual([b]);
    expect(stopped).toEqual([b]);
    expect(cache.get(a)).toBeDefined();
    expect(cache.get(c)).toBeDefined();
    unpin();
    cache.touch(a);
    await put(cache, randomBytes(1000));
    expect(await cache.collect(async () => undefined)).toEqual([c]);
    await fsp.writeFile(path.join(dir, 'blobs', `sha256-${'2'.repeat(64)}`), 'partial');
    cache.close();
    const again = new BlobCache(dir, 2500);
    expect(fs.existsSync(path.join(dir, 'blobs', `sha256-${'2'.repeat(64)}`))).toBe(false);
    expect(again.all().length).toBe(2);
    again.close();
  });
});
