/**
 * `make bench`: every benchmark, each printing a table with its targets.
 * Ratios are measured against baselines in the same run.
 *   node dist/bench/run.js [convert|delta|snapshotter|regsync|gzip|update|distribution|cri|p2p|scale …] [--runs N] [--quick] [--scale-gib N]
 */
import { convertBench, extraCaCost, printConvertTable } from './convert';
import { deltaBench, printDeltaTables } from './delta';
import { snapshotterBench, printSnapshotterTable } from './snapshotter';
import { distributionBench, printDistributionTable, updateBench, printUpdateTable } from './distribution';
import { regsyncBench, formatRegsyncTable } from './regsync';
import { gzipBench, printGzipTable } from './gzip';
import { criBench, printCriTable, QUICK_CRI } from './cri';
import { p2pBench, printP2pTable } from './p2p';
import { scaleBench, printScaleTable } from './scale';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const runsArg = args.indexOf('--runs');
  const runs = runsArg >= 0 ? Number(args[runsArg + 1]) : 3;
  const quick = args.includes('--quick');
  const gibArg = args.indexOf('--scale-gib');
  const only = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--runs' && args[i - 1] !== '--scale-gib');
  const want = (s: string) => only.length === 0 || only.includes(s);
  process.stdout.write(`# d4fs benchmarks (${new Date().toISOString()}, ${process.version}, ${require('node:os').cpus().length} cores)\n\n`);
  if (want('convert')) {
    const rows = await convertBench({ runs, images: quick ? ['nginx-v1'] : undefined, big: !quick });
    printConvertTable(rows, await extraCaCost());
  }
  if (want('delta')) printDeltaTables(await deltaBench({ quick }));
  if (want('snapshotter')) printSnapshotterTable(await snapshotterBench());
  if (want('regsync')) process.stdout.write(formatRegsyncTable(await regsyncBench({ pairs: quick ? ['libssl v1'] : undefined })) + '\n');
  if (want('gzip')) printGzipTable(await gzipBench({ quick }));
  if (want('update')) printUpdateTable(await updateBench(quick ? { updates: [['libssl-v1', 'libssl-v2', 'libssl-v3']], links: [100], runs: 1 } : {}));
  if (want('distribution')) printDistributionTable(await distributionBench(quick ? { updates: [['libssl-v1', 'libssl-v3']], links: [100] } : {}));
  if (want('cri')) printCriTable(await criBench(quick ? QUICK_CRI : { runs }));
  // one run by default (8 nodes × 3 cases take ~3 min); --runs N asks for more
  if (want('p2p')) printP2pTable(await p2pBench({ quick, runs: runsArg >= 0 ? runs : 1 }));
  // ~1 GiB image (generated once, cached under .cache/bench/scale); --scale-gib N (or D4FS_BENCH_SCALE_GIB) makes it ~N GiB
  if (want('scale')) printScaleTable(await scaleBench({ quick, gib: gibArg >= 0 ? Number(args[gibArg + 1]) : undefined }));
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
