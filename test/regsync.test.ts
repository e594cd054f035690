/**
 * Registry-to-registry updates (issue 6) against real Debian docker-registry
 * instances on 127.0.0.1 (the destination with htpasswd auth) and real
 * Debian-package images of two versions (nginx, redis, libssl3):
 *
 *  - reproducible compression (layers by `gzip -9n`, Node's zlib, Go's
 *    compress/gzip, and umoci's own: pgzip with 256 KiB blocks): diff →
 *    apply gives byte-identical manifests, configs and layers;
 *  - pigz's layers: rebuilt exactly from deflate reconstruction records,
 *    every manifest digest identical; without records (--no-records) not
 *    reproducible: configs and diff_ids identical, manifests rewritten
 *    consistently, and the reports say so;
 *  - the savings report against the registry's own blob sizes;
 *  - push-vet refuses a destination lacking a base layer (or an old layer's
 *    blob), listing exactly what is missing, before any upload (the
 *    registry's storage is unchanged);
 *  - truncated, damaged and hostile patches are refused before any upload;
 *  - sync killed in the middle of a blob upload (through a proxy that holds
 *    the request) and re-run converges, and a third run has nothing to do;
 *    without --repos it reads the primary's catalog;
 *  - --old/--new with several references and list files; apply --old lists;
 *    any old image as the base of another's layers;
 *  - pull-incremental (--base scratch too, --all-platforms) / push-vet / push;
 *  - --all-platforms carries an index and both platform manifests; one
 *    platform by default; sync carries indexes whole unless --platform;
 *  - per-side credentials (flags, docker config.json) and TLS verification
 *    (an HTTPS replica with its own CA).
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { formatDiffReport } from '../src/commands/registry';
import { compressFull } from '../src/delta/codecs';
import { RegistryClient } from '../src/oci/registry/client';
import { applyPatch } from '../src/regsync/apply';
import { HEADER_SIZE, PatchReader } from '../src/regsync/container';
import { diffImageSets, DiffReport } from '../src/regsync/diff';
import { parseSpec } from '../src/regsync/imageset';
import { recompressLayout, twoPlatformIndex } from './fixtures/recompress';
import { buildDebImage, ImageName } from './fixtures/debimages';
import { makeTestCa, pushOciLayout, startRegistry, storageFiles, TestRegistry } from './helpers/registry';

const run = promisify(execFile);
const CLI = path.resolve(__dirname, '..', 'cli', 'ctr-cli.js');
const CREDS = { user: 'd4fs', pass: 'regsync-secret' };
const CREDS_ARG = `${CREDS.user}:${CREDS.pass}`;
const FAMILIES = ['nginx', 'redis', 'libssl'] as const;
const REPO_ROOT = path.resolve(__dirname, '..', '..');
const CACHE = path.join(process.env.D4FS_TEST_CACHE ?? path.join(REPO_ROOT, '.cache', 'test-images'), 'regsync');

jest.setTimeout(600_000);

/** `skopeo inspect --raw` digest (sha256 of the bytes) and document. */
async function skopeoRaw(ref: string, creds?: string): Promise<{ digest: string; size: number; doc: { config: { digest: string; size: number }; layers: { digest: string; size: number }[] } }> {
  const args = ['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), ref];
  const { stdout } = await run('skopeo', args, { encoding: 'buffer', maxBuffer: 1 << 24 } as never);
  const bytes = stdout as unknown as Buffer;
  return { digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`, size: bytes.length, doc: JSON.parse(bytes.toString('utf8')) };
}

/** `skopeo inspect --config --raw`: the config's diff_ids. */
async function skopeoDiffIds(ref: string, creds?: string): Promise<string[]> {
  const args = ['inspect', '--config', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), ref];
  const { stdout } = await run('skopeo', args, { maxBuffer: 1 << 24 });
  return (JSON.parse(stdout) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
}

/** Environment of CLI runs: temp files under the test's work dir (a killed run cannot clean up). */
let cliTmp: string | undefined;
const cliEnv = (): NodeJS.ProcessEnv => (cliTmp ? { ...process.env, D4FS_TMPDIR: cliTmp } : process.env);

/** Run the CLI (with extra environment variables); resolves with exit code, stdout, stderr. */
function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { maxBuffer: 1 << 26, env: { ...cliEnv(), ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** A recompressed variant of a Debian image, cached by source manifest digest. */
async function variant(name: ImageName, how: 'gzip-9n' | 'go-stdlib-6' | 'pigz' | 'go-members'): Promise<{ layout: string; tag: string }> {
  const img = await buildDebImage(name);
  const dir = path.join(CACHE, `${name}-${how}-${img.manifestDigest.slice(7, 23)}`);
  if (!existsSync(path.join(dir, 'index.json'))) {
    await fsp.mkdir(CACHE, { recursive: true });
    const tmp = `${dir}.tmp-${process.pid}`;
    await fsp.rm(tmp, { recursive: true, force: true });
    await recompressLayout(img.layout, img.tag, tmp, how);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rename(tmp, dir);
  }
  return { layout: dir, tag: img.tag };
}

/**
 * A patch file made of `bytes`'s header, `index` and the payload region `region`, self-consistent (the
 * stored index's lengths, the region's length and the root digest recomputed): a lie only the payloads'
 * digests or the rebuild can catch.
 */
function patchWithIndex(bytes: Buffer, index: unknown, region: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(index));
  const stored = compressFull(json, 3);
  const header = Buffer.from(bytes.subarray(0, HEADER_SIZE));
  header.writeBigUInt64LE(BigInt(stored.length), 16);
  header.writeBigUInt64LE(BigInt(json.length), 24);
  header.writeBigUInt64LE(BigInt(region.length), 32);
  createHash('sha256').update(stored).digest().copy(header, 40);
  return Buffer.concat([header, stored, region]);
}

/** Tags of a repository, [] when it does not exist. */
async function tagsOf(host: string, repo: string, creds?: string): Promise<string[]> {
  const c = new RegistryClient(host, { creds });
  try {
    return await c.listTags(repo);
  } catch {
    return [];
  } finally {
    await c.close();
  }
}

describe('registry diff / apply / sync', () => {
  let src: TestRegistry; // primary, no auth
  let dst: TestRegistry; // destination, htpasswd auth
  let work: string;
  const orig: Record<string, { layout: string; tag: string }> = {};
  const gz: Record<string, { layout: string; tag: string }> = {};
  /** Layers compressed by Go's compress/gzip (one family: redis). */
  const go: Record<string, { layout: string; tag: string }> = {};
  /** Layers compressed by pigz, which nothing reproduces (libssl and nginx). */
  const pz: Record<string, { layout: string; tag: string }> = {};

  beforeAll(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-regsync-test-'));
    cliTmp = path.join(work, 'cli-tmp');
    await fsp.mkdir(cliTmp);
    [src, dst] = await Promise.all([startRegistry(), startRegistry({ auth: CREDS })]);
    for (const f of FAMILIES) {
      for (const v of ['v1', 'v2'] as const) {
        const name = `${f}-${v}` as ImageName;
        const img = await buildDebImage(name);
        orig[name] = { layout: img.layout, tag: img.tag };
        gz[name] = await variant(name, 'gzip-9n');
        if (f === 'redis') go[name] = await variant(name, 'go-stdlib-6');
        else pz[name] = await variant(name, 'pigz');
      }
    }
    // Pushes start when their turn comes (a few at a time: skopeo is I/O bound), all v1 images
    // before any v2: two pushes into one repository at once, sharing layers, can make
    // docker-registry answer 500 to the second's blob check.
    const pushes: (() => Promise<void>)[] = [];
    for (const v of ['v1', 'v2']) {
      for (const f of FAMILIES) {
        const n = `${f}-${v}`;
        pushes.push(() => pushOciLayout(orig[n].layout, orig[n].tag, src.host, `orig/${f}:${v}`));
        pushes.push(() => pushOciLayout(gz[n].layout, gz[n].tag, src.host, `gz/${f}:${v}`));
        if (go[n]) pushes.push(() => pushOciLayout(go[n].layout, go[n].tag, src.host, `go/${f}:${v}`));
        if (go[n] && v === 'v1') pushes.push(() => pushOciLayout(go[n].layout, go[n].tag, dst.host, `go/${f}:v1`, CREDS_ARG));
        if (pz[n]) pushes.push(() => pushOciLayout(pz[n].layout, pz[n].tag, src.host, `pz/${f}:${v}`));
        if (pz[n] && v === 'v1') pushes.push(() => pushOciLayout(pz[n].layout, pz[n].tag, dst.host, `pz/${f}:v1`, CREDS_ARG));
        if (v === 'v1') {
          // the destination holds the old set (both variants)
          pushes.push(() => pushOciLayout(orig[n].layout, orig[n].tag, dst.host, `orig/${f}:v1`, CREDS_ARG));
          pushes.push(() => pushOciLayout(gz[n].layout, gz[n].tag, dst.host, `gz/${f}:v1`, CREDS_ARG));
        }
      }
    }
    for (let i = 0; i < pushes.length; i += 6) await Promise.all(pushes.slice(i, i + 6).map((p) => p()));
  });

  afterAll(async () => {
    await Promise.all([src?.stop(), dst?.stop()]);
    if (work) await fsp.rm(work, { recursive: true, force: true });
  });

  const list = async (file: string, variantName: string, version: string): Promise<string> => {
    const p = path.join(work, file);
    await fsp.writeFile(p, FAMILIES.map((f) => `docker://${src.host}/${variantName}/${f}:${version}  ${variantName}/${f}:${version}`).join('\n') + '\n');
    return p;
  };

  test('reproducible compression: diff -> apply gives identical manifests, configs and layers (CLI, auth on the destination)', async () => {
    const patch = path.join(work, 'gz.patch');
    const d = await cli(['registry', 'diff', '--old', await list('old.list', 'gz', 'v1'), '--new', await list('new.list', 'gz', 'v2'), '--out', patch, '--level', 'fast', '--json', '-q']);
    expect(d.stderr).toBe('');
    expect(d.code).toBe(0);
    const report = JSON.parse(d.stdout) as DiffReport;
    const rebuilt = report.layers.filter((l) => l.kind === 'rebuilt');
    expect(rebuilt.length).toBeGreaterThanOrEqual(3);
    for (const l of rebuilt) {
      expect(l.reproducible).toBe(true);
      expect(l.recipe).toMatch(/gzip .* -n -9/);
    }
    expect(report.rewrittenImages).toEqual([]);
    expect(report.patchBytes).toBeLessThan(report.dedupBytes * 0.5);
    // the savings report against the registry's own numbers: a plain pull/push moves every
    // blob of the new set once; layer dedup skips the blobs the old set has
    const plain = new Map<string, number>();
    const dedup = new Map<string, number>();
    const oldBlobs = new Set<string>();
    for (const f of FAMILIES) {
      const o = (await skopeoRaw(`docker://${src.host}/gz/${f}:v1`)).doc;
      oldBlobs.add(o.config.digest);
      for (const l of o.layers) oldBlobs.add(l.digest);
    }
    for (const f of FAMILIES) {
      const n = await skopeoRaw(`docker://${src.host}/gz/${f}:v2`);
      for (const b of [{ digest: n.digest, size: n.size }, n.doc.config, ...n.doc.layers]) {
        plain.set(b.digest, b.size);
        if (!oldBlobs.has(b.digest)) dedup.set(b.digest, b.size);
      }
    }
    const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);
    expect(report.plainBytes).toBe(sum(plain));
    expect(report.dedupBytes).toBe(sum(dedup));
    expect(report.patchBytes).toBe((await fsp.stat(patch)).size);
    expect(report.percentSaved).toBe(Math.round(1000 * (1 - report.patchBytes / report.plainBytes)) / 10);
    expect(report.percentSavedVsDedup).toBe(Math.round(1000 * (1 - report.patchBytes / report.dedupBytes)) / 10);
    const human = formatDiffReport(report);
    expect(human).toMatch(/plain pull\/push of the new set +\S+/);
    expect(human).toContain(`${report.percentSaved.toFixed(1)}% less than plain`);
    expect(human).toContain('every manifest will be identical at the destination');
    process.stdout.write(`gzip -9n set: plain ${report.plainBytes}, dedup ${report.dedupBytes}, patch ${report.patchBytes} (${report.ratioVsDedup}x dedup)\n`);

    const a = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '--json', '-q']);
    expect(a.stderr).toBe('');
    expect(a.code).toBe(0);
    const applied = JSON.parse(a.stdout) as { images: { identical: boolean }[]; blobsUploaded: number; patchBytes: number; plainBytes: number; dedupBytes: number; percentSaved: number };
    expect(applied.images.every((i) => i.identical)).toBe(true);
    // apply's report carries the same savings (what crossed the gap against a plain pull/push)
    expect([applied.patchBytes, applied.plainBytes, applied.dedupBytes, applied.percentSaved]).toEqual([report.patchBytes, report.plainBytes, report.dedupBytes, report.percentSaved]);
    for (const f of FAMILIES) {
      const s = await skopeoRaw(`docker://${src.host}/gz/${f}:v2`);
      const t = await skopeoRaw(`docker://${dst.host}/gz/${f}:v2`, CREDS_ARG);
      expect(t.digest).toBe(s.digest);
      expect(t.doc.config.digest).toBe(s.doc.config.digest);
      expect(await skopeoDiffIds(`docker://${dst.host}/gz/${f}:v2`, CREDS_ARG)).toEqual(await skopeoDiffIds(`docker://${src.host}/gz/${f}:v2`));
    }
    // skopeo copy re-verifies every blob digest at the destination
    await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', '--src-creds', CREDS_ARG, `docker://${dst.host}/gz/redis:v2`, `oci:${path.join(work, 'redis-copy')}:v2`]);

    // idempotent: nothing left to upload, same digests
    const again = await applyPatch({ patch, to: `docker://${dst.host}`, dest: { creds: CREDS_ARG } });
    expect(again.blobsUploaded).toBe(0);
    expect(again.images.every((i) => i.identical)).toBe(true);
  });

  test("Go's compress/gzip layers: diff -> apply rebuilds them with Go's encoder, every manifest digest identical", async () => {
    const oldList = path.join(work, 'go-old.list');
    const newList = path.join(work, 'go-new.list');
    await fsp.writeFile(oldList, `docker://${src.host}/go/redis:v1  go/redis:v1\n`);
    await fsp.writeFile(newList, `docker://${src.host}/go/redis:v2  go/redis:v2\n`);
    const patch = path.join(work, 'go.patch');
    const d = await cli(['registry', 'diff', '--old', oldList, '--new', newList, '--out', patch, '--level', 'fast', '--json', '-q']);
    expect(d.stderr).toBe('');
    expect(d.code).toBe(0);
    const report = JSON.parse(d.stdout) as DiffReport;
    const rebuilt = report.layers.filter((l) => l.kind === 'rebuilt');
    expect(rebuilt.length).toBeGreaterThanOrEqual(1);
    for (const l of rebuilt) {
      expect(l.reproducible).toBe(true);
      expect(l.recipe).toBe('Go compress/flate level 6');
    }
    expect(report.rewrittenImages).toEqual([]);
    const a = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '--json', '-q']);
    expect(a.stderr).toBe('');
    expect(a.code).toBe(0);
    const applied = JSON.parse(a.stdout) as { images: { identical: boolean }[] };
    expect(applied.images.map((i) => i.identical)).toEqual([true]);
    const s = await skopeoRaw(`docker://${src.host}/go/redis:v2`);
    const t = await skopeoRaw(`docker://${dst.host}/go/redis:v2`, CREDS_ARG);
    expect(t.digest).toBe(s.digest);
    expect(t.doc.layers.map((l) => l.digest)).toEqual(s.doc.layers.map((l) => l.digest));
  });

  test("umoci's layers (pgzip, 256 KiB blocks): diff -> apply rebuilds them byte for byte, every manifest digest identical", async () => {
    const patch = path.join(work, 'orig.patch');
    const report = await diffImageSets({
      old: ['libssl', 'nginx'].map((f) => parseSpec(`docker://${src.host}/orig/${f}:v1`, 'test')),
      new: ['libssl', 'nginx'].map((f) => parseSpec(`docker://${src.host}/orig/${f}:v2`, 'test')),
      out: patch,
      platforms: 'all',
      level: 'fast',
    });
    const rebuilt = report.layers.filter((l) => l.kind === 'rebuilt');
    expect(rebuilt.length).toBeGreaterThanOrEqual(2);
    for (const l of rebuilt) {
      expect(l.reproducible).toBe(true);
      expect(l.recipe).toBe('pgzip level 5, 256 KiB blocks (klauspost/compress v1.15.12)');
    }
    expect(report.rewrittenImages).toEqual([]);
    const applied = await applyPatch({ patch, to: `docker://${dst.host}`, dest: { creds: CREDS_ARG } });
    expect(applied.images.map((i) => i.identical)).toEqual([true, true]);
    for (const f of ['libssl', 'nginx']) {
      const s = await skopeoRaw(`docker://${src.host}/orig/${f}:v2`);
      const t = await skopeoRaw(`docker://${dst.host}/orig/${f}:v2`, CREDS_ARG);
      expect(t.digest).toBe(s.digest);
    }
  });

  test('pigz layers: rebuilt from deflate reconstruction records, every manifest digest identical; the report names each record and its bytes', async () => {
    const patch = path.join(work, 'pz-rec.patch');
    const report = await diffImageSets({
      old: ['libssl', 'nginx'].map((f) => parseSpec(`docker://${src.host}/pz/${f}:v1`, 'test')),
      new: ['libssl', 'nginx'].map((f) => parseSpec(`docker://${src.host}/pz/${f}:v2 pz/${f}-rec:v2`, 'test')),
      out: patch,
      platforms: 'all',
      level: 'fast',
    });
    const rebuilt = report.layers.filter((l) => l.kind === 'rebuilt');
    expect(rebuilt.length).toBeGreaterThanOrEqual(2);
    for (const l of rebuilt) {
      expect(l.reproducible).toBe(true);
      expect(l.recipe).toMatch(/^deflate reconstruction record of \d+ bytes$/);
      const bytes = Number(/of (\d+) bytes/.exec(l.recipe as string)?.[1]);
      expect(bytes).toBeGreaterThan(0);
      expect(bytes).toBeLessThan(0.05 * l.size); // pigz is zlib: its parse is predicted well
    }
    expect(report.rewrittenImages).toEqual([]);
    // the patch is a version 3 index (a record is a payload an older reader would not know)
    const opened = await PatchReader.open(patch);
    expect(opened.index.version).toBe(3);

    // a hostile record (one byte changed, its payload digest and the root made consistent): the
    // rebuild refuses it (CORRUPT, exit 6) before anything is pushed
    const bytes = await fsp.readFile(patch);
    const storedLen = Number(bytes.readBigUInt64LE(16));
    const region = bytes.subarray(HEADER_SIZE + storedLen);
    const withRecord = opened.index.layers.find((l) => l.kind === 'rebuilt' && l.recipe?.kind === 'gzip' && l.recipe.engine === 'record');
    const recPayload = withRecord?.kind === 'rebuilt' && withRecord.recipe?.kind === 'gzip' && withRecord.recipe.engine === 'record' ? withRecord.recipe.payload : -1;
    expect(recPayload).toBeGreaterThanOrEqual(0);
    const range = opened.payloadRange(recPayload);
    const rel = range.start - HEADER_SIZE - storedLen;
    const rec = Buffer.from(region.subarray(rel, rel + range.length));
    rec[rec.length >> 1] ^= 0x10;
    const ix = JSON.parse(JSON.stringify(opened.index)) as { payloads: { length: number; digest: string }[] };
    ix.payloads[recPayload].digest = `sha256:${createHash('sha256').update(rec).digest('hex')}`;
    const lie = path.join(work, 'pz-rec-lie.patch');
    await fsp.writeFile(lie, patchWithIndex(bytes, ix, Buffer.concat([region.subarray(0, rel), rec, region.subarray(rel + range.length)])));
    const before = await storageFiles(dst);
    const refused = await cli(['registry', 'apply', lie, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '-q']);
    expect(refused.code).toBe(6);
    expect(refused.stderr).toMatch(/reconstruction record/);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(await storageFiles(dst)).toEqual(before);
    expect(await tagsOf(dst.host, 'pz/libssl-rec', CREDS_ARG)).toEqual([]);
    const applied = await applyPatch({ patch, to: `docker://${dst.host}`, dest: { creds: CREDS_ARG }, old: ['pz/libssl:v1', 'pz/nginx:v1'] });
    for (const img of applied.images) expect({ img: img.target, identical: img.identical }).toEqual({ img: img.target, identical: true });
    for (const f of ['libssl', 'nginx']) {
      const s = await skopeoRaw(`docker://${src.host}/pz/${f}:v2`);
      const t = await skopeoRaw(`docker://${dst.host}/pz/${f}-rec:v2`, CREDS_ARG);
      expect(t.digest).toBe(s.digest);
    }
  });

  test('eStargz-shaped layers (a Go gzip member per 256 KiB): rebuilt member by member, every manifest digest identical', async () => {
    const gm: Record<string, { layout: string; tag: string }> = {};
    for (const v of ['v1', 'v2'] as const) gm[v] = await variant(`libssl-${v}` as ImageName, 'go-members');
    await pushOciLayout(gm.v1.layout, gm.v1.tag, src.host, 'gm/libssl:v1');
    await pushOciLayout(gm.v2.layout, gm.v2.tag, src.host, 'gm/libssl:v2');
    await pushOciLayout(gm.v1.layout, gm.v1.tag, dst.host, 'gm/libssl:v1', CREDS_ARG);
    const patch = path.join(work, 'gm.patch');
    const r = await cli(['registry', 'diff', '--old', `docker://${src.host}/gm/libssl:v1`, '--new', `docker://${src.host}/gm/libssl:v2`, '--out', patch, '--level', 'fast', '--json', '-q']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as DiffReport;
    const rebuilt = report.layers.filter((l) => l.kind === 'rebuilt');
    expect(rebuilt.length).toBeGreaterThanOrEqual(1);
    for (const l of rebuilt) expect(l.recipe).toMatch(/^\d+ gzip members: \d+ by Go compress\/flate level 6 \(a description of \d+ bytes\)$/);
    expect(report.rewrittenImages).toEqual([]);
    const applied = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '-q']);
    expect(applied.code).toBe(0);
    expect(applied.stdout).toMatch(/gm\/libssl:v2 +sha256:[0-9a-f]{64} +identical to the source/);
    expect((await skopeoRaw(`docker://${dst.host}/gm/libssl:v2`, CREDS_ARG)).digest).toBe((await skopeoRaw(`docker://${src.host}/gm/libssl:v2`)).digest);
  });

  test('without records (--no-records), pigz layers are not reproducible: configs and diff_ids identical, manifests rewritten consistently, and the reports say so', async () => {
    const patch = path.join(work, 'pz.patch');
    const report = await diffImageSets({
      old: ['libssl', 'nginx'].map((f) => parseSpec(`docker://${src.host}/pz/${f}:v1`, 'test')),
      new: ['libssl', 'nginx'].map((f) => parseSpec(`docker://${src.host}/pz/${f}:v2`, 'test')),
      out: patch,
      platforms: 'all',
      level: 'fast',
      records: false,
    });
    const rebuilt = report.layers.filter((l) => l.kind === 'rebuilt');
    expect(rebuilt.length).toBeGreaterThanOrEqual(2);
    for (const l of rebuilt) {
      expect(l.reproducible).toBe(false);
      expect(l.reason).toMatch(/no zlib, gzip or Go encoder reproduces/);
      expect(l.rewrittenDigest).toMatch(/^sha256:/);
    }
    expect(report.rewrittenImages.sort()).toEqual(['pz/libssl:v2', 'pz/nginx:v2']);
    const applied = await applyPatch({ patch, to: `docker://${dst.host}`, dest: { creds: CREDS_ARG } });
    for (const img of applied.images) {
      expect(img.identical).toBe(false);
      expect(img.rewrittenLayers.length).toBeGreaterThan(0);
    }
    for (const f of ['libssl', 'nginx']) {
      const s = await skopeoRaw(`docker://${src.host}/pz/${f}:v2`);
      const t = await skopeoRaw(`docker://${dst.host}/pz/${f}:v2`, CREDS_ARG);
      expect(t.digest).not.toBe(s.digest);
      expect(t.doc.config.digest).toBe(s.doc.config.digest); // same image ID
      expect(await skopeoDiffIds(`docker://${dst.host}/pz/${f}:v2`, CREDS_ARG)).toEqual(await skopeoDiffIds(`docker://${src.host}/pz/${f}:v2`));
      // the rewritten layers are the ones the diff announced
      for (const l of t.doc.layers) {
        if (s.doc.layers.some((x) => x.digest === l.digest)) continue;
        expect(rebuilt.map((r) => r.rewrittenDigest)).toContain(l.digest);
      }
      await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', '--src-creds', CREDS_ARG, `docker://${dst.host}/pz/${f}:v2`, `oci:${path.join(work, `${f}-pz-copy`)}:v2`]);
    }
    // the human report says so too
    const shown = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '-q']);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(/REWRITTEN/);

    // a later patch made against the source's images applies to the rewritten ones:
    // the libssl layer nginx:v2 shares with libssl:v2 is referenced by its source digest,
    // which the destination holds under another compression; it is found by diff_id
    const later = path.join(work, 'later.patch');
    await diffImageSets({
      old: [parseSpec(`docker://${src.host}/pz/libssl:v2`, 'test')],
      new: [parseSpec(`docker://${src.host}/pz/nginx:v2 pz/nginx-later:v2`, 'test')],
      out: later,
      platforms: 'all',
      level: 'fast',
      records: false,
    });
    const laterApplied = await applyPatch({ patch: later, to: `docker://${dst.host}`, dest: { creds: CREDS_ARG } });
    expect(laterApplied.layers.some((l) => l.kind === 'referenced' && l.note?.includes('other compression'))).toBe(true);
    const laterDst = await skopeoRaw(`docker://${dst.host}/pz/nginx-later:v2`, CREDS_ARG);
    expect(laterDst.doc.config.digest).toBe((await skopeoRaw(`docker://${src.host}/pz/nginx:v2`)).doc.config.digest);
    await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', '--src-creds', CREDS_ARG, `docker://${dst.host}/pz/nginx-later:v2`, `oci:${path.join(work, 'nginx-later')}:v2`]);

    // --non-reproducible ship: such layers travel whole and the manifests stay identical
    const ship = path.join(work, 'ship.patch');
    const shipped = await diffImageSets({
      old: [parseSpec(`docker://${src.host}/pz/libssl:v1 pz/libssl-ship:v1`, 'test')],
      new: [parseSpec(`docker://${src.host}/pz/libssl:v2 pz/libssl-ship:v2`, 'test')],
      out: ship,
      platforms: 'all',
      level: 'fast',
      nonReproducible: 'ship',
      records: false,
    });
    expect(shipped.layers.filter((l) => l.kind === 'blob').length).toBe(1);
    expect(shipped.rewrittenImages).toEqual([]);
    const shipApplied = await applyPatch({ patch: ship, to: `docker://${dst.host}`, dest: { creds: CREDS_ARG }, old: [`pz/libssl:v1`] });
    expect(shipApplied.images[0].identical).toBe(true);
    expect((await skopeoRaw(`docker://${dst.host}/pz/libssl-ship:v2`, CREDS_ARG)).digest).toBe((await skopeoRaw(`docker://${src.host}/pz/libssl:v2`)).digest);
  });

  test('push-vet refuses a destination lacking a base layer, before any upload', async () => {
    const patch = path.join(work, 'gz.patch'); // from the first test, old set gz/*:v1
    // a destination prefix holding only one of the three old images
    await pushOciLayout(gz['libssl-v1'].layout, gz['libssl-v1'].tag, dst.host, `partial/gz/libssl:v1`, CREDS_ARG);
    const before = await storageFiles(dst);
    const r = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}/partial`, '--dest-creds', CREDS_ARG, '-q']);
    expect(r.code).toBe(5); // FAILED_PRECONDITION
    expect(r.stderr).toMatch(/push-vet: the destination lacks \d+/);
    expect(r.stderr).toMatch(/partial\/gz\/redis/);
    // the list names exactly the layers that are neither in the target repository nor
    // mountable from the one old image there (partial/gz/libssl:v1), and the old layers
    // whose contents the patch needs that no old image there holds
    const lines = r.stderr.split('\n').filter((l) => /^\s+(layer|old layer)/.test(l));
    const patchIndex = (await PatchReader.open(patch)).index;
    const c = new RegistryClient(dst.host, { creds: CREDS_ARG });
    try {
      let expectedLines = 0;
      for (const img of patchIndex.images) {
        const repo = `partial/${img.name}`;
        for (const l of (await skopeoRaw(`docker://${src.host}/${img.name}:${img.tag}`)).doc.layers) {
          if (!patchIndex.layers.some((x) => x.kind === 'referenced' && x.digest === l.digest)) continue;
          const available = (await c.blobExists(repo, l.digest)) || (await c.blobExists('partial/gz/libssl', l.digest));
          const listed = lines.some((x) => x.includes(`layer ${l.digest}`) && x.includes(`${dst.host}/${repo}`));
          expect(`${repo} ${l.digest} listed=${listed}`).toBe(`${repo} ${l.digest} listed=${!available}`);
          if (!available) expectedLines++;
        }
      }
      const oldDiffIds = await skopeoDiffIds(`docker://${dst.host}/partial/gz/libssl:v1`, CREDS_ARG);
      for (const so of patchIndex.sources) {
        const listed = lines.some((x) => x.includes(`old layer with diff_id ${so.diffId}`));
        expect(listed).toBe(!oldDiffIds.includes(so.diffId));
        if (listed) expectedLines++;
      }
      expect(expectedLines).toBeGreaterThan(0);
      expect(lines).toHaveLength(expectedLines);
    } finally {
      await c.close();
    }
    // nothing was uploaded: not a blob, not a link, not an upload session
    expect(await storageFiles(dst)).toEqual(before);
    for (const f of FAMILIES) expect(await tagsOf(dst.host, `partial/gz/${f}`, CREDS_ARG)).not.toContain('v2');
    expect(await tagsOf(dst.host, 'partial/gz/redis', CREDS_ARG)).toEqual([]);
    // an old image whose layer blob is gone from its repository (deleted through the API):
    // push-vet names the old layer the patch takes file contents from, and uploads nothing
    const lpatch = path.join(work, 'holes.patch');
    await diffImageSets({
      old: [parseSpec(`docker://${src.host}/gz/libssl:v1`, 'test')],
      new: [parseSpec(`docker://${src.host}/gz/libssl:v2 holes/gz/libssl:v2`, 'test')],
      out: lpatch,
      platforms: 'all',
      level: 'fast',
    });
    const lix = (await PatchReader.open(lpatch)).index;
    expect(lix.sources.length).toBeGreaterThan(0);
    await pushOciLayout(gz['libssl-v1'].layout, gz['libssl-v1'].tag, dst.host, 'holes/gz/libssl:v1', CREDS_ARG);
    const holed = (await skopeoRaw(`docker://${dst.host}/holes/gz/libssl:v1`, CREDS_ARG)).doc.layers.find((l, i) => i > 0) as { digest: string };
    expect(lix.sources.map((x) => x.digest)).toContain(holed.digest);
    const del = await fetch(`http://${dst.host}/v2/holes/gz/libssl/blobs/${holed.digest}`, { method: 'DELETE', headers: { Authorization: `Basic ${Buffer.from(CREDS_ARG).toString('base64')}` } });
    expect(del.status).toBe(202);
    const beforeHoles = await storageFiles(dst);
    const h = await cli(['registry', 'apply', lpatch, '--to', `docker://${dst.host}`, '--old', 'holes/gz/libssl:v1', '--dest-creds', CREDS_ARG, '-q']);
    expect(h.code).toBe(5);
    expect(h.stderr).toMatch(/push-vet: the destination lacks 1 blob/);
    expect(h.stderr).toContain(`old layer ${holed.digest}`);
    expect(h.stderr).toMatch(/its blob is missing/);
    expect(await storageFiles(dst)).toEqual(beforeHoles);
    expect(await tagsOf(dst.host, 'holes/gz/libssl', CREDS_ARG)).toEqual(['v1']);

    // --vet-only on the complete destination passes
    const ok = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '--vet-only', '-q']);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/push-vet OK/);
  });

  test('truncated, damaged and hostile patches are refused before anything is pushed', async () => {
    const patch = path.join(work, 'libssl.patch');
    await diffImageSets({
      old: [parseSpec(`docker://${src.host}/gz/libssl:v1`, 'test')],
      new: [parseSpec(`docker://${src.host}/gz/libssl:v2 hostile/libssl:v2`, 'test')],
      out: patch,
      platforms: 'all',
      level: 'fast',
    });
    await pushOciLayout(gz['libssl-v1'].layout, gz['libssl-v1'].tag, dst.host, `hostile/libssl:v2-base`, CREDS_ARG);
    const bytes = await fsp.readFile(patch);
    const reader = await PatchReader.open(patch);
    const target = `docker://${dst.host}`;
    const attempt = async (b: Buffer, name: string): Promise<{ code: number; stderr: string }> => {
      const p = path.join(work, name);
      await fsp.writeFile(p, b);
      const before = await storageFiles(dst);
      const r = await cli(['registry', 'apply', p, '--to', target, '--old', `hostile/libssl:v2-base`, '--dest-creds', CREDS_ARG, '-q']);
      expect(await tagsOf(dst.host, 'hostile/libssl', CREDS_ARG)).toEqual(['v2-base']);
      expect(await storageFiles(dst)).toEqual(before); // nothing pushed, not even an upload started
      expect(r.stderr.trim().split('\n')).toHaveLength(1); // one-line error
      return r;
    };
    // truncated
    let r = await attempt(bytes.subarray(0, bytes.length - 1000), 'truncated.patch');
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/truncated/);
    // a flipped bit in the last payload
    const flipped = Buffer.from(bytes);
    flipped[flipped.length - 10] ^= 0x40;
    r = await attempt(flipped, 'flipped.patch');
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/payload \d+ does not match its digest/);
    // hostile indexes, made self-consistent (root digest and lengths recomputed)
    const storedLen = Number(bytes.readBigUInt64LE(16));
    const region = bytes.subarray(HEADER_SIZE + storedLen);
    const withIndex = (mutate: (ix: Record<string, unknown>) => void, newRegion: Buffer = region): Buffer => {
      const ix = JSON.parse(JSON.stringify(reader.index)) as Record<string, unknown>;
      mutate(ix);
      return patchWithIndex(bytes, ix, newRegion);
    };
    r = await attempt(withIndex((ix) => ((ix.images as { name: string }[])[0].name = '../../etc')), 'badname.patch');
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(/invalid repository name/);
    r = await attempt(
      withIndex((ix) => {
        const l = (ix.layers as { kind: string; runs?: number[] }[]).find((x) => x.kind === 'rebuilt') as { runs: number[] };
        l.runs[0] += 512;
      }),
      'badruns.patch',
    );
    expect(r.code).toBe(7);
    r = await attempt(
      withIndex((ix) => {
        const c = (ix.contents as { size: number }[])[0];
        c.size = 2 ** 52;
      }),
      'hugesize.patch',
    );
    expect(r.code).toBe(7);
    // a lie the container cannot see: one content's payload replaced by another valid
    // frame (payload digest updated); the rebuild catches it before any push
    const ci = reader.index.contents.findIndex((c) => c.enc !== 'old');
    expect(ci).toBeGreaterThanOrEqual(0);
    const victim = reader.index.contents[ci] as { payload: number; size: number };
    const fake = compressFull(Buffer.alloc(victim.size, 0x41), 3);
    const range = reader.payloadRange(victim.payload);
    const rel = range.start - HEADER_SIZE - storedLen;
    const lieRegion = Buffer.concat([region.subarray(0, rel), fake, region.subarray(rel + range.length)]);
    const lie = withIndex((j) => {
      const c = (j.contents as Record<string, unknown>[])[ci];
      for (const k of ['base', 'gzip', 'inner', 'baseInflate']) delete c[k];
      c.enc = 'zstd';
      (j.payloads as { length: number; digest: string }[])[victim.payload] = { length: fake.length, digest: `sha256:${createHash('sha256').update(fake).digest('hex')}` };
    }, lieRegion);
    r = await attempt(lie, 'lie.patch');
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/hashes to|does not match/);
    // the untouched patch applies
    const good = await cli(['registry', 'apply', patch, '--to', target, '--old', `hostile/libssl:v2-base`, '--dest-creds', CREDS_ARG, '-q']);
    expect(good.code).toBe(0);
    expect((await tagsOf(dst.host, 'hostile/libssl', CREDS_ARG)).sort()).toEqual(['v2', 'v2-base']);
  });

  test('sync killed mid-way and re-run converges; a third run has nothing to do; without --repos the primary\'s catalog is used', async () => {
    const replica = await startRegistry();
    try {
      for (const f of FAMILIES) await pushOciLayout(gz[`${f}-v1`].layout, gz[`${f}-v1`].tag, replica.host, `gz/${f}:v1`);
      const argsTo = (host: string): string[] => ['registry', 'sync', '--from', `docker://${src.host}/gz`, '--to', `docker://${host}/gz`, '--level', 'fast'];
      const args = argsTo(replica.host);
      // first run, through a proxy in front of the replica: once the first image's tag is in,
      // the run is killed while a blob of the next image is being uploaded (the proxy holds
      // that request, so the kill lands mid-upload whatever the machine's load)
      const proxy = http.createServer();
      let child: ReturnType<typeof spawn> | undefined;
      let tagsPut = 0;
      let killedAt = '';
      proxy.on('request', (req, res) => {
        const url = req.url ?? '';
        if (tagsPut >= 1 && /\/blobs\/uploads\/./.test(url) && (req.method === 'PATCH' || req.method === 'PUT')) {
          killedAt = `${req.method} ${url.replace(/\?.*$/, '')}`;
          child?.kill('SIGKILL');
          req.resume();
          res.destroy();
          return;
        }
        const up = http.request({ host: '127.0.0.1', port: Number(replica.host.split(':')[1]), method: req.method, path: url, headers: req.headers }, (r) => {
          if (req.method === 'PUT' && /\/manifests\/(?!sha256:)[^/]+$/.test(url) && r.statusCode === 201) tagsPut++;
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        });
        up.on('error', () => res.destroy());
        req.pipe(up);
      });
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
      const proxyHost = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
      const killed = await new Promise<{ signal: string | null; stderr: string }>((resolve) => {
        child = spawn(process.execPath, [CLI, ...argsTo(proxyHost), '--repos', FAMILIES.join(',')], { stdio: ['ignore', 'ignore', 'pipe'], env: cliEnv() });
        let stderr = '';
        child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('exit', (_code, signal) => resolve({ signal, stderr }));
      });
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
      expect(killedAt).toMatch(/^(PATCH|PUT) \/v2\/gz\/[a-z]+\/blobs\/uploads\//);
      expect(killed.signal).toBe('SIGKILL');
      const afterKill = await Promise.all(FAMILIES.map((f) => tagsOf(replica.host, `gz/${f}`)));
      const doneBeforeKill = FAMILIES.filter((_f, i) => afterKill[i].includes('v2'));
      expect(doneBeforeKill).toHaveLength(1);
      expect(doneBeforeKill.length).toBeLessThan(FAMILIES.length);
      // the images pushed before the kill are complete and exact
      for (const f of doneBeforeKill) expect((await skopeoRaw(`docker://${replica.host}/gz/${f}:v2`)).digest).toBe((await skopeoRaw(`docker://${src.host}/gz/${f}:v2`)).digest);
      // second run (repositories from the primary's catalog) brings over only what is still missing
      const second = await cli([...args, '--json', '-q']);
      expect(second.stderr).toBe('');
      expect(second.code).toBe(0);
      const rep = JSON.parse(second.stdout) as { repos: string[]; updated: string[]; upToDate: string[]; apply: { images: { identical: boolean }[] } };
      expect(rep.repos).toEqual([...FAMILIES].sort());
      // the catalog, in one page and one repository per page (Link pagination)
      const pc = new RegistryClient(src.host);
      try {
        const all = await pc.listRepositories();
        expect(all).toEqual(expect.arrayContaining(FAMILIES.map((f) => `gz/${f}`)));
        expect(await pc.listRepositories(1)).toEqual(all);
      } finally {
        await pc.close();
      }
      expect(rep.updated.sort()).toEqual(FAMILIES.filter((f) => !doneBeforeKill.includes(f)).map((f) => `${f}:v2`).sort());
      expect(rep.upToDate.sort()).toEqual([...FAMILIES.map((f) => `${f}:v1`), ...doneBeforeKill.map((f) => `${f}:v2`)].sort());
      expect(rep.apply.images.every((i) => i.identical)).toBe(true);
      for (const f of FAMILIES) {
        for (const v of ['v1', 'v2']) {
          expect((await skopeoRaw(`docker://${replica.host}/gz/${f}:${v}`)).digest).toBe((await skopeoRaw(`docker://${src.host}/gz/${f}:${v}`)).digest);
        }
      }
      // skopeo re-verifies every blob of an image that was being pushed when the first run was killed
      const interrupted = FAMILIES.find((f) => !doneBeforeKill.includes(f)) as string;
      await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${replica.host}/gz/${interrupted}:v2`, `oci:${path.join(work, `sync-${interrupted}`)}:v2`]);
      // third run: up to date
      const third = await cli([...args, '--json', '-q']);
      expect(third.code).toBe(0);
      const rep3 = JSON.parse(third.stdout) as { updated: string[]; upToDate: string[] };
      expect(rep3.updated).toEqual([]);
      expect(rep3.upToDate.length).toBe(FAMILIES.length * 2);
      // human report of an up-to-date sync
      const human = await cli([...args, '--repos', 'libssl', '-q']);
      expect(human.code).toBe(0);
      expect(human.stdout).toMatch(/0 tag\(s\) brought over, 2 already up to date/);
    } finally {
      await replica.stop();
    }
  });

  test('apply --old-from reads the old set from another registry (per-side credentials) and copies referenced layers', async () => {
    const patch = path.join(work, 'oldfrom.patch');
    await diffImageSets({
      old: [parseSpec(`docker://${src.host}/gz/libssl:v1`, 'test')],
      new: [parseSpec(`docker://${src.host}/gz/libssl:v2`, 'test')],
      out: patch,
      platforms: 'all',
      level: 'fast',
    });
    const fresh = await startRegistry();
    try {
      // the fresh registry lacks the old set: plain apply refuses, --old-from (auth) works
      const refused = await cli(['registry', 'apply', patch, '--to', `docker://${fresh.host}`, '-q']);
      expect(refused.code).toBe(5);
      const r = await cli(['registry', 'apply', patch, '--to', `docker://${fresh.host}`, '--old-from', `docker://${dst.host}`, '--src-creds', CREDS_ARG, '--json', '-q']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const rep = JSON.parse(r.stdout) as { layers: { kind: string; actions: string[] }[] };
      expect(rep.layers.find((l) => l.kind === 'referenced')?.actions.join()).toMatch(/copied from the old set/);
      expect((await skopeoRaw(`docker://${fresh.host}/gz/libssl:v2`)).digest).toBe((await skopeoRaw(`docker://${src.host}/gz/libssl:v2`)).digest);
      // wrong credentials for the old side are an authentication error, not a crash
      const bad = await cli(['registry', 'apply', patch, '--to', `docker://${fresh.host}/other`, '--old-from', `docker://${dst.host}`, '--src-creds', 'd4fs:wrong', '-q']);
      expect(bad.code).toBe(9);
    } finally {
      await fresh.stop();
    }
  });

  test('pull-incremental, push-vet and push of an OCI archive holding only the new layers', async () => {
    const archive = path.join(work, 'libssl-incr.tar');
    const p = await cli(['registry', 'pull-incremental', '--base', `docker://${src.host}/gz/libssl:v1`, '--final', `docker://${src.host}/gz/libssl:v2`, '--out', archive, '--json']);
    expect(p.code).toBe(0);
    const pr = JSON.parse(p.stdout) as { layersIncluded: number; layersOmitted: number; archiveBytes: number; fullBytes: number };
    expect(pr.layersIncluded).toBe(1);
    expect(pr.layersOmitted).toBe(1);
    expect(pr.archiveBytes).toBeLessThan(pr.fullBytes / 2);
    // skopeo reads it as an OCI archive (manifest and config)
    await run('skopeo', ['inspect', '--raw', `oci-archive:${archive}`]);
    const vetBad = await cli(['registry', 'push-vet', archive, '--base', `docker://${dst.host}/nowhere/libssl`, '--dest-creds', CREDS_ARG]);
    expect(vetBad.code).toBe(5);
    expect(vetBad.stderr).toMatch(/lacks 1 layer/);
    const vetOk = await cli(['registry', 'push-vet', archive, '--base', `docker://${dst.host}/gz/libssl`, '--dest-creds', CREDS_ARG]);
    expect(vetOk.code).toBe(0);
    const pushed = await cli(['registry', 'push', archive, `docker://${dst.host}/incr/libssl:v2`, '--base-repo', 'gz/libssl', '--dest-creds', CREDS_ARG, '--json']);
    expect(pushed.code).toBe(0);
    expect((JSON.parse(pushed.stdout) as { mounted: number }).mounted).toBe(1);
    expect((await skopeoRaw(`docker://${dst.host}/incr/libssl:v2`, CREDS_ARG)).digest).toBe((await skopeoRaw(`docker://${src.host}/gz/libssl:v2`)).digest);
  });

  test('--all-platforms carries a two-platform index whole and identical', async () => {
    const v1 = path.join(work, 'mp-v1');
    const v2 = path.join(work, 'mp-v2');
    await twoPlatformIndex(gz['libssl-v1'].layout, gz['libssl-v1'].tag, v1, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    await twoPlatformIndex(gz['libssl-v2'].layout, gz['libssl-v2'].tag, v2, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    const copyAll = async (from: string, to: string, creds?: string): Promise<void> => {
      await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--all', '--dest-tls-verify=false', ...(creds ? ['--dest-creds', creds] : []), from, to]);
    };
    await copyAll(`oci:${v1}:libssl-v1`, `docker://${src.host}/mp/libssl:v1`);
    await copyAll(`oci:${v2}:libssl-v2`, `docker://${src.host}/mp/libssl:v2`);
    await copyAll(`oci:${v1}:libssl-v1`, `docker://${dst.host}/mp/libssl:v1`, CREDS_ARG);
    const patch = path.join(work, 'mp.patch');
    const d = await cli(['registry', 'diff', '--old', `docker://${src.host}/mp/libssl:v1`, '--new', `docker://${src.host}/mp/libssl:v2`, '--out', patch, '--all-platforms', '--level', 'fast', '--json', '-q']);
    expect(d.code).toBe(0);
    const report = JSON.parse(d.stdout) as DiffReport;
    expect(report.images[0].manifests).toBe(2);
    const a = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '-q']);
    expect(a.code).toBe(0);
    expect((await skopeoRaw(`docker://${dst.host}/mp/libssl:v2`, CREDS_ARG)).digest).toBe(report.images[0].root);
    expect((await skopeoRaw(`docker://${src.host}/mp/libssl:v2`)).digest).toBe(report.images[0].root);
    // the index and both platform manifests arrived, byte for byte, with their configs and layers
    const srcClient = new RegistryClient(src.host);
    const dstClient = new RegistryClient(dst.host, { creds: CREDS_ARG });
    let hostManifest = '';
    try {
      const index = JSON.parse((await srcClient.getManifest('mp/libssl', 'v2')).bytes.toString('utf8')) as { manifests: { digest: string; platform: { architecture: string } }[] };
      expect(index.manifests.map((m) => m.platform.architecture).sort()).toEqual(['amd64', 'arm64']);
      for (const child of index.manifests) {
        const want = await srcClient.getManifest('mp/libssl', child.digest);
        const got = await dstClient.getManifest('mp/libssl', child.digest);
        expect(got.bytes.equals(want.bytes)).toBe(true);
        const m = JSON.parse(got.bytes.toString('utf8')) as { config: { digest: string }; layers: { digest: string }[] };
        expect(await dstClient.blobExists('mp/libssl', m.config.digest)).toBe(true);
        for (const l of m.layers) expect(await dstClient.blobExists('mp/libssl', l.digest)).toBe(true);
      }
      hostManifest = (index.manifests.find((m) => m.platform.architecture === (process.arch === 'x64' ? 'amd64' : process.arch)) as { digest: string }).digest;
    } finally {
      await srcClient.close();
      await dstClient.close();
    }

    // pull-incremental --all-platforms: the index, both manifests and configs, only the layers v1 lacks; pushed next to v1
    const archive = path.join(work, 'mp-incr.tar');
    const pi = await cli(['registry', 'pull-incremental', '--base', `docker://${src.host}/mp/libssl:v1`, '--final', `docker://${src.host}/mp/libssl:v2`, '--all-platforms', '--out', archive, '--json']);
    expect(pi.code).toBe(0);
    const pir = JSON.parse(pi.stdout) as { digest: string; layersIncluded: number; layersOmitted: number };
    expect(pir.digest).toBe(report.images[0].root);
    expect(pir.layersIncluded).toBe(1); // the libssl3 layer, shared by both platform manifests
    expect(pir.layersOmitted).toBe(2); // the base layer, once per manifest
    const pushed = await cli(['registry', 'push', archive, `docker://${dst.host}/mp-incr/libssl:v2`, '--base-repo', 'mp/libssl', '--dest-creds', CREDS_ARG, '--json']);
    expect(pushed.stderr).toBe('');
    expect(pushed.code).toBe(0);
    expect((await skopeoRaw(`docker://${dst.host}/mp-incr/libssl:v2`, CREDS_ARG)).digest).toBe(report.images[0].root);
    await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--all', '--src-tls-verify=false', '--src-creds', CREDS_ARG, `docker://${dst.host}/mp-incr/libssl:v2`, `oci:${path.join(work, 'mp-incr-copy')}:v2`]);

    // by default, one platform (this machine's) is taken out of the index
    const dflt = await cli(['registry', 'diff', '--old', `docker://${src.host}/mp/libssl:v1`, '--new', `docker://${src.host}/mp/libssl:v2=mp/libssl-host:v2`, '--out', path.join(work, 'mp-host.patch'), '--level', 'fast', '--json', '-q']);
    expect(dflt.code).toBe(0);
    const rd = JSON.parse(dflt.stdout) as DiffReport;
    expect(rd.images[0].manifests).toBe(1);
    expect(rd.images[0].root).toBe(hostManifest);

    // one platform out of the index: its manifest is carried and tagged
    const one = path.join(work, 'mp-arm64.patch');
    const d1 = await cli(['registry', 'diff', '--old', `docker://${src.host}/mp/libssl:v1`, '--new', `docker://${src.host}/mp/libssl:v2=mp/libssl-arm64:v2`, '--out', one, '--platform', 'linux/arm64/v8', '--level', 'fast', '--json', '-q']);
    expect(d1.code).toBe(0);
    const r1 = JSON.parse(d1.stdout) as DiffReport;
    expect(r1.images[0].manifests).toBe(1);
    const a1 = await cli(['registry', 'apply', one, '--to', `docker://${dst.host}`, '--dest-creds', CREDS_ARG, '-q']);
    expect(a1.code).toBe(0);
    const got = await skopeoRaw(`docker://${dst.host}/mp/libssl-arm64:v2`, CREDS_ARG);
    expect(got.digest).toBe(r1.images[0].root);
    const cfg = await run('skopeo', ['inspect', '--config', '--raw', '--tls-verify=false', '--creds', CREDS_ARG, `docker://${dst.host}/mp/libssl-arm64:v2`]);
    expect((JSON.parse(cfg.stdout) as { architecture: string }).architecture).toBe('arm64');
  });
  test('--old and --new take several references and list files (mixed); apply --old takes the same lists, names relative to the destination', async () => {
    // old: two references and a list; new: a list with names and a reference with =NAME
    const oldList = path.join(work, 'mixed-old.list');
    await fsp.writeFile(oldList, `# the old nginx\ndocker://${src.host}/gz/nginx:v1\n`);
    const newList = path.join(work, 'mixed-new.list');
    await fsp.writeFile(newList, `docker://${src.host}/gz/libssl:v2 multi/libssl:v2\ndocker://${src.host}/gz/redis:v2   multi/redis:v2  # comment\n`);
    const patch = path.join(work, 'mixed.patch');
    const d = await cli([
      'registry', 'diff',
      '--old', `docker://${src.host}/gz/libssl:v1`, `docker://${src.host}/gz/redis:v1`, oldList,
      '--new', newList, `docker://${src.host}/gz/nginx:v2=multi/nginx:v2`,
      '--out', patch, '--level', 'fast', '--json', '-q',
    ]);
    expect(d.stderr).toBe('');
    expect(d.code).toBe(0);
    const report = JSON.parse(d.stdout) as DiffReport;
    expect(report.images.map((i) => `${i.name}:${i.tag}`).sort()).toEqual(['multi/libssl:v2', 'multi/nginx:v2', 'multi/redis:v2']);
    const ix = (await PatchReader.open(patch)).index;
    expect(ix.old.map((o) => `${o.name}:${o.tag}`).sort()).toEqual(['gz/libssl:v1', 'gz/nginx:v1', 'gz/redis:v1']);
    // every old image contributed: the base layer is referenced, and file contents come from old layers of each family
    expect(report.layers.some((l) => l.kind === 'referenced')).toBe(true);
    expect(report.contents.old + report.contents.patched).toBeGreaterThan(0);

    // apply --old LIST REF NAME: the list (made for diff, naming the primary) is read as names at the destination
    const applyList = path.join(work, 'mixed-apply.list');
    await fsp.writeFile(applyList, `docker://${src.host}/gz/nginx:v1\ndocker://${src.host}/gz/redis:v1 gz/redis:v1\n`);
    const libsslV1 = (await skopeoRaw(`docker://${dst.host}/gz/libssl:v1`, CREDS_ARG)).digest;
    const a = await cli(['registry', 'apply', patch, '--to', `docker://${dst.host}`, '--old', applyList, `docker://${dst.host}/gz/libssl:v1`, `gz/libssl@${libsslV1}`, '--dest-creds', CREDS_ARG, '--json', '-q']);
    expect(a.stderr).toBe('');
    expect(a.code).toBe(0);
    const applied = JSON.parse(a.stdout) as { images: { identical: boolean }[]; layers: { kind: string; actions: string[] }[] };
    expect(applied.images).toHaveLength(3);
    expect(applied.images.every((i) => i.identical)).toBe(true);
    // referenced layers reached the new repositories by mounting from the old ones at the destination
    expect(applied.layers.filter((l) => l.kind === 'referenced').flatMap((l) => l.actions).some((x) => /mounted from gz\//.test(x))).toBe(true);
    for (const f of FAMILIES) expect((await skopeoRaw(`docker://${dst.host}/multi/${f}:v2`, CREDS_ARG)).digest).toBe((await skopeoRaw(`docker://${src.host}/gz/${f}:v2`)).digest);
  });

  test('any old image may serve as base: nginx v2 rebuilt from the libssl v1 image alone', async () => {
    const patch = path.join(work, 'cross.patch');
    const report = await diffImageSets({
      old: [parseSpec(`docker://${src.host}/gz/libssl:v1`, 'test')],
      new: [parseSpec(`docker://${src.host}/gz/nginx:v2 cross/nginx:v2`, 'test')],
      out: patch,
      platforms: 'all',
      level: 'fast',
    });
    // nginx v2's libssl3 layer is new to this old set; its files are patched against libssl v1's
    // (at --level fast about a third of the layer blob)
    const srcNginx = (await skopeoRaw(`docker://${src.host}/gz/nginx:v2`)).doc;
    const srcLibssl1 = (await skopeoRaw(`docker://${src.host}/gz/libssl:v1`)).doc;
    expect(srcNginx.layers).toHaveLength(3); // base, libssl3, nginx
    expect(srcLibssl1.layers.map((l) => l.digest)).toContain(srcNginx.layers[0].digest);
    expect(report.layers.find((l) => l.digest === srcNginx.layers[0].digest)?.kind).toBe('referenced');
    const libssl3 = report.layers.find((l) => l.digest === srcNginx.layers[1].digest);
    expect(libssl3?.kind).toBe('rebuilt');
    expect(libssl3?.patchBytes).toBeLessThan(0.5 * srcNginx.layers[1].size);
    expect(report.contents.patched).toBeGreaterThan(0);
    const ix = (await PatchReader.open(patch)).index;
    const libssl1DiffIds = await skopeoDiffIds(`docker://${src.host}/gz/libssl:v1`);
    expect(ix.sources.length).toBeGreaterThan(0);
    for (const so of ix.sources) expect(libssl1DiffIds).toContain(so.diffId);
    const applied = await applyPatch({ patch, to: `docker://${dst.host}`, dest: { creds: CREDS_ARG } });
    expect(applied.images[0].identical).toBe(true);
    expect((await skopeoRaw(`docker://${dst.host}/cross/nginx:v2`, CREDS_ARG)).digest).toBe((await skopeoRaw(`docker://${src.host}/gz/nginx:v2`)).digest);
  });

  test('pull-incremental --base scratch holds every layer; push refuses an archive whose omitted layers the target lacks, before any upload', async () => {
    const full = path.join(work, 'libssl-scratch.tar');
    const p = await cli(['registry', 'pull-incremental', '--base', 'scratch', '--final', `docker://${src.host}/gz/libssl:v2`, '--out', full, '--json']);
    expect(p.stderr).toBe('');
    expect(p.code).toBe(0);
    const pr = JSON.parse(p.stdout) as { layersIncluded: number; layersOmitted: number; archiveBytes: number; fullBytes: number; digest: string };
    const m = (await skopeoRaw(`docker://${src.host}/gz/libssl:v2`)).doc;
    expect(pr.layersIncluded).toBe(m.layers.length);
    expect(pr.layersOmitted).toBe(0);
    expect(pr.archiveBytes).toBeGreaterThanOrEqual(m.layers.reduce((n, l) => n + l.size, 0));
    // a complete OCI archive: skopeo copies it (reading and verifying every blob)
    await run('skopeo', ['--insecure-policy', 'copy', '--quiet', `oci-archive:${full}`, `oci:${path.join(work, 'scratch-copy')}:v2`]);
    // push-vet against an empty repository passes (nothing omitted); push to a fresh repository gives the same image
    const vet = await cli(['registry', 'push-vet', full, '--base', `docker://${dst.host}/empty/nothing`, '--dest-creds', CREDS_ARG, '--json']);
    expect(vet.code).toBe(0);
    expect((JSON.parse(vet.stdout) as { atBase: number }).atBase).toBe(0);
    const pushed = await cli(['registry', 'push', full, `docker://${dst.host}/scratch/libssl:v2`, '--dest-creds', CREDS_ARG, '--json']);
    expect(pushed.stderr).toBe('');
    expect(pushed.code).toBe(0);
    expect((JSON.parse(pushed.stdout) as { digest: string }).digest).toBe(pr.digest);
    expect((await skopeoRaw(`docker://${dst.host}/scratch/libssl:v2`, CREDS_ARG)).digest).toBe(pr.digest);

    // an incremental archive pushed where its base layer is missing: refused with the list, nothing uploaded
    const incr = path.join(work, 'libssl-incr2.tar');
    expect((await cli(['registry', 'pull-incremental', '--base', `docker://${src.host}/gz/libssl:v1`, '--final', `docker://${src.host}/gz/libssl:v2`, '--out', incr])).code).toBe(0);
    const before = await storageFiles(dst);
    const refused = await cli(['registry', 'push', incr, `docker://${dst.host}/fresh/libssl:v2`, '--dest-creds', CREDS_ARG]);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/push: .*fresh\/libssl lacks 1 layer.*--base-repo/);
    expect(refused.stderr).toContain(m.layers[0].digest);
    expect(await storageFiles(dst)).toEqual(before);
  });

  test('per-side credentials (flags, docker config.json) and per-side TLS verification (sync to an HTTPS replica with auth)', async () => {
    const tlsDir = path.join(work, 'tls');
    const ca = await makeTestCa(tlsDir);
    const site = { user: 'site', pass: 'site-secret' };
    const replica = await startRegistry({ auth: site, tls: ca });
    try {
      // the primary is the auth registry `dst` (plain HTTP); the replica is HTTPS with its own user
      await pushOciLayout(gz['libssl-v1'].layout, gz['libssl-v1'].tag, dst.host, 'side/libssl:v1', CREDS_ARG);
      await pushOciLayout(gz['libssl-v2'].layout, gz['libssl-v2'].tag, dst.host, 'side/libssl:v2', CREDS_ARG);
      await pushOciLayout(gz['libssl-v1'].layout, gz['libssl-v1'].tag, replica.host, 'side/libssl:v1', `${site.user}:${site.pass}`);
      const dockerDir = path.join(work, 'docker-config');
      await fsp.mkdir(dockerDir, { recursive: true });
      const b64 = (s: string): string => Buffer.from(s).toString('base64');
      await fsp.writeFile(path.join(dockerDir, 'config.json'), JSON.stringify({ auths: { [replica.host]: { auth: b64(`${site.user}:${site.pass}`) } } }));
      const args = ['registry', 'sync', '--from', `docker://${dst.host}/side`, '--to', `docker://${replica.host}/side`, '--repos', 'libssl', '--level', 'fast', '-q'];
      const replicaTags = (): Promise<string[]> => tagsOf(replica.host, 'side/libssl', `${site.user}:${site.pass}`);
      const noDockerConfig = { DOCKER_CONFIG: path.join(work, 'no-docker-config'), REGISTRY_AUTH_FILE: '' };
      const caEnv = { NODE_EXTRA_CA_CERTS: ca.ca };
      const before = await storageFiles(replica);
      const oneLine = (r: { stderr: string }): void => expect(r.stderr.trim().split('\n')).toHaveLength(1);

      // no credentials for the replica: authentication error naming --dest-creds
      let r = await cli([...args, '--src-creds', CREDS_ARG], noDockerConfig);
      expect(r.code).toBe(9);
      expect(r.stderr).toContain(`registry ${replica.host}: authentication required`);
      expect(r.stderr).toContain('--dest-creds');
      oneLine(r);
      // wrong primary credentials: authentication error naming --src-creds
      r = await cli([...args, '--src-creds', 'd4fs:wrong', '--dest-creds', `${site.user}:${site.pass}`], noDockerConfig);
      expect(r.code).toBe(9);
      expect(r.stderr).toContain(`registry ${dst.host}: authentication failed`);
      expect(r.stderr).toContain('--src-creds');
      oneLine(r);
      // the two sides' passwords swapped: refused
      r = await cli([...args, '--src-creds', `${site.user}:${site.pass}`, '--dest-creds', CREDS_ARG], noDockerConfig);
      expect(r.code).toBe(9);
      // --dest-tls-verify=true: the replica's certificate is not trusted by this process
      r = await cli([...args, '--src-creds', CREDS_ARG, '--dest-creds', `${site.user}:${site.pass}`, '--dest-tls-verify=true'], noDockerConfig);
      expect(r.code).toBe(11);
      expect(r.stderr).toMatch(new RegExp(`cannot reach registry ${replica.host.replace(/\./g, '\\.')}: .*certificate`));
      oneLine(r);
      // --src-tls-verify=true: the primary speaks plain HTTP only, which verification forbids (the replica side is not affected)
      r = await cli([...args, '--src-creds', CREDS_ARG, '--dest-creds', `${site.user}:${site.pass}`, '--src-tls-verify=true', '--dest-tls-verify=false'], noDockerConfig);
      expect(r.code).toBe(11);
      expect(r.stderr).toContain(`cannot reach registry ${dst.host}`);
      oneLine(r);
      expect(await replicaTags()).toEqual(['v1']);
      expect(await storageFiles(replica)).toEqual(before);

      // the replica's credentials from a docker config.json (--dest-authfile), its certificate verified against the test CA
      r = await cli([...args, '--src-creds', CREDS_ARG, '--dest-authfile', path.join(dockerDir, 'config.json'), '--dest-tls-verify=true', '--src-tls-verify=false', '--json'], { ...noDockerConfig, ...caEnv });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect((JSON.parse(r.stdout) as { updated: string[] }).updated).toEqual(['libssl:v2']);
      expect((await replicaTags()).sort()).toEqual(['v1', 'v2']);
      const c = new RegistryClient(replica.host, { creds: `${site.user}:${site.pass}` });
      try {
        const got = await c.getManifest('side/libssl', 'v2');
        expect(got.digest).toBe((await skopeoRaw(`docker://${dst.host}/side/libssl:v2`, CREDS_ARG)).digest);
      } finally {
        await c.close();
      }
      // and from the default docker config ($DOCKER_CONFIG/config.json) without any --dest flag: up to date
      r = await cli([...args, '--src-creds', CREDS_ARG, '--json'], { DOCKER_CONFIG: dockerDir, REGISTRY_AUTH_FILE: '' });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect((JSON.parse(r.stdout) as { upToDate: string[] }).upToDate.sort()).toEqual(['libssl:v1', 'libssl:v2']);
    } finally {
      await replica.stop();
    }
  });
  test('sync of images whose compression is not reproducible (pigz with --no-records): rewritten once (same image IDs), then up to date', async () => {
    const replica = await startRegistry();
    try {
      await pushOciLayout(pz['libssl-v1'].layout, pz['libssl-v1'].tag, replica.host, 'pz/libssl:v1');
      const args = ['registry', 'sync', '--from', `docker://${src.host}/pz`, '--to', `docker://${replica.host}/pz`, '--repos', 'libssl', '--level', 'fast', '--no-records', '--json', '-q'];
      const first = await cli(args);
      expect(first.stderr).toBe('');
      expect(first.code).toBe(0);
      const r1 = JSON.parse(first.stdout) as { updated: string[]; diff: DiffReport; apply: { images: { identical: boolean }[] } };
      expect(r1.updated).toEqual(['libssl:v2']);
      expect(r1.diff.rewrittenImages).toEqual(['libssl:v2']);
      expect(r1.apply.images[0].identical).toBe(false);
      const s = await skopeoRaw(`docker://${src.host}/pz/libssl:v2`);
      const t = await skopeoRaw(`docker://${replica.host}/pz/libssl:v2`);
      expect(t.digest).not.toBe(s.digest);
      expect(t.doc.config.digest).toBe(s.doc.config.digest);
      // the rewritten manifest is recognised as the same image: nothing to do
      const second = await cli(args);
      expect(second.code).toBe(0);
      const r2 = JSON.parse(second.stdout) as { updated: string[]; upToDate: string[]; diff?: unknown };
      expect(r2.updated).toEqual([]);
      expect(r2.upToDate.sort()).toEqual(['libssl:v1', 'libssl:v2']);
      expect(r2.diff).toBeUndefined();
    } finally {
      await replica.stop();
    }
  });
  test('sync carries a two-platform index whole by default (index and both manifests), or one platform with --platform', async () => {
    const v1 = path.join(work, 'mps-v1');
    const v2 = path.join(work, 'mps-v2');
    await twoPlatformIndex(gz['redis-v1'].layout, gz['redis-v1'].tag, v1, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    await twoPlatformIndex(gz['redis-v2'].layout, gz['redis-v2'].tag, v2, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    const replica = await startRegistry();
    const copyAll = (from: string, to: string): Promise<unknown> => run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--all', '--dest-tls-verify=false', from, to]);
    try {
      await copyAll(`oci:${v1}:redis-v1`, `docker://${src.host}/mps/redis:v1`);
      await copyAll(`oci:${v2}:redis-v2`, `docker://${src.host}/mps/redis:v2`);
      await copyAll(`oci:${v1}:redis-v1`, `docker://${replica.host}/mps/redis:v1`);
      const r = await cli(['registry', 'sync', '--from', `docker://${src.host}/mps`, '--to', `docker://${replica.host}/mps`, '--repos', 'redis', '--level', 'fast', '--json', '-q']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect((JSON.parse(r.stdout) as { updated: string[] }).updated).toEqual(['redis:v2']);
      const sc = new RegistryClient(src.host);
      const rc = new RegistryClient(replica.host);
      try {
        const want = await sc.getManifest('mps/redis', 'v2');
        const got = await rc.getManifest('mps/redis', 'v2');
        expect(got.digest).toBe(want.digest);
        const index = JSON.parse(got.bytes.toString('utf8')) as { manifests: { digest: string }[] };
        expect(index.manifests).toHaveLength(2);
        for (const m of index.manifests) expect((await rc.getManifest('mps/redis', m.digest)).bytes.equals((await sc.getManifest('mps/redis', m.digest)).bytes)).toBe(true);
      } finally {
        await sc.close();
        await rc.close();
      }
      await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--all', '--src-tls-verify=false', `docker://${replica.host}/mps/redis:v2`, `oci:${path.join(work, 'mps-copy')}:v2`]);
      // one platform: the replica's tag becomes that platform's manifest
      const one = await cli(['registry', 'sync', '--from', `docker://${src.host}/mps`, '--to', `docker://${replica.host}/mps1`, '--repos', 'redis', '--platform', 'linux/arm64/v8', '--level', 'fast', '--json', '-q']);
      expect(one.stderr).toBe('');
      expect(one.code).toBe(0);
      const cfg = await run('skopeo', ['inspect', '--config', '--raw', '--tls-verify=false', `docker://${replica.host}/mps1/redis:v2`]);
      expect((JSON.parse(cfg.stdout) as { architecture: string }).architecture).toBe('arm64');
      expect((await skopeoRaw(`docker://${replica.host}/mps1/redis:v2`)).doc.layers.length).toBeGreaterThan(0);
    } finally {
      await replica.stop();
    }
  });
});
