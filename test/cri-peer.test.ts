/**
 * Issue 13 on a CRI node: the d4fs snapshotter's CRI pulls (issue 12) and
 * containerd itself read through the node's d4fs-peer. A real containerd
 * with its CRI plugin and the d4fs snapshotter configured with
 * `peer = "http://127.0.0.1:PORT"`, a real registry, a real `ctr-cli peer`
 * process (no tracker: a caching pull-through mirror) writing containerd's
 * hosts.toml into the CRI plugin's `registry.config_path`:
 *
 *  1. a published image: the snapshotter pulls its d4fs file through the
 *     peer (the .cdimg and its artifact manifest are in the peer's cache, the
 *     peer served at least the file's bytes), containerd moves no layer;
 *  2. an ordinary image: containerd fetches its layers through the peer's
 *     mirror (hosts.toml);
 *  3. the peer stopped (SIGTERM): its hosts.toml goes, containerd pulls a new
 *     image straight from the registry, and the snapshotter, its `peer` now
 *     dead, still pulls a published image through d4fs from the registry.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import * as http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { buildDebImage, BuiltDebImage } from './fixtures/debimages';
import { startCriRig, CriRig, CriPod, d4fsPulls, logSize, registryImageFacts, RegistryImageFacts } from './helpers/cri';
import { buildBusyboxImage } from './helpers/containerd';
import { eventually } from './helpers/d4fs-env';
import { freePort } from './helpers/registry';
import { packageRoot } from '../src/util/paths';

const run = promisify(execFile);
const CLI = path.join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

interface PublishedFile {
  kind: 'full' | 'delta';
  fileDigest: string;
  manifestDigest: string;
  size: number;
}
interface PublishJson {
  manifestDigest: string;
  images: { files: PublishedFile[] }[];
}
interface PeerStatusJson {
  mirror: string;
  registries: string[];
  hostsDir?: string;
  blobs: { digest: string; size: number; fromOrigin: number; fromPeers: number }[];
}

let rig: CriRig | undefined;
let work: string;
let v1: BuiltDebImage;
let v2: BuiltDebImage;
let host: string;
let peerPort: number;
let peerUrl: string;
let peerCache: string;
let peerLog: string;
let peer: ChildProcess | undefined;
let peerExit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;
let hostsFile: string;
/** What the rig's certs.d held for the registry before the peer started (undefined: nothing). */
let hostsBefore: string | undefined;
let pubV1: PublishJson;
let pubV2: PublishJson;
const nonce = { plain: `plain-${randomBytes(8).toString('hex')}`, late: `late-${randomBytes(8).toString('hex')}` };
const pods: CriPod[] = [];

async function skopeoCopy(layout: string, tag: string, to: string): Promise<void> {
  await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:${tag}`, `docker://${to}`], { maxBuffer: 1 << 24 });
}

async function cliJson<T>(args: string[]): Promise<T> {
  const r = await run(process.execPath, [CLI, ...args, '--json'], { maxBuffer: 1 << 26 });
  return JSON.parse(r.stdout) as T;
}

/** The d4fs-snapshotter's log file (d4fsPulls, logSize). */
const snapshotterLog = (): string => rig?.env.snapshotterLogFile as string;

/** The blobs of `digests` that containerd's content store (k8s.io) holds. */
async function inContentStore(digests: string[]): Promise<string[]> {
  const r = await rig?.env.containerd.ctr(['-n', 'k8s.io', 'content', 'ls', '-q']);
  const have = new Set((r?.stdout ?? '').split('\n').map((s) => s.trim()).filter(Boolean));
  return digests.filter((d) => have.has(d));
}

/** GET on the peer: status and body, or a rejection when nothing answers. */
function peerGet(p: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${peerUrl}${p}`, { timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('peer did not answer within 10 s')));
    req.on('error', reject);
  });
}

async function peerStatus(): Promise<PeerStatusJson> {
  const r = await peerGet('/status');
  expect(r.status).toBe(200);
  return JSON.parse(r.body) as PeerStatusJson;
}

/** d4fs_peer_served_bytes_total{kind=...} from the peer's /metrics (0 when not yet counted). */
async function servedBytes(kind: 'blob' | 'manifest'): Promise<number> {
  const r = await peerGet('/metrics');
  expect(r.status).toBe(200);
  const m = new RegExp(`^d4fs_peer_served_bytes_total\\{kind="${kind}"\\} (\\S+)$`, 'm').exec(r.body);
  return m ? Number(m[1]) : 0;
}

const peerLogTail = (): string => {
  try {
    return `--- d4fs-peer log ---\n${fs.readFileSync(peerLog, 'utf8').slice(-6000)}`;
  } catch {
    return '';
  }
};

/** A copy of the busybox layout at `from` with one more layer holding /etc/marker = `marker`. */
async function markedImage(from: string, to: string, marker: string): Promise<void> {
  await fsp.cp(from, to, { recursive: true });
  const src = await fsp.mkdtemp(path.join(work, 'marker-'));
  await fsp.mkdir(path.join(src, 'etc'));
  await fsp.writeFile(path.join(src, 'etc', 'marker'), `${marker}\n`);
  await run('umoci', ['insert', '--image', `${to}:v1`, path.join(src, 'etc', 'marker'), '/etc/marker']);
  await fsp.rm(src, { recursive: true, force: true });
}

const readOr = (file: string): string | undefined => {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
};

beforeAll(async () => {
  expect(process.getuid?.()).toBe(0); // containerd, FUSE and pods need root: fail loudly rather than skip
  work = await fsp.mkdtemp(path.join('/tmp', 'd4fs-cri-peer-'));
  [v1, v2] = [await buildDebImage('nginx-v1'), await buildDebImage('nginx-v2')];
  // the peer's address is fixed before the snapshotter starts: its config names it
  peerPort = await freePort();
  peerUrl = `http://127.0.0.1:${peerPort}`;
  const cfg = path.join(work, 'snapshotter.toml');
  await fsp.writeFile(cfg, `peer = "${peerUrl}"\n`);
  rig = await startCriRig({ snapshotterArgs: ['--config', cfg] });
  host = rig.registry.host;
  await skopeoCopy(v1.layout, v1.tag, `${host}/app:v1`);
  await skopeoCopy(v2.layout, v2.tag, `${host}/app:v2`);
  pubV1 = await cliJson<PublishJson>(['publish', `docker://${host}/app:v1`, '--no-progress']);
  pubV2 = await cliJson<PublishJson>(['publish', `docker://${host}/app:v2`, '--base', `docker://${host}/app:v1`, '--no-progress']);
  // two ordinary images (no d4fs data): busybox plus a layer of their own, unknown to containerd
  const bb = path.join(work, 'bb');
  await buildBusyboxImage(bb, 'v1');
  await markedImage(bb, path.join(work, 'plain'), nonce.plain);
  await markedImage(bb, path.join(work, 'late'), nonce.late);
  await skopeoCopy(path.join(work, 'plain'), 'v1', `${host}/plain:v1`);
  await skopeoCopy(path.join(work, 'late'), 'v1', `${host}/late:v1`);

  // the node's peer: a caching mirror of the registry, hosts.toml into containerd's config_path
  hostsFile = path.join(rig.certsDir, host, 'hosts.toml');
  hostsBefore = readOr(hostsFile);
  peerCache = path.join(work, 'peer-cache');
  peerLog = path.join(work, 'peer.log');
  const out = fs.openSync(peerLog, 'a');
  peer = spawn(process.execPath, [CLI, 'peer', '--listen', `127.0.0.1:${peerPort}`, '--cache', peerCache, '--mirror', host, '--hosts-dir', rig.certsDir, '--torrent-port', '0', '--log-level', 'debug'], {
    stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  const child = peer;
  peerExit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  try {
    await eventually(async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`d4fs-peer exited (${child.exitCode ?? child.signalCode})`);
      const up = await peerGet('/healthz').then((r) => r.status === 200, () => false);
      return up && (readOr(hostsFile) ?? '').includes(peerUrl);
    }, 30_000, 'd4fs-peer to answer and write hosts.toml');
  } catch (e) {
    (e as Error).message += `\n${peerLogTail()}`;
    throw e;
  }
}, 900_000);

afterAll(async () => {
  if (peer && peer.exitCode === null && peer.signalCode === null) {
    peer.kill('SIGKILL');
    await peerExit;
  }
  if (rig) for (const p of pods) await rig.removePod(p).catch(() => undefined);
  await rig?.stop();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

const sleeper = { command: ['/bin/sh', '-c', 'sleep 600'] };

async function expectNginxRuns(image: string): Promise<void> {
  const r = rig as CriRig;
  const pod = await r.runPod(image, sleeper);
  pods.push(pod);
  const out = await r.cri.execSync(pod.containerId, ['/usr/sbin/nginx', '-v'], 30);
  expect(out.exit_code).toBe(0);
  expect(out.stderr.toString()).toMatch(/^nginx version: nginx\/\d/);
}

async function expectMarker(image: string, marker: string): Promise<void> {
  const r = rig as CriRig;
  const pod = await r.runPod(image, sleeper);
  pods.push(pod);
  const out = await r.cri.execSync(pod.containerId, ['/bin/cat', '/etc/marker'], 30);
  expect(out.exit_code).toBe(0);
  expect(out.stdout.toString()).toBe(`${marker}\n`);
}

describe('CRI pulls through the node\'s d4fs-peer', () => {
  it('the peer mirrors the registry for containerd: hosts.toml in the CRI plugin\'s config_path', async () => {
    const text = readOr(hostsFile) ?? '';
    expect(text).toContain(`server = "http://${host}"`);
    expect(text).toContain(`[host."${peerUrl}"]`);
    expect(text).toContain('capabilities = ["pull", "resolve"]');
    const s = await peerStatus();
    expect(s.registries).toEqual([host]);
    expect(s.hostsDir).toBe((rig as CriRig).certsDir);
    // the rig wrote no hosts.toml of its own for its registry; had it, the peer would have kept it aside
    expect(fs.existsSync(path.join((rig as CriRig).certsDir, host, 'hosts.toml.d4fs-saved'))).toBe(hostsBefore !== undefined);
  });

  it('a published image: the snapshotter pulls its .cdimg and artifact manifest through the peer; containerd moves no layer; the pod runs', async () => {
    const r = rig as CriRig;
    const full = pubV1.images[0].files.find((f) => f.kind === 'full') as PublishedFile;
    expect(full).toBeDefined();
    const facts = await registryImageFacts(r.registry.url, 'app', 'v1');
    expect(facts.manifestDigest).toBe(pubV1.manifestDigest);
    const servedBefore = await servedBytes('blob');
    const mark = logSize(snapshotterLog());
    const t0 = Date.now();
    await r.cri.pullImage(`${host}/app:v1`);
    const pullMs = Date.now() - t0;
    const pulls = d4fsPulls(snapshotterLog(), mark);
    expect(pulls).toHaveLength(1);
    expect(pulls[0].files).toBe(1);
    expect(pulls[0].bytes).toBe(full.size);
    const status = await peerStatus();
    const blobs = new Map(status.blobs.map((b) => [b.digest, b]));
    // the d4fs file and its artifact manifest: only the snapshotter asks for them
    expect(blobs.get(full.fileDigest)).toMatchObject({ size: full.size, fromOrigin: full.size, fromPeers: 0 });
    expect(blobs.has(full.manifestDigest)).toBe(true);
    // and the image's manifest (containerd's resolve and the snapshotter's read)
    expect(blobs.has(facts.manifestDigest)).toBe(true);
    // containerd downloaded no layer, through the peer or otherwise
    expect(facts.layers.filter((d) => blobs.has(d))).toEqual([]);
    expect(await inContentStore(facts.layers)).toEqual([]);
    const served = (await servedBytes('blob')) - servedBefore;
    expect(served).toBeGreaterThanOrEqual(full.size);
    console.log(`published v1 through the peer: .cdimg ${full.size} B, peer served ${served} blob bytes, CRI PullImage ${pullMs} ms`);
    expect(r.env.d4fsMounts().length).toBe(1);
    await expectNginxRuns(`${host}/app:v1`);
  }, 300_000);

  it('an ordinary image: containerd fetches its layers through the peer (hosts.toml); the pod runs', async () => {
    const r = rig as CriRig;
    const facts: RegistryImageFacts = await registryImageFacts(r.registry.url, 'plain', 'v1');
    expect(await inContentStore(facts.layers)).toEqual([]);
    const mark = logSize(snapshotterLog());
    await r.cri.pullImage(`${host}/plain:v1`);
    expect(d4fsPulls(snapshotterLog(), mark)).toEqual([]);
    // the snapshotter reads an ordinary image's manifest and config only (no layer of its own fetching)
    expect(fs.readFileSync(r.env.snapshotterLogFile as string, 'utf8').slice(mark)).not.toContain('lower layer given its files');
    const status = await peerStatus();
    const blobs = new Map(status.blobs.map((b) => [b.digest, b]));
    for (const d of [...facts.layers, facts.configDigest, facts.manifestDigest]) expect([d, blobs.has(d)]).toEqual([d, true]);
    for (const d of facts.layers) expect(blobs.get(d)?.fromOrigin).toBe(blobs.get(d)?.size);
    expect(await inContentStore(facts.layers)).toEqual(facts.layers);
    expect(await servedBytes('blob')).toBeGreaterThan(0);
    expect(await servedBytes('manifest')).toBeGreaterThan(0);
    await expectMarker(`${host}/plain:v1`, nonce.plain);
  }, 300_000);

  it('the peer stopped: its hosts.toml goes, containerd pulls a new image straight from the registry, the snapshotter falls back to the registry', async () => {
    const r = rig as CriRig;
    const child = peer as ChildProcess;
    child.kill('SIGTERM');
    const exit = await peerExit;
    expect(exit).toEqual({ code: 0, signal: null });
    // what the certs dir held before the peer is back: here nothing (the rig writes no hosts.toml for its registry)
    expect(readOr(hostsFile)).toBe(hostsBefore);
    expect(fs.existsSync(path.join(r.certsDir, host, 'hosts.toml.d4fs-saved'))).toBe(false);
    await expect(peerGet('/healthz')).rejects.toThrow(/ECONNREFUSED/);

    // a new ordinary image: its own layer is not held; containerd gets it from the registry
    const late = await registryImageFacts(r.registry.url, 'late', 'v1');
    const own = late.layers[late.layers.length - 1];
    expect(await inContentStore([own])).toEqual([]);
    const t0 = Date.now();
    await r.cri.pullImage(`${host}/late:v1`);
    const lateMs = Date.now() - t0;
    expect(await inContentStore(late.layers)).toEqual(late.layers);
    // the dead peer's cache did not get it either
    const cached = new Set(fs.readdirSync(path.join(peerCache, 'blobs')));
    expect(cached.has(own.replace(':', '-'))).toBe(false);
    await expectMarker(`${host}/late:v1`, nonce.late);

    // a published image, the snapshotter's `peer` dead: pulled through d4fs from the registry (v1 held: the delta)
    const delta = pubV2.images[0].files.find((f) => f.kind === 'delta') as PublishedFile;
    expect(delta).toBeDefined();
    const mark = logSize(snapshotterLog());
    const t1 = Date.now();
    await r.cri.pullImage(`${host}/app:v2`);
    const v2Ms = Date.now() - t1;
    const pulls = d4fsPulls(snapshotterLog(), mark);
    expect(pulls).toHaveLength(1);
    expect(pulls[0].files).toBe(1);
    expect(pulls[0].bytes).toBe(delta.size);
    expect(cached.has(delta.fileDigest.replace(':', '-'))).toBe(false);
    expect(fs.existsSync(path.join(peerCache, 'blobs', delta.fileDigest.replace(':', '-')))).toBe(false);
    const v2Facts = await registryImageFacts(r.registry.url, 'app', 'v2');
    expect(await inContentStore(v2Facts.layers)).toEqual([]);
    console.log(`peer down: new ordinary image pulled in ${lateMs} ms, published v2 (delta ${delta.size} B) through d4fs in ${v2Ms} ms`);
    await expectNginxRuns(`${host}/app:v2`);
  }, 300_000);
});
