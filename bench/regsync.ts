/**
 * Registry patch sizes (issue 6) on the Debian security-update pairs.
 *
 * For each old → new pair (images built by test/fixtures/debimages.ts), the
 * bytes that cross the link with:
 *   (a) a plain pull/push of the new set (every blob of it),
 *   (b) layer-level dedup only (the new set's blobs the old set lacks — what
 *       imo ships),
 *   (c) `zstd -19 --long --patch-from` of the old set's layer tars against the
 *       new set's changed layer tars (the closest stand-in for booster-like
 *       block matching available here),
 *   (d) the d4fs registry patch (`registry diff`).
 * Target: (d) ≤ 0.15 × (b).
 *
 * Issue 16: `registry diff` runs twice per pair, without and with Go's and
 * klauspost's encoders among the compressions it tries to reproduce (these
 * images' layers are umoci's: pgzip), and the baseline without
 * reconstruction records either (with them, the layers Go's encoders would
 * reproduce get records); target: the time grows by ≤ 25%.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/regsync.js [--level fast|default|best] [pairs…]
 */
import { spawnSync } from 'node:child_process';
import { createWriteStream, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { createReadStream } from 'node:fs';
import type { LevelPreset } from '../src/delta/codecs';
import { diffImageSets } from '../src/regsync/diff';
import { parseSpec } from '../src/regsync/imageset';
import { buildDebImage, ImageName } from '../test/fixtures/debimages';

/** One benchmark row. */
export interface RegsyncBenchRow {
  pair: string;
  /** (a) plain pull/push of the new set. */
  plainBytes: number;
  /** (b) layer-level dedup only. */
  dedupBytes: number;
  /** (c) zstd --patch-from, old set tars → new set's changed tars (undefined when the zstd program is missing). */
  zstdPatchFromBytes?: number;
  /** (d) the registry patch. */
  patchBytes: number;
  /** (d) / (b). */
  patchVsDedup: number;
  /** Target for (d) / (b). */
  target: number;
  pass: boolean;
  /** Rebuilt layers whose compression was reproduced / not. */
  reproduced: number;
  notReproduced: number;
  diffSeconds: number;
  /** The same diff without Go's and klauspost's encoders (what detection cost before issue 16). */
  diffSecondsNoGo: number;
  /** Rebuilt layers reproduced without Go's and klauspost's encoders. */
  reproducedNoGo: number;
  zstdSeconds?: number;
}

/** The pairs measured: security updates of single images, and the whole set. */
export const REGSYNC_PAIRS: Record<string, { old: ImageName[]; new: ImageName[] }> = {
  'nginx v1→v2': { old: ['nginx-v1'], new: ['nginx-v2'] },
  'redis v1→v2': { old: ['redis-v1'], new: ['redis-v2'] },
  'libssl v1→v2': { old: ['libssl-v1'], new: ['libssl-v2'] },
  'libssl v2→v3': { old: ['libssl-v2'], new: ['libssl-v3'] },
  'set nginx+redis+libssl v1→v2': { old: ['nginx-v1', 'redis-v1', 'libssl-v1'], new: ['nginx-v2', 'redis-v2', 'libssl-v2'] },
};

/** Target ratio of patch to dedup-only bytes. */
export const REGSYNC_TARGET = 0.15;

interface LayoutLayer {
  digest: string;
  path: string;
}

/** Layer blobs of an image layout, bottom first. */
async function layersOf(layout: string): Promise<LayoutLayer[]> {
  const index = JSON.parse(await fsp.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const blob = (d: string): string => path.join(layout, 'blobs', 'sha256', d.slice(7));
  const manifest = JSON.parse(await fsp.readFile(blob(index.manifests[0].digest), 'utf8')) as { layers: { digest: string }[] };
  return manifest.layers.map((l) => ({ digest: l.digest, path: blob(l.digest) }));
}

/** Append the decompressed tars of layers to a file. */
async function appendTars(layers: LayoutLayer[], out: string): Promise<void> {
  for (const l of layers) await pipeline(createReadStream(l.path), createGunzip(), createWriteStream(out, { flags: 'a' }));
}

/** (c): zstd -19 --patch-from of the old set's tars against the new set's changed tars. */
async function zstdPatchFrom(oldLayouts: string[], newLayouts: string[], tmp: string): Promise<{ bytes: number; seconds: number } | undefined> {
  if (spawnSync('zstd', ['--version']).status !== 0) return undefined;
  const oldLayers = new Map<string, LayoutLayer>();
  for (const l of oldLayouts) for (const x of await layersOf(l)) oldLayers.set(x.digest, x);
  const newLayers = new Map<string, LayoutLayer>();
  for (const l of newLayouts) for (const x of await layersOf(l)) if (!oldLayers.has(x.digest)) newLayers.set(x.digest, x);
  const base = path.join(tmp, 'old.tar');
  const target = path.join(tmp, 'new.tar');
  await fsp.rm(base, { force: true });
  await fsp.rm(target, { force: true });
  await appendTars([...oldLayers.values()], base);
  await appendTars([...newLayers.values()], target);
  const total = (await fsp.stat(base)).size + (await fsp.stat(target)).size;
  const windowLog = Math.max(27, Math.min(31, Math.ceil(Math.log2(total + 1))));
  const out = path.join(tmp, 'new.tar.zst');
  const t = Date.now();
  const r = spawnSync('zstd', ['-q', '-f', '-19', '--single-thread', `--long=${windowLog}`, `--patch-from=${base}`, target, '-o', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`zstd --patch-from failed: ${r.stderr?.toString()}`);
  return { bytes: (await fsp.stat(out)).size, seconds: (Date.now() - t) / 1000 };
}

/** Run the benchmark; returns one row per pair. */
export async function regsyncBench(opts: { pairs?: string[]; level?: LevelPreset; threads?: number } = {}): Promise<RegsyncBenchRow[]> {
  const rows: RegsyncBenchRow[] = [];
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-bench-regsync-'));
  try {
    for (const [pair, spec] of Object.entries(REGSYNC_PAIRS)) {
      if (opts.pairs && opts.pairs.length && !opts.pairs.some((p) => pair.startsWith(p))) continue;
      const olds = await Promise.all(spec.old.map((n) => buildDebImage(n)));
      const news = await Promise.all(spec.new.map((n) => buildDebImage(n)));
      const diff = async (goEncoders: boolean): Promise<{ report: Awaited<ReturnType<typeof diffImageSets>>; seconds: number }> => {
        const t = Date.now();
        const report = await diffImageSets({
          old: olds.map((i) => parseSpec(`${i.ref} ${i.name.replace(/-v\d$/, '')}:old`, 'bench')),
          new: news.map((i) => parseSpec(`${i.ref} ${i.name.replace(/-v\d$/, '')}:new`, 'bench')),
          out: path.join(tmp, 'bench.patch'),
          platforms: 'all',
          level: opts.level ?? 'default',
          threads: opts.threads,
          goEncoders,
          // the baseline is the diff before issue 16: no Go encoders and no reconstruction records
          records: goEncoders,
        });
        return { report, seconds: (Date.now() - t) / 1000 };
      };
      const noGo = await diff(false);
      const { report, seconds: diffSeconds } = await diff(true);
      const z = await zstdPatchFrom(
        olds.map((i) => i.layout),
        news.map((i) => i.layout),
        tmp,
      );
      const ratio = report.patchBytes / report.dedupBytes;
      rows.push({
        pair,
        plainBytes: report.plainBytes,
        dedupBytes: report.dedupBytes,
        zstdPatchFromBytes: z?.bytes,
        patchBytes: report.patchBytes,
        patchVsDedup: Math.round(ratio * 10000) / 10000,
        target: REGSYNC_TARGET,
        pass: ratio <= REGSYNC_TARGET,
        reproduced: report.layers.filter((l) => l.kind === 'rebuilt' && l.reproducible).length,
        notReproduced: report.layers.filter((l) => l.kind === 'rebuilt' && !l.reproducible).length,
        diffSeconds: Math.round(diffSeconds * 10) / 10,
        diffSecondsNoGo: Math.round(noGo.seconds * 10) / 10,
        reproducedNoGo: noGo.report.layers.filter((l) => l.kind === 'rebuilt' && l.reproducible).length,
        zstdSeconds: z ? Math.round(z.seconds * 10) / 10 : undefined,
      });
    }
    return rows;
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** The rows as a markdown table. */
export function formatRegsyncTable(rows: RegsyncBenchRow[]): string {
  const kb = (n: number | undefined): string => (n === undefined ? 'n/a' : `${(n / 1024).toFixed(0)} KiB`);
  const lines = [
    '## registry patches (issue 6): bytes over the link for a new image set',
    '',
    '| pair | (a) plain | (b) layer dedup | (c) zstd -19 --patch-from | (d) d4fs patch | d/b | target | d/c | diff s | without Go encoders: diff s | time ratio (≤ 1.25) | layers reproduced (without) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.pair} | ${kb(r.plainBytes)} | ${kb(r.dedupBytes)} | ${kb(r.zstdPatchFromBytes)} | ${kb(r.patchBytes)} | ${r.patchVsDedup.toFixed(3)} ${r.pass ? '✓' : '✗'} | ≤ ${r.target} | ${r.zstdPatchFromBytes ? (r.patchBytes / r.zstdPatchFromBytes).toFixed(2) : 'n/a'} | ${r.diffSeconds} | ${r.diffSecondsNoGo} | ${(r.diffSeconds / r.diffSecondsNoGo).toFixed(2)} ${r.diffSeconds <= 1.25 * r.diffSecondsNoGo ? '✓' : '✗'} | ${r.reproduced}/${r.reproduced + r.notReproduced} (${r.reproducedNoGo}) |`,
    );
  }
  return lines.join('\n') + '\n';
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const li = args.indexOf('--level');
  const level = (li >= 0 ? args[li + 1] : 'default') as LevelPreset;
  const pairs = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--level');
  regsyncBench({ level, pairs })
    .then((rows) => process.stdout.write(formatRegsyncTable(rows)))
    .catch((e: unknown) => {
      process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
      process.exit(1);
    });
}
