/**
 * CRI benchmark (issue 12, `make bench cri`): a Kubernetes node holding an
 * image's previous version updates to the new one through containerd's CRI
 * plugin, until the new version's container runs.
 *
 *  - d4fs: containerd with the CRI plugin's snapshotter = "d4fs" (the d4fs
 *    snapshotter pulls the cheapest chain of the d4fs artifacts `ctr-cli
 *    publish` attached to the image's manifest, in its own process, and
 *    mounts the image over FUSE). Both versions are published (v2 with
 *    `--base` v1).
 *  - overlayfs: the same rig (registry, containerd, CRI plugin, pause
 *    image), the CRI plugin's snapshotter = "overlayfs": containerd's plain
 *    pull + unpack.
 *
 * Each side runs on a fresh rig (containerd + snapshotter) that first pulls
 * v1 of every row straight from the registry (unthrottled, untimed) and runs
 * a pod of it, left running (a node updating a running service). Timed: CRI
 * PullImage of v2 through a throttling proxy in front of the registry (a TCP
 * proxy paced to 100 or 10 Mbit/s, bench/distribution.ts; the image is named
 * by the proxy's host, so containerd and the snapshotter both reach the
 * registry through it), then RunPodSandbox + CreateContainer +
 * StartContainer until ContainerStatus says RUNNING. Bytes are what crossed
 * the proxy towards the node. "mount ready" is the time from PullImage's
 * start to the snapshotter's log line "image provided by d4fs over FUSE"
 * (the "pulled through d4fs" line's own ms in parentheses); for an image
 * without d4fs data, the time until the snapshotter said so.
 *
 * Rows: the full-system nginx (87-package Debian slim tree + nginx, both
 * layers rebuilt), the small nginx on the tiny busybox base (libssl3 and
 * nginx layers updated), and redis on the tiny base pushed without any d4fs
 * data (an ordinary image: the d4fs side must not regress).
 *
 * `node dist/bench/cri.js [--quick] [--runs N]` runs it alone.
 */
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../src/util/paths';
import { startCriRig, type CriRig, type CriPod } from '../test/helpers/cri';
import { pushOciLayout, startRegistry, type TestRegistry } from '../test/helpers/registry';
import { buildFixtureImage, startThrottlingProxy, type FixtureName, type ThrottlingProxy } from './distribution';
import { median } from './stats';

const run = promisify(execFile);

/** One update measured. */
export interface CriCase {
  /** Row label, e.g. "system-nginx v1→v2". */
  label: string;
  /** Repository in the registry. */
  repo: string;
  v1: FixtureName;
  v2: FixtureName;
  /** Published with `ctr-cli publish` (false: an ordinary image, no d4fs data). */
  publish: boolean;
  /** Which target applies. */
  kind: 'system' | 'small' | 'plain';
}

export const CRI_CASES: CriCase[] = [
  { label: 'system-nginx v1→v2 (Debian slim tree)', repo: 'bench/system-nginx', v1: 'system-nginx-v1', v2: 'system-nginx-v2', publish: true, kind: 'system' },
  { label: 'nginx v1→v2 (tiny base)', repo: 'bench/nginx', v1: 'nginx-v1', v2: 'nginx-v2', publish: true, kind: 'small' },
  { label: 'redis v1→v2 (no d4fs data)', repo: 'bench/redis', v1: 'redis-v1', v2: 'redis-v2', publish: false, kind: 'plain' },
];

/** The issue's target for a row (time ratio d4fs / overlayfs), if any. */
export function criTarget(kind: CriCase['kind'], mbit: number): number | undefined {
  if (kind === 'system') return mbit >= 100 ? 0.12 : 0.05;
  if (kind === 'small') return mbit >= 100 ? 0.4 : undefined;
  return 1.1;
}

/** One side's measurement of one update in one run. */
interface Sample {
  bytes: number;
  pullSeconds: number;
  podSeconds: number;
  seconds: number;
  /** d4fs side: PullImage start → "image provided by d4fs over FUSE" (or → "no d4fs data"), s. */
  readySeconds?: number;
  /** d4fs side: the "pulled through d4fs" line's ms. */
  d4fsPullMs?: number;
  /** d4fs side: the snapshotter pulled the image through d4fs. */
  viaD4fs?: boolean;
}

export interface CriRow {
  update: string;
  kind: CriCase['kind'];
  mbit: number;
  runs: number;
  d4fs: Sample;
  plain: Sample;
  bytesRatio: number;
  timeRatio: number;
  target?: number;
}

export interface CriBenchOptions {
  cases?: CriCase[];
  links?: number[];
  /** Runs at 100 Mbit/s (and faster), each on fresh rigs (default 3); medians shown. */
  runs?: number;
  /** Runs at slower links (default: `runs`). */
  slowRuns?: number;
  /** Runs of the full-system rows at slower links (default 1: their plain pull takes ~47 s at 10 Mbit/s). */
  slowSystemRuns?: number;
  /** Progress lines on stderr (default true). */
  progress?: boolean;
}

const secondsSince = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e9;
const sleeper = { command: ['/bin/sh', '-c', 'sleep 3600'] };

/** Snapshotter log records (JSON lines) written after byte `from`. */
function logRecords(file: string, from: number): { msg?: string; time?: number; ms?: number; ref?: string }[] {
  const text = readFileSync(file, 'utf8').slice(from);
  const out: { msg?: string; time?: number; ms?: number; ref?: string }[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as (typeof out)[number]);
    } catch {
      /* partial line */
    }
  }
  return out;
}

/** runPod without its 100 ms polling: starts the pod and polls ContainerStatus every 5 ms until RUNNING. */
async function runPodTimed(rig: CriRig, image: string, name: string): Promise<CriPod> {
  const pod = await rig.runPod(image, { ...sleeper, name, waitRunning: false });
  const deadline = Date.now() + 60_000;
  for (;;) {
    const st = await rig.cri.containerStatus(pod.containerId);
    if (st.state === 'CONTAINER_RUNNING') return pod;
    if (st.state !== 'CONTAINER_CREATED' || Date.now() > deadline) throw new Error(`container ${name} of ${image} is ${st.state} (exit ${st.exit_code}, ${st.reason} ${st.message})\n${rig.logs()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * One side of one run: a fresh rig with v1 of every case pulled (direct,
 * untimed) and running, then each case's v2 pulled through `proxy` and run.
 */
async function measureSide(registry: TestRegistry, proxy: ThrottlingProxy, cases: CriCase[], side: 'd4fs' | 'overlayfs', log: (s: string) => void): Promise<Sample[]> {
  const rig = await startCriRig({ registry, logLevel: 'info', cri: side === 'overlayfs' ? { snapshotter: 'overlayfs' } : {} });
  try {
    // the node holds v1 of every image and runs it (ordinary images first: they unpack their lower layers for real)
    for (const c of [...cases].sort((a, b) => Number(a.publish) - Number(b.publish))) {
      const ref = `${registry.host}/${c.repo}:v1`;
      await rig.cri.pullImage(ref);
      await runPodTimed(rig, ref, `v1-${c.repo.replace(/\W/g, '-')}`);
    }
    const logFile = rig.env.snapshotterLogFile as string;
    const out: Sample[] = [];
    for (const c of cases) {
      const ref = `${proxy.host}/${c.repo}:v2`;
      const mark = statSync(logFile).size;
      const b0 = proxy.bytesDown();
      const wall0 = Date.now();
      const t0 = process.hrtime.bigint();
      await rig.cri.pullImage(ref);
      const pullSeconds = secondsSince(t0);
      const t1 = process.hrtime.bigint();
      await runPodTimed(rig, ref, `v2-${c.repo.replace(/\W/g, '-')}`);
      const podSeconds = secondsSince(t1);
      const bytes = proxy.bytesDown() - b0;
      const s: Sample = { bytes, pullSeconds, podSeconds, seconds: pullSeconds + podSeconds };
      if (side === 'd4fs') {
        const recs = logRecords(logFile, mark);
        const pulled = recs.find((r) => r.msg === 'pulled through d4fs');
        const mounted = recs.find((r) => r.msg === 'image provided by d4fs over FUSE');
        const none = recs.find((r) => r.msg === 'no d4fs data attached to the image; containerd unpacks it');
        s.viaD4fs = !!pulled && !!mounted;
        s.d4fsPullMs = pulled?.ms;
        const at = mounted?.time ?? none?.time;
        if (at !== undefined) s.readySeconds = (at - wall0) / 1000;
        if (c.publish && !s.viaD4fs) log(`  WARNING: ${c.label}: the snapshotter did not provide ${ref} through d4fs\n${rig.env.logs()}`);
      }
      log(`  ${side} ${c.label}: ${(bytes / 2 ** 20).toFixed(2)} MiB, pull ${pullSeconds.toFixed(2)} s + pod ${podSeconds.toFixed(2)} s${s.readySeconds !== undefined ? `, ready ${s.readySeconds.toFixed(2)} s` : ''}`);
      out.push(s);
    }
    return out;
  } finally {
    await rig.stop();
  }
}

/** Medians of each field over the samples. */
function medianSample(xs: Sample[]): Sample {
  const m = (k: keyof Sample): number | undefined => {
    const v = xs.map((x) => x[k]).filter((y): y is number => typeof y === 'number');
    return v.length ? median(v) : undefined;
  };
  return {
    bytes: m('bytes') as number,
    pullSeconds: m('pullSeconds') as number,
    podSeconds: m('podSeconds') as number,
    seconds: m('seconds') as number,
    readySeconds: m('readySeconds'),
    d4fsPullMs: m('d4fsPullMs'),
    viaD4fs: xs.every((x) => x.viaD4fs),
  };
}

export async function criBench(opts: CriBenchOptions = {}): Promise<CriRow[]> {
  const cases = opts.cases ?? CRI_CASES;
  const links = opts.links ?? [100, 10];
  const runs = Math.max(1, opts.runs ?? 3);
  const slowRuns = Math.max(1, opts.slowRuns ?? runs);
  const slowSystemRuns = Math.max(1, opts.slowSystemRuns ?? 1);
  const log = (s: string): void => {
    if (opts.progress ?? true) process.stderr.write(`cri bench: ${s}\n`);
  };
  const cli = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
  const registry = await startRegistry();
  const rows: CriRow[] = [];
  try {
    for (const c of cases) {
      const t0 = process.hrtime.bigint();
      for (const [v, name] of [['v1', c.v1], ['v2', c.v2]] as const) {
        const img = await buildFixtureImage(name);
        await pushOciLayout(img.layout, img.tag, registry.host, `${c.repo}:${v}`);
      }
      if (c.publish) {
        await run(process.execPath, [cli, 'publish', `docker://${registry.host}/${c.repo}:v1`, '--no-progress', '--json'], { maxBuffer: 1 << 26 });
        await run(process.execPath, [cli, 'publish', `docker://${registry.host}/${c.repo}:v2`, '--base', `docker://${registry.host}/${c.repo}:v1`, '--no-progress', '--json'], { maxBuffer: 1 << 26 });
      }
      log(`${c.label}: pushed${c.publish ? ' and published' : ''} in ${secondsSince(t0).toFixed(1)} s`);
    }
    for (const mbit of links) {
      const proxy = await startThrottlingProxy(registry.host, mbit);
      try {
        const runsOf = (c: CriCase): number => (mbit >= 100 ? runs : c.kind === 'system' ? slowSystemRuns : slowRuns);
        const n = Math.max(...cases.map(runsOf));
        const samples = new Map<CriCase, { d4fs: Sample[]; plain: Sample[] }>(cases.map((c) => [c, { d4fs: [], plain: [] }]));
        for (let r = 0; r < n; r++) {
          const these = cases.filter((c) => r < runsOf(c));
          log(`${mbit} Mbit/s, run ${r + 1}/${n}`);
          const d = await measureSide(registry, proxy, these, 'd4fs', log);
          const p = await measureSide(registry, proxy, these, 'overlayfs', log);
          these.forEach((c, i) => {
            samples.get(c)?.d4fs.push(d[i]);
            samples.get(c)?.plain.push(p[i]);
          });
        }
        for (const c of cases) {
          const s = samples.get(c) as { d4fs: Sample[]; plain: Sample[] };
          const d4fs = medianSample(s.d4fs);
          const plain = medianSample(s.plain);
          rows.push({ update: c.label, kind: c.kind, mbit, runs: s.d4fs.length, d4fs, plain, bytesRatio: d4fs.bytes / plain.bytes, timeRatio: d4fs.seconds / plain.seconds, target: criTarget(c.kind, mbit) });
        }
      } finally {
        await proxy.close();
      }
    }
  } finally {
    await registry.stop();
  }
  return rows;
}

/** Print the CRI table (markdown) with the issue's targets. */
export function printCriTable(rows: CriRow[]): void {
  const mib = (n: number): string => (n / 2 ** 20).toFixed(2);
  const s = (n: number): string => n.toFixed(2);
  const ready = (x: CriRow): string => {
    if (x.kind === 'plain') return x.d4fs.readySeconds !== undefined ? `no data: ${s(x.d4fs.readySeconds)}` : '—';
    if (!x.d4fs.viaD4fs) return 'NOT via d4fs';
    return `${x.d4fs.readySeconds !== undefined ? s(x.d4fs.readySeconds) : '?'} (${x.d4fs.d4fsPullMs ?? '?'} ms)`;
  };
  const verdict = (x: CriRow): string => {
    if (x.target === undefined) return '—';
    const ok = x.timeRatio <= x.target && (x.kind === 'plain' || x.d4fs.viaD4fs);
    return `≤ ${x.target}× ${ok ? 'ok' : 'MISS'}`;
  };
  const lines = [
    '## CRI: node holding v1 updates to v2 (CRI PullImage + RunPodSandbox/CreateContainer/StartContainer until RUNNING), d4fs snapshotter vs containerd overlayfs; v1 pulled and running before (untimed); medians of the runs shown',
    '',
    '| update | link | runs | d4fs MiB | d4fs pull s | d4fs pod s | d4fs total s | mount ready s (d4fs pull ms) | overlayfs MiB | overlayfs pull s | overlayfs pod s | overlayfs total s | bytes ratio | time ratio | target |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (x) =>
        `| ${x.update} | ${x.mbit} Mbit/s | ${x.runs} | ${mib(x.d4fs.bytes)} | ${s(x.d4fs.pullSeconds)} | ${s(x.d4fs.podSeconds)} | ${s(x.d4fs.seconds)} | ${ready(x)} | ${mib(x.plain.bytes)} | ${s(x.plain.pullSeconds)} | ${s(x.plain.podSeconds)} | ${s(x.plain.seconds)} | ${x.bytesRatio.toFixed(3)} | ${x.timeRatio.toFixed(3)} | ${verdict(x)} |`,
    ),
    '',
    'Each column is the median of its own samples (a total is the median of the runs\' totals). mount ready: from PullImage\'s start to the snapshotter\'s "image provided by d4fs over FUSE" (its "pulled through d4fs" ms in parentheses); "no data": to its "no d4fs data attached" decision. Bytes: everything that crossed the emulated link towards the node (containerd and the snapshotter).',
  ];
  process.stdout.write(lines.join('\n') + '\n\n');
}

/** Options for `quick` runs: the small published row and the ordinary one, 100 Mbit/s, one run. */
export const QUICK_CRI: CriBenchOptions = { cases: CRI_CASES.filter((c) => c.kind !== 'system'), links: [100], runs: 1 };

if (require.main === module) {
  const args = process.argv.slice(2);
  const runsAt = args.indexOf('--runs');
  const quick = args.includes('--quick');
  (async () => {
    printCriTable(await criBench(quick ? QUICK_CRI : { runs: runsAt >= 0 ? Number(args[runsAt + 1]) : 3 }));
  })().catch((e: unknown) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
