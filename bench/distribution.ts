/**
 * Distribution benchmark (issue 5): updating an image that a machine holds in
 * an older version, over an emulated link.
 *
 *  - d4fs: `pull` from d4fs-server of the new version by a client holding the
 *    old one (plan + merged delta, verified and stored);
 *  - plain: what `ctr image pull` moves for the same update from a registry
 *    (Debian's docker-registry): manifest, config and the layers of the new
 *    image the old one lacks, digest-checked;
 *
 * both through the same throttling TCP proxy (one shared link per direction,
 * paced to 100 Mbit/s and 10 Mbit/s), in the same run. Also: server
 * throughput with 32 concurrent clients (loopback, unthrottled) and the
 * latency of a pull plan that hits the merge cache against one that merges.
 *
 * updateBench() measures the whole update on a real machine setup instead
 * (a private containerd with the d4fs FUSE snapshotter): `ctr-cli pull` +
 * load + `ctr run` against `ctr image pull` + unpack + `ctr run` on
 * overlayfs, through the same proxies (see its comment).
 *
 * The fixture chain and the proxy are exported for the distribution tests.
 * `node dist/bench/distribution.js [update] [distribution] [--quick] [--runs N]`
 * runs these benchmarks alone.
 */
import { createHash } from 'node:crypto';
import { promises as fsp, readdirSync, readFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform, TransformCallback, Writable } from 'node:stream';
import { buildDebImage, DEB_IMAGE_NAMES, ImageName } from '../test/fixtures/debimages';
import { buildSystemImage, type SystemImageName } from '../test/fixtures/systemimages';

/** A fixture image of either kind: the small Debian images or the full-system ones. */
export type FixtureName = ImageName | SystemImageName;

/** Builds (or finds in the cache) a fixture image by name. */
export function buildFixtureImage(name: FixtureName): Promise<{ ref: string; layout: string; tag: string }> {
  return (DEB_IMAGE_NAMES as readonly string[]).includes(name) ? buildDebImage(name as ImageName) : buildSystemImage(name as SystemImageName);
}
import { pushOciLayout, startRegistry } from '../test/helpers/registry';
import { convertImage } from '../src/convert/convert';
import { diffImages } from '../src/delta/diff';
import { WorkerPool } from '../src/workers/pool';
import { RegistryClient } from '../src/oci/registry/client';
import type { OciManifest } from '../src/oci/types';
import { VerifyingStream } from '../src/util/digest';
import { D4fsServer } from '../src/server/server';
import { pushToServer } from '../src/distribution/push';
import { pullFromServer } from '../src/distribution/pull';
import { ServerClient } from '../src/distribution/client';
import { LocalStore } from '../src/store/store';
import { newToken } from '../src/server/auth';
import { packageRoot } from '../src/util/paths';
import { type PrivateContainerd, type SnapshotterProcess, runCommand, startContainerd, startSnapshotter, unmountAllUnder } from '../test/helpers/containerd';
import { median } from './stats';

// ---------------------------------------------------------------------------
// Fixtures: a chain of real images as .cdimg files

/** A version chain: full images and the deltas between consecutive versions. */
export interface CdimgChain {
  /** Full .cdimg of each version, oldest first. */
  full: string[];
  /** deltas[i] leads from version i to version i+1. */
  deltas: string[];
  /** Image ids, oldest first. */
  imageIds: string[];
  /** The OCI layouts converted (refs "oci:DIR:TAG"). */
  refs: string[];
  /** Layout directory and tag of each version. */
  layouts: { layout: string; tag: string }[];
}

/**
 * Convert the given Debian fixture images (e.g. libssl-v1..v3) into full
 * .cdimg files in `dir` and diff consecutive versions.
 */
export async function makeCdimgChain(dir: string, names: FixtureName[], pool?: WorkerPool): Promise<CdimgChain> {
  const own = pool ?? new WorkerPool(2);
  try {
    const chain: CdimgChain = { full: [], deltas: [], imageIds: [], refs: [], layouts: [] };
    for (const n of names) {
      const img = await buildFixtureImage(n);
      const out = join(dir, `${n}.cdimg`);
      const r = await convertImage({ ref: img.ref, output: out, pool: own });
      chain.full.push(out);
      chain.imageIds.push(r.imageId);
      chain.refs.push(img.ref);
      chain.layouts.push({ layout: img.layout, tag: img.tag });
    }
    for (let i = 1; i < names.length; i++) {
      const out = join(dir, `${names[i - 1]}-to-${names[i]}.cdimg`);
      await diffImages({ oldPath: chain.full[i - 1], newPath: chain.full[i], out, pool: own });
      chain.deltas.push(out);
    }
    return chain;
  } finally {
    if (!pool) await own.close();
  }
}

// ---------------------------------------------------------------------------
// A link emulator: a TCP proxy paced to a bandwidth

/** One direction of a link: a byte budget paced at `bytesPerSecond`, shared by all connections. */
class Pacer {
  private free = 0;
  constructor(readonly bytesPerSecond: number) {}
  /** Milliseconds to wait before `n` more bytes may go. */
  reserve(n: number): number {
    const now = performance.now();
    const start = Math.max(now, this.free);
    this.free = start + (n / this.bytesPerSecond) * 1000;
    return Math.max(0, this.free - now - 2); // 2 ms of burst
  }
}

/** Paces a stream through a Pacer in slices of at most 16 KiB. */
class Throttle extends Transform {
  constructor(private readonly pacer: Pacer) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const send = (off: number): void => {
      if (off >= chunk.length) {
        cb();
        return;
      }
      const piece = chunk.subarray(off, off + 16384);
      const wait = this.pacer.reserve(piece.length);
      const go = (): void => {
        this.push(piece);
        send(off + piece.length);
      };
      if (wait > 0) setTimeout(go, wait);
      else go();
    };
    send(0);
  }
}

/** A running throttling proxy. */
export interface ThrottlingProxy {
  /** "127.0.0.1:PORT" */
  host: string;
  port: number;
  /** Bytes forwarded target → client. */
  bytesDown(): number;
  /** Cut every open connection (a network failure). */
  cut(): void;
  close(): Promise<void>;
}

/**
 * Forward 127.0.0.1:<new port> to `target` ("host:port"), pacing each
 * direction to `mbitPerSecond` (shared by all connections, like one link).
 */
export async function startThrottlingProxy(target: string, mbitPerSecond: number): Promise<ThrottlingProxy> {
  const [thost, tport] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const rate = (mbitPerSecond * 1e6) / 8;
  const down = new Pacer(rate);
  const up = new Pacer(rate);
  const sockets = new Set<net.Socket>();
  let bytesDown = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect(tport, thost);
    // no Nagle: a router forwards packets as they come, and Nagle + delayed ACKs would add 40 ms stalls
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    sockets.add(client);
    sockets.add(upstream);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    const tDown = new Throttle(down);
    tDown.on('data', (c: Buffer) => (bytesDown += c.length));
    client.pipe(new Throttle(up)).pipe(upstream);
    upstream.pipe(tDown).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    port,
    bytesDown: () => bytesDown,
    cut: () => {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

// ---------------------------------------------------------------------------
// The benchmark

export interface DistributionRow {
  /** e.g. "libssl v1→v3". */
  update: string;
  /** Link speed in Mbit/s. */
  mbit: number;
  d4fsBytes: number;
  d4fsSeconds: number;
  plainBytes: number;
  plainSeconds: number;
  /** d4fs / plain. */
  bytesRatio: number;
  timeRatio: number;
}

export interface DistributionBenchResult {
  rows: DistributionRow[];
  /** 32 clients pulling at once over loopback. */
  concurrency: { clients: number; seconds: number; bytes: number; mibPerSecond: number; pullsPerSecond: number };
  /** POST /pull latency in ms: composing the merge now vs served from the merge cache (median). */
  plan: { missMs: number; hitMs: number };
}

/** What `ctr image pull` fetches for an update from `oldM` to `newM`: manifest, config, new layers. */
async function plainPull(client: RegistryClient, repo: string, tag: string, have: Set<string>): Promise<number> {
  const m = await client.getManifest(repo, tag);
  const man = JSON.parse(m.bytes.toString('utf8')) as OciManifest;
  let bytes = m.bytes.length;
  for (const d of [man.config, ...man.layers]) {
    if (have.has(d.digest)) continue;
    const body = await client.openBlob(repo, d.digest, d.size);
    const sink = new Writable({ write: (_c, _e, cb) => cb() });
    await pipeline(body, new VerifyingStream(d.digest, d.digest, d.size), sink);
    bytes += d.size;
  }
  return bytes;
}

/** Layer and config digests of an OCI layout's image (what a machine holding it has). */
async function digestsOf(layout: string, tag: string): Promise<Set<string>> {
  const index = JSON.parse(await fsp.readFile(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const d = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag) ?? index.manifests[0];
  const man = JSON.parse(await fsp.readFile(join(layout, 'blobs', 'sha256', d.digest.slice(7)), 'utf8')) as OciManifest;
  return new Set([man.config.digest, ...man.layers.map((l) => l.digest)]);
}

const secondsSince = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e9;

/**
 * Run the benchmark. `updates` are image chains (oldest first); the update
 * measured goes from the first to the last version.
 */
export async function distributionBench(opts: { updates?: ImageName[][]; links?: number[]; clients?: number } = {}): Promise<DistributionBenchResult> {
  const updates = opts.updates ?? [['libssl-v1', 'libssl-v2', 'libssl-v3'], ['nginx-v1', 'nginx-v2']];
  const links = opts.links ?? [100, 10];
  const clients = opts.clients ?? 32;
  const work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-bench-dist-'));
  const token = newToken();
  await fsp.writeFile(join(work, 'tokens'), `rw ${token} bench\n`, { mode: 0o600 });
  const server = await D4fsServer.start({ root: join(work, 'server'), listen: '127.0.0.1:0', tokensFile: join(work, 'tokens'), readOpen: true, processMetrics: false });
  const registry = await startRegistry();
  const pool = new WorkerPool(2);
  const rows: DistributionRow[] = [];
  let concurrency: DistributionBenchResult['concurrency'] | undefined;
  let plan: DistributionBenchResult['plan'] | undefined;
  try {
    for (const names of updates) {
      const label = `${names[0].replace(/-v\d+$/, '')} ${names[0].slice(-2)}→${names[names.length - 1].slice(-2)}`;
      const repo = names[0].replace(/-v\d+$/, '');
      const chain = await makeCdimgChain(work, names, pool);
      const last = names.length - 1;
      await pushToServer({ file: chain.full[0], image: `${repo}:v1`, server: server.url, token });
      for (let i = 0; i < chain.deltas.length; i++) await pushToServer({ file: chain.deltas[i], image: `${repo}:v${i + 2}`, server: server.url, token });
      for (const [i, l] of chain.layouts.entries()) await pushOciLayout(l.layout, l.tag, registry.host, `bench/${repo}:v${i + 1}`);
      const have = await digestsOf(chain.layouts[0].layout, chain.layouts[0].tag);

      // merge-cache latency: the first plan merges, the next ones hit
      if (!plan && chain.deltas.length > 1) {
        const c = new ServerClient(server.url, {});
        const ask = async (): Promise<number> => {
          const t0 = process.hrtime.bigint();
          await c.json('POST', `/v1/repositories/${repo}/pull`, 'plan', { tag: `v${names.length}`, have: [chain.imageIds[0]] });
          return secondsSince(t0) * 1000;
        };
        const missMs = await ask(); // composes the chain (and queues its rediff)
        const hits: number[] = [];
        for (let i = 0; i < 20; i++) hits.push(await ask());
        c.close();
        plan = { missMs, hitMs: median(hits) };
      }
      await server.mergesIdle(); // steady state: the background rediff of the chain is done

      for (const mbit of links) {
        const sProxy = await startThrottlingProxy(new URL(server.url).host, mbit);
        const rProxy = await startThrottlingProxy(registry.host, mbit);
        try {
          const store = await LocalStore.open(join(work, `client-${repo}-${mbit}`));
          await store.add(chain.full[0]);
          let t0 = process.hrtime.bigint();
          const r = await pullFromServer({ image: `${repo}:v${names.length}`, server: `http://${sProxy.host}`, store, noLoad: true });
          const d4fsSeconds = secondsSince(t0);
          store.close();
          const rc = new RegistryClient(rProxy.host, { tlsVerify: false });
          t0 = process.hrtime.bigint();
          const plainBytes = await plainPull(rc, `bench/${repo}`, `v${last + 1}`, have);
          const plainSeconds = secondsSince(t0);
          await rc.close();
          rows.push({ update: label, mbit, d4fsBytes: r.bytes, d4fsSeconds, plainBytes, plainSeconds, bytesRatio: r.bytes / plainBytes, timeRatio: d4fsSeconds / plainSeconds });
        } finally {
          await sProxy.close();
          await rProxy.close();
        }
      }

      // throughput: `clients` machines updating at once (half from v1, half from nothing), loopback
      if (!concurrency) {
        const stores: LocalStore[] = [];
        for (let i = 0; i < clients; i++) {
          const s = await LocalStore.open(join(work, `conc-${i}`));
          if (i % 2 === 0) await s.add(chain.full[0]);
          stores.push(s);
        }
        const t0 = process.hrtime.bigint();
        const results = await Promise.all(stores.map((store) => pullFromServer({ image: `${repo}:v${names.length}`, server: server.url, store, noLoad: true })));
        const seconds = secondsSince(t0);
        for (const s of stores) s.close();
        const bytes = results.reduce((n, r) => n + r.bytes, 0);
        concurrency = { clients, seconds, bytes, mibPerSecond: bytes / 2 ** 20 / seconds, pullsPerSecond: clients / seconds };
      }
    }
  } finally {
    await pool.close();
    await server.stop(1000);
    await registry.stop();
    await fsp.rm(work, { recursive: true, force: true });
  }
  return { rows, concurrency: concurrency as DistributionBenchResult['concurrency'], plan: plan ?? { missMs: NaN, hitMs: NaN } };
}

/** Print the tables (markdown) with the target. */
export function printDistributionTable(r: DistributionBenchResult): void {
  const mib = (n: number): string => (n / 2 ** 20).toFixed(2);
  const lines = [
    '## distribution: d4fs pull (held old version → new) vs plain registry pull of the new layers, same link (target: d4fs time ≤ 0.2× plain at 100 Mbit/s)',
    '',
    '| update | link | d4fs MiB | d4fs s | plain MiB | plain s | bytes ratio | time ratio |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.update} | ${x.mbit} Mbit/s | ${mib(x.d4fsBytes)} | ${x.d4fsSeconds.toFixed(2)} | ${mib(x.plainBytes)} | ${x.plainSeconds.toFixed(2)} | ${x.bytesRatio.toFixed(3)} | ${x.timeRatio.toFixed(3)}${x.mbit === 100 ? (x.timeRatio <= 0.2 ? ' ok' : ' MISS') : ''} |`,
    ),
    '',
    `server: ${r.concurrency.clients} concurrent pulls in ${r.concurrency.seconds.toFixed(2)} s (${r.concurrency.pullsPerSecond.toFixed(1)} pulls/s, ${r.concurrency.mibPerSecond.toFixed(0)} MiB/s over loopback); ` +
      `pull plan ${r.plan.missMs.toFixed(1)} ms when merging, ${r.plan.hitMs.toFixed(2)} ms from the merge cache (median)`,
  ];
  process.stdout.write(lines.join('\n') + '\n\n');
}

// ---------------------------------------------------------------------------
// End-to-end update: pull + load + `ctr run`, d4fs vs a plain `ctr image pull`

/** One measured update on one link. */
export interface UpdateRow {
  /** e.g. "libssl v1→v3". */
  update: string;
  /** Link speed in Mbit/s. */
  mbit: number;
  /** Bytes that crossed the emulated link (proxy counter, target → client). */
  d4fsBytes: number;
  /** `ctr-cli pull --server … --address …` (plan, download, verify, store, load into containerd). */
  d4fsPullSeconds: number;
  /** `ctr run --rm --snapshotter d4fs IMG id sh -c true`. */
  d4fsRunSeconds: number;
  d4fsSeconds: number;
  plainBytes: number;
  /** `ctr image pull --plain-http` (fetch of what containerd lacks + unpack into overlayfs). */
  plainPullSeconds: number;
  /** `ctr run --rm IMG id sh -c true` (overlayfs). */
  plainRunSeconds: number;
  plainSeconds: number;
  /** d4fs / plain, end to end. */
  timeRatio: number;
  /** Runs behind the medians. */
  runs: number;
  bytesRatio: number;
}

export interface UpdateBenchResult {
  rows: UpdateRow[];
  /** Runs per cell (each cell's times are medians). */
  runs: number;
}

export interface UpdateBenchOptions {
  /** Image chains, oldest first; the update goes from the first version to the last (default libssl v1→v3, nginx v1→v2, redis v1→v2). */
  updates?: FixtureName[][];
  /** Link speeds in Mbit/s (default 100 and 10). */
  links?: number[];
  /** Runs per update and link, each on a fresh containerd (default 3); times are medians. */
  runs?: number;
}

/** A private containerd with the d4fs snapshotter (FUSE) in `dir`. */
interface Rig {
  dir: string;
  containerd: PrivateContainerd;
  snapshotter: SnapshotterProcess;
}

async function startRig(dir: string): Promise<Rig> {
  await fsp.mkdir(dir, { recursive: true });
  const sock = join(dir, 'd4fs.sock');
  // the snapshotter serves the store the bench pulls into (stores come from its config only)
  const snapshotter = await startSnapshotter({ root: join(dir, 'snapshotter'), address: sock, logLevel: 'warn', args: ['--store', join(dir, 'store')] });
  try {
    const containerd = await startContainerd({ snapshotterSocket: sock });
    return { dir, containerd, snapshotter };
  } catch (e) {
    await snapshotter.stop();
    throw e;
  }
}

/** PIDs (not this one) whose command line mentions `needle`. */
function pidsMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out;
}

/**
 * Stop containerd (its shims and containers) and the snapshotter, end the FUSE
 * manager the snapshotter started (it outlives the snapshotter by design),
 * unmount what is left under the rig's directory and remove it.
 */
async function stopRig(rig: Rig): Promise<void> {
  await rig.containerd.stop();
  await rig.snapshotter.stop();
  for (const sig of ['SIGTERM', 'SIGKILL'] as const) {
    const pids = pidsMentioning(rig.dir);
    if (!pids.length) break;
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        /* gone */
      }
    }
    for (let i = 0; i < 50 && pidsMentioning(rig.dir).length; i++) await new Promise((r) => setTimeout(r, 100));
  }
  await unmountAllUnder(rig.dir);
  await fsp.rm(rig.dir, { recursive: true, force: true });
}

/** Run a command; throw with its stderr when it fails; resolve with its wall time in seconds. */
async function timed(what: string, file: string, args: string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await runCommand(file, args, { timeoutMs: 600_000 });
  const s = secondsSince(t0);
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}: ${r.stderr.trim()}`);
  return s;
}

/** `ctr …` on a rig (throws on failure); resolves with the wall time. */
async function timedCtr(rig: Rig, args: string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await rig.containerd.ctr(args, { timeoutMs: 600_000 });
  const s = secondsSince(t0);
  if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}\n--- containerd log ---\n${rig.containerd.log()}\n--- snapshotter log ---\n${rig.snapshotter.logs().slice(-4000)}`);
  return s;
}

/**
 * End-to-end update benchmark (issue 5): a machine holds the old version of
 * an image and updates to the new one, until a container of it has run.
 *
 *  - d4fs: the client's local store holds v1 and v1 is loaded into
 *    containerd (d4fs snapshotter, FUSE). Timed: `ctr-cli pull --image
 *    REPO:vN --server http://PROXY --store S --address SOCK` (plan from
 *    d4fs-server, merged delta, verified, stored, loaded) and
 *    `ctr run --rm --snapshotter d4fs REPO:vN id sh -c true`.
 *  - plain: containerd holds v1 pulled from the same docker-registry (so the
 *    layers v1 and vN share are not fetched again, as Docker would do).
 *    Timed: `ctr image pull --plain-http PROXY/bench/REPO:vN` (fetch + unpack
 *    into overlayfs) and `ctr run --rm PROXY/bench/REPO:vN id sh -c true`.
 *
 * Both go through the same kind of throttling proxy at the given link
 * speed (one proxy per side; bandwidth only, no added latency), from a fresh
 * private containerd per run. The server's merge of the chain is made before
 * the timing (the steady state of a fleet: the first machine's pull made it).
 */
export async function updateBench(opts: UpdateBenchOptions = {}): Promise<UpdateBenchResult> {
  const updates = opts.updates ?? [['libssl-v1', 'libssl-v2', 'libssl-v3'], ['nginx-v1', 'nginx-v2'], ['redis-v1', 'redis-v2'], ['system-nginx-v1', 'system-nginx-v2'], ['system-redis-v1', 'system-redis-v2']];
  const links = opts.links ?? [100, 10];
  const runs = Math.max(1, opts.runs ?? 3);
  const cli = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
  const work = await fsp.mkdtemp('/tmp/d4ub-');
  const token = newToken();
  await fsp.writeFile(join(work, 'tokens'), `rw ${token} bench\n`, { mode: 0o600 });
  const pool = new WorkerPool(2);
  let server: D4fsServer | undefined;
  let registry: Awaited<ReturnType<typeof startRegistry>> | undefined;
  const rows: UpdateRow[] = [];
  try {
    server = await D4fsServer.start({ root: join(work, 'server'), listen: '127.0.0.1:0', tokensFile: join(work, 'tokens'), readOpen: true, processMetrics: false });
    registry = await startRegistry();
    for (const names of updates) {
      const repo = names[0].replace(/-v\d+$/, '');
      const last = names.length;
      const label = `${repo} v1→v${last}`;
      const chain = await makeCdimgChain(work, names, pool);
      await pushToServer({ file: chain.full[0], image: `${repo}:v1`, server: server.url, token });
      for (let i = 0; i < chain.deltas.length; i++) await pushToServer({ file: chain.deltas[i], image: `${repo}:v${i + 2}`, server: server.url, token });
      for (const [i, l] of chain.layouts.entries()) await pushOciLayout(l.layout, l.tag, registry.host, `bench/${repo}:v${i + 1}`);
      // steady state: the merge of the chain exists (and its background rediff is done)
      const sc = new ServerClient(server.url, {});
      await sc.json('POST', `/v1/repositories/${repo}/pull`, 'plan', { tag: `v${last}`, have: [chain.imageIds[0]] });
      sc.close();
      await server.mergesIdle();

      for (const mbit of links) {
        const samples: Omit<UpdateRow, 'update' | 'mbit'>[] = [];
        // A plain pull of the full-system image takes ~45 s at 10 Mbit/s: one run there.
        const cellRuns = repo.startsWith('system') && mbit < 100 ? 1 : runs;
        for (let run = 0; run < cellRuns; run++) {
          const rig = await startRig(join(work, `rig-${repo}-${mbit}-${run}`));
          const sProxy = await startThrottlingProxy(new URL(server.url).host, mbit);
          const rProxy = await startThrottlingProxy(registry.host, mbit);
          try {
            const address = rig.containerd.address;
            const store = join(rig.dir, 'store');
            // the machine holds v1: in its d4fs store and loaded, and pulled plainly into containerd (unthrottled, untimed)
            await pullFromServer({ image: `${repo}:v1`, server: server.url, store, load: { address } });
            await timedCtr(rig, ['image', 'pull', '--plain-http', `${registry.host}/bench/${repo}:v1`]);
            // ... and has been running it, on both sides (a site updating a running service)
            await timedCtr(rig, ['run', '--rm', '--snapshotter', 'd4fs', `${repo}:v1`, 'bench-d4fs-v1', 'sh', '-c', 'true']);
            await timedCtr(rig, ['run', '--rm', `${registry.host}/bench/${repo}:v1`, 'bench-plain-v1', 'sh', '-c', 'true']);

            const d0 = sProxy.bytesDown();
            const d4fsPullSeconds = await timed('ctr-cli pull', process.execPath, [cli, 'pull', '--image', `${repo}:v${last}`, '--server', `http://${sProxy.host}`, '--store', store, '--address', address, '--json']);
            const d4fsBytes = sProxy.bytesDown() - d0;
            const d4fsRunSeconds = await timedCtr(rig, ['run', '--rm', '--snapshotter', 'd4fs', `${repo}:v${last}`, 'bench-d4fs', 'sh', '-c', 'true']);

            const p0 = rProxy.bytesDown();
            const plainRef = `${rProxy.host}/bench/${repo}:v${last}`;
            const plainPullSeconds = await timedCtr(rig, ['image', 'pull', '--plain-http', plainRef]);
            const plainBytes = rProxy.bytesDown() - p0;
            const plainRunSeconds = await timedCtr(rig, ['run', '--rm', plainRef, 'bench-plain', 'sh', '-c', 'true']);

            const d4fsSeconds = d4fsPullSeconds + d4fsRunSeconds;
            const plainSeconds = plainPullSeconds + plainRunSeconds;
            samples.push({ runs: 1, d4fsBytes, d4fsPullSeconds, d4fsRunSeconds, d4fsSeconds, plainBytes, plainPullSeconds, plainRunSeconds, plainSeconds, timeRatio: d4fsSeconds / plainSeconds, bytesRatio: d4fsBytes / plainBytes });
          } finally {
            await sProxy.close();
            await rProxy.close();
            await stopRig(rig);
          }
        }
        const med = (k: keyof (typeof samples)[number]): number => median(samples.map((x) => x[k]));
        const row: UpdateRow = {
          update: label,
          mbit,
          d4fsBytes: med('d4fsBytes'),
          d4fsPullSeconds: med('d4fsPullSeconds'),
          d4fsRunSeconds: med('d4fsRunSeconds'),
          d4fsSeconds: med('d4fsSeconds'),
          plainBytes: med('plainBytes'),
          plainPullSeconds: med('plainPullSeconds'),
          plainRunSeconds: med('plainRunSeconds'),
          plainSeconds: med('plainSeconds'),
          timeRatio: 0,
          bytesRatio: 0,
          runs: samples.length,
        };
        row.timeRatio = row.d4fsSeconds / row.plainSeconds;
        row.bytesRatio = row.d4fsBytes / row.plainBytes;
        rows.push(row);
      }
    }
  } finally {
    await pool.close();
    await server?.stop(1000);
    await registry?.stop();
    await unmountAllUnder(work);
    await fsp.rm(work, { recursive: true, force: true });
  }
  return { rows, runs };
}

/** Print the end-to-end update table (markdown) with the target. */
export function printUpdateTable(r: UpdateBenchResult): void {
  const mib = (n: number): string => (n / 2 ** 20).toFixed(2);
  const s = (n: number): string => n.toFixed(2);
  const lines = [
    `## end-to-end update: d4fs (ctr-cli pull + load + ctr run --snapshotter d4fs) vs plain (ctr image pull + unpack + ctr run, overlayfs); old version held and run once on both sides before; medians of the runs shown (target: d4fs ≤ 0.2× plain at 100 Mbit/s)`,
    '',
    '| update | link | runs | d4fs MiB | d4fs pull+load s | d4fs run s | d4fs total s | plain MiB | plain pull+unpack s | plain run s | plain total s | bytes ratio | time ratio |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.update} | ${x.mbit} Mbit/s | ${x.runs} | ${mib(x.d4fsBytes)} | ${s(x.d4fsPullSeconds)} | ${s(x.d4fsRunSeconds)} | ${s(x.d4fsSeconds)} | ${mib(x.plainBytes)} | ${s(x.plainPullSeconds)} | ${s(x.plainRunSeconds)} | ${s(x.plainSeconds)} | ${x.bytesRatio.toFixed(3)} | ${x.timeRatio.toFixed(3)}${x.mbit === 100 ? (x.timeRatio <= 0.2 ? ' ok' : ' MISS') : ''} |`,
    ),
  ];
  process.stdout.write(lines.join('\n') + '\n\n');
}

/** sha256 of a file (tests compare files). */
export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await fsp.readFile(path)).digest('hex');
}

/**
 * `node dist/bench/distribution.js [update] [distribution] [--quick] [--runs N]`:
 * run these benchmarks alone (both by default).
 */
if (require.main === module) {
  const args = process.argv.slice(2);
  const runsAt = args.indexOf('--runs');
  const quick = args.includes('--quick');
  const runs = runsAt >= 0 ? Number(args[runsAt + 1]) : quick ? 1 : 3;
  const only = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--runs');
  const want = (x: string): boolean => only.length === 0 || only.includes(x);
  (async () => {
    if (want('update')) printUpdateTable(await updateBench(quick ? { updates: [['libssl-v1', 'libssl-v2', 'libssl-v3']], links: [100], runs } : { runs }));
    if (want('distribution')) printDistributionTable(await distributionBench(quick ? { updates: [['libssl-v1', 'libssl-v3']], links: [100] } : {}));
  })().catch((e: unknown) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
