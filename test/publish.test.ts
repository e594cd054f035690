/**
 * `ctr-cli publish`: d4fs files attached to an ordinary image's manifest as
 * OCI 1.1 referrers in Debian's docker-registry (distribution 2.8: no
 * referrers API, so the `sha256-<hex>` referrers tag), found by
 * findD4fsReferrers, and pulled through by `ctr-cli pull --from` on the
 * image's own tag: only the delta moves when the store holds the base.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startRegistry, pushOciLayout, TestRegistry } from './helpers/registry';
import { failure } from './helpers/pulls';
import { prng } from './helpers/prng';
import { convertImage } from '../src/convert/convert';
import { buildTar } from '../src/tar';
import { writeSimpleImage } from '../src/oci/writer';
import { MT } from '../src/oci/mediatypes';
import { RegistryClient } from '../src/oci/registry/client';
import { ARTIFACT_TYPE, fileManifest, parseFileManifest, parseReferrersIndex, referrerDescriptor, referrersIndex, referrersTag, ReferrerDescriptor } from '../src/distribution/artifact';
import { d4fsReferrersOf, findD4fsReferrers } from '../src/distribution/referrers';
import { publishImage, PublishResult, updateReferrersTag } from '../src/distribution/publish';
import { pullFromRegistry } from '../src/distribution/registry';
import type { PullResult } from '../src/distribution/pull';
import { generateKeyPair } from '../src/signing';
import { LocalStore } from '../src/store/store';
import { WorkerPool } from '../src/workers/pool';
import { digestOf } from '../src/util/digest';
import { packageRoot } from '../src/util/paths';
import type { Descriptor } from '../src/oci/types';
import { fileDigestOf } from '../src/util/digest';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let work: string;
let reg: TestRegistry;
let client: RegistryClient;
let pool: WorkerPool;
/** v1 and v2 as the registry holds them (manifest descriptors) and as d4fs ids (local conversions). */
let M1: Descriptor;
let M2: Descriptor;
let V1: string;
let V2: string;
let v1File: string;
let v2File: string;

const at = (...p: string[]): string => join(work, ...p);
const img = (repo: string, tag: string): string => `docker://${reg.host}/${repo}:${tag}`;

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args], { maxBuffer: 64 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** Random bytes (seeded). */
function bytes(n: number, seed: number): Buffer {
  const r = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

/** Two versions of an app: a big library that changes a little, a config that changes, a file added. */
function layers(version: 1 | 2): Buffer[] {
  const lib = bytes(1_500_000, 7);
  if (version === 2) lib.write('patched in version 2', 700_000);
  const base = buildTar([
    { header: { name: 'usr/', type: 'dir' } },
    { header: { name: 'usr/lib/', type: 'dir' } },
    { header: { name: 'usr/lib/libbig.so', type: 'file', mode: 0o755 }, data: lib },
    { header: { name: 'usr/share/', type: 'dir' } },
    { header: { name: 'usr/share/data.bin', type: 'file' }, data: bytes(600_000, 9) },
  ]);
  const top = buildTar([
    { header: { name: 'etc/', type: 'dir' } },
    { header: { name: 'etc/app.conf', type: 'file' }, data: Buffer.from(`version=${version}\n`) },
    ...(version === 2 ? [{ header: { name: 'etc/new-in-2', type: 'file' as const }, data: Buffer.from('hello\n') }] : []),
  ]);
  return [base, top];
}

async function manifestOf(repo: string, reference: string): Promise<Descriptor> {
  const m = await client.getManifest(repo, reference);
  return { mediaType: m.mediaType, digest: m.digest, size: m.bytes.length };
}

async function keypair(name: string): Promise<void> {
  const k = generateKeyPair('ed25519');
  await fsp.writeFile(at(`${name}.pem`), k.privatePem, { mode: 0o600 });
  await fsp.writeFile(at(`${name}.pub.pem`), k.publicPem);
}

/** A store directory holding `files`. */
async function storeWith(name: string, files: string[]): Promise<string> {
  const dir = at('stores', name);
  const s = await LocalStore.open(dir);
  try {
    for (const f of files) await s.add(f);
  } finally {
    s.close();
  }
  return dir;
}

/**
 * A registry with the referrers API, for the tests: a proxy in front of the
 * docker-registry that records the subject of every manifest PUT (answering
 * `OCI-Subject`) and serves GET /v2/<repo>/referrers/<digest> from what it
 * recorded, one descriptor a page (Link pagination), never filtering, with
 * another tool's referrer first.
 */
async function referrersProxy(backend: string): Promise<{ host: string; close(): Promise<void> }> {
  const subjects = new Map<string, ReferrerDescriptor[]>();
  const server = http.createServer((req, res) => {
    const m = /^\/v2\/(.+)\/referrers\/(sha256:[a-f0-9]{64})(?:\?(.*))?$/.exec(req.url ?? '');
    if (req.method === 'GET' && m) {
      const page = Number(new URLSearchParams(m[3] ?? '').get('page') ?? '0');
      const all: ReferrerDescriptor[] = [{ mediaType: MT.OCI_MANIFEST, artifactType: 'application/vnd.example.sbom', digest: digestOf('sbom'), size: 10 }, ...(subjects.get(`${m[1]}@${m[2]}`) ?? [])];
      const headers: Record<string, string> = { 'Content-Type': MT.OCI_INDEX };
      if (page + 1 < all.length) headers.Link = `</v2/${m[1]}/referrers/${m[2]}?page=${page + 1}>; rel="next"`;
      res.writeHead(200, headers).end(JSON.stringify({ schemaVersion: 2, mediaType: MT.OCI_INDEX, manifests: all.slice(page, page + 1) }));
      return;
    }
    const body: Buffer[] = [];
    req.on('data', (c: Buffer) => body.push(c));
    req.on('end', () => {
      const sent = Buffer.concat(body);
      const up = http.request(`http://${backend}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
        const headers = { ...r.headers };
        const put = /^\/v2\/(.+)\/manifests\/[^/]+$/.exec(req.url ?? '');
        if (req.method === 'PUT' && put && r.statusCode === 201) {
          const subject = (JSON.parse(sent.toString()) as { subject?: { digest: string } }).subject;
          if (subject) {
            const key = `${put[1]}@${subject.digest}`;
            const d = referrerDescriptor(sent);
            subjects.set(key, [...(subjects.get(key) ?? []).filter((x) => x.digest !== d.digest), d]);
            headers['oci-subject'] = subject.digest;
          }
        }
        res.writeHead(r.statusCode ?? 502, headers);
        r.pipe(res);
      });
      up.on('error', () => res.writeHead(502).end());
      up.end(sent);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { host: `127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-publish-test-'));
  pool = new WorkerPool(2);
  reg = await startRegistry();
  client = new RegistryClient(reg.host);
  for (const v of [1, 2] as const) await writeSimpleImage(at('layout'), `v${v}`, { layers: layers(v), config: { Cmd: ['/bin/app'], Env: [`VERSION=${v}`] } });
  for (const repo of ['app', 'evil', 'api']) {
    await pushOciLayout(at('layout'), 'v1', reg.host, `${repo}:v1`);
    await pushOciLayout(at('layout'), 'v2', reg.host, `${repo}:v2`);
  }
  M1 = await manifestOf('app', 'v1');
  M2 = await manifestOf('app', 'v2');
  v1File = at('v1.cdimg');
  v2File = at('v2.cdimg');
  V1 = (await convertImage({ ref: `oci:${at('layout')}:v1`, output: v1File, pool })).imageId;
  V2 = (await convertImage({ ref: `oci:${at('layout')}:v2`, output: v2File, pool })).imageId;
}, 120_000);

afterAll(async () => {
  await client?.close();
  await pool?.close();
  await reg?.stop();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

let first: PublishResult;

describe('publish: d4fs files as referrers of the image manifest', () => {
  test('publish v2 --base v1: the tag and its manifest are untouched; the referrers tag lists a full and a delta attached to v2', async () => {
    const r = await cli('publish', img('app', 'v2'), '--base', img('app', 'v1'), '--out-dir', at('published'), '--json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    first = JSON.parse(r.stdout) as PublishResult;
    expect(await manifestOf('app', 'v2')).toEqual(M2);
    expect(await manifestOf('app', 'v1')).toEqual(M1);
    expect(first).toMatchObject({ registry: reg.host, repository: 'app', reference: 'v2', manifestDigest: M2.digest });
    expect(first.images).toHaveLength(1);
    const im = first.images[0];
    expect(im).toMatchObject({ platform: 'linux/amd64', subject: M2, imageId: V2, referrersApi: false });
    expect(im.files.map((f) => f.kind)).toEqual(['full', 'delta']);
    const [full, delta] = im.files;
    expect(full).toMatchObject({ imageId: V2, parentId: '', uploaded: true });
    expect(delta).toMatchObject({ imageId: V2, parentId: V1, uploaded: true, base: img('app', 'v1') });
    expect(delta.size).toBeLessThan(full.size / 10);
    expect(im.bases).toEqual([{ base: img('app', 'v1'), imageId: V1, deltaBytes: delta.size, fullBytes: full.size }]);
    // the files kept are the ones pushed
    expect(await fileDigestOf(full.path as string)).toBe(full.fileDigest);
    expect(await fileDigestOf(delta.path as string)).toBe(delta.fileDigest);

    // the referrers tag: an OCI index of the two file manifests, each attached to v2's manifest
    const tag = referrersTag(M2.digest);
    expect(tag).toBe(`sha256-${M2.digest.slice(7)}`);
    expect(im.referrersTag).toMatchObject({ tag, changed: true, entries: 2, dropped: [] });
    const idx = await client.getManifest('app', tag);
    expect(idx.mediaType).toBe(MT.OCI_INDEX);
    expect(idx.digest).toBe(im.referrersTag?.digest);
    const listed = parseReferrersIndex(idx.bytes, tag);
    expect(listed.map((d) => d.digest).sort()).toEqual([full.manifestDigest, delta.manifestDigest].sort());
    for (const d of listed) {
      expect(d).toMatchObject({ mediaType: MT.OCI_MANIFEST, artifactType: ARTIFACT_TYPE });
      const m = await client.getManifest('app', d.digest);
      expect(d.size).toBe(m.bytes.length);
      const parsed = parseFileManifest(m.bytes, d.digest);
      expect(parsed.subject).toEqual(M2);
      expect(d.annotations).toEqual((JSON.parse(m.bytes.toString()) as { annotations: Record<string, string> }).annotations);
    }
    // no tag other than the user's and the referrers tag: content tags are for `push --to`
    expect((await client.listTags('app')).sort()).toEqual([tag, 'v1', 'v2'].sort());
  });

  test('findD4fsReferrers: the files attached to v2, leading to the image id a local convert of v2 gives', async () => {
    const found = await findD4fsReferrers(client, 'app', M2.digest);
    expect(found?.target).toBe(V2);
    const byKind = Object.fromEntries((found?.entries ?? []).map((e) => [e.kind, e]));
    const [full, delta] = first.images[0].files;
    expect(byKind.full).toEqual({ kind: 'full', rootDigest: full.rootDigest, imageId: V2, parentId: '', size: full.size, manifestDigest: full.manifestDigest, manifestSize: full.manifestSize });
    expect(byKind.delta).toEqual({ kind: 'delta', rootDigest: delta.rootDigest, imageId: V2, parentId: V1, size: delta.size, manifestDigest: delta.manifestDigest, manifestSize: delta.manifestSize });
    expect(found?.entries).toHaveLength(2);
    // nothing attached to v1, nor to a manifest the repository does not hold
    expect(await findD4fsReferrers(client, 'app', M1.digest)).toBeUndefined();
    expect(await findD4fsReferrers(client, 'app', digestOf('nothing'))).toBeUndefined();
  });

  test('publishing again is idempotent: same files, same manifests, same referrers index', async () => {
    const again = await publishImage({ image: img('app', 'v2'), bases: [img('app', 'v1')], pool });
    const im = again.images[0];
    expect(im.referrersTag).toMatchObject({ digest: first.images[0].referrersTag?.digest, changed: false, entries: 2 });
    expect(im.files.map((f) => [f.rootDigest, f.manifestDigest, f.uploaded])).toEqual(first.images[0].files.map((f) => [f.rootDigest, f.manifestDigest, false]));
    expect(await manifestOf('app', 'v2')).toEqual(M2);
    // a base given as a full .cdimg gives the same delta
    const viaFile = await publishImage({ image: img('app', 'v2'), bases: [v1File, img('app', 'v1')], pool });
    expect(viaFile.images[0].files.map((f) => f.rootDigest)).toEqual(first.images[0].files.map((f) => f.rootDigest));
    expect(viaFile.images[0].bases[1]).toMatchObject({ deltaBytes: null, skipped: `same image as base ${v1File}` });
    expect(viaFile.images[0].referrersTag?.changed).toBe(false);
  });

  test('pull --from the image tag into a store holding v1 moves only the delta; into an empty store, the full file', async () => {
    const store = await storeWith('holds-v1', [v1File]);
    const r = await cli('pull', '--from', img('app', 'v2'), '--no-load', '--store', store, '--json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const p = JSON.parse(r.stdout) as PullResult;
    const delta = first.images[0].files[1];
    expect(p).toMatchObject({ name: 'app:v2', imageId: V2, from: V1, upToDate: false, loaded: false });
    expect(p.files.map((f) => [f.kind, f.downloaded])).toEqual([['delta', true]]);
    expect(p.bytes).toBe(delta.size);
    expect(p.bytes).toBeLessThan((await fsp.stat(v2File)).size / 10);
    const s = await LocalStore.open(store);
    try {
      expect(s.resolveName('app:v2')).toBe(V2);
    } finally {
      s.close();
    }
    expect((await pullFromRegistry({ from: img('app', 'v2'), store, noLoad: true })).upToDate).toBe(true);
    const empty = await pullFromRegistry({ from: img('app', 'v2'), image: 'mine:2', store: at('stores', 'empty'), noLoad: true });
    expect(empty).toMatchObject({ name: 'mine:2', imageId: V2, from: null, bytes: first.images[0].files[0].size });
    // an image with nothing attached: NOT_FOUND, saying how to publish
    const none = await failure(pullFromRegistry({ from: img('app', 'v1'), store: at('stores', 'none'), noLoad: true }));
    expect(none.kind).toBe('NOT_FOUND');
    expect(none.message).toContain('ctr-cli publish');
  });

  test('hostile referrers lists are refused (CORRUPT): files leading to two images, bad annotations, another image attached', async () => {
    const good = parseReferrersIndex((await client.getManifest('app', referrersTag(M2.digest))).bytes, 'good');
    const full = good.find((d) => d.annotations?.['io.d4fs.kind'] === 'full') as ReferrerDescriptor;
    const delta = good.find((d) => d.annotations?.['io.d4fs.kind'] === 'delta') as ReferrerDescriptor;
    const put = (list: ReferrerDescriptor[]): Promise<string> => client.putManifest('app', referrersTag(M1.digest), referrersIndex(list), MT.OCI_INDEX);
    // unit: the same checks without a registry
    expect(() => d4fsReferrersOf([full, { ...delta, annotations: { ...delta.annotations, 'io.d4fs.image-id': digestOf('x') } }], 'x')).toThrow(/lead to 2 images/);
    expect(() => d4fsReferrersOf([full, { ...delta, annotations: { ...delta.annotations, 'io.d4fs.image-id': V1 } }], 'x')).toThrow(/leads to .* not to/);
    expect(() => d4fsReferrersOf([{ ...delta, annotations: { ...delta.annotations, 'io.d4fs.parent-id': V2 } }], 'x')).toThrow(/no image/);

    // two targets: the full says v2, the delta (relabelled) leads to another image
    await put([full, { ...delta, annotations: { ...delta.annotations, 'io.d4fs.image-id': digestOf('another image'), 'io.d4fs.parent-id': V1 } }]);
    let e = await failure(findD4fsReferrers(client, 'app', M1.digest));
    expect(e.kind).toBe('CORRUPT');
    expect(e.message).toMatch(/lead to 2 images/);
    // bad annotations
    const bads: Record<string, string>[] = [{ 'io.d4fs.kind': 'bogus' }, { 'io.d4fs.size': '-1' }, { 'io.d4fs.root-digest': 'sha256:xyz' }];
    for (const bad of bads) {
      await put([{ ...full, annotations: { ...full.annotations, ...bad } }]);
      e = await failure(findD4fsReferrers(client, 'app', M1.digest));
      expect(e.kind).toBe('CORRUPT');
    }
    // a d4fs entry that is not an image manifest; a size that is not a size
    await put([{ ...full, mediaType: MT.OCI_INDEX }]);
    expect((await failure(findD4fsReferrers(client, 'app', M1.digest))).kind).toBe('CORRUPT');
    await put([{ ...full, size: 0 }]);
    expect((await failure(findD4fsReferrers(client, 'app', M1.digest))).kind).toBe('CORRUPT');
    // other tools' referrers are not d4fs's business
    await put([{ mediaType: MT.OCI_MANIFEST, artifactType: 'application/vnd.example.sbom', digest: M2.digest, size: M2.size, annotations: { 'io.d4fs.kind': 'bogus' } }]);
    expect(await findD4fsReferrers(client, 'app', M1.digest)).toBeUndefined();
    // and a pull through such a list stores nothing
    await put([full, { ...delta, annotations: { ...delta.annotations, 'io.d4fs.image-id': digestOf('another image') } }]);
    const store = at('stores', 'hostile');
    expect((await failure(pullFromRegistry({ from: img('app', 'v1'), store, noLoad: true }))).kind).toBe('CORRUPT');
    const s = await LocalStore.open(store);
    expect(s.files()).toEqual([]);
    s.close();

    // honest files of another image (v1) attached to v2's manifest in repo evil: the pull reaches v1, whose config is not v2's
    const e2 = await cli('publish', img('evil', 'v1'), '--json');
    expect(e2.code).toBe(0);
    const evilV1 = (JSON.parse(e2.stdout) as PublishResult).images[0].files[0];
    const m = await client.getManifest('evil', evilV1.manifestDigest);
    const { file } = parseFileManifest(m.bytes, 'evil v1');
    const forged = fileManifest(file, M2);
    await client.putManifest('evil', digestOf(forged.bytes), forged.bytes, MT.OCI_MANIFEST);
    await updateReferrersTag(client, 'evil', M2.digest, [referrerDescriptor(forged.bytes)], V1);
    expect((await findD4fsReferrers(client, 'evil', M2.digest))?.target).toBe(V1);
    const wrong = await failure(pullFromRegistry({ from: img('evil', 'v2'), store: at('stores', 'evil'), noLoad: true }));
    expect(wrong.kind).toBe('CORRUPT');
    expect(wrong.message).toMatch(/another image/);
    const se = await LocalStore.open(at('stores', 'evil'));
    expect(se.images()).toEqual([]);
    se.close();
  });

  test('signed publish: pull --verify-key accepts the chain (v1, then only the delta to v2); another key is refused (exit 9)', async () => {
    await keypair('release');
    await keypair('other');
    // v1's referrers list was left hostile above: publishing v1 drops the stale and invalid entries
    const p1 = await cli('publish', img('app', 'v1'), '--sign-key', at('release.pem'), '--json');
    expect(p1.code).toBe(0);
    const r1 = JSON.parse(p1.stdout) as PublishResult;
    expect(r1.images[0].files).toHaveLength(1);
    expect(r1.images[0].files[0]).toMatchObject({ kind: 'full', imageId: V1, signatures: 1 });
    expect(r1.images[0].referrersTag).toMatchObject({ changed: true, entries: 1 });
    expect(r1.images[0].referrersTag?.dropped.length).toBe(2);
    expect((await findD4fsReferrers(client, 'app', M1.digest))?.entries.map((e) => e.imageId)).toEqual([V1]);
    const p2 = await cli('publish', img('app', 'v2'), '--base', img('app', 'v1'), '--sign-key', at('release.pem'), '--json');
    expect(p2.code).toBe(0);
    const r2 = JSON.parse(p2.stdout) as PublishResult;
    expect(r2.images[0].files.map((f) => [f.kind, f.signatures, f.uploaded])).toEqual([['full', 1, false], ['delta', 1, false]]);
    // the signed manifests replaced the unsigned ones in the list
    expect(r2.images[0].referrersTag).toMatchObject({ changed: true, entries: 2 });
    // signing again with the same key changes nothing
    const again = await publishImage({ image: img('app', 'v2'), bases: [img('app', 'v1')], signKey: at('release.pem'), pool });
    expect(again.images[0].referrersTag).toMatchObject({ digest: r2.images[0].referrersTag?.digest, changed: false });

    const store = at('stores', 'signed');
    const a = await cli('pull', '--from', img('app', 'v1'), '--no-load', '--store', store, '--json', '--verify-key', at('release.pub.pem'));
    expect(a.code).toBe(0);
    const b = await cli('pull', '--from', img('app', 'v2'), '--no-load', '--store', store, '--json', '--verify-key', at('release.pub.pem'));
    expect(b.stderr).toBe('');
    expect(b.code).toBe(0);
    const pb = JSON.parse(b.stdout) as PullResult;
    expect(pb).toMatchObject({ imageId: V2, from: V1 });
    expect(pb.files.map((f) => [f.kind, f.downloaded, f.bytes])).toEqual([['delta', true, r2.images[0].files[1].size]]);
    expect(pb.files[0].signedBy).toBeTruthy();
    const c = await cli('pull', '--from', img('app', 'v2'), '--no-load', '--store', at('stores', 'other-key'), '--verify-key', at('other.pub.pem'));
    expect(c.code).toBe(9);
  });

  test('a multi-platform index: the host platform by default, --platform for another; each attached to its own manifest', async () => {
    // an index of v1 as linux/amd64 and v2 relabelled linux/arm64 (config says arm64), pushed with the registry client
    await writeSimpleImage(at('multi'), 'arm', { layers: layers(2), architecture: 'arm64', config: { Cmd: ['/bin/app'] } });
    await pushOciLayout(at('multi'), 'arm', reg.host, 'multi:arm');
    await pushOciLayout(at('layout'), 'v1', reg.host, 'multi:amd');
    const arm = await client.getManifest('multi', 'arm');
    const amd = await client.getManifest('multi', 'amd');
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.OCI_INDEX,
        manifests: [
          { mediaType: MT.OCI_MANIFEST, digest: amd.digest, size: amd.bytes.length, platform: { os: 'linux', architecture: 'amd64' } },
          { mediaType: MT.OCI_MANIFEST, digest: arm.digest, size: arm.bytes.length, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        ],
      }),
    );
    const indexDigest = await client.putManifest('multi', 'latest', index, MT.OCI_INDEX);
    const host = await publishImage({ image: img('multi', 'latest'), pool });
    expect(host.manifestDigest).toBe(indexDigest);
    expect(host.images.map((i) => [i.platform, i.subject.digest])).toEqual([['linux/amd64', amd.digest]]);
    const armOnly = await publishImage({ image: img('multi', 'latest'), platforms: ['linux/arm64'], pool });
    expect(armOnly.images.map((i) => [i.platform, i.subject.digest])).toEqual([['linux/arm64', arm.digest]]);
    const all = await publishImage({ image: img('multi', 'latest'), allPlatforms: true, pool });
    expect(all.images.map((i) => i.subject.digest)).toEqual([amd.digest, arm.digest]);
    expect(all.images.every((i) => i.referrersTag?.changed === false)).toBe(true);
    expect((await client.getManifest('multi', 'latest')).digest).toBe(indexDigest);
    // pull --from the index tag: this machine's platform
    const p = await pullFromRegistry({ from: img('multi', 'latest'), store: at('stores', 'multi'), noLoad: true });
    expect(p.imageId).toBe(V1);
  });

  test('a registry with the referrers API: no referrers tag is written; discovery pages through the API and skips other artifact types', async () => {
    const proxy = await referrersProxy(reg.host);
    const viaApi = new RegistryClient(proxy.host);
    try {
      const r = await publishImage({ image: `docker://${proxy.host}/api:v2`, bases: [`docker://${proxy.host}/api:v1`], pool });
      expect(r.images[0]).toMatchObject({ subject: M2, imageId: V2, referrersApi: true });
      expect(r.images[0].referrersTag).toBeUndefined();
      expect(await client.listTags('api')).not.toContain(referrersTag(M2.digest));
      // found through the API only (the registry behind it has no tag to fall back on)
      const found = await findD4fsReferrers(viaApi, 'api', M2.digest);
      expect(found?.target).toBe(V2);
      expect(found?.entries.map((e) => e.kind).sort()).toEqual(['delta', 'full']);
      expect(await findD4fsReferrers(client, 'api', M2.digest)).toBeUndefined();
      const p = await pullFromRegistry({ from: `docker://${proxy.host}/api:v2`, store: await storeWith('api', [v1File]), noLoad: true });
      expect(p).toMatchObject({ imageId: V2, from: V1, bytes: r.images[0].files[1].size });
    } finally {
      await viaApi.close();
      await proxy.close();
    }
  });
});
