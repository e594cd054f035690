/**
 * Go tools' gzip reproduced (issue 16): for each Go compressor and level, a
 * real layer tar (the largest layer of the Debian redis image, umoci-made,
 * decompressed) is gzipped by the real Go library (test/fixtures/go/
 * gzipper.go, built with Debian's Go packages), then `registry diff`'s
 * detection is run on it and the recipe it finds rebuilds the layer
 * (`registry apply`'s path). Printed per engine and level: whether the
 * rebuilt layer's sha256 is the original's, the recipe as the patch index
 * stores it (storedRecipe, what PatchWriter writes) and its bytes there (the
 * JSON string, quotes included, before the index's zstd), detection time,
 * and rebuild speed in MB/s of compressed output, over wall time and over
 * the CPU time of every thread (pgzip's blocks are compressed in several).
 *
 * Targets: exact at every level; recipe ≤ 64 bytes; rebuild ≥ 40 MB/s of
 * compressed output per core.
 *
 * Then every other deflate stream of the tests, made by the real programs
 * (pigz, libdeflate-gzip, zopfli; Debian's): reproduced by a reconstruction
 * record (native/deflate/src/recon.c). Printed: exact, the record's bytes
 * and its share of the layer (target ≤ 2%), detection time (every encoder
 * is tried first), rebuild speed. zopfli takes minutes on the whole layer:
 * it gets the first 8 MiB of the tar. Then layers of several members (an
 * eStargz-shaped one by Go, one of pigz members): the description's bytes
 * (records included) in the record column.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { execFileSync } from 'node:child_process';
import { describeRecipe, detectRecipe, hasPayload, produceBlob, storedRecipe } from '../src/regsync/recipe';
import { buildDebImage } from '../test/fixtures/debimages';
import { type GoGzipEngine, goGzip } from '../test/helpers/gocompress';

export interface GzipBenchRow {
  engine: string;
  level: number;
  blockSize?: number;
  layerBytes: number;
  exact: boolean;
  recipe: string;
  /** The recipe as the patch index stores it. */
  stored: string;
  recipeBytes: number;
  detectSeconds: number;
  /** Rebuild speed: compressed output over wall time. */
  rebuildMBps: number;
  /** Over the CPU time the process spent (every thread: pgzip's blocks run in several): MB/s per core. */
  rebuildMBpsPerCore: number;
  /** Reconstruction records: the record's bytes (0 for other recipes). */
  recordBytes: number;
}

/** Other deflate programs (reconstruction records). */
const OTHER_CASES: { name: string; cmd: string; args: string[]; slice?: number; make?: (tar: Buffer) => Buffer }[] = [
  { name: 'pigz -1', cmd: 'pigz', args: ['-1'] },
  { name: 'pigz -6', cmd: 'pigz', args: ['-6'] },
  { name: 'pigz -9', cmd: 'pigz', args: ['-9'] },
  { name: 'libdeflate-gzip -1', cmd: 'libdeflate-gzip', args: ['-1'] },
  { name: 'libdeflate-gzip -6', cmd: 'libdeflate-gzip', args: ['-6'] },
  { name: 'libdeflate-gzip -9', cmd: 'libdeflate-gzip', args: ['-9'] },
  { name: 'libdeflate-gzip -12', cmd: 'libdeflate-gzip', args: ['-12'] },
  { name: 'zopfli --i1', cmd: 'zopfli', args: ['--i1'], slice: 8 << 20 },
  // several members: eStargz's shape (Go's compress/gzip per piece), and pigz members
  { name: 'Go level 6, a member per 256 KiB (eStargz-shaped)', cmd: '', args: [], make: (tar) => membersOf(tar, (p) => goGzip('stdlib', 6, p)) },
  { name: 'pigz -6, a member per 4 MiB', cmd: '', args: [], make: (tar) => membersOf(tar, (p) => execFileSync('pigz', ['-6', '-n', '-c'], { input: p, maxBuffer: 1 << 30 }), 4 << 20) },
];

/** A gzip file of several members, one per `piece` bytes of the tar. */
function membersOf(tar: Buffer, gz: (piece: Buffer) => Buffer, piece = 256 << 10): Buffer {
  const parts: Buffer[] = [];
  for (let at = 0; at < tar.length; at += piece) parts.push(gz(tar.subarray(at, at + piece)));
  return Buffer.concat(parts);
}

/** Detection and rebuild of one layer blob made from the tar at tarPath. */
async function measure(blob: Buffer, tarPath: string, tmp: string): Promise<Omit<GzipBenchRow, 'engine' | 'level' | 'blockSize'>> {
  const blobPath = path.join(tmp, 'layer.gz');
  await fsp.writeFile(blobPath, blob);
  let t = process.hrtime.bigint();
  const d = await detectRecipe(blobPath, tarPath, 'gzip');
  const detectSeconds = Number(process.hrtime.bigint() - t) / 1e9;
  let exact = false;
  let rebuildMBps = 0;
  let rebuildMBpsPerCore = 0;
  let recipe = d.reproducible ? '' : `not reproduced: ${d.reason}`;
  let recipeBytes = 0;
  let recordBytes = 0;
  let stored = '';
  if (d.reproducible) {
    const r = d.recipe;
    stored = storedRecipe(hasPayload(r) ? { ...r, payload: 0 } : r);
    recipeBytes = Buffer.byteLength(JSON.stringify(stored));
    if (hasPayload(r)) recordBytes = r.record?.length ?? 0;
    recipe =
      r.kind === 'gzip' && r.engine === 'members'
        ? describeRecipe(r)
        : r.kind === 'gzip'
          ? `${r.engine}${'level' in r ? ` ${r.level}` : ''}${r.engine === 'pgzip' ? ` ${r.blockSize / 1024} KiB` : ''}`
          : r.kind;
    const h = createHash('sha256');
    let out = 0;
    t = process.hrtime.bigint();
    const cpu0 = process.cpuUsage();
    for await (const part of produceBlob(r, tarPath)) {
      h.update(part);
      out += part.length;
    }
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    rebuildMBps = out / 1e6 / s;
    rebuildMBpsPerCore = out / ((cpu.user + cpu.system) / 1e6) / 1e6;
    exact = h.digest('hex') === createHash('sha256').update(blob).digest('hex');
  }
  return { layerBytes: blob.length, exact, recipe, stored, recipeBytes, detectSeconds, rebuildMBps, rebuildMBpsPerCore, recordBytes };
}

const CASES: { engine: GoGzipEngine; levels: number[]; blockSize?: number }[] = [
  { engine: 'stdlib', levels: [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9] },
  { engine: 'klauspost', levels: [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9] },
  { engine: 'pgzip', levels: [1, 5, 9], blockSize: 1 << 20 },
  { engine: 'pgzip', levels: [5], blockSize: 256 << 10 },
];

/** The largest layer of the redis image, decompressed. */
async function layerTar(tmp: string): Promise<string> {
  const img = await buildDebImage('redis-v1');
  const index = JSON.parse(await fsp.readFile(path.join(img.layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const blob = (d: string): string => path.join(img.layout, 'blobs', 'sha256', d.slice(7));
  const manifest = JSON.parse(await fsp.readFile(blob(index.manifests[0].digest), 'utf8')) as { layers: { digest: string; size: number }[] };
  const largest = [...manifest.layers].sort((a, b) => b.size - a.size)[0];
  const tar = path.join(tmp, 'layer.tar');
  await fsp.writeFile(tar, gunzipSync(await fsp.readFile(blob(largest.digest))));
  return tar;
}

export async function gzipBench(opts: { quick?: boolean } = {}): Promise<GzipBenchRow[]> {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-bench-gzip-'));
  try {
    const tarPath = await layerTar(tmp);
    const tar = await fsp.readFile(tarPath);
    const rows: GzipBenchRow[] = [];
    // D4FS_BENCH_GZIP_ONLY=others: only the reconstruction records' table
    for (const c of process.env.D4FS_BENCH_GZIP_ONLY === 'others' ? [] : CASES) {
      for (const level of opts.quick ? c.levels.filter((l) => l === 5 || l === 6) : c.levels) {
        const blob = goGzip(c.engine, level, tar, undefined, c.blockSize);
        rows.push({ engine: c.engine, level, blockSize: c.blockSize, ...(await measure(blob, tarPath, tmp)) });
      }
    }
    for (const c of opts.quick ? OTHER_CASES.filter((x) => x.name === 'pigz -6' || x.name === 'libdeflate-gzip -6') : OTHER_CASES) {
      let input = tarPath;
      if (c.slice) {
        input = path.join(tmp, 'slice.tar');
        await fsp.writeFile(input, tar.subarray(0, c.slice));
      }
      const blob = c.make ? c.make(tar) : execFileSync(c.cmd, [...c.args, '-c', input], { maxBuffer: 1 << 30 });
      rows.push({ engine: c.name, level: 0, ...(await measure(blob, input, tmp)) });
    }
    return rows;
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

export function printGzipTable(rows: GzipBenchRow[]): void {
  const lines = [
    "## Go tools' gzip reproduced (issue 16): the largest redis layer gzipped by the real Go libraries, detected and rebuilt",
    'targets: exact at every level; recipe ≤ 64 bytes; rebuild ≥ 40 MB/s of compressed output per core',
    `rebuild: the whole produceBlob (tar read, deflate, CRC, sha256 of the output); per core = over the process's CPU time (all threads); ${os.cpus().length} cores, shared: wall times are noisy`,
    '',
    '| Go library | level | layer | exact | recipe found | stored recipe | its bytes in the index | detection | rebuild MB/s (wall) | rebuild MB/s per core |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  const others = rows.filter((r) => r.recordBytes > 0 || !['stdlib', 'klauspost', 'pgzip'].includes(r.engine));
  for (const r of rows.filter((x) => !others.includes(x))) {
    const lib = r.engine === 'stdlib' ? 'compress/gzip' : r.engine === 'klauspost' ? 'klauspost/compress gzip' : `pgzip, ${(r.blockSize ?? 0) / 1024} KiB blocks`;
    lines.push(
      `| ${lib} | ${r.level} | ${(r.layerBytes / 1e6).toFixed(2)} MB | ${r.exact ? 'yes' : 'NO'} | ${r.recipe} | \`${r.stored}\` | ${r.recipeBytes} ${r.recipeBytes <= 64 ? 'ok' : 'MISS'} | ${r.detectSeconds.toFixed(2)} s | ${r.rebuildMBps.toFixed(1)} | ${r.rebuildMBpsPerCore.toFixed(1)} ${r.rebuildMBpsPerCore >= 40 ? 'ok' : 'MISS'} |`,
    );
  }
  lines.push(
    '',
    '## Any other deflate stream (issue 16): reproduced by a reconstruction record (a payload of the patch)',
    'targets: exact; record ≤ 2% of the compressed layer; rebuild ≥ 40 MB/s of compressed output per core',
    '',
    '| program | layer | exact | recipe | record (members: their description) | of the layer | detection (all encoders, then the record) | rebuild MB/s (wall) | rebuild MB/s per core |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  );
  for (const r of others) {
    const pct = (100 * r.recordBytes) / r.layerBytes;
    lines.push(
      `| ${r.engine} | ${(r.layerBytes / 1e6).toFixed(2)} MB | ${r.exact ? 'yes' : 'NO'} | ${r.recipe} | ${r.recordBytes} B | ${pct.toFixed(2)}% ${pct <= 2 ? 'ok' : 'MISS'} | ${r.detectSeconds.toFixed(2)} s | ${r.rebuildMBps.toFixed(1)} | ${r.rebuildMBpsPerCore.toFixed(1)} ${r.rebuildMBpsPerCore >= 40 ? 'ok' : 'MISS'} |`,
    );
  }
  process.stdout.write(lines.join('\n') + '\n\n');
}
