/**
 * Convert benchmark (issue 2): `ctr-cli convert` against the pair of C tools
 * doing the same job (`tar -x` of the layers, then `zstd -T2` of the tree),
 * measured in the same run, plus peak RSS. Median of N runs each.
 */
import { promises as fsp, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildDebImage, ImageName } from '../test/fixtures/debimages';
import { writeSimpleImage } from '../src/oci/writer';
import { packageRoot } from '../src/util/paths';
import { median } from './stats';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

export interface Row {
  image: string;
  layerMiB: number;
  contentMiB: number;
  d4fsS: number;
  cToolsS: number;
  ratio: number;
  rssMiB: number;
  cdimgMiB: number;
  zstdTreeMiB: number;
}

/** Run a command under /usr/bin/time; returns wall seconds and peak RSS (KiB). */
async function timed(cmd: string, args: string[]): Promise<{ s: number; rssKiB: number; stdout: string }> {
  const r = await run('/usr/bin/time', ['-f', '%e %M', cmd, ...args], { maxBuffer: 64 << 20 });
  const last = r.stderr.trim().split('\n').pop() as string;
  const [s, rss] = last.split(' ').map(Number);
  return { s, rssKiB: rss, stdout: r.stdout };
}


/**
 * With NODE_EXTRA_CA_CERTS set, Node 20 parses that certificate file at every
 * start, before any JavaScript runs (~0.4 G instructions for Debian's bundle):
 * a fixed cost of each d4fs run that the C tools do not have. Measured here so
 * the table says how much of d4fs's time it is (median of `node -e ""` runs).
 */
export async function extraCaCost(runs = 7): Promise<{ file: string; withS: number; withoutS: number } | undefined> {
  const file = process.env.NODE_EXTRA_CA_CERTS;
  if (!file) return undefined;
  const without = { ...process.env };
  delete without.NODE_EXTRA_CA_CERTS;
  const w: number[] = [];
  const wo: number[] = [];
  for (let i = 0; i < runs; i++) {
    for (const [env, into] of [[process.env, w], [without, wo]] as const) {
      const t = process.hrtime.bigint();
      await run(process.execPath, ['-e', ''], { env });
      into.push(Number(process.hrtime.bigint() - t) / 1e9);
    }
  }
  return { file, withS: median(w), withoutS: median(wo) };
}

function layerBlobs(layout: string, tag: string): string[] {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
  const m = index.manifests.find((x: { annotations?: Record<string, string> }) => x.annotations?.['org.opencontainers.image.ref.name'] === tag) ?? index.manifests[0];
  const manifest = JSON.parse(readFileSync(join(layout, 'blobs/sha256', m.digest.slice(7)), 'utf8'));
  return manifest.layers.map((l: { digest: string }) => join(layout, 'blobs/sha256', l.digest.slice(7)));
}

/** The ~270 MiB image: real binaries of this machine (node_modules, gcc's libexec). */
export async function buildBigImage(dir: string): Promise<{ layout: string; tag: string; ref: string }> {
  const layout = join(dir, 'big-layout');
  try {
    await fsp.access(join(layout, 'index.json'));
    return { layout, tag: 'big', ref: `oci:${layout}:big` };
  } catch {
    /* build it */
  }
  const l1 = join(dir, 'big-l1.tar');
  const l2 = join(dir, 'big-l2.tar');
  await run('tar', ['-cf', l1, '-C', '/', 'usr/lib/gcc', 'usr/libexec'], { maxBuffer: 1 << 20 }).catch(() => run('tar', ['-cf', l1, '-C', '/', 'usr/lib/gcc']));
  await run('tar', ['-cf', l2, '-C', packageRoot(), 'node_modules']);
  await writeSimpleImage(layout, 'big', { layers: [await fsp.readFile(l1), await fsp.readFile(l2)], compression: 'gzip' });
  await fsp.rm(l1);
  await fsp.rm(l2);
  return { layout, tag: 'big', ref: `oci:${layout}:big` };
}

async function bench(name: string, img: { layout: string; tag: string; ref: string }, runs: number, work: string): Promise<Row> {
  const out = join(work, `${name}.cdimg`);
  const ours: { s: number; rssKiB: number }[] = [];
  let json: { contentBytes: number; layerBytes: number; fileSize: number } = { contentBytes: 0, layerBytes: 0, fileSize: 0 };
  for (let i = 0; i < runs; i++) {
    await fsp.rm(out, { force: true });
    const r = await timed('node', [CLI, 'convert', '--image', img.ref, '--output', out, '--json', '--no-progress']);
    json = JSON.parse(r.stdout);
    ours.push(r);
  }
  const blobs = layerBlobs(img.layout, img.tag);
  const cRuns: number[] = [];
  let zstdSize = 0;
  for (let i = 0; i < runs; i++) {
    const tree = join(work, `${name}-tree`);
    await fsp.rm(tree, { recursive: true, force: true });
    await fsp.mkdir(tree);
    const script = `set -e; for b in ${blobs.map((b) => `'${b}'`).join(' ')}; do tar -xf "$b" -C '${tree}'; done; tar -cf - -C '${tree}' . | zstd -T2 -q -f -o '${tree}.tar.zst'`;
    const r = await timed('bash', ['-c', script]);
    cRuns.push(r.s);
    zstdSize = (await fsp.stat(`${tree}.tar.zst`)).size;
    await fsp.rm(tree, { recursive: true, force: true });
    await fsp.rm(`${tree}.tar.zst`, { force: true });
  }
  await fsp.rm(out, { force: true });
  const d4fsS = median(ours.map((o) => o.s));
  const cToolsS = median(cRuns);
  return {
    image: name,
    layerMiB: json.layerBytes / 2 ** 20,
    contentMiB: json.contentBytes / 2 ** 20,
    d4fsS,
    cToolsS,
    ratio: d4fsS / cToolsS,
    rssMiB: Math.max(...ours.map((o) => o.rssKiB)) / 1024,
    cdimgMiB: json.fileSize / 2 ** 20,
    zstdTreeMiB: zstdSize / 2 ** 20,
  };
}

export async function convertBench(opts: { runs?: number; images?: ImageName[]; big?: boolean } = {}): Promise<Row[]> {
  const runs = opts.runs ?? 3;
  const work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-bench-convert-'));
  const rows: Row[] = [];
  try {
    for (const name of opts.images ?? (['nginx-v1', 'nginx-v2', 'redis-v1', 'redis-v2', 'libssl-v1', 'libssl-v2', 'libssl-v3'] as ImageName[])) {
      rows.push(await bench(name, await buildDebImage(name), runs, work));
    }
    if (opts.big !== false) {
      const cache = join(packageRoot(), '.cache', 'bench');
      await fsp.mkdir(cache, { recursive: true });
      rows.push(await bench('big (~270 MiB)', await buildBigImage(cache), runs, work));
    }
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
  return rows;
}

export function printConvertTable(rows: Row[], extraCa?: { file: string; withS: number; withoutS: number }): void {
  const f = (n: number, d = 2) => n.toFixed(d);
  const lines = [
    '## convert: ctr-cli convert vs tar -x + zstd -T2 (median of runs; targets: ratio <= 1.5, peak RSS < 512 MiB)',
    '',
    ...(extraCa
      ? [`note: NODE_EXTRA_CA_CERTS=${extraCa.file} is set: a bare \`node -e ""\` takes ${extraCa.withS.toFixed(3)} s with it, ${extraCa.withoutS.toFixed(3)} s without (every d4fs run pays the difference)`, '']
      : []),
    '| image | layers MiB | content MiB | d4fs s | MiB/s | tar+zstd s | ratio | peak RSS MiB | .cdimg MiB | tree.tar.zst MiB |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.image} | ${f(r.layerMiB, 1)} | ${f(r.contentMiB, 1)} | ${f(r.d4fsS)} | ${f(r.contentMiB / r.d4fsS, 0)} | ${f(r.cToolsS)} | ${f(r.ratio)} ${r.ratio <= 1.5 ? 'ok' : 'MISS'} | ${f(r.rssMiB, 0)} ${r.rssMiB < 512 ? 'ok' : 'MISS'} | ${f(r.cdimgMiB, 1)} | ${f(r.zstdTreeMiB, 1)} |`),
  ];
  process.stdout.write(lines.join('\n') + '\n\n');
}
