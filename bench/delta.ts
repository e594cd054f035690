/**
 * Delta benchmark (issue 3), all measured in the same run:
 *  d4fs `cdimg diff` bytes/time/peak RSS against
 *  (a) a plain pull of the new image's layers the old image lacks,
 *  (b) per-file C bsdiff (D4C's way: same path changed → bsdiff, new path → zstd -19 of the file),
 *  (c) per-file xdelta3 -9 (deltaimage's way, same rule),
 *  (d) zstd -19 --long=31 --patch-from of the old tree's tar against the new tree's tar.
 * Plus merge of a 3-step chain vs the direct diff, and a 100 MB binary for RSS, and per pair
 * where d4fs's bytes go: per codec, and per kind of changed file next to C bsdiff's bytes for
 * the same files (issue 14).
 *
 * D4FS_BENCH_DELTA_PAIRS=a,b (substrings of pair names) runs only those pairs and no merge.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildDebImage, ImageName } from '../test/fixtures/debimages';
import { buildNpmImage } from '../test/fixtures/npmimages';
import { packageRoot } from '../src/util/paths';
import { writeSimpleImage } from '../src/oci/writer';
import { CdimgReader } from '../src/format/reader';
import { Codec, codecFormat, Encoding, FileType } from '../src/format/types';
import { contentKind } from '../src/delta/codecs/choose';
import { median } from './stats';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

export interface DeltaRow {
  pair: string;
  d4fsBytes: number;
  d4fsS: number;
  rssMiB: number;
  plainPull: number;
  bsdiffBytes: number;
  bsdiffS: number;
  xdeltaBytes: number;
  zstdTarBytes: number;
  changedFiles: number;
  /** Stored bytes of the delta's contents per codec (name: bytes), the rest of the file is its index and header. */
  byCodec: Record<string, number>;
  /** Per kind of changed file (see fileClass): d4fs's stored bytes, C bsdiff's and xdelta3's for the same files, and the count. */
  byClass: Record<string, { files: number; d4fs: number; bsdiff: number; xdelta: number }>;
  /**
   * A made-up pair for the memory target only (libraries with regular edits every
   * 4 KiB): its byte ratios are printed but not judged (see printDeltaTables).
   */
  synthetic?: boolean;
}

export interface MergeRow {
  chain: string;
  /** which environment the commands ran in (see mergeBench) */
  env: string;
  /** runs of each merge / of the direct diff; times are medians */
  runs: [number, number];
  mergeS: number;
  mergeBytes: number;
  directS: number;
  directBytes: number;
  rediffS: number;
  rediffBytes: number;
}

/** Wall time (s, from spawn to exit, hrtime) and stdout of `node CLI args` in environment `env`. */
async function wallCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ s: number; stdout: string }> {
  const t0 = process.hrtime.bigint();
  const r = await run('node', [CLI, ...args], { maxBuffer: 64 << 20, env });
  return { s: Number(process.hrtime.bigint() - t0) / 1e9, stdout: r.stdout };
}

/** Median wall time of `n` runs of `node CLI args` (and the last run's stdout). */
async function medianCli(n: number, args: string[], env: NodeJS.ProcessEnv): Promise<{ s: number; stdout: string }> {
  const ts: number[] = [];
  let stdout = '';
  for (let i = 0; i < n; i++) {
    const r = await wallCli(args, env);
    ts.push(r.s);
    stdout = r.stdout;
  }
  return { s: median(ts), stdout };
}

async function timed(cmd: string, args: string[]): Promise<{ s: number; rssKiB: number; stdout: string }> {
  const r = await run('/usr/bin/time', ['-f', '%e %M', cmd, ...args], { maxBuffer: 64 << 20 });
  const [s, rss] = (r.stderr.trim().split('\n').pop() as string).split(' ').map(Number);
  return { s, rssKiB: rss, stdout: r.stdout };
}

async function cli(args: string[]): Promise<void> {
  await run('node', [CLI, ...args], { maxBuffer: 64 << 20 });
}

/** Per-file baselines over two unpacked trees (same path → delta tool; new path → zstd -19). */
async function perFile(
  oldDir: string,
  newDir: string,
  oldIdx: CdimgReader,
  newIdx: CdimgReader,
  work: string,
  runs: number,
): Promise<{ bsdiff: number; bsdiffS: number; xdelta: number; changed: number; perPath: Map<string, { bsdiff: number; xdelta: number }> }> {
  const perPath = new Map<string, { bsdiff: number; xdelta: number }>();
  let bsdiff = 0;
  let xdelta = 0;
  const bsdiffRuns = new Array<number>(runs).fill(0);
  let changed = 0;
  const patch = join(work, 'p');
  for (const e of newIdx.index.entries) {
    if (e.type !== FileType.REG) continue;
    const old = oldIdx.byPath.get(e.path);
    if (old && old.type === FileType.REG && old.digest.equals(e.digest)) continue;
    changed++;
    const nf = join(newDir, e.path);
    if (old && old.type === FileType.REG) {
      const of = join(oldDir, e.path);
      for (let i = 0; i < runs; i++) {
        const t0 = process.hrtime.bigint();
        await run('bsdiff', [of, nf, patch]);
        bsdiffRuns[i] += Number(process.hrtime.bigint() - t0) / 1e9;
      }
      const b = (await fsp.stat(patch)).size;
      await run('xdelta3', ['-9', '-e', '-f', '-s', of, nf, patch]);
      const x = (await fsp.stat(patch)).size;
      bsdiff += b;
      xdelta += x;
      perPath.set(e.path, { bsdiff: b, xdelta: x });
    } else {
      await run('zstd', ['-19', '-q', '-f', nf, '-o', patch]);
      const full = (await fsp.stat(patch)).size;
      bsdiff += full;
      xdelta += full;
      perPath.set(e.path, { bsdiff: full, xdelta: full });
    }
  }
  await fsp.rm(patch, { force: true });
  return { bsdiff, bsdiffS: median(bsdiffRuns), xdelta, changed, perPath };
}

/**
 * Kind of a changed file for the breakdown: executables (ELF and the other magics of the
 * chooser's `contentKind`), then by name (gettext catalogues, LLVM bitcode, archives,
 * .gz, time zone data), then text or other binary data.
 */
async function fileClass(file: string, path: string): Promise<string> {
  const fh = await fsp.open(file, 'r');
  let head: Buffer;
  try {
    const buf = Buffer.alloc(65536);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    head = buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  const kind = contentKind(head);
  if (kind === 'executable') return 'executable';
  if (/\.mo$/.test(path)) return '.mo (gettext)';
  if (/\.bc$/.test(path)) return '.bc (LLVM bitcode)';
  if (/\.(jar|zip|whl|war)$/.test(path)) return '.jar/.zip';
  if (/\.gz$/.test(path)) return '.gz';
  if (/\/zoneinfo\//.test(path) || head.subarray(0, 4).toString('latin1') === 'TZif') return 'tz data';
  return kind === 'text' ? 'text' : kind === 'compressed' ? 'compressed' : 'binary data';
}

/**
 * Where the delta's bytes go: stored bytes per codec, and per kind of changed file (d4fs's
 * stored bytes of that file's content, attributed to the first changed path that has it)
 * next to the per-file baselines' bytes for the same files.
 */
async function breakdown(delta: string, newIdx: CdimgReader, newDir: string, perPath: Map<string, { bsdiff: number; xdelta: number }>): Promise<Pick<DeltaRow, 'byCodec' | 'byClass'>> {
  const byCodec: Record<string, number> = {};
  const stored = new Map<string, number>();
  const r = await CdimgReader.open(delta);
  // the members of a solid group share one stored frame (same offset): counted once, for the first
  const seen = new Set<number>();
  try {
    for (const b of r.index.blobs) {
      if (b.encoding === Encoding.SAME) continue;
      let n = 0;
      for (const c of b.chunks) {
        if (seen.has(c.offset)) continue;
        seen.add(c.offset);
        const name = codecFormat(c.codec)?.name ?? `codec ${c.codec as Codec}`;
        byCodec[name] = (byCodec[name] ?? 0) + c.storedSize;
        n += c.storedSize;
      }
      stored.set(b.digest.toString('hex'), n);
    }
  } finally {
    await r.close();
  }
  const byClass: DeltaRow['byClass'] = {};
  const counted = new Set<string>();
  for (const [path, base] of perPath) {
    const e = newIdx.byPath.get(path);
    if (!e) continue;
    const cls = await fileClass(join(newDir, path), path);
    const row = (byClass[cls] ??= { files: 0, d4fs: 0, bsdiff: 0, xdelta: 0 });
    row.files++;
    row.bsdiff += base.bsdiff;
    row.xdelta += base.xdelta;
    const k = e.digest.toString('hex');
    if (!counted.has(k)) {
      counted.add(k);
      row.d4fs += stored.get(k) ?? 0;
    }
  }
  return { byCodec, byClass };
}

async function tarTree(dir: string, out: string): Promise<void> {
  await run('tar', ['--sort=name', '-cf', out, '-C', dir, '.']);
}

/**
 * One pair: d4fs's diff (median wall time of `runs` runs, peak RSS of all) against
 * the per-file baselines (C bsdiff's summed time: median of `runs` passes).
 */
export async function deltaPair(name: string, oldRef: string, newRef: string, work: string, runs = 1): Promise<DeltaRow> {
  const [o, n, d] = [join(work, `${name}-old.cdimg`), join(work, `${name}-new.cdimg`), join(work, `${name}-delta.cdimg`)];
  await cli(['convert', '--image', oldRef, '--output', o, '--no-progress']);
  await cli(['convert', '--image', newRef, '--output', n, '--no-progress']);
  const ts: Awaited<ReturnType<typeof timed>>[] = [];
  for (let i = 0; i < runs; i++) ts.push(await timed('node', [CLI, 'cdimg', 'diff', '--old', o, '--new', n, '--out', d, '--json', '--no-progress']));
  const t = { s: median(ts.map((x) => x.s)), rssKiB: Math.max(...ts.map((x) => x.rssKiB)) };
  const s = JSON.parse(ts[0].stdout);
  const [od, nd] = [join(work, `${name}-old-tree`), join(work, `${name}-new-tree`)];
  await cli(['cdimg', 'unpack', o, od]);
  await cli(['cdimg', 'unpack', n, nd]);
  const [ri, rn] = [await CdimgReader.open(o), await CdimgReader.open(n)];
  let pf;
  let bd;
  try {
    pf = await perFile(od, nd, ri, rn, work, runs);
    bd = await breakdown(d, rn, nd, pf.perPath);
  } finally {
    await ri.close();
    await rn.close();
  }
  const [ot, nt, zp] = [join(work, `${name}-old.tar`), join(work, `${name}-new.tar`), join(work, `${name}.zst`)];
  await tarTree(od, ot);
  await tarTree(nd, nt);
  await run('zstd', ['-19', '--long=31', '-q', '-f', `--patch-from=${ot}`, nt, '-o', zp]);
  const zstdTarBytes = (await fsp.stat(zp)).size;
  for (const p of [od, nd, ot, nt, zp, o, n, d]) await fsp.rm(p, { recursive: true, force: true });
  return {
    pair: name,
    d4fsBytes: s.deltaBytes,
    d4fsS: t.s,
    rssMiB: t.rssKiB / 1024,
    plainPull: s.plainPullBytes,
    bsdiffBytes: pf.bsdiff,
    bsdiffS: pf.bsdiffS,
    xdeltaBytes: pf.xdelta,
    zstdTarBytes,
    changedFiles: pf.changed,
    ...bd,
  };
}

/** Name of the synthetic pair (memory target only). */
const BIG_BINARY = '100 MB binary (synthetic, RSS target only)';

/** Two versions of a ~100 MB binary made of this machine's shared libraries (the second edited). */
export async function bigBinaryImages(dir: string): Promise<[string, string]> {
  const l1 = join(dir, 'bigbin-v1');
  const l2 = join(dir, 'bigbin-v2');
  try {
    await fsp.access(join(l2, 'index.json'));
    return [`oci:${l1}:v1`, `oci:${l2}:v2`];
  } catch {
    /* build */
  }
  const libdir = '/usr/lib/x86_64-linux-gnu';
  const names = (await fsp.readdir(libdir)).filter((n) => /\.so[.\d]*$/.test(n)).sort();
  const parts1: Buffer[] = [];
  const parts2: Buffer[] = [];
  let size = 0;
  for (const [i, n] of names.entries()) {
    if (size > 100 * 1024 * 1024) break;
    let b: Buffer;
    try {
      const st = await fsp.lstat(join(libdir, n));
      if (!st.isFile()) continue;
      b = await fsp.readFile(join(libdir, n));
    } catch {
      continue;
    }
    parts1.push(b);
    size += b.length;
    if (i % 9 === 0) continue; // dropped in v2
    const c = Buffer.from(b);
    if (i % 5 === 0) for (let k = 64; k < c.length; k += 4096) c[k] ^= 0x5a; // scattered edits
    parts2.push(c);
    if (i % 7 === 0) parts2.push(Buffer.from(`inserted ${i}`.repeat(50)));
  }
  const mk = async (layout: string, tag: string, data: Buffer) => {
    const { buildTar } = await import('../src/tar');
    await writeSimpleImage(layout, tag, { layers: [buildTar([{ header: { name: 'opt/', type: 'dir' } }, { header: { name: 'opt/app.bin', type: 'file', mode: 0o755 }, data }])], compression: 'gzip' });
  };
  await mk(l1, 'v1', Buffer.concat(parts1));
  await mk(l2, 'v2', Buffer.concat(parts2));
  return [`oci:${l1}:v1`, `oci:${l2}:v2`];
}

/**
 * Merge of a 3-step chain vs the direct diff of its end points, each command
 * timed as a user runs it (a fresh `node` process; medians of several runs).
 * Every Node process pays for loading the certificate bundle NODE_EXTRA_CA_CERTS
 * names (~60 ms on this machine, where the environment sets it to the system's
 * bundle), which neither command uses; when it is set, both commands are also
 * timed without it, as on a machine that does not set it (the Debian default).
 */
export async function mergeBench(work: string): Promise<MergeRow[]> {
  const npm = async (v: string) => (await buildNpmImage('@esbuild/linux-x64', v)).ref;
  // libssl has three versions: v1→v2, v2→v3 and a rollback v3→v2; esbuild four consecutive releases
  const chains: { name: string; refs: () => Promise<string[]>; steps: [number, number][] }[] = [
    {
      name: 'libssl v1→v2→v3→v2 (3 steps)',
      refs: async () => Promise.all((['libssl-v1', 'libssl-v2', 'libssl-v3'] as ImageName[]).map(async (n) => (await buildDebImage(n)).ref)),
      steps: [[0, 1], [1, 2], [2, 1]],
    },
    {
      name: 'esbuild 0.27.7→0.28.0→0.28.1→0.28.2 (3 steps)',
      refs: async () => Promise.all(['0.27.7', '0.28.0', '0.28.1', '0.28.2'].map(npm)),
      steps: [[0, 1], [1, 2], [2, 3]],
    },
  ];
  const envs: [string, NodeJS.ProcessEnv][] = [['as inherited', process.env]];
  if (process.env.NODE_EXTRA_CA_CERTS) {
    const clean = { ...process.env };
    delete clean.NODE_EXTRA_CA_CERTS;
    envs[0][0] = `as inherited (NODE_EXTRA_CA_CERTS=${process.env.NODE_EXTRA_CA_CERTS})`;
    envs.push(['without NODE_EXTRA_CA_CERTS', clean]);
  }
  const rows: MergeRow[] = [];
  const runs: [number, number] = [5, 3];
  for (const [ci, chain] of chains.entries()) {
    const refs = await chain.refs();
    const f = refs.map((_, i) => join(work, `m${ci}-${i + 1}.cdimg`));
    for (let i = 0; i < refs.length; i++) await cli(['convert', '--image', refs[i], '--output', f[i], '--no-progress']);
    const ds: string[] = [];
    for (const [a, b] of chain.steps) {
      const d = join(work, `m${ci}-d${a}${b}.cdimg`);
      await cli(['cdimg', 'diff', '--old', f[a], '--new', f[b], '--out', d]);
      ds.push(d);
    }
    const first = f[chain.steps[0][0]];
    const last = f[chain.steps[chain.steps.length - 1][1]];
    for (const [label, env] of envs) {
      const m = await medianCli(runs[0], ['cdimg', 'merge', ...ds, '--out', join(work, 'm.cdimg'), '--json'], env);
      const r = await medianCli(1, ['cdimg', 'merge', ...ds, '--out', join(work, 'r.cdimg'), '--strategy', 'rediff', '--base', first, '--json'], env);
      const d = await medianCli(runs[1], ['cdimg', 'diff', '--old', first, '--new', last, '--out', join(work, 'direct.cdimg'), '--json', '--no-progress'], env);
      rows.push({
        chain: chain.name,
        env: label,
        runs,
        mergeS: m.s,
        mergeBytes: JSON.parse(m.stdout).deltaBytes,
        rediffS: r.s,
        rediffBytes: JSON.parse(r.stdout).deltaBytes,
        directS: d.s,
        directBytes: JSON.parse(d.stdout).deltaBytes,
      });
    }
  }
  return rows;
}

/** The v1 and v2 images of a family of debimages.ts. */
function debPair(family: string): () => Promise<[string, string]> {
  return async () => [(await buildDebImage(`${family}-v1` as ImageName)).ref, (await buildDebImage(`${family}-v2` as ImageName)).ref];
}

export async function deltaBench(opts: { quick?: boolean } = {}): Promise<{ rows: DeltaRow[]; merge: MergeRow[] }> {
  const work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-bench-delta-'));
  const cache = join(packageRoot(), '.cache', 'bench');
  await fsp.mkdir(cache, { recursive: true });
  try {
    const pairs: [string, () => Promise<[string, string]>][] = [
      ['libssl v1→v2', async () => [(await buildDebImage('libssl-v1')).ref, (await buildDebImage('libssl-v2')).ref]],
      ['nginx v1→v2', async () => [(await buildDebImage('nginx-v1')).ref, (await buildDebImage('nginx-v2')).ref]],
    ];
    if (!opts.quick) {
      pairs.push(
        ['libssl v2→v3', async () => [(await buildDebImage('libssl-v2')).ref, (await buildDebImage('libssl-v3')).ref]],
        ['redis v1→v2', async () => [(await buildDebImage('redis-v1')).ref, (await buildDebImage('redis-v2')).ref]],
        ['esbuild 0.28.1→0.28.2', async () => [(await buildNpmImage('@esbuild/linux-x64', '0.28.1')).ref, (await buildNpmImage('@esbuild/linux-x64', '0.28.2')).ref]],
        // data-heavy pairs (issue 14): bitcode and translations, time zone data, Java archives, message catalogues
        ['postgresql-15 v1→v2', debPair('postgres')],
        ['tzdata v1→v2', debPair('tzdata')],
        ['tomcat10 jars v1→v2', debPair('tomcat')],
        ['mariadb-server-core v1→v2', debPair('mariadb')],
        [BIG_BINARY, async () => bigBinaryImages(cache)],
      );
    }
    const only = (process.env.D4FS_BENCH_DELTA_PAIRS ?? '').split(',').filter((x) => x !== '');
    if (only.length > 0) pairs.splice(0, pairs.length, ...pairs.filter(([name]) => only.some((o) => name.includes(o))));
    const rows: DeltaRow[] = [];
    for (const [name, refs] of pairs) {
      const [a, b] = await refs();
      // times are medians of 3 runs on each side (one for the synthetic pair: C bsdiff takes ~50 s there)
      rows.push({ ...(await deltaPair(name, a, b, work, name === BIG_BINARY ? 1 : 3)), synthetic: name === BIG_BINARY });
    }
    return { rows, merge: only.length > 0 ? [] : await mergeBench(work) };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

export function printDeltaTables(r: { rows: DeltaRow[]; merge: MergeRow[] }): void {
  const k = (n: number) => (n / 1024).toFixed(0);
  const x = (a: number, b: number) => (b > 0 ? (a / b).toFixed(2) : '-');
  const ok = (c: boolean) => (c ? 'ok' : 'MISS');
  const lines = [
    '## delta: cdimg diff vs (a) plain pull, (b) per-file C bsdiff, (c) per-file xdelta3 -9, (d) zstd -19 --long --patch-from of tars',
    'targets (issue 14): d4fs ≤ 0.70×(b) and ≤ 0.55×(c) bytes on the image pairs (n/a: the synthetic 100 MB binary, whose XOR edits every 4 KiB bzip2 folds into ~1 KiB, is there for the memory target); diff time ≤ 0.5× summed serial C bsdiff (medians of 3 runs of each, 1 for the synthetic pair); peak RSS ≤ 1 GiB',
    '',
    '| pair | changed files | d4fs KiB | (a) pull KiB | (b) bsdiff KiB | ×(b) | (c) xdelta KiB | ×(c) | (d) zstd tar KiB | d4fs s | C bsdiff s | ×time | RSS MiB |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (w) =>
        `| ${w.pair} | ${w.changedFiles} | ${k(w.d4fsBytes)} | ${k(w.plainPull)} | ${k(w.bsdiffBytes)} | ${x(w.d4fsBytes, w.bsdiffBytes)} ${w.synthetic ? 'n/a' : ok(w.d4fsBytes <= 0.7 * w.bsdiffBytes)} | ${k(w.xdeltaBytes)} | ${x(w.d4fsBytes, w.xdeltaBytes)} ${w.synthetic ? 'n/a' : ok(w.d4fsBytes <= 0.55 * w.xdeltaBytes)} | ${k(w.zstdTarBytes)} | ${w.d4fsS.toFixed(2)} | ${w.bsdiffS.toFixed(2)} | ${x(w.d4fsS, w.bsdiffS)} ${ok(w.d4fsS <= 0.5 * w.bsdiffS)} | ${w.rssMiB.toFixed(0)} ${ok(w.rssMiB <= 1024)} |`,
    ),
    '',
    '## where the delta bytes go: stored bytes per codec (KiB; the rest of the file is header and index), and per kind of changed file d4fs KiB / C bsdiff KiB / xdelta3 KiB (×bsdiff)',
    '',
    '| pair | per codec | per kind of file |',
    '| --- | --- | --- |',
    ...r.rows.map((w) => {
      const codecs = Object.entries(w.byCodec)
        .sort((a, b) => b[1] - a[1])
        .map(([c, n]) => `${c} ${k(n)}`)
        .join(', ');
      const stored = Object.values(w.byCodec).reduce((a, b) => a + b, 0);
      const classes = Object.entries(w.byClass)
        .sort((a, b) => b[1].bsdiff - a[1].bsdiff)
        .map(([c, v]) => `${c} (${v.files}): ${k(v.d4fs)} / ${k(v.bsdiff)} / ${k(v.xdelta)} (${x(v.d4fs, v.bsdiff)})`)
        .join('; ');
      return `| ${w.pair} | ${codecs}; index+header ${k(w.d4fsBytes - stored)} | ${classes} |`;
    }),
    '',
    '## merge of a 3-step chain vs diffing the end points (target: merge ≥ 10× faster); wall time of each command in a fresh node process, medians (merge of 5 runs, diff of 3)',
    '',
    '| chain | environment | merge (compose) s | KiB | merge (rediff, needs base) s | KiB | direct diff s | KiB | speed-up |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...(r.merge.length === 0 ? ['| (not run: D4FS_BENCH_DELTA_PAIRS) | | | | | | | | |'] : []),
    ...r.merge.map(
      (m) =>
        `| ${m.chain} | ${m.env} | ${m.mergeS.toFixed(3)} | ${k(m.mergeBytes)} | ${m.rediffS.toFixed(2)} | ${k(m.rediffBytes)} | ${m.directS.toFixed(2)} | ${k(m.directBytes)} | ${(m.directS / m.mergeS).toFixed(1)}× ${ok(m.directS / m.mergeS >= 10)} |`,
    ),
  ];
  process.stdout.write(lines.join('\n') + '\n\n');
}
