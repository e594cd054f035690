/**
 * Fleets (issue 13), end to end and for real: d4fs-peers as separate
 * processes on loopback, a standalone tracker (`ctr-cli tracker`) or
 * d4fs-server's embedded one, Debian's docker-registry as the origin behind
 * a rate-limited proxy that counts the origin's egress, a private
 * containerd pulling through a peer's hosts.toml.
 *
 *   1. six peers pull a ~51 MiB image at once (containerd through one of
 *      them, the registry API through the five others): every copy
 *      verifies, the origin sends ≤ 1.6× the image;
 *   2. (containerd) the peer stopped with SIGTERM: its hosts.toml is gone and
 *      containerd pulls straight from the registry;
 *   3. peers without the tracker's token (a wrong one, none) are refused by
 *      the tracker and get nothing from the peers of the swarm;
 *   4. the first seeder killed -9 half-way through the others' downloads:
 *      they finish from each other and the origin (ranges), verified;
 *   5. a malicious peer serving corrupt pieces: detected, never committed,
 *      the bad peer dropped, the honest peers finish verified;
 *   6. a d4fs image and then a d4fs delta pulled by six nodes at once
 *      through their peers from d4fs-server (tracker embedded): the server
 *      sends each file about once.
 *
 * The BitTorrent engine is ESM-only and cannot load inside jest: every
 * peer, tracker and server is a child process (test/helpers/p2p.ts).
 * Needs root (containerd).
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildSystemImage } from './fixtures/systemimages';
import { runCli } from './helpers/cli';
import { PrivateContainerd, startContainerd } from './helpers/containerd';
import {
  Descriptor,
  fetchDigest,
  fileSha256,
  httpRequest,
  MeteredProxy,
  PeerProc,
  Proc,
  pullThroughMirror,
  spawnCli,
  spawnNode,
  startMeteredProxy,
  startPeer,
  startServer,
  startTracker,
  stopAllProcs,
  TrackerProc,
  waitFor,
} from './helpers/p2p';
import { pushOciLayout, startRegistry, TestRegistry } from './helpers/registry';

/** The origin's uplink (server → client bytes/s over all connections). */
const ORIGIN_RATE = 30 * 1024 * 1024;
const REPO = 'sys/nginx';
const TAG = '1';
const BAD_PEER_JS = path.join(__dirname, 'helpers', 'p2p-bad-peer.js');
const MiB = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MiB`;

interface Image {
  layout: string;
  manifestDigest: string;
  manifestSize: number;
  config: Descriptor;
  layers: Descriptor[];
  /** Manifest + config + layers. */
  bytes: number;
  /** The big layer (~48 MiB). */
  big: Descriptor;
  blobFile(digest: string): string;
}

async function readImage(layout: string, manifestDigest: string): Promise<Image> {
  const blobFile = (d: string): string => path.join(layout, 'blobs', 'sha256', d.replace(/^sha256:/, ''));
  const manifest = await fsp.readFile(blobFile(manifestDigest));
  const m = JSON.parse(manifest.toString('utf8')) as { config: Descriptor; layers: Descriptor[] };
  const big = [...m.layers].sort((a, b) => b.size - a.size)[0];
  return {
    layout,
    manifestDigest,
    manifestSize: manifest.length,
    config: m.config,
    layers: m.layers,
    bytes: manifest.length + m.config.size + m.layers.reduce((n, l) => n + l.size, 0),
    big,
    blobFile,
  };
}

/** The peer's progress on one blob download (from GET /status). */
async function transferOf(p: PeerProc, digest: string): Promise<{ fromPeers: number; fromOrigin: number; phase: string } | undefined> {
  const s = await p.status();
  return s.transfers.find((t) => t.digest === digest);
}

/** The peer's record of a blob it holds (from GET /status). */
async function heldBlob(p: PeerProc, digest: string): Promise<{ size: number; fromOrigin: number; fromPeers: number }> {
  const b = (await p.status()).blobs.find((x) => x.digest === digest);
  if (!b) throw new Error(`${p.name} does not hold ${digest}`);
  return b;
}

describe('fleets: P2P distribution through d4fs-peers (issue 13)', () => {
  let work: string;
  let logDir: string;
  let registry: TestRegistry | undefined;
  let origin: MeteredProxy | undefined;
  let containerd: PrivateContainerd | undefined;
  let image: Image;
  let tokensFile: string;
  let tokenFile: string;
  let token: string;
  /** What the scenarios hand on to the next. */
  const s1: { tracker?: TrackerProc; peers: PeerProc[]; hostsDir?: string } = { peers: [] };
  const numbers: string[] = [];

  /** Logs of the processes of a scenario, appended to a failure. */
  const withLogs = async (procs: Array<{ name: string; log(max?: number): string }>, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      const tails = procs.map((p) => `--- ${p.name} ---\n${p.log(4000)}`).join('\n');
      (e as Error).message += `\n\nprocess logs (tails):\n${tails}`;
      throw e;
    }
  };

  /**
   * The d4fs files of the last scenario: system-nginx v1 converted (full),
   * v2 converted and diffed against it (a ~2 MiB delta). Child processes,
   * started early (by the light token scenario) so that they overlap with
   * the scenarios that mostly wait.
   */
  let conversion: Promise<{ full: string; delta: string }> | undefined;
  const convertOnce = (): Promise<{ full: string; delta: string }> =>
    (conversion ??= (async () => {
      const dir = path.join(work, 's6');
      await fsp.mkdir(dir, { recursive: true });
      const v2 = await buildSystemImage('system-nginx-v2');
      const [full, next, delta] = ['sys-1.cdimg', 'sys-2.cdimg', 'sys-1-2.cdimg'].map((f) => path.join(dir, f));
      const conv = await Promise.all([runCli(['convert', '--image', `oci:${image.layout}:system-nginx-v1`, '--output', full]), runCli(['convert', '--image', v2.ref, '--output', next])]);
      for (const c of conv) if (c.code !== 0 || c.stderr) throw new Error(`ctr-cli convert exited ${c.code}: ${c.stderr}`);
      const d = await runCli(['cdimg', 'diff', '--old', full, '--new', next, '--out', delta, '--codec', 'zstd']);
      if (d.code !== 0 || d.stderr) throw new Error(`ctr-cli cdimg diff exited ${d.code}: ${d.stderr}`);
      return { full, delta };
    })());

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('test/p2p.test.ts needs root: it runs a private containerd');
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-p2p-'));
    logDir = path.join(work, 'logs');
    await fsp.mkdir(logDir);
    const built = await buildSystemImage('system-nginx-v1');
    image = await readImage(built.layout, built.manifestDigest);
    registry = await startRegistry();
    await pushOciLayout(built.layout, built.tag, registry.host, `${REPO}:${TAG}`);
    origin = await startMeteredProxy(registry.host, ORIGIN_RATE);
    containerd = await startContainerd();
    const t = await runCli(['serve', 'token', '--access', 'rw', '--name', 'fleet']);
    if (t.code !== 0) throw new Error(`serve token: ${t.stderr}`);
    tokensFile = path.join(work, 'tokens');
    tokenFile = path.join(work, 'token');
    await fsp.writeFile(tokensFile, t.stdout, { mode: 0o600 });
    token = t.stdout.trim().split(/\s+/)[1];
    await fsp.writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
  }, 120_000);

  afterAll(async () => {
    await stopAllProcs();
    await containerd?.stop();
    await origin?.stop();
    await registry?.stop();
    if (numbers.length) console.log(`fleet tests, measured:\n  ${numbers.join('\n  ')}`);
    // D4FS_P2P_KEEP=1 keeps the caches and the processes' logs
    if (work && !process.env.D4FS_P2P_KEEP) await fsp.rm(work, { recursive: true, force: true });
    else if (work) console.log(`kept ${work}`);
  }, 60_000);

  test('six peers pull a 51 MiB image at once (containerd through one, the registry API through five): all verified, the origin sends it about once', async () => {
    const dir = path.join(work, 's1');
    s1.hostsDir = path.join(dir, 'certs.d');
    s1.tracker = await startTracker('s1-tracker', { tokensFile, dir: path.join(dir, 'tracker'), logDir });
    s1.peers = await Promise.all(
      [1, 2, 3, 4, 5, 6].map((i) =>
        startPeer(`s1-n${i}`, { cacheDir: path.join(dir, `cache${i}`), logDir, tracker: s1.tracker!.url, tokenFile, mirror: [origin!.host], hostsDir: i === 1 ? s1.hostsDir : undefined, stallTimeout: '5s' }),
      ),
    );
    const [viaCtr, ...viaApi] = s1.peers;
    await withLogs([s1.tracker, ...s1.peers], async () => {
      // the peer of the containerd node wrote hosts.toml for the registry it mirrors
      const toml = await fsp.readFile(path.join(s1.hostsDir!, origin!.host, 'hosts.toml'), 'utf8');
      expect(toml).toContain(`[host."${viaCtr.url}"]`);
      expect(toml).toContain(`server = "http://${origin!.host}"`);

      const ref = `${origin!.host}/${REPO}:${TAG}`;
      const before = origin!.sent();
      const t0 = Date.now();
      const [ctrPull, ...apiPulls] = await Promise.all([
        containerd!.ctr(['images', 'pull', '--hosts-dir', s1.hostsDir!, '--plain-http', ref], { timeoutMs: 180_000 }),
        ...viaApi.map((p) => pullThroughMirror(p.url, REPO, TAG)),
      ]);
      const seconds = (Date.now() - t0) / 1000;
      const egress = origin!.sent() - before;

      // containerd's pull (its content store checks every digest) went through the mirror
      expect(ctrPull).toMatchObject({ code: 0 });
      const ls = await containerd!.ctr(['images', 'ls']);
      expect(ls.stdout).toContain(ref);
      expect(ls.stdout).toContain(image.manifestDigest);
      const content = await containerd!.ctr(['content', 'ls', '-q']);
      for (const l of image.layers) expect(content.stdout).toContain(l.digest);
      // the five API clients: every blob's bytes hash to its digest
      for (const p of apiPulls) {
        expect(p.manifestDigest).toBe(image.manifestDigest);
        expect(p.blobs.map((b) => b.digest)).toEqual([image.config.digest, ...image.layers.map((l) => l.digest)]);
        for (const b of p.blobs) expect(b.got).toMatchObject({ status: 200, size: b.size, digest: b.digest });
      }
      // every cache holds verified blobs, the containerd node's too
      for (const p of s1.peers) for (const l of image.layers) expect(await fileSha256(p.blobFile(l.digest))).toBe(l.digest);

      const st = await Promise.all(s1.peers.map((p) => p.status()));
      const fromPeers = st.reduce((n, s) => n + s.totals.fromPeers, 0);
      const fromOrigin = st.reduce((n, s) => n + s.totals.fromOrigin, 0);
      const ratio = egress / image.bytes;
      numbers.push(
        `1. six peers: image ${MiB(image.bytes)}; origin egress ${MiB(egress)} = ${ratio.toFixed(2)}x the image; peers got ${MiB(fromPeers)} from peers, ${MiB(fromOrigin)} from the origin; ${seconds.toFixed(1)} s`,
      );
      for (const s of st) numbers.push(`   ${s.node}: from origin ${MiB(s.totals.fromOrigin)}, from peers ${MiB(s.totals.fromPeers)}, sent to peers ${MiB(s.totals.uploadedToPeers)}`);
      expect(egress).toBeGreaterThanOrEqual(image.bytes * 0.99); // the image came through the metered link at least once
      expect(egress).toBeLessThanOrEqual(1.6 * image.bytes);
      // the other copies came from the swarm
      expect(fromPeers).toBeGreaterThanOrEqual(4 * image.big.size);
      expect(st.filter((s) => s.totals.fromPeers >= image.big.size).length).toBeGreaterThanOrEqual(4);
    });
  }, 240_000);

  test('the peer stopped with SIGTERM: its hosts.toml is gone and containerd pulls straight from the registry', async () => {
    const peer = s1.peers[0];
    expect(peer?.alive()).toBe(true);
    const toml = path.join(s1.hostsDir!, origin!.host, 'hosts.toml');
    expect(fs.readFileSync(toml, 'utf8')).toContain(peer.url);
    await withLogs([peer], async () => {
      const exit = await peer.kill('SIGTERM');
      expect(exit).toEqual({ code: 0, signal: null });
      expect(fs.existsSync(toml)).toBe(false);
      expect(fs.existsSync(path.dirname(toml))).toBe(false);

      // forget the image so that containerd has to fetch every byte again
      const ref = `${origin!.host}/${REPO}:${TAG}`;
      expect((await containerd!.ctr(['images', 'rm', '--sync', ref])).code).toBe(0);
      const content = await containerd!.ctr(['content', 'ls', '-q']);
      expect(content.stdout).not.toContain(image.big.digest);

      const before = origin!.sent();
      const r = await containerd!.ctr(['images', 'pull', '--hosts-dir', s1.hostsDir!, '--plain-http', ref], { timeoutMs: 120_000 });
      expect(r).toMatchObject({ code: 0 });
      expect((await containerd!.ctr(['images', 'ls'])).stdout).toContain(image.manifestDigest);
      // the whole image came from the registry (the peer is down: nothing else could send it)
      const direct = origin!.sent() - before;
      expect(direct).toBeGreaterThanOrEqual(image.bytes);
      numbers.push(`2. peer stopped: hosts.toml removed; containerd pulled ${MiB(direct)} straight from the registry`);
    });
  }, 180_000);

  test('peers without the tracker token (a wrong one, none) are refused and get nothing from the swarm', async () => {
    convertOnce().catch(() => undefined); // for the last scenario, meanwhile (its errors are reported there)
    const tracker = s1.tracker!;
    const dir = path.join(work, 's3');
    await fsp.mkdir(dir, { recursive: true });
    const wrongFile = path.join(dir, 'wrong-token');
    await fsp.writeFile(wrongFile, 'rw not-a-token-of-this-fleet-0123456789 intruder\n', { mode: 0o600 });
    const digest = image.big.digest;
    // five honest peers seed the blob in this swarm
    const seeders = s1.peers.slice(1);
    for (const p of seeders) expect((await heldBlob(p, digest)).size).toBe(image.big.size);

    // the tracker's metadata route needs the token
    const meta = `${tracker.url}/v1/p2p/torrents/${digest}`;
    expect((await httpRequest(meta)).status).toBe(401);
    expect((await httpRequest(meta, { headers: { Authorization: 'Bearer not-a-token-of-this-fleet-0123456789' } })).status).toBe(401);
    expect((await httpRequest(meta, { headers: { Authorization: `Bearer ${token}` } })).status).toBe(200);

    const before = await tracker.stats();
    const intruders = await Promise.all([
      startPeer('s3-wrong-token', { cacheDir: path.join(dir, 'cache-wrong'), logDir, tracker: tracker.url, tokenFile: wrongFile, mirror: [origin!.host], stallTimeout: '2s' }),
      startPeer('s3-no-token', { cacheDir: path.join(dir, 'cache-none'), logDir, tracker: tracker.url, mirror: [origin!.host], stallTimeout: '2s' }),
    ]);
    await withLogs([tracker, ...intruders], async () => {
      const originBefore = origin!.sent();
      const got = await Promise.all(intruders.map((p) => fetchDigest(`${p.url}/v2/${REPO}/blobs/${digest}`)));
      for (const g of got) expect(g).toMatchObject({ status: 200, size: image.big.size, digest });
      // each fell back to the origin: both copies crossed the metered link
      expect(origin!.sent() - originBefore).toBeGreaterThanOrEqual(2 * image.big.size);
      // then tried to seed: their announces are refused
      const after = await waitFor('refused announces', async () => {
        const s = await tracker.stats();
        return s.refused >= before.refused + 2 ? s : undefined;
      }, 15_000);
      for (const p of intruders) {
        const s = await p.status();
        expect(s.totals.fromPeers).toBe(0);
        expect(s.totals.fromOrigin).toBe(image.big.size);
        expect(s.swarm?.peers).toBe(0);
        expect(p.log()).toContain('tracker unusable for this blob: fetching from the origin');
        expect(p.log()).toMatch(/HTTP 401/);
      }
      numbers.push(`3. no token / wrong token: tracker refused ${after.refused - before.refused} announces; the intruders got 0 bytes from peers`);
    });
    // the first scenario's peers are no longer needed
    for (const p of [...s1.peers, ...intruders]) await p.kill('SIGTERM');
    await tracker.kill('SIGTERM');
  }, 180_000);

  test('the first seeder killed -9 half-way: the others finish from each other and the origin, verified', async () => {
    const dir = path.join(work, 's4');
    const tracker = await startTracker('s4-tracker', { tokensFile, dir: path.join(dir, 'tracker'), logDir });
    // the first seeder uploads slowly, so that the others are caught half-way
    const seeder = await startPeer('s4-seeder', { cacheDir: path.join(dir, 'seeder'), logDir, tracker: tracker.url, tokenFile, mirror: [origin!.host], stallTimeout: '3s', uploadLimit: '4MiB/s' });
    const others = await Promise.all(
      ['a', 'b', 'c'].map((n) => startPeer(`s4-${n}`, { cacheDir: path.join(dir, n), logDir, tracker: tracker.url, tokenFile, mirror: [origin!.host], stallTimeout: '3s' })),
    );
    const { digest, size } = image.big;
    await withLogs([tracker, seeder, ...others], async () => {
      // the seeder is the node that fetched the blob from the origin
      const first = await fetchDigest(`${seeder.url}/v2/${REPO}/blobs/${digest}`);
      expect(first).toMatchObject({ status: 200, size, digest });
      expect(await heldBlob(seeder, digest)).toMatchObject({ fromOrigin: size, fromPeers: 0 });

      const downloads = others.map((p) => fetchDigest(`${p.url}/v2/${REPO}/blobs/${digest}`));
      // half-way: every other node has pieces from the swarm, the furthest 40% of the blob
      const samples: string[] = [];
      const atKill = await waitFor(
        'the others half-way through their swarm downloads',
        async () => {
          const [ts, seed] = await Promise.all([Promise.all(others.map((p) => transferOf(p, digest))), seeder.status()]);
          const seederSent = seed.totals.uploadedToPeers;
          samples.push(`${Date.now() % 100_000}: seeder sent ${seederSent}, others ${ts.map((t) => (t ? `${t.phase} ${t.fromPeers}` : '-')).join(', ')}`);
          if (ts.some((t) => !t || t.phase !== 'swarm' || t.fromPeers <= 0)) return undefined;
          if (Math.max(...ts.map((t) => t!.fromPeers)) < 0.4 * size) return undefined;
          return { ts: ts.map((t) => t!.fromPeers), seederSent };
        },
        60_000,
        50,
      ).catch((e: Error) => {
        e.message += `\n${samples.slice(-40).join('\n')}`;
        throw e;
      });
      const killed = await seeder.kill('SIGKILL');
      expect(killed.signal).toBe('SIGKILL');
      // caught half-way: none of them was near the end (the rest must come from each other and the origin)
      for (const n of atKill.ts) expect(n).toBeLessThan(0.8 * size);

      const got = await Promise.all(downloads);
      for (const g of got) expect(g).toMatchObject({ status: 200, size, digest });
      const held = await Promise.all(others.map((p) => heldBlob(p, digest)));
      for (const [i, p] of others.entries()) {
        expect(await fileSha256(p.blobFile(digest))).toBe(digest);
        expect(held[i].fromPeers).toBeGreaterThan(0);
        expect(held[i].fromOrigin).toBeGreaterThan(0); // the stalled pieces came from the origin, by range
        expect(held[i].fromPeers + held[i].fromOrigin).toBeGreaterThanOrEqual(size);
        expect(p.log()).toContain('swarm stalled: the rest comes from the origin');
      }
      numbers.push(
        `4. seeder killed at ${atKill.ts.map((n) => `${((100 * n) / size).toFixed(0)}%`).join('/')} of the others' downloads (seeder had sent ${MiB(atKill.seederSent)}); then: ${held
          .map((h) => `${MiB(h.fromPeers)} from peers + ${MiB(h.fromOrigin)} from the origin`)
          .join('; ')}`,
      );
    });
    for (const p of [tracker, ...others]) await p.kill('SIGTERM');
  }, 180_000);

  test('a malicious peer serving corrupt pieces: detected, never committed, dropped; the honest peers finish verified', async () => {
    const dir = path.join(work, 's5');
    const tracker = await startTracker('s5-tracker', { tokensFile, dir: path.join(dir, 'tracker'), logDir });
    const honest = await startPeer('s5-honest', { cacheDir: path.join(dir, 'honest'), logDir, tracker: tracker.url, tokenFile, mirror: [origin!.host], stallTimeout: '2s' });
    const { digest, size } = image.big;
    const procs: Proc[] = [tracker, honest];
    await withLogs(procs, async () => {
      // an honest node fetches the blob from the origin and publishes its metadata
      expect(await fetchDigest(`${honest.url}/v2/${REPO}/blobs/${digest}`)).toMatchObject({ status: 200, size, digest });
      await waitFor('metadata at the tracker', async () => ((await httpRequest(`${tracker.url}/v1/p2p/torrents/${digest}`, { headers: { Authorization: `Bearer ${token}` } })).status === 200 ? true : undefined));

      // the bad peer joins with the right torrent and the right bytes, then serves garbage
      const bad = spawnNode('s5-bad-peer', BAD_PEER_JS, ['--tracker', tracker.url, '--token', token, '--digest', digest, '--source', image.blobFile(digest), '--dir', path.join(dir, 'bad')], logDir);
      procs.push(bad);
      await waitFor('the bad peer to seed and corrupt its copy', () => {
        if (!bad.alive()) throw new Error(`the bad peer exited: ${bad.log(2000)}`);
        return bad.stdout().includes('"event":"corrupted"') ? true : undefined;
      }, 30_000);
      expect(bad.stdout()).toContain('"event":"seeding"');
      // the honest seeder leaves: the bad peer is the only source in the swarm
      await honest.kill('SIGTERM');

      const victims = await Promise.all(['a', 'b'].map((n) => startPeer(`s5-${n}`, { cacheDir: path.join(dir, n), logDir, tracker: tracker.url, tokenFile, mirror: [origin!.host], stallTimeout: '2s' })));
      procs.push(...victims);
      const got = await Promise.all(victims.map((p) => fetchDigest(`${p.url}/v2/${REPO}/blobs/${digest}`)));
      for (const g of got) expect(g).toMatchObject({ status: 200, size, digest });

      const uploaded = Math.max(0, ...[...bad.stdout().matchAll(/"uploaded":(\d+)/g)].map((m) => Number(m[1])));
      expect(uploaded).toBeGreaterThan(0); // it did serve its garbage
      for (const p of victims) {
        const s = await p.status();
        expect(s.totals.droppedPeers).toBeGreaterThan(0);
        expect(p.log()).toContain('peer sent a piece that fails verification: dropped');
        // nothing of the garbage was committed: the cache's file is the blob, every byte from the origin
        expect(await fileSha256(p.blobFile(digest))).toBe(digest);
        const b = s.blobs.find((x) => x.digest === digest);
        expect(b).toMatchObject({ size, fromPeers: 0, fromOrigin: size });
      }
      numbers.push(`5. bad peer sent ${(uploaded / 1024).toFixed(0)} KiB of garbage; dropped by ${victims.length}/${victims.length} honest peers, which then took the blob from the origin, verified`);
      await bad.kill('SIGTERM');
    });
    for (const p of procs) await p.kill('SIGTERM');
  }, 180_000);

  test('a d4fs image, then a d4fs delta, pulled by six nodes at once through their peers: the server sends each file about once', async () => {
    const dir = path.join(work, 's6');
    const { full, delta } = await convertOnce();
    const server = await startServer('s6-server', { root: path.join(dir, 'server'), tokensFile, logDir });
    for (const [file, name] of [[full, 'sys:1'], [delta, 'sys:2']]) {
      const r = await runCli(['push', '--cdimg', file, '--image', name, '--server', server.url, '--token-file', tokenFile]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    }
    const peers = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => startPeer(`s6-n${i}`, { cacheDir: path.join(dir, `cache${i}`), logDir, tracker: server.url, tokenFile, stallTimeout: '5s' })));
    const stores = peers.map((_, i) => path.join(dir, `store${i + 1}`));
    const all: Proc[] = [server, ...peers];

    /** Six `ctr-cli pull --peer` at once; the server's blob bytes meanwhile. */
    const pullAll = async (name: string): Promise<{ served: number; results: Array<{ from: string | null; files: Array<{ rootDigest: string; downloaded: boolean; merged: boolean; size: number }> }> }> => {
      const before = await server.blobBytesSent();
      const procs = peers.map((p, i) =>
        spawnCli(`s6-pull-${name.replace(':', '')}-${i + 1}`, ['pull', '--image', name, '--server', server.url, '--peer', p.url, '--token-file', tokenFile, '--store', stores[i], '--no-load', '--json'], logDir),
      );
      all.push(...procs);
      const exits = await Promise.all(procs.map((p) => p.exited));
      for (const e of exits) expect(e).toEqual({ code: 0, signal: null });
      const served = (await server.blobBytesSent()) - before;
      return { served, results: procs.map((p) => JSON.parse(p.stdout())) };
    };

    await withLogs(all, async () => {
      const sizes = { full: (await fsp.stat(full)).size, delta: (await fsp.stat(delta)).size };
      const digests = { full: await fileSha256(full), delta: await fileSha256(delta) };
      const show = async (f: string): Promise<{ rootDigest: string; imageId: string }> => JSON.parse((await runCli(['cdimg', 'show', f, '--json'])).stdout) as { rootDigest: string; imageId: string };
      const [showFull, showDelta] = [await show(full), await show(delta)];
      const roots = { full: showFull.rootDigest, delta: showDelta.rootDigest };

      const a = await pullAll('sys:1');
      for (const r of a.results) {
        expect(r.from).toBeNull();
        expect(r.files).toHaveLength(1);
        expect(r.files[0]).toMatchObject({ rootDigest: roots.full, downloaded: true, merged: false, size: sizes.full });
      }
      const b = await pullAll('sys:2');
      for (const r of b.results) {
        expect(r.from).toBe(showFull.imageId); // an update from the image the node holds
        expect(r.files).toHaveLength(1);
        expect(r.files[0]).toMatchObject({ rootDigest: roots.delta, downloaded: true, merged: false, size: sizes.delta });
      }
      const st = await Promise.all(peers.map((p) => p.status()));
      for (const p of peers) for (const dg of [digests.full, digests.delta]) expect(await fileSha256(p.blobFile(dg))).toBe(dg);
      const peersFull = st.reduce((n, s) => n + (s.blobs.find((x) => x.digest === digests.full)?.fromPeers ?? 0), 0);
      const peersDelta = st.reduce((n, s) => n + (s.blobs.find((x) => x.digest === digests.delta)?.fromPeers ?? 0), 0);
      numbers.push(
        `6. d4fs-server: full file ${MiB(sizes.full)} sent ${(a.served / sizes.full).toFixed(2)}x to 6 nodes (${MiB(peersFull)} between peers); delta ${MiB(sizes.delta)} sent ${(b.served / sizes.delta).toFixed(2)}x (${MiB(peersDelta)} between peers)`,
      );
      expect(a.served).toBeGreaterThanOrEqual(sizes.full);
      expect(a.served).toBeLessThanOrEqual(1.6 * sizes.full);
      expect(peersFull).toBeGreaterThanOrEqual(4 * sizes.full);
      expect(b.served).toBeGreaterThanOrEqual(sizes.delta);
      expect(b.served).toBeLessThanOrEqual(1.6 * sizes.delta);
      expect(peersDelta).toBeGreaterThanOrEqual(4 * sizes.delta);
    });
  }, 240_000);
});
