/**
 * Signed deltas through distribution: signatures travel with the files
 * (d4fs-server: upload header, kept beside the blob, in every pull plan; OCI
 * registry: an annotation of the file's artifact manifest), pulls with
 * --verify-key/--policy store nothing unless every file of the chain is
 * signed by a trusted key, `serve --require-signed` refuses unsigned and
 * untrusted uploads, and `serve --signing-key` signs the merges it composes
 * (clients that trust the server key get merges, the others the unmerged
 * chain of the publisher's signed files).
 */
import { convertAppImage } from './fixtures/appimage';
import { CliResult, runCli } from './helpers/cli';
import { ChildProcess, spawn } from 'node:child_process';
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import * as http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { diffImages } from '../src/delta/diff';
import { WorkerPool } from '../src/workers/pool';
import { EXIT_CODES } from '../src/errors';
import { generateKeyPair, loadSigningKey, loadVerifyKey, parseSignatureFile, signFile, SignaturePolicy } from '../src/signing';
import { LocalStore } from '../src/store/store';
import { D4fsServer } from '../src/server/server';
import { newToken } from '../src/server/auth';
import { pullFromServer } from '../src/distribution/pull';
import { pushToServer } from '../src/distribution/push';
import { RegistryClient } from '../src/oci/registry/client';
import { packageRoot } from '../src/util/paths';
import { freePort, startRegistry, TestRegistry } from './helpers/registry';
import { failure, rootOf } from './helpers/pulls';

const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let work: string;
let pool: WorkerPool;
const at = (...n: string[]): string => join(work, ...n);
const RW = newToken();
const RO = newToken();
let tokensFile: string;

const cli = (...args: string[]): Promise<CliResult> => runCli(args);

/** One raw HTTP exchange. */
function raw(base: string, method: string, path: string, o: { headers?: Record<string, string>; body?: Buffer } = {}): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const u = new URL(base);
    const req = http.request({ host: u.hostname, port: u.port, path, method, headers: o.headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

const image = (name: string, text: string): Promise<string> => convertAppImage(work, name, text, pool);

/** Copies of `files` in `dir`, signed by `keys` (none: unsigned). */
async function copies(dir: string, files: Record<string, string>, keys: string[]): Promise<Record<string, string>> {
  await fsp.mkdir(at(dir), { recursive: true });
  const out: Record<string, string> = {};
  for (const [n, f] of Object.entries(files)) {
    out[n] = at(dir, `${n}.cdimg`);
    await fsp.copyFile(f, out[n]);
    for (const k of keys) await signFile(out[n], await loadSigningKey(at(`${k}.pem`)));
  }
  return out;
}

async function keypair(name: string, algorithm: 'ed25519' | 'ecdsa-p256'): Promise<string> {
  const k = generateKeyPair(algorithm);
  await fsp.writeFile(at(`${name}.pem`), k.privatePem, { mode: 0o600 });
  await fsp.writeFile(at(`${name}.pub.pem`), k.publicPem);
  return k.keyId;
}

const policyOf = async (...names: string[]): Promise<SignaturePolicy> => ({ keys: await Promise.all(names.map((n) => loadVerifyKey(at(`${n}.pub.pem`)))) });

/** Files a store directory holds (opened and closed). */
async function storedFiles(dir: string): Promise<string[]> {
  if (!existsSync(join(dir, 'store.db'))) return [];
  const s = await LocalStore.open(dir);
  try {
    return s.files().map((f) => f.rootDigest);
  } finally {
    s.close();
  }
}

/** .part files a pull left in a store's temp directory. */
const parts = async (dir: string): Promise<string[]> => (await fsp.readdir(join(dir, 'tmp')).catch(() => [] as string[])).filter((n) => n.endsWith('.part'));

let V1: string;
let V2: string;
let V3: string;
let plain: Record<string, string>;
let signed: Record<string, string>;
let PUB: string;
let SRV: string;
let OTHER: string;
const servers: D4fsServer[] = [];

async function startServer(name: string, signing?: Parameters<typeof D4fsServer.start>[0]['signing']): Promise<D4fsServer> {
  const s = await D4fsServer.start({ root: at(`srv-${name}`), listen: '127.0.0.1:0', tokensFile, processMetrics: false, mergeStrategy: 'compose', signing });
  servers.push(s);
  return s;
}

beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-signing-dist-'));
  pool = new WorkerPool(2);
  const v1 = await image('v1', 'version one\n');
  const v2 = await image('v2', 'version two\n');
  const v3 = await image('v3', 'version three\n');
  const d12 = at('v1-v2.cdimg');
  const d23 = at('v2-v3.cdimg');
  await diffImages({ oldPath: v1, newPath: v2, out: d12, pool });
  await diffImages({ oldPath: v2, newPath: v3, out: d23, pool });
  PUB = await keypair('publisher', 'ed25519');
  SRV = await keypair('server', 'ecdsa-p256');
  OTHER = await keypair('other', 'ed25519');
  plain = { v1, d12, d23 };
  signed = await copies('signed', plain, ['publisher']);
  const ids = async (f: string): Promise<string> => {
    const s = await LocalStore.open(at('probe'));
    try {
      return (await s.add(f)).imageId;
    } finally {
      s.close();
    }
  };
  V1 = await ids(v1);
  V2 = await ids(d12);
  V3 = await ids(d23);
  tokensFile = at('tokens');
  await fsp.writeFile(tokensFile, `rw ${RW} pusher\nro ${RO} puller\n`, { mode: 0o600 });
}, 120_000);

afterAll(async () => {
  for (const s of servers) await s.stop(1000);
  await pool?.close();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

describe('d4fs-server: signatures travel with the files', () => {
  let server: D4fsServer;
  beforeAll(async () => {
    server = await startServer('plain');
  });

  test('(a) a signed chain pushed (FILE.sig goes along) and pulled with --verify-key into a fresh store: stored with its signatures', async () => {
    const p1 = await cli('push', '--cdimg', signed.v1, '--image', 'app:v1', '--server', server.url, '--token', RW, '--json');
    expect(p1.code).toBe(0);
    expect(JSON.parse(p1.stdout)).toMatchObject({ kind: 'full', uploaded: true, signaturesSent: 1, signatures: 1 });
    const p2 = await cli('push', '--cdimg', signed.d12, '--image', 'app:v2', '--server', server.url, '--token', RW, '--json');
    expect(JSON.parse(p2.stdout)).toMatchObject({ kind: 'delta', signaturesSent: 1, signatures: 1 });
    // kept beside the blob, keyed by root digest
    const r12 = await rootOf(signed.d12);
    const onServer = parseSignatureFile(readFileSync(`${server.blobs.pathOf(r12)}.sig`), 'sig');
    expect(onServer).toMatchObject({ subject: r12, kind: 'cdimg' });
    expect(onServer.signatures.map((s) => s.keyId)).toEqual([PUB]);

    const store = at('clients', 'a');
    const r = await cli('pull', '--image', 'app:v2', '--server', server.url, '--token', RO, '--store', store, '--no-load', '--json', '--verify-key', at('publisher.pub.pem'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const pulled = JSON.parse(r.stdout);
    expect(pulled.files.map((f: { kind: string; signedBy: string }) => [f.kind, f.signedBy])).toEqual([
      ['full', PUB],
      ['delta', PUB],
    ]);
    const s = await LocalStore.open(store);
    try {
      expect(s.files()).toHaveLength(2);
      for (const f of s.files()) expect(existsSync(`${f.path}.sig`)).toBe(true);
      await s.checkChainSignatures(V2, await policyOf('publisher'));
      await expect(s.checkChainSignatures(V2, await policyOf('other'))).rejects.toThrow(/does not trust/);
    } finally {
      s.close();
    }
  });

  test('a second signer: pushing the stored file again with its signature merges the signatures; a pull without a policy keeps them', async () => {
    const both = await copies('signed-twice', { d12: plain.d12 }, ['other']);
    const r = await pushToServer({ file: both.d12, image: 'app:v2', server: server.url, token: RW });
    expect(r).toMatchObject({ uploaded: false, signaturesSent: 1, signatures: 2 });
    // an explicit --signature, and a re-push without any, change nothing more
    const again = await cli('push', '--cdimg', plain.d12, '--signature', `${signed.d12}.sig`, '--image', 'app:v2', '--server', server.url, '--token', RW, '--json');
    expect(JSON.parse(again.stdout)).toMatchObject({ uploaded: false, signaturesSent: 1, signatures: 2 });
    expect((await pushToServer({ file: plain.d12, image: 'app:v2', server: server.url, token: RW })).signatures).toBe(2);
    const store = await LocalStore.open(at('clients', 'no-policy'));
    try {
      const p = await pullFromServer({ image: 'app:v2', server: server.url, store, token: RO, noLoad: true });
      expect(p.files.map((f) => f.signatures)).toEqual([1, 2]);
      const sig = await store.signatureOf(store.chainFor(V2)[1]);
      expect(sig?.signatures.map((s) => s.keyId).sort()).toEqual([PUB, OTHER].sort());
    } finally {
      store.close();
    }
  });

  test('a signature over another file is refused (422) and changes nothing', async () => {
    const before = readFileSync(`${server.blobs.pathOf(await rootOf(plain.v1))}.sig`, 'utf8');
    const r = await cli('push', '--cdimg', plain.v1, '--signature', `${signed.d12}.sig`, '--image', 'app:v1', '--server', server.url, '--token', RW);
    expect(r.code).toBe(EXIT_CODES.CORRUPT);
    expect(r.stderr).toMatch(/signature sent is for another file/);
    expect(readFileSync(`${server.blobs.pathOf(await rootOf(plain.v1))}.sig`, 'utf8')).toBe(before);
    const header = Buffer.from(readFileSync(`${signed.d12}.sig`, 'utf8').replace(/\s+/g, '')).toString('base64');
    const res = await raw(server.url, 'PUT', `/v1/repositories/app/blobs/${await rootOf(plain.v1)}`, { headers: { Authorization: `Bearer ${RW}`, 'x-d4fs-signature': header, 'Content-Length': '0' } });
    expect(res.status).toBe(422);
  });

  test('(c) no signing key on the server, a client with a policy: the unmerged chain of signed files (a client without one gets the merge)', async () => {
    await pushToServer({ file: signed.d23, image: 'app:v3', server: server.url, token: RW });
    const withPolicy = await LocalStore.open(at('clients', 'c-policy'));
    const without = await LocalStore.open(at('clients', 'c-plain'));
    try {
      await withPolicy.add(signed.v1); // its signature comes along from v1.cdimg.sig
      await without.add(signed.v1);
      const p = await pullFromServer({ image: 'app:v3', server: server.url, store: withPolicy, token: RO, noLoad: true, policy: await policyOf('publisher') });
      expect(p.files.map((f) => [f.merged, f.parentId, f.imageId, f.signedBy])).toEqual([
        [false, V1, V2, PUB],
        [false, V2, V3, PUB],
      ]);
      await withPolicy.checkChainSignatures(V3, await policyOf('publisher'));
      const q = await pullFromServer({ image: 'app:v3', server: server.url, store: without, token: RO, noLoad: true });
      expect(q.files.map((f) => [f.merged, f.signatures])).toEqual([[true, 0]]);
    } finally {
      withPolicy.close();
      without.close();
    }
  });

  test('with a policy, a held base that is not trusted is not built on: the pull is refused before anything moves', async () => {
    const store = at('clients', 'held-unsigned');
    const s = await LocalStore.open(store);
    await s.add(plain.v1); // loaded unsigned, and no other v1 file exists
    s.close();
    const other = await startServer('held');
    await pushToServer({ file: plain.v1, image: 'app:v1', server: other.url, token: RW });
    await pushToServer({ file: signed.d12, image: 'app:v2', server: other.url, token: RW });
    const r = await cli('pull', '--image', 'app:v2', '--server', other.url, '--token', RO, '--store', store, '--no-load', '--verify-key', at('publisher.pub.pem'));
    expect(r.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(r.stderr).toMatch(/is not signed/);
    expect(await storedFiles(store)).toEqual([await rootOf(plain.v1)]);
    expect(await parts(store)).toEqual([]);
  });

  test('(e) a signature flipped on the server: the pull is refused (exit 9) and nothing is stored', async () => {
    const sigPath = `${server.blobs.pathOf(await rootOf(plain.d23))}.sig`;
    const j = JSON.parse(readFileSync(sigPath, 'utf8'));
    const b = Buffer.from(j.signatures[0].signature, 'base64');
    b[7] ^= 0x01;
    j.signatures[0].signature = b.toString('base64');
    await fsp.writeFile(sigPath, JSON.stringify(j));
    const store = at('clients', 'e');
    const r = await cli('pull', '--image', 'app:v3', '--server', server.url, '--token', RO, '--store', store, '--no-load', '--verify-key', at('publisher.pub.pem'));
    expect(r.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(r.stderr).toMatch(/nothing stored.*does not verify/);
    // the full image and the first delta verified, the last did not: none of them is stored
    expect(await storedFiles(store)).toEqual([]);
    expect(await parts(store)).toEqual([]);
    // without a policy the same pull stores the files (and the signature as the server has it)
    const ok = await cli('pull', '--image', 'app:v3', '--server', server.url, '--token', RO, '--store', at('clients', 'e-plain'), '--no-load');
    expect(ok.code).toBe(0);
  });

  test('library: a pull refused by the policy is UNAUTHENTICATED', async () => {
    const store = await LocalStore.open(at('clients', 'lib'));
    try {
      const e = await failure(pullFromServer({ image: 'app:v1', server: server.url, store, token: RO, noLoad: true, policy: await policyOf('other') }));
      expect(e.kind).toBe('UNAUTHENTICATED');
      expect(store.files()).toEqual([]);
    } finally {
      store.close();
    }
  });
});

describe('serve --signing-key: merges signed by the server', () => {
  let server: D4fsServer;
  beforeAll(async () => {
    server = await startServer('signing', { policy: await policyOf('publisher'), signingKey: await loadSigningKey(at('server.pem')) });
    for (const [f, t] of [
      [signed.v1, 'v1'],
      [signed.d12, 'v2'],
      [signed.d23, 'v3'],
    ]) {
      await pushToServer({ file: f, image: `app:${t}`, server: server.url, token: RW });
    }
  });

  const holdingV1 = async (name: string): Promise<string> => {
    const dir = at('clients', name);
    const s = await LocalStore.open(dir);
    await s.add(signed.v1);
    s.close();
    return dir;
  };

  test('(b) a client trusting the publisher and the server key gets the merge, signed by the server, and keeps it', async () => {
    const store = await holdingV1('b-both');
    const r = await cli('pull', '--image', 'app:v3', '--server', server.url, '--token', RO, '--store', store, '--no-load', '--json', '--verify-key', at('publisher.pub.pem'), '--verify-key', at('server.pub.pem'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const pulled = JSON.parse(r.stdout);
    expect(pulled.files.map((f: { merged: boolean; parentId: string; imageId: string; signedBy: string }) => [f.merged, f.parentId, f.imageId, f.signedBy])).toEqual([[true, V1, V3, SRV]]);
    const s = await LocalStore.open(store);
    try {
      await s.checkChainSignatures(V3, await policyOf('publisher', 'server'));
      const merged = s.chainFor(V3)[1];
      expect((await s.signatureOf(merged))?.signatures.map((x) => x.keyId)).toEqual([SRV]);
    } finally {
      s.close();
    }
  });

  test('(b) a client trusting only the publisher key gets the unmerged chain of the signed originals, and accepts it', async () => {
    const store = await LocalStore.open(await holdingV1('b-publisher'));
    try {
      const r = await pullFromServer({ image: 'app:v3', server: server.url, store, token: RO, noLoad: true, policy: await policyOf('publisher') });
      expect(r.files.map((f) => [f.merged, f.imageId, f.signedBy])).toEqual([
        [false, V2, PUB],
        [false, V3, PUB],
      ]);
    } finally {
      store.close();
    }
  });

  test('(b) a client trusting only the server key is refused (exit 9, nothing stored): the server vouches for its merges, not for the originals', async () => {
    const store = at('clients', 'b-server-only');
    const r = await cli('pull', '--image', 'app:v3', '--server', server.url, '--token', RO, '--store', store, '--no-load', '--verify-key', at('server.pub.pem'));
    expect(r.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(r.stderr).toMatch(/refusing the pull, nothing stored: full .* signed only by keys this policy does not trust/);
    expect(await storedFiles(store)).toEqual([]);
    expect(await parts(store)).toEqual([]);
  });

  test('merges of files the server does not trust are not signed; a client that requires signatures then gets no merge', async () => {
    const other = await startServer('signing-untrusted', { policy: await policyOf('other'), signingKey: await loadSigningKey(at('server.pem')) });
    for (const [f, t] of [
      [signed.v1, 'v1'],
      [signed.d12, 'v2'],
      [signed.d23, 'v3'],
    ]) {
      await pushToServer({ file: f, image: `app:${t}`, server: other.url, token: RW });
    }
    const a = await LocalStore.open(await holdingV1('b-untrusted-plain'));
    const b = await LocalStore.open(await holdingV1('b-untrusted-policy'));
    try {
      const p = await pullFromServer({ image: 'app:v3', server: other.url, store: a, token: RO, noLoad: true });
      expect(p.files.map((f) => [f.merged, f.signatures])).toEqual([[true, 0]]);
      const q = await pullFromServer({ image: 'app:v3', server: other.url, store: b, token: RO, noLoad: true, policy: await policyOf('publisher', 'server') });
      expect(q.files.map((f) => [f.merged, f.signedBy])).toEqual([
        [false, PUB],
        [false, PUB],
      ]);
    } finally {
      a.close();
      b.close();
    }
  });

  test('--signing-key or --require-signed without keys to trust is refused at start (exit 2)', async () => {
    const r = await cli('serve', '--root', at('srv-bad'), '--listen', '127.0.0.1:0', '--signing-key', at('server.pem'));
    expect(r.code).toBe(EXIT_CODES.INVALID_ARGUMENT);
    expect(r.stderr).toMatch(/--signing-key needs the keys to trust/);
    const q = await cli('serve', '--root', at('srv-bad'), '--listen', '127.0.0.1:0', '--require-signed');
    expect(q.code).toBe(EXIT_CODES.INVALID_ARGUMENT);
  });
});

describe('serve --require-signed', () => {
  let child: ChildProcess;
  let url: string;
  const root = (): string => at('srv-required');
  beforeAll(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    child = spawn(process.execPath, [CLI, 'serve', '--root', root(), '--listen', `127.0.0.1:${port}`, '--tokens', tokensFile, '--log-level', 'warn', '--require-signed', '--verify-key', at('publisher.pub.pem')], { stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      if (await raw(url, 'GET', '/healthz').then((r) => r.status === 200, () => false)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('the server did not start');
  });
  afterAll(async () => {
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });

  const blobs = async (): Promise<string[]> => fsp.readdir(join(root(), 'blobs', 'sha256')).catch(() => [] as string[]);

  test('(d) an unsigned upload is refused (401, clear message, exit 9) and nothing is stored', async () => {
    const r = await cli('push', '--cdimg', plain.v1, '--image', 'app:v1', '--server', url, '--token', RW);
    expect(r.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(r.stderr).toMatch(/accepts only signed files: .* is not signed/);
    const res = await raw(url, 'PUT', `/v1/repositories/app/blobs/${await rootOf(plain.v1)}`, { headers: { Authorization: `Bearer ${RW}` }, body: readFileSync(plain.v1) });
    expect(res.status).toBe(401);
    expect(JSON.parse(res.body.toString())).toMatchObject({ error: { kind: 'UNAUTHENTICATED', message: expect.stringMatching(/accepts only signed files/) } });
    // signed by a key the server does not trust
    const foreign = await copies('foreign', { v1: plain.v1 }, ['other']);
    const f = await cli('push', '--cdimg', foreign.v1, '--image', 'app:v1', '--server', url, '--token', RW);
    expect(f.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(f.stderr).toMatch(/does not trust/);
    expect(await blobs()).toEqual([]);
    expect(await fsp.readdir(join(root(), 'tmp'))).toEqual([]);
  });

  test('(d) a signature over another file is refused and nothing is stored', async () => {
    const r = await cli('push', '--cdimg', plain.v1, '--signature', `${signed.d12}.sig`, '--image', 'app:v1', '--server', url, '--token', RW);
    expect(r.code).toBe(EXIT_CODES.CORRUPT);
    expect(r.stderr).toMatch(/for another file/);
    expect(await blobs()).toEqual([]);
  });

  test('(d) signed uploads are accepted; once stored, the file may be pushed again without its signature', async () => {
    expect((await cli('push', '--cdimg', signed.v1, '--image', 'app:v1', '--server', url, '--token', RW)).code).toBe(0);
    expect((await cli('push', '--cdimg', signed.d12, '--image', 'app:v2', '--server', url, '--token', RW)).code).toBe(0);
    expect((await cli('push', '--cdimg', plain.d12, '--image', 'app:v2', '--server', url, '--token', RW)).code).toBe(0);
    expect((await blobs()).sort()).toEqual([`${(await rootOf(plain.v1)).slice(7)}.cdimg`, `${(await rootOf(plain.v1)).slice(7)}.cdimg.sig`, `${(await rootOf(plain.d12)).slice(7)}.cdimg`, `${(await rootOf(plain.d12)).slice(7)}.cdimg.sig`].sort());
    const store = at('clients', 'd');
    expect((await cli('pull', '--image', 'app:v2', '--server', url, '--token', RO, '--store', store, '--no-load', '--verify-key', at('publisher.pub.pem'))).code).toBe(0);
    expect(await storedFiles(store)).toHaveLength(2);
  });
});

describe('OCI registry: the signature is an annotation of the file artifact', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  }, 60_000);
  afterAll(async () => {
    await reg?.stop();
  });

  test('(f) a signed chain pushed and pulled with --verify-key is accepted and kept; an unsigned one is refused, nothing stored', async () => {
    const to = (repo: string, tag: string): string => `docker://${reg.host}/sig/${repo}:${tag}`;
    const p1 = await cli('push', '--cdimg', signed.v1, '--to', to('app', 'v1'), '--json');
    expect(p1.code).toBe(0);
    expect(JSON.parse(p1.stdout)).toMatchObject({ signaturesSent: 1, signatures: 1 });
    expect((await cli('push', '--cdimg', signed.d12, '--to', to('app', 'v2'))).code).toBe(0);
    // pushing the same file again unsigned keeps the signature the registry has
    const again = await cli('push', '--cdimg', plain.d12, '--to', to('app', 'v2'), '--json');
    expect(JSON.parse(again.stdout)).toMatchObject({ signaturesSent: 0, signatures: 1 });
    const client = new RegistryClient(reg.host);
    try {
      const m = await client.getManifest('sig/app', `d4fs-delta-${V1.slice(7, 39)}-${V2.slice(7, 39)}`);
      const ann = JSON.parse(m.bytes.toString()).annotations['io.d4fs.signature'];
      expect(parseSignatureFile(ann, 'annotation')).toMatchObject({ subject: await rootOf(plain.d12), signatures: [{ keyId: PUB }] });
    } finally {
      await client.close();
    }
    const store = at('clients', 'f');
    const r = await cli('pull', '--from', to('app', 'v2'), '--store', store, '--no-load', '--json', '--verify-key', at('publisher.pub.pem'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).files.map((f: { signedBy: string }) => f.signedBy)).toEqual([PUB, PUB]);
    const s = await LocalStore.open(store);
    try {
      await s.checkChainSignatures(V2, await policyOf('publisher'));
    } finally {
      s.close();
    }

    // unsigned: the full image is fine, the delta is not signed: nothing is stored
    await cli('push', '--cdimg', signed.v1, '--to', to('mixed', 'v1'));
    await cli('push', '--cdimg', plain.d12, '--to', to('mixed', 'v2'));
    const bad = at('clients', 'f-unsigned');
    const u = await cli('pull', '--from', to('mixed', 'v2'), '--store', bad, '--no-load', '--verify-key', at('publisher.pub.pem'));
    expect(u.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(u.stderr).toMatch(/nothing stored: delta .* is not signed/);
    expect(await storedFiles(bad)).toEqual([]);
    expect(await parts(bad)).toEqual([]);
    // a key the policy does not trust
    const other = await cli('pull', '--from', to('app', 'v2'), '--store', at('clients', 'f-other'), '--no-load', '--verify-key', at('other.pub.pem'));
    expect(other.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(await storedFiles(at('clients', 'f-other'))).toEqual([]);
  });

  test('a server backed by the registry (--store): signatures pushed through one replica reach the plans of another', async () => {
    const replica = async (name: string): Promise<D4fsServer> => {
      const r = await D4fsServer.start({ root: at(`replica-${name}`), listen: '127.0.0.1:0', tokensFile, processMetrics: false, mergeStrategy: 'compose', store: { url: `docker://${reg.host}/srv`, ttlMs: 0 } });
      servers.push(r);
      return r;
    };
    const a = await replica('a');
    const b = await replica('b');
    await pushToServer({ file: signed.v1, image: 'app:v1', server: a.url, token: RW });
    await pushToServer({ file: plain.d12, image: 'app:v2', server: a.url, token: RW });
    const early = await LocalStore.open(at('clients', 'replica-b-early'));
    try {
      // B reads the repository while the delta is unsigned
      expect((await pullFromServer({ image: 'app:v2', server: b.url, store: early, token: RO, noLoad: true })).files.map((f) => f.signatures)).toEqual([1, 0]);
    } finally {
      early.close();
    }
    // the signature comes later (a second push of the stored file, with it), and reaches B
    expect((await pushToServer({ file: signed.d12, image: 'app:v2', server: a.url, token: RW })).signatures).toBe(1);
    const store = await LocalStore.open(at('clients', 'replica-b'));
    try {
      const r = await pullFromServer({ image: 'app:v2', server: b.url, store, token: RO, noLoad: true, policy: await policyOf('publisher') });
      expect(r.files.map((f) => [f.kind, f.signedBy])).toEqual([
        ['full', PUB],
        ['delta', PUB],
      ]);
    } finally {
      store.close();
    }
    // and `pull --from` reads the same signed artifacts
    const direct = await cli('pull', '--from', `docker://${reg.host}/srv/app:v2`, '--store', at('clients', 'replica-direct'), '--no-load', '--verify-key', at('publisher.pub.pem'));
    expect(direct.stderr).toBe('');
    expect(direct.code).toBe(0);
  });

  test('a signature over another file is refused before anything is pushed', async () => {
    const e = await cli('push', '--cdimg', plain.v1, '--signature', `${signed.d12}.sig`, '--to', `docker://${reg.host}/sig/wrong:v1`);
    expect(e.code).toBe(EXIT_CODES.CORRUPT);
    expect(e.stderr).toMatch(/for another file/);
  });
});
