/**
 * Registry client against a real docker-registry (anonymous and htpasswd) and
 * against a fake registry for the bearer token flow and redirects.
 */
import { failure } from './helpers/pulls';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { D4fsError } from '../src/errors';
import { MT } from '../src/oci/mediatypes';
import { parseRegistryRef } from '../src/oci/ref';
import { RegistryClient } from '../src/oci/registry/client';
import { RegistrySource } from '../src/oci/registry/source';
import type { Descriptor, OciManifest } from '../src/oci/types';
import { digestOf, VerifyingStream } from '../src/util/digest';
import { buildOciLayout, freePort, pushOciLayout, startRegistry, TestRegistry } from './helpers/registry';

// ---------------------------------------------------------------------------
// helpers

interface LocalImage {
  manifestBytes: Buffer;
  manifestDigest: string;
  manifest: OciManifest;
  blob(digest: string): Promise<Buffer>;
}

async function readLayout(dir: string): Promise<LocalImage> {
  const index = JSON.parse(await fsp.readFile(path.join(dir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const blob = (digest: string) => fsp.readFile(path.join(dir, 'blobs', 'sha256', digest.slice(7)));
  const manifestDigest = index.manifests[0].digest;
  const manifestBytes = await blob(manifestDigest);
  return { manifestBytes, manifestDigest, manifest: JSON.parse(manifestBytes.toString()) as OciManifest, blob };
}

/** Read a stream through a VerifyingStream. */
async function readVerified(stream: Readable, desc: Descriptor): Promise<Buffer> {
  const parts: Buffer[] = [];
  await pipeline(stream, new VerifyingStream(desc.digest, `blob ${desc.digest}`, desc.size), async (src: AsyncIterable<unknown>) => {
    for await (const c of src) parts.push(c as Buffer);
  });
  return Buffer.concat(parts);
}

const AUTH_ENV = ['HOME', 'DOCKER_CONFIG', 'REGISTRY_AUTH_FILE', 'XDG_RUNTIME_DIR'];

/** Hide ambient credentials: HOME=home and no auth-file variables. Returns the undo. */
function isolateAuthEnv(home: string): () => void {
  const saved = AUTH_ENV.map((k) => [k, process.env[k]] as const);
  for (const k of AUTH_ENV) delete process.env[k];
  process.env.HOME = home;
  return () => {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}

const tmpDirs: string[] = [];
async function tmpDir(): Promise<string> {
  const d = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-regtest-'));
  tmpDirs.push(d);
  return d;
}
afterAll(async () => {
  await Promise.all(tmpDirs.map((d) => fsp.rm(d, { recursive: true, force: true })));
});

const FILES = {
  'etc/hello.txt': 'hello registry\n',
  'usr/share/data.bin': randomBytes(200 * 1024),
  'usr/bin/tool': '#!/bin/sh\necho tool\n',
};

// ---------------------------------------------------------------------------

describe('docker-registry without auth', () => {
  let reg: TestRegistry;
  let layout: string;
  let image: LocalImage;
  const clients: RegistryClient[] = [];
  const client = (chunkSize?: number): RegistryClient => {
    const c = new RegistryClient(reg.host, {}, { chunkSize });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    reg = await startRegistry();
    layout = path.join(await tmpDir(), 'img');
    await buildOciLayout(layout, 't', FILES);
    await pushOciLayout(layout, 't', reg.host, 'test/img:v1');
    image = await readLayout(layout);
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await reg?.stop();
  });

  test('getRoot and getManifest return the pushed manifest, digest computed from the bytes', async () => {
    const src = new RegistrySource(parseRegistryRef(`${reg.host}/test/img:v1`));
    try {
      expect(src.description).toBe(`docker://${reg.host}/test/img:v1`);
      const root = await src.getRoot();
      expect(root.mediaType).toBe(MT.OCI_MANIFEST);
      expect(root.digest).toBe(digestOf(root.bytes));
      expect(root.digest).toBe(image.manifestDigest);
      expect(root.bytes.equals(image.manifestBytes)).toBe(true);
      const again = await src.getManifest(root.digest);
      expect(again.bytes.equals(root.bytes)).toBe(true);
    } finally {
      await src.close();
    }
    const byDigest = new RegistrySource(parseRegistryRef(`${reg.host}/test/img@${image.manifestDigest}`));
    expect((await byDigest.getRoot()).digest).toBe(image.manifestDigest);
    await byDigest.close();
  });

  test('openBlob streams config and layers that pass VerifyingStream', async () => {
    const src = new RegistrySource(parseRegistryRef(`${reg.host}/test/img:v1`));
    try {
      for (const desc of [image.manifest.config, ...image.manifest.layers]) {
        const got = await readVerified(await src.openBlob(desc), desc);
        expect(got.equals(await image.blob(desc.digest))).toBe(true);
      }
    } finally {
      await src.close();
    }
  });

  test('unknown tag, blob and repository are NOT_FOUND; a wrong size is CORRUPT', async () => {
    const c = client();
    const tag = await failure(c.getManifest('test/img', 'nope'));
    expect(tag.kind).toBe('NOT_FOUND');
    expect(tag.message).toContain('test/img:nope');
    const missing = digestOf('not there');
    expect((await failure(c.openBlob('test/img', missing))).kind).toBe('NOT_FOUND');
    expect(await c.blobExists('test/img', missing)).toBe(false);
    expect((await failure(c.listTags('no/such-repo'))).kind).toBe('NOT_FOUND');
    const config = image.manifest.config;
    const wrongSize = await failure(c.openBlob('test/img', config.digest, config.size + 1));
    expect(wrongSize.kind).toBe('CORRUPT');
  });

  test('a foreign layer the registry lacks is reported with its urls', async () => {
    const src = new RegistrySource(parseRegistryRef(`${reg.host}/test/img:v1`));
    const desc: Descriptor = {
      mediaType: MT.DOCKER_LAYER_FOREIGN_GZIP,
      digest: digestOf('foreign'),
      size: 7,
      urls: ['https://example.invalid/layer.tar.gz'],
    };
    const err = await failure(src.openBlob(desc));
    expect(err.kind).toBe('NOT_FOUND');
    expect(err.message).toContain('foreign layer');
    expect(err.message).toContain('https://example.invalid/layer.tar.gz');
    await src.close();
  });

  test('blobs and manifest pushed with the client (chunked) read back identically; tags list', async () => {
    const c = client(64 * 1024); // the 200 KiB layer goes up in several PATCHes
    const repo = 'copy/img';
    for (const desc of [image.manifest.config, ...image.manifest.layers]) {
      const bytes = await image.blob(desc.digest);
      expect(await c.statBlob(repo, desc.digest)).toBeUndefined();
      expect(await c.pushBlob(repo, desc.digest, desc.size, () => Readable.from([bytes]))).toBe('uploaded');
      expect(await c.statBlob(repo, desc.digest)).toBe(desc.size);
      expect(await c.pushBlob(repo, desc.digest, desc.size, () => Readable.from([bytes]))).toBe('exists');
      const back = await readVerified(await c.openBlob(repo, desc.digest, desc.size), desc);
      expect(back.equals(bytes)).toBe(true);
    }
    expect(image.manifest.layers[0].size).toBeGreaterThan(3 * 64 * 1024);
    for (const tag of ['v2', 'v3', 'latest']) {
      expect(await c.putManifest(repo, tag, image.manifestBytes, MT.OCI_MANIFEST)).toBe(image.manifestDigest);
    }
    expect(await c.putManifest(repo, image.manifestDigest, image.manifestBytes, MT.OCI_MANIFEST)).toBe(image.manifestDigest);
    const doc = await c.getManifest(repo, 'v2');
    expect(doc.bytes.equals(image.manifestBytes)).toBe(true);
    expect(doc.mediaType).toBe(MT.OCI_MANIFEST);
    expect((await c.listTags(repo)).sort()).toEqual(['latest', 'v2', 'v3']);
    expect((await c.listTags(repo, 1)).sort()).toEqual(['latest', 'v2', 'v3']);
    expect(await c.listTags('test/img')).toEqual(['v1']);
  });

  test('pushBlob refuses bytes that do not match the digest or size, and leaves nothing behind', async () => {
    const c = client(1000);
    const real = randomBytes(5000);
    const digest = digestOf(real);
    const tampered = Buffer.from(real);
    tampered[4000] ^= 1;
    const bad = await failure(c.pushBlob('bad/img', digest, real.length, () => Readable.from([tampered])));
    expect(bad.kind).toBe('CORRUPT');
    const short = await failure(c.pushBlob('bad/img', digest, real.length + 10, () => Readable.from([real])));
    expect(short.kind).toBe('CORRUPT');
    expect(await c.blobExists('bad/img', digest)).toBe(false);
    const mismatch = await failure(c.putManifest('bad/img', digestOf('x'), image.manifestBytes, MT.OCI_MANIFEST));
    expect(mismatch.kind).toBe('INVALID_ARGUMENT');
    // an empty blob goes up too (POST + PUT, no PATCH)
    expect(await c.pushBlob('bad/img', digestOf(''), 0, () => Readable.from([]))).toBe('uploaded');
    expect(await c.statBlob('bad/img', digestOf(''))).toBe(0);
  });

  test('mountBlob mounts from another repository of the registry', async () => {
    const c = client();
    const layer = image.manifest.layers[0].digest;
    expect(await c.blobExists('mounted/img', layer)).toBe(false);
    expect(await c.mountBlob('mounted/img', layer, 'test/img')).toBe(true);
    expect(await c.blobExists('mounted/img', layer)).toBe(true);
    expect(await c.mountBlob('mounted/img', digestOf('absent'), 'test/img')).toBe(false);
  });

  test('invalid names are INVALID_ARGUMENT before any request', async () => {
    const c = client();
    expect((await failure(c.getManifest('../etc', 'v1'))).kind).toBe('INVALID_ARGUMENT');
    expect((await failure(c.getManifest('test/img', 'bad tag'))).kind).toBe('INVALID_ARGUMENT');
    expect((await failure(c.openBlob('test/img', 'sha256:1234'))).kind).toBe('INVALID_ARGUMENT');
    const src = new RegistrySource(parseRegistryRef(`${reg.host}/test/img:v1`));
    expect((await failure(src.getManifest('sha256:nothex'))).kind).toBe('INVALID_ARGUMENT');
    await src.close();
  });

  test('bytes damaged in the registry storage are CORRUPT (manifest) or fail VerifyingStream (layer)', async () => {
    const blobFile = (d: string) => path.join(reg.dataDir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', d.slice(7, 9), d.slice(7), 'data');
    const flip = async (file: string, at: number) => {
      const b = await fsp.readFile(file);
      b[at] ^= 0x20;
      await fsp.writeFile(file, b);
    };
    await flip(blobFile(image.manifestDigest), 20);
    const c = client();
    const err = await failure(c.getManifest('test/img', image.manifestDigest));
    expect(err.kind).toBe('CORRUPT');
    expect(err.message).toContain(image.manifestDigest);
    const layer = image.manifest.layers[0];
    await flip(blobFile(layer.digest), 100);
    const verr = await failure(readVerified(await c.openBlob('test/img', layer.digest, layer.size), layer));
    expect(verr.kind).toBe('CORRUPT');
  });

  test('a registry that is not running is UNAVAILABLE', async () => {
    const port = await freePort();
    const c = new RegistryClient(`127.0.0.1:${port}`);
    const err = await failure(c.getManifest('test/img', 'v1'));
    expect(err.kind).toBe('UNAVAILABLE');
    expect(err.message).toContain(`cannot reach registry 127.0.0.1:${port}`);
    await c.close();
  });
});

// ---------------------------------------------------------------------------

describe('docker-registry with htpasswd auth', () => {
  const USER = 'alice';
  const PASS = 'pa:ss word';
  let reg: TestRegistry;
  let image: LocalImage;
  let work: string;
  let restoreEnv: () => void = () => undefined;

  beforeAll(async () => {
    work = await tmpDir();
    restoreEnv = isolateAuthEnv(path.join(work, 'home'));
    reg = await startRegistry({ auth: { user: USER, pass: PASS } });
    const layout = path.join(work, 'img');
    await buildOciLayout(layout, 't', { 'a.txt': 'secret image\n' });
    await pushOciLayout(layout, 't', reg.host, 'private/img:v1', `${USER}:${PASS}`);
    image = await readLayout(layout);
  });
  afterAll(async () => {
    restoreEnv();
    await reg?.stop();
  });

  test('--creds reads and pushes', async () => {
    const c = new RegistryClient(reg.host, { creds: `${USER}:${PASS}` }, { chunkSize: 100 });
    const doc = await c.getManifest('private/img', 'v1');
    expect(doc.digest).toBe(image.manifestDigest);
    const cfg = image.manifest.config;
    const bytes = await image.blob(cfg.digest);
    expect(await c.pushBlob('private/other', cfg.digest, cfg.size, () => Readable.from([bytes]))).toBe('uploaded');
    expect(await c.putManifest('private/other', 'x', Buffer.from('{"schemaVersion":2}'), MT.OCI_MANIFEST).catch((e: D4fsError) => e.kind)).toBe(
      'UNAVAILABLE', // the registry rejects the invalid manifest (400 MANIFEST_INVALID), through auth
    );
    expect(await c.listTags('private/img')).toEqual(['v1']);
    await c.close();
  });

  test('a docker config.json given as authFile works (key with scheme)', async () => {
    const authFile = path.join(work, 'config.json');
    const auth = Buffer.from(`${USER}:${PASS}`).toString('base64');
    await fsp.writeFile(authFile, JSON.stringify({ auths: { 'other.example': { auth: 'eDp5' }, [`http://${reg.host}`]: { auth } } }));
    const src = new RegistrySource(parseRegistryRef(`${reg.host}/private/img:v1`), { authFile });
    const root = await src.getRoot();
    expect(root.digest).toBe(image.manifestDigest);
    const cfg = image.manifest.config;
    expect((await readVerified(await src.openBlob(cfg), cfg)).equals(await image.blob(cfg.digest))).toBe(true);
    await src.close();
  });

  test('$REGISTRY_AUTH_FILE is used when no authFile is given', async () => {
    const file = path.join(work, 'auth.json');
    await fsp.writeFile(file, JSON.stringify({ auths: { [reg.host]: { username: USER, password: PASS } } }));
    process.env.REGISTRY_AUTH_FILE = file;
    try {
      const c = new RegistryClient(reg.host);
      expect((await c.getManifest('private/img', 'v1')).digest).toBe(image.manifestDigest);
      await c.close();
    } finally {
      delete process.env.REGISTRY_AUTH_FILE;
    }
  });

  test('wrong credentials are UNAUTHENTICATED and the message does not leak them', async () => {
    const c = new RegistryClient(reg.host, { creds: `${USER}:wrong-password` });
    const err = await failure(c.getManifest('private/img', 'v1'));
    expect(err.kind).toBe('UNAUTHENTICATED');
    expect(err.message).toBe(`registry ${reg.host}: authentication failed for private/img (check --creds)`);
    expect(err.message).not.toContain('wrong-password');
    await c.close();
  });

  test('no credentials are UNAUTHENTICATED', async () => {
    const c = new RegistryClient(reg.host);
    const err = await failure(c.getManifest('private/img', 'v1'));
    expect(err.kind).toBe('UNAUTHENTICATED');
    expect(err.message).toContain('authentication required for private/img');
    expect((await failure(c.blobExists('private/img', image.manifest.config.digest))).kind).toBe('UNAUTHENTICATED');
    await c.close();
  });
});

// ---------------------------------------------------------------------------
// A fake registry: bearer tokens, redirects to another host, paging, errors.

interface Fake {
  host: string;
  storageHost: string;
  tokenRequests: URL[];
  tokenBodies: string[];
  storageAuth: Array<string | undefined>;
  registryBlobAuth: Array<string | undefined>;
  tokenField: 'token' | 'access_token';
  /** Upload requests seen: "METHOD path?query [Content-Range]". */
  uploads: string[];
  close(): Promise<void>;
}

const FAKE_USER = 'bob';
const FAKE_PASS = 'hunter2';
const REFRESH_TOKEN = 'refresh-me';
const MANIFEST = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.OCI_MANIFEST, config: {}, layers: [] }));
const BLOB = randomBytes(3000);
const TAGS = ['a', 'b', 'c', 'd', 'e'];

function listen(server: http.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** Upload endpoints of lib/up: records every step, answers like distribution does. */
function fakeUpload(fake: Fake, req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
  const chunks: Buffer[] = [];
  req.on('data', (d: Buffer) => chunks.push(d));
  req.on('end', () => {
    const range = req.headers['content-range'];
    fake.uploads.push(`${req.method} ${url.pathname}${url.search}${range ? ` [${range}] ${Buffer.concat(chunks).length}` : ''}`);
    const step = fake.uploads.length;
    if (req.method === 'HEAD') return void res.writeHead(404).end();
    if (req.method === 'PUT') return void res.writeHead(201, { 'Docker-Content-Digest': url.searchParams.get('digest') ?? '' }).end();
    // relative Location with a query that must survive untouched
    res.writeHead(202, { Location: `/v2/lib/up/blobs/uploads/u1?_state=s${step}%3D%3D` }).end();
  });
}

async function startFake(): Promise<Fake> {
  const issued = new Set<string>(['static-token']);
  const fake: Fake = {
    host: '',
    storageHost: '',
    tokenRequests: [],
    tokenBodies: [],
    storageAuth: [],
    registryBlobAuth: [],
    tokenField: 'access_token',
    uploads: [],
    close: async () => undefined,
  };
  const storage = http.createServer((req, res) => {
    fake.storageAuth.push(req.headers.authorization);
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': BLOB.length });
    res.end(BLOB);
  });
  const hung: http.ServerResponse[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', `http://${fake.host}`);
    const challenge = (scope?: string) => {
      const s = scope ? `,scope="${scope}"` : '';
      res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="http://${fake.host}/token",service="fake.test"${s}` });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
    };
    if (url.pathname === '/token') {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        fake.tokenRequests.push(url);
        fake.tokenBodies.push(body);
        const form = new URLSearchParams(body);
        const basicOk = req.headers.authorization === `Basic ${Buffer.from(`${FAKE_USER}:${FAKE_PASS}`).toString('base64')}`;
        const refreshOk = req.method === 'POST' && form.get('grant_type') === 'refresh_token' && form.get('refresh_token') === REFRESH_TOKEN;
        if (!basicOk && !refreshOk) {
          res.writeHead(401).end('{"details":"incorrect username or password"}');
          return;
        }
        const token = `tok-${issued.size}`;
        issued.add(token);
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ [fake.tokenField]: token, expires_in: 300 }));
      });
      return;
    }
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const authed = bearer !== undefined && issued.has(bearer);
    const m = /^\/v2\/lib\/([a-z]+)\/(manifests|blobs|tags)\/(.+)$/.exec(url.pathname);
    if (url.pathname === '/v2/' || !m) return challenge();
    const [, name, kind, rest] = m;
    if (!authed) return challenge(`repository:lib/${name}:pull`);
    if (name === 'up') return fakeUpload(fake, req, res, url);
    if (name === 'denied') {
      res.writeHead(403, { 'Content-Type': 'application/json' }).end('{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}');
    } else if (name === 'broken') {
      res.writeHead(500, { 'Content-Type': 'application/json' }).end('{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}');
    } else if (name === 'slow') {
      hung.push(res); // never answers
    } else if (name === 'stall' && kind === 'blobs') {
      res.writeHead(200, { 'Content-Length': BLOB.length });
      res.write(BLOB.subarray(0, 1000)); // then nothing more
      hung.push(res);
    } else if (name === 'liar') {
      res.writeHead(200, { 'Content-Type': MT.OCI_MANIFEST }).end(MANIFEST);
    } else if (kind === 'manifests') {
      res.writeHead(200, { 'Content-Type': MT.OCI_MANIFEST, 'Docker-Content-Digest': digestOf(MANIFEST) }).end(MANIFEST);
    } else if (kind === 'blobs') {
      fake.registryBlobAuth.push(req.headers.authorization);
      res.writeHead(307, { Location: `http://${fake.storageHost}/store/${rest}?sig=abc` }).end();
    } else {
      const n = Number(url.searchParams.get('n') ?? 2);
      const last = url.searchParams.get('last');
      const start = last ? TAGS.indexOf(last) + 1 : 0;
      const page = TAGS.slice(start, start + n);
      const headers: Record<string, string> = { 'Content-Type': 'application/json' };
      if (start + n < TAGS.length) headers.Link = `</v2/lib/${name}/tags/list?n=${n}&last=${page[page.length - 1]}>; rel="next"`;
      res.writeHead(200, headers).end(JSON.stringify({ name: `lib/${name}`, tags: page }));
    }
  });
  fake.host = `127.0.0.1:${await listen(server)}`;
  fake.storageHost = `localhost:${await listen(storage)}`;
  fake.close = async () => {
    for (const r of hung) r.destroy();
    server.closeAllConnections();
    storage.closeAllConnections();
    await Promise.all([new Promise((r) => server.close(r)), new Promise((r) => storage.close(r))]);
  };
  return fake;
}

describe('bearer token flow (fake registry)', () => {
  let fake: Fake;
  beforeAll(async () => {
    fake = await startFake();
  });
  afterAll(async () => fake?.close());
  beforeEach(() => {
    fake.tokenRequests.length = 0;
    fake.tokenField = 'access_token';
  });

  test('fetches a token with basic credentials, scoped, and caches it', async () => {
    const c = new RegistryClient(fake.host, { creds: `${FAKE_USER}:${FAKE_PASS}` });
    const doc = await c.getManifest('lib/app', 'v1');
    expect(doc.bytes.equals(MANIFEST)).toBe(true);
    expect(doc.digest).toBe(digestOf(MANIFEST));
    expect((await c.getManifest('lib/app', 'v2')).digest).toBe(digestOf(MANIFEST));
    expect(fake.tokenRequests).toHaveLength(1);
    expect(fake.tokenRequests[0].searchParams.get('service')).toBe('fake.test');
    expect(fake.tokenRequests[0].searchParams.getAll('scope')).toEqual(['repository:lib/app:pull']);
    await c.close();
  });

  test('accepts "token" as well as "access_token"', async () => {
    fake.tokenField = 'token';
    const c = new RegistryClient(fake.host, { creds: `${FAKE_USER}:${FAKE_PASS}` });
    expect((await c.getManifest('lib/app', 'v1')).digest).toBe(digestOf(MANIFEST));
    await c.close();
  });

  test('wrong or missing credentials are UNAUTHENTICATED', async () => {
    const wrong = new RegistryClient(fake.host, { creds: `${FAKE_USER}:nope-nope` });
    const err = await failure(wrong.getManifest('lib/app', 'v1'));
    expect(err.kind).toBe('UNAUTHENTICATED');
    expect(err.message).toBe(`registry ${fake.host}: authentication failed for lib/app (check --creds)`);
    expect(err.message).not.toContain('nope-nope');
    await wrong.close();
    const empty = path.join(await tmpDir(), 'empty.json');
    await fsp.writeFile(empty, '{"auths":{}}');
    const restore = isolateAuthEnv(path.dirname(empty));
    try {
      const none = new RegistryClient(fake.host, { authFile: empty });
      const err = await failure(none.getManifest('lib/app', 'v1'));
      expect(err.kind).toBe('UNAUTHENTICATED');
      expect(err.message).toContain('authentication required for lib/app');
      await none.close();
    } finally {
      restore();
    }
  });

  test('registry token and identity token (refresh-token grant) from an auth file', async () => {
    const direct = new RegistryClient(fake.host, { registryToken: 'static-token' });
    expect((await direct.getManifest('lib/app', 'v1')).digest).toBe(digestOf(MANIFEST));
    expect(fake.tokenRequests).toHaveLength(0);
    await direct.close();
    const authFile = path.join(await tmpDir(), 'config.json');
    await fsp.writeFile(authFile, JSON.stringify({ auths: { [fake.host]: { identitytoken: REFRESH_TOKEN } } }));
    const viaFile = new RegistryClient(fake.host, { authFile });
    expect((await viaFile.getManifest('lib/app', 'v1')).digest).toBe(digestOf(MANIFEST));
    expect(fake.tokenRequests).toHaveLength(1);
    const form = new URLSearchParams(fake.tokenBodies[fake.tokenBodies.length - 1]);
    expect(form.get('scope')).toBe('repository:lib/app:pull');
    await viaFile.close();
  });

  test('a blob redirect to another host is followed without the Authorization header', async () => {
    fake.storageAuth.length = 0;
    fake.registryBlobAuth.length = 0;
    const c = new RegistryClient(fake.host, { creds: `${FAKE_USER}:${FAKE_PASS}` });
    const desc = { mediaType: MT.OCI_LAYER_GZIP, digest: digestOf(BLOB), size: BLOB.length };
    const got = await readVerified(await c.openBlob('lib/app', desc.digest, desc.size), desc);
    expect(got.equals(BLOB)).toBe(true);
    expect(fake.registryBlobAuth.some((a) => a?.startsWith('Bearer tok-'))).toBe(true);
    expect(fake.storageAuth).toEqual([undefined]);
    await c.close();
  });

  test('uploads PATCH chunks with Content-Range and finish with PUT ?digest=', async () => {
    const c = new RegistryClient(fake.host, { creds: `${FAKE_USER}:${FAKE_PASS}` }, { chunkSize: 1000 });
    const data = BLOB.subarray(0, 2500);
    const digest = digestOf(data);
    // the source yields odd-sized pieces: chunking must re-cut them
    const pieces = [data.subarray(0, 10), data.subarray(10, 1700), data.subarray(1700)];
    expect(await c.pushBlob('lib/up', digest, data.length, () => Readable.from(pieces))).toBe('uploaded');
    expect(fake.uploads).toEqual([
      `HEAD /v2/lib/up/blobs/${digest}`,
      'POST /v2/lib/up/blobs/uploads/',
      'PATCH /v2/lib/up/blobs/uploads/u1?_state=s2%3D%3D [0-999] 1000',
      'PATCH /v2/lib/up/blobs/uploads/u1?_state=s3%3D%3D [1000-1999] 1000',
      'PATCH /v2/lib/up/blobs/uploads/u1?_state=s4%3D%3D [2000-2499] 500',
      `PUT /v2/lib/up/blobs/uploads/u1?_state=s5%3D%3D&digest=${encodeURIComponent(digest)}`,
    ]);
    await c.close();
  });

  test('idle keep-alive connections survive the idle timeout', async () => {
    const c = new RegistryClient(fake.host, { creds: `${FAKE_USER}:${FAKE_PASS}` }, { timeoutMs: 300 });
    expect((await c.getManifest('lib/app', 'v1')).digest).toBe(digestOf(MANIFEST));
    await new Promise((r) => setTimeout(r, 700));
    expect((await c.getManifest('lib/app', 'v1')).digest).toBe(digestOf(MANIFEST));
    await c.close();
  });

  test('tags are collected across Link pages', async () => {
    const c = new RegistryClient(fake.host, { creds: `${FAKE_USER}:${FAKE_PASS}` });
    expect(await c.listTags('lib/app')).toEqual(TAGS);
    expect(await c.listTags('lib/app', 4)).toEqual(TAGS);
    await c.close();
  });

  test('403, 500, silence, a stalled download and lying digests map to clear errors', async () => {
    const c = new RegistryClient(fake.host, { creds: `${FAKE_USER}:${FAKE_PASS}` }, { timeoutMs: 500 });
    const denied = await failure(c.getManifest('lib/denied', 'v1'));
    expect(denied.kind).toBe('PERMISSION_DENIED');
    expect(denied.message).toContain('DENIED');
    const broken = await failure(c.getManifest('lib/broken', 'v1'));
    expect(broken.kind).toBe('UNAVAILABLE');
    expect(broken.message).toContain('HTTP 500');
    expect(broken.message).toContain('disk on fire');
    const t0 = Date.now();
    const slow = await failure(c.getManifest('lib/slow', 'v1'));
    expect(slow.kind).toBe('UNAVAILABLE');
    expect(slow.message).toContain('no answer within 0.5 s');
    expect(Date.now() - t0).toBeLessThan(5000);
    const desc = { mediaType: MT.OCI_LAYER_GZIP, digest: digestOf(BLOB), size: BLOB.length };
    const stalled = await failure(readVerified(await c.openBlob('lib/stall', desc.digest, desc.size), desc));
    expect(stalled.kind).toBe('UNAVAILABLE');
    expect(stalled.message).toContain(`download of blob ${desc.digest} in lib/stall`);
    const wrongDigest = digestOf('something else');
    const liar = await failure(c.getManifest('lib/liar', wrongDigest));
    expect(liar.kind).toBe('CORRUPT');
    await c.close();
  });
});
