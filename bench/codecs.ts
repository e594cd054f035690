/**
 * Codec measurements behind src/delta/CODECS.md.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/codecs.js [--quick] [--no-whole]
 *     [--no-levels] [--no-chunks] [--no-choices] [--no-gz] [--only-gz]
 *   node dist/bench/codecs.js --corpus OUT.jsonl [FAMILY...]
 *
 * --corpus (issue 14): every changed file of the delta benchmark's image pairs (the
 * non-base packages of test/fixtures/debimages.ts, v1→v2, and esbuild 0.28.1→0.28.2),
 * coded unit by unit as `cdimg diff` codes them (whole up to 16 MiB, else 4 MiB chunks
 * against their base window) with every candidate the chooser could use: the level-1
 * probe, full zstd 12 and 19, zstd-patch 12 and 19, bsdiff. One JSON line per unit
 * with sizes and one-thread times.
 *   node dist/bench/codecs.js --rules OUT.jsonl
 * replays chooser rules on those lines: bytes and estimated encode time per pair and rule,
 * against the per-unit best of every candidate (what CODECS.md's chooser section quotes).
 *
 * Fetches real version pairs into <repo>/.cache/codec-test (apt-get download of
 * libssl3 and nginx, npm pack of @esbuild/linux-x64 and typescript), then prints
 * markdown tables: sizes and times of full zstd, zstd-patch, bsdiff-node (raw
 * BSDIFF40 and re-packed by d4fs), Debian's C bsdiff and xdelta3; chunked patching
 * at several chunk sizes; and the decisions of chooseBest. Runs on one core.
 */

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import {
  applyPatch,
  bsdiffNodeRaw,
  BSDIFF_MAX_INPUT,
  chooseBest,
  chunkBaseRange,
  compressFull,
  decompressFull,
  encodePatch,
  LevelPreset,
  PatchCodecId,
} from '../src/delta/codecs';
import { encodeRecipe, gzipHeaderLength, inspectGzip, rebuildGzip } from '../src/delta/gzmember';
import { contentKind, RECOMMENDED_CHUNK_SIZE } from '../src/delta/codecs/choose';
import { buildDebImage, ImageName } from '../test/fixtures/debimages';

const MiB = 1024 * 1024;
const REPO = path.resolve(__dirname, '..', '..');
const CACHE = path.join(REPO, '.cache', 'codec-test');

/** One old/new pair of real files. */
interface Pair {
  name: string;
  base: Buffer;
  target: Buffer;
}

function run(cmd: string, args: string[], cwd: string): void {
  const r = spawnSync(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${String(r.stderr).slice(0, 400)}`);
}

/** Download (once) and extract a Debian package version; returns the extraction dir. */
function debPackage(pkg: string, version: string): string {
  const dir = path.join(CACHE, `x-${pkg}_${version}`);
  if (fs.existsSync(path.join(dir, '.done'))) return dir;
  fs.mkdirSync(CACHE, { recursive: true });
  const existing = fs.readdirSync(CACHE).find((f) => f.startsWith(`${pkg}_${version.replace(/:/g, '%3a')}_`) && f.endsWith('.deb'));
  const deb = existing ?? (run('apt-get', ['download', `${pkg}=${version}`], CACHE), fs.readdirSync(CACHE).find((f) => f.startsWith(`${pkg}_`) && f.includes(version) && f.endsWith('.deb')));
  if (!deb) throw new Error(`could not download ${pkg}=${version}`);
  fs.mkdirSync(dir, { recursive: true });
  run('dpkg-deb', ['-x', path.join(CACHE, deb), dir], CACHE);
  fs.writeFileSync(path.join(dir, '.done'), '');
  return dir;
}

/** npm pack (once) and extract a package version; returns the extraction dir. */
function npmPackage(spec: string, version: string): string {
  const safe = spec.replace(/^@/, '').replace(/\//g, '-');
  const dir = path.join(CACHE, `x-npm-${safe}-${version}`);
  if (fs.existsSync(path.join(dir, '.done'))) return dir;
  fs.mkdirSync(CACHE, { recursive: true });
  const tgz = path.join(CACHE, `${safe}-${version}.tgz`);
  if (!fs.existsSync(tgz)) run('npm', ['pack', '--silent', `${spec}@${version}`], CACHE);
  fs.mkdirSync(dir, { recursive: true });
  run('tar', ['-xzf', tgz, '-C', dir], CACHE);
  fs.writeFileSync(path.join(dir, '.done'), '');
  return dir;
}

/** Versions of a Debian package known to apt, newest first. */
function aptVersions(pkg: string): string[] {
  const r = spawnSync('apt-cache', ['madison', pkg], { encoding: 'utf8' });
  const vs = [...new Set(r.stdout.split('\n').map((l) => l.split('|')[1]?.trim()).filter((v): v is string => !!v))];
  const newer = (a: string, b: string): boolean => spawnSync('dpkg', ['--compare-versions', a, 'gt', b]).status === 0;
  return vs.sort((a, b) => (a === b ? 0 : newer(a, b) ? -1 : 1));
}

function gunzipFile(p: string): Buffer {
  return zlib.gunzipSync(fs.readFileSync(p));
}

/** The pairs measured: two consecutive versions of each. */
export function loadPairs(): Pair[] {
  const pairs: Pair[] = [];
  const ssl = aptVersions('libssl3');
  if (ssl.length >= 2) {
    const [newV, oldV] = ssl;
    const a = debPackage('libssl3', oldV);
    const b = debPackage('libssl3', newV);
    const lib = 'usr/lib/x86_64-linux-gnu';
    pairs.push({ name: `libssl.so.3 ${oldV}→${newV}`, base: fs.readFileSync(path.join(a, lib, 'libssl.so.3')), target: fs.readFileSync(path.join(b, lib, 'libssl.so.3')) });
    pairs.push({ name: `libcrypto.so.3 ${oldV}→${newV}`, base: fs.readFileSync(path.join(a, lib, 'libcrypto.so.3')), target: fs.readFileSync(path.join(b, lib, 'libcrypto.so.3')) });
    pairs.push({
      name: 'libssl3 changelog.Debian (text)',
      base: gunzipFile(path.join(a, 'usr/share/doc/libssl3/changelog.Debian.gz')),
      target: gunzipFile(path.join(b, 'usr/share/doc/libssl3/changelog.Debian.gz')),
    });
  }
  const ngx = aptVersions('nginx');
  if (ngx.length >= 2) {
    const [newV, oldV] = ngx;
    pairs.push({
      name: `nginx ${oldV}→${newV}`,
      base: fs.readFileSync(path.join(debPackage('nginx', oldV), 'usr/sbin/nginx')),
      target: fs.readFileSync(path.join(debPackage('nginx', newV), 'usr/sbin/nginx')),
    });
  }
  try {
    const [o, n] = ['0.28.1', '0.28.2'];
    pairs.push({
      name: `esbuild (Go) ${o}→${n}`,
      base: fs.readFileSync(path.join(npmPackage('@esbuild/linux-x64', o), 'package/bin/esbuild')),
      target: fs.readFileSync(path.join(npmPackage('@esbuild/linux-x64', n), 'package/bin/esbuild')),
    });
    const [to, tn] = ['5.9.2', '5.9.3'];
    pairs.push({
      name: `typescript.js (text) ${to}→${tn}`,
      base: fs.readFileSync(path.join(npmPackage('typescript', to), 'package/lib/typescript.js')),
      target: fs.readFileSync(path.join(npmPackage('typescript', tn), 'package/lib/typescript.js')),
    });
  } catch (e) {
    console.error(`npm pairs skipped: ${(e as Error).message}`);
  }
  return pairs;
}

function time<T>(f: () => T): [T, number] {
  const t = process.hrtime.bigint();
  const v = f();
  return [v, Number(process.hrtime.bigint() - t) / 1e6];
}

const kb = (n: number): string => (n >= 10 * 1024 ? `${Math.round(n / 1024)} K` : `${n} B`);
const ms = (n: number): string => (n >= 1000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`);
const cell = (size: number, t: number): string => `${kb(size)} (${ms(t)})`;

/** Run an external delta tool on temp files; returns [size, ms] or null if absent. */
function external(tool: 'bsdiff' | 'xdelta3', base: Buffer, target: Buffer): [number, number] | null {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'd4fs-bench-'));
  try {
    const [a, b, p] = ['a', 'b', 'p'].map((f) => path.join(dir, f));
    fs.writeFileSync(a, base);
    fs.writeFileSync(b, target);
    const args = tool === 'bsdiff' ? [a, b, p] : ['-9', '-e', '-f', '-s', a, b, p];
    const [r, t] = time(() => spawnSync(tool, args, { stdio: 'ignore', timeout: 600_000 }));
    if (r.error || r.status !== 0) return null;
    return [fs.statSync(p).size, t];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function whole(pairs: Pair[]): void {
  console.log('\n## Whole files (size (encode time); apply times in the last column)\n');
  console.log('| pair | old → new | zstd -3 | zstd -19 | zstd-patch 3 | zstd-patch 19 | bsdiff-node raw | d4fs bsdiff @3 | d4fs bsdiff @19 | C bsdiff | xdelta3 -9 | apply zpatch19 / bsdiff19 / full19 |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const p of pairs) {
    const row: string[] = [p.name, `${kb(p.base.length)} → ${kb(p.target.length)}`];
    const [f3, tf3] = time(() => compressFull(p.target, 3));
    const [f19, tf19] = time(() => compressFull(p.target, 19));
    row.push(cell(f3.length, tf3), cell(f19.length, tf19));
    const [z3, tz3] = time(() => encodePatch(p.base, p.target, 'zstd-patch', 3));
    const [z19, tz19] = time(() => encodePatch(p.base, p.target, 'zstd-patch', 19));
    row.push(cell(z3.length, tz3), cell(z19.length, tz19));
    let bs19: Buffer | null = null;
    if (p.base.length <= BSDIFF_MAX_INPUT && p.target.length <= BSDIFF_MAX_INPUT) {
      const [raw, traw] = time(() => bsdiffNodeRaw(p.base, p.target));
      const [b3, tb3] = time(() => encodePatch(p.base, p.target, 'bsdiff', 3));
      const [b19, tb19] = time(() => encodePatch(p.base, p.target, 'bsdiff', 19));
      bs19 = b19;
      row.push(cell(raw.length, traw), cell(b3.length, tb3), cell(b19.length, tb19));
    } else {
      row.push('n/a', 'n/a', 'n/a');
    }
    for (const tool of ['bsdiff', 'xdelta3'] as const) {
      const r = external(tool, p.base, p.target);
      row.push(r ? cell(r[0], r[1]) : 'n/a');
    }
    const [, ta] = time(() => applyPatch(p.base, z19, 'zstd-patch', p.target.length));
    const tb = bs19 ? time(() => applyPatch(p.base, bs19 as Buffer, 'bsdiff', p.target.length))[1] : NaN;
    const [, tf] = time(() => decompressFull(f19, p.target.length));
    row.push(`${ms(ta)} / ${Number.isNaN(tb) ? 'n/a' : ms(tb)} / ${ms(tf)}`);
    console.log(`| ${row.join(' | ')} |`);
  }
}

/** Base window used for chunk [off, off+len) of the target (the library's rule). */
function baseRegion(base: Buffer, targetLength: number, off: number, len: number): Buffer {
  const r = chunkBaseRange(base.length, targetLength, off, len);
  return base.subarray(r.start, r.end);
}

function chunked(pairs: Pair[], quick: boolean): void {
  console.log('\n## Chunked patching (sum of chunk patches (encode time))\n');
  console.log('zstd-patch at level 12 (`default`) and 19 against the whole base or the region of 2×chunk around the same relative offset; bsdiff (streams at level 19) against that region.\n');
  console.log('| pair | chunk | zpatch12 whole base | zpatch12 region | zpatch19 region | bsdiff region |');
  console.log('|---|---|---|---|---|---|');
  const sizes = quick ? [1, 4] : [0.5, 1, 2, 4, 8, 16];
  for (const p of pairs) {
    if (p.target.length < 2 * MiB) continue;
    for (const c of sizes) {
      const C = Math.round(c * MiB);
      if (C > p.target.length * 1.5 && c !== sizes[0]) continue;
      let zw = 0, tzw = 0, zr = 0, tzr = 0, z19 = 0, tz19 = 0, bs = 0, tbs = 0;
      for (let off = 0; off < p.target.length; off += C) {
        const chunk = p.target.subarray(off, Math.min(p.target.length, off + C));
        const region = baseRegion(p.base, p.target.length, off, chunk.length);
        const measure = (f: () => Buffer): [number, number] => {
          const [b, t] = time(f);
          return [b.length, t];
        };
        let s: number, t: number;
        [s, t] = measure(() => encodePatch(p.base, chunk, 'zstd-patch', 12));
        zw += s; tzw += t;
        [s, t] = measure(() => encodePatch(region, chunk, 'zstd-patch', 12));
        zr += s; tzr += t;
        [s, t] = measure(() => encodePatch(region, chunk, 'zstd-patch', 19));
        z19 += s; tz19 += t;
        if (region.length <= BSDIFF_MAX_INPUT && chunk.length <= BSDIFF_MAX_INPUT) {
          [s, t] = measure(() => encodePatch(region, chunk, 'bsdiff', 19));
          bs += s; tbs += t;
        } else {
          bs = NaN;
        }
      }
      console.log(`| ${p.name} | ${c} MiB | ${cell(zw, tzw)} | ${cell(zr, tzr)} | ${cell(z19, tz19)} | ${Number.isNaN(bs) ? 'n/a' : cell(bs, tbs)} |`);
    }
  }
}

function choices(pairs: Pair[]): void {
  console.log('\n## chooseBest (codec: auto)\n');
  console.log('| pair | fast | default | best |');
  console.log('|---|---|---|---|');
  for (const p of pairs) {
    const row = [p.name];
    for (const level of ['fast', 'default', 'best'] as LevelPreset[]) {
      if (p.target.length > BSDIFF_MAX_INPUT && level === 'best') {
        row.push('(chunked by caller)');
        continue;
      }
      const [r, t] = time(() => chooseBest(p.base, p.target, { codec: 'auto', level }));
      row.push(`${r.codec} ${cell(r.data.length, t)}`);
    }
    console.log(`| ${row.join(' | ')} |`);
  }
}

/** Level sweep of the bsdiff streams and zstd-patch on one pair. */
function levels(p: Pair): void {
  console.log(`\n## Level sweep on ${p.name}\n`);
  console.log('| level | full zstd | zstd-patch | d4fs bsdiff |');
  console.log('|---|---|---|---|');
  for (const l of [1, 3, 6, 9, 12, 15, 16, 17, 19]) {
    const [f, tf] = time(() => compressFull(p.target, l));
    const [z, tz] = time(() => encodePatch(p.base, p.target, 'zstd-patch', l));
    const [b, tb] = time(() => encodePatch(p.base, p.target, 'bsdiff' as PatchCodecId, l));
    console.log(`| ${l} | ${cell(f.length, tf)} | ${cell(z.length, tz)} | ${cell(b.length, tb)} |`);
  }
}

/** All regular files under `root` whose name ends in .gz, relative to root. */
function gzFiles(root: string, rel = ''): string[] {
  const out: string[] = [];
  let ents: fs.Dirent[];
  try {
    ents = fs.readdirSync(path.join(root, rel), { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of ents) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) out.push(...gzFiles(root, r));
    else if (e.isFile() && e.name.endsWith('.gz')) out.push(r);
  }
  return out;
}

/** Reproducibility of .gz files and what patching their content would save. */
function gzStudy(): void {
  console.log('\n## .gz members (usr/share/man, usr/share/doc)\n');
  const pkgs: Array<[string, string[]]> = [
    ['nginx', aptVersions('nginx').slice(0, 2)],
    ['nginx-core', aptVersions('nginx-core').slice(0, 2)],
    ['libssl3', aptVersions('libssl3').slice(0, 2)],
  ];
  const reasons = new Map<string, number>();
  const levelsSeen = new Map<string, number>();
  let total = 0;
  let zlibOk = 0;
  let gzBytes = 0;
  const rows: string[] = [];
  let sumFull = 0, sumGzPatch = 0, sumContentPatch = 0, sumReal = 0;
  for (const [pkg, versions] of pkgs) {
    if (versions.length < 2) continue;
    const [newDir, oldDir] = versions.map((v) => debPackage(pkg, v));
    for (const dir of [oldDir, newDir]) {
      for (const rel of gzFiles(dir, 'usr/share')) {
        const data = fs.readFileSync(path.join(dir, rel));
        total++;
        gzBytes += data.length;
        const r = inspectGzip(data, 64 * MiB);
        const z = inspectGzip(data, 64 * MiB, { gnu: false });
        if (typeof z !== 'string') zlibOk++;
        if (typeof r === 'string') reasons.set(r, (reasons.get(r) ?? 0) + 1);
        else {
          levelsSeen.set(`${r.engine}-${r.level}`, (levelsSeen.get(`${r.engine}-${r.level}`) ?? 0) + 1);
          if (!rebuildGzip(r, r.content).equals(data)) throw new Error(`rebuild mismatch ${rel}`);
        }
      }
    }
    for (const rel of gzFiles(newDir, 'usr/share')) {
      const oldPath = path.join(oldDir, rel);
      if (!fs.existsSync(oldPath)) continue;
      const a = fs.readFileSync(oldPath);
      const b = fs.readFileSync(path.join(newDir, rel));
      if (a.equals(b)) continue;
      const full = compressFull(b, 19).length;
      const gzPatch = encodePatch(a, b, 'zstd-patch', 19).length;
      const rb = inspectGzip(b, 64 * MiB);
      // Content patch + recipe; computed even when zlib cannot reproduce the file, as the
      // upper bound of what a gzip-exact deflate would save.
      const ca = zlib.gunzipSync(a);
      const cb = zlib.gunzipSync(b);
      const recipeLen = typeof rb === 'string' ? 1 + gzipHeaderLength(b) : encodeRecipe(rb).length;
      const contentPatch = recipeLen + Math.min(encodePatch(ca, cb, 'zstd-patch', 19).length, compressFull(cb, 19).length);
      const reproducible = typeof rb !== 'string';
      sumFull += full;
      sumGzPatch += Math.min(full, gzPatch);
      sumContentPatch += Math.min(full, gzPatch, contentPatch);
      if (reproducible) sumReal += Math.min(full, gzPatch, contentPatch);
      else sumReal += Math.min(full, gzPatch);
      rows.push(`| ${pkg} ${rel} | ${kb(a.length)} → ${kb(b.length)} | ${kb(full)} | ${kb(gzPatch)} | ${kb(contentPatch)}${reproducible ? ` (${rb.engine} -${rb.level})` : ` (hypothetical: ${rb})`} |`);
    }
  }
  console.log(`Packages' .gz files (both versions): ${total} files, ${kb(gzBytes)}; reproducible by zlib alone: ${zlibOk}; by zlib or GNU gzip: ${[...levelsSeen.values()].reduce((x, y) => x + y, 0)} (engine-level ${JSON.stringify(Object.fromEntries(levelsSeen))}); not: ${JSON.stringify(Object.fromEntries(reasons))}\n`);
  console.log('| changed .gz file | old → new | full zstd-19 of .gz | zstd-patch-19 of .gz | recipe + patch of content |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) console.log(r);
  console.log(`| **total** | | ${kb(sumFull)} | ${kb(sumGzPatch)} (best of full/patch) | ${kb(sumContentPatch)} if all were reproducible; ${kb(sumReal)} with the engines available here |`);

  // Wider sample: this machine's installed man pages and docs (read only).
  let sys = 0, sysOk = 0, sysBytes = 0, sysOkBytes = 0, sysZlib = 0, seen = 0;
  const sysReasons = new Map<string, number>();
  const sysLevels = new Map<string, number>();
  for (const root of ['/usr/share/man', '/usr/share/doc']) {
    for (const rel of gzFiles(root)) {
      if (seen++ % 10 !== 0) continue; // every 10th file: GNU gzip runs as a child process
      const data = fs.readFileSync(path.join(root, rel));
      sys++;
      if (typeof inspectGzip(data, 64 * MiB, { gnu: false }) !== 'string') sysZlib++;
      sysBytes += data.length;
      const r = inspectGzip(data, 64 * MiB);
      if (typeof r === 'string') sysReasons.set(r, (sysReasons.get(r) ?? 0) + 1);
      else {
        sysOk++;
        sysOkBytes += data.length;
        sysLevels.set(`${r.engine}-${r.level}`, (sysLevels.get(`${r.engine}-${r.level}`) ?? 0) + 1);
      }
    }
  }
  console.log(`\nThis machine's /usr/share/{man,doc}, every 10th of ${seen} .gz files: ${sys} files (${kb(sysBytes)}); by zlib alone ${sysZlib}; by zlib or GNU gzip ${sysOk} (${((100 * sysOk) / Math.max(1, sys)).toFixed(1)} %, ${kb(sysOkBytes)}) levels ${JSON.stringify(Object.fromEntries(sysLevels))}; not: ${JSON.stringify(Object.fromEntries(sysReasons))}`);
}

/** One unit of a changed file coded with every candidate (sizes in bytes, times in ms on one thread). */
export interface CorpusUnit {
  pair: string;
  path: string;
  kind: string;
  baseSize: number;
  size: number;
  /** level-1 zstd-patch and full frame: the chooser's relatedness probe */
  p1: number;
  f1: number;
  tProbe: number;
  full12: number;
  tFull12: number;
  full19: number;
  tFull19: number;
  zp12: number;
  tZp12: number;
  zp19: number;
  tZp19: number;
  /** null: bsdiff gave up (deadline) */
  bs: number | null;
  tBs: number;
}

/** Files of a tree (relative paths of regular files). */
function treeFiles(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const d of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${d.name}` : d.name;
    if (d.isDirectory()) out.push(...treeFiles(root, r));
    else if (d.isFile()) out.push(r);
  }
  return out;
}

/** The non-base packages of a debimages.ts image, extracted into one directory (cached under CACHE). */
async function imageTree(name: ImageName): Promise<string> {
  const img = await buildDebImage(name);
  const debs = path.join(process.env.D4FS_TEST_CACHE ?? path.join(REPO, '.cache', 'test-images'), 'debs');
  const dir = path.join(CACHE, `tree-${name}-${img.manifestDigest.slice(7, 23)}`);
  if (fs.existsSync(path.join(dir, '.done'))) return dir;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const l of img.layers) {
    if (l.id === 'base') continue;
    for (const p of l.packages) run('dpkg-deb', ['-x', path.join(debs, `${p.name}_${p.version.replace(/:/g, '%3a')}.deb`), dir], dir);
  }
  fs.writeFileSync(path.join(dir, '.done'), '');
  return dir;
}

/** Every candidate on every unit of every changed file of the pairs: JSON lines into `out`. */
async function corpus(out: string, families: string[]): Promise<void> {
  const all: [string, ImageName, ImageName][] = [
    ['libssl v1→v2', 'libssl-v1', 'libssl-v2'],
    ['libssl v2→v3', 'libssl-v2', 'libssl-v3'],
    ['nginx v1→v2', 'nginx-v1', 'nginx-v2'],
    ['redis v1→v2', 'redis-v1', 'redis-v2'],
    ['postgres v1→v2', 'postgres-v1', 'postgres-v2'],
    ['tzdata v1→v2', 'tzdata-v1', 'tzdata-v2'],
    ['tomcat v1→v2', 'tomcat-v1', 'tomcat-v2'],
    ['mariadb v1→v2', 'mariadb-v1', 'mariadb-v2'],
  ];
  const trees: [string, string, string][] = [];
  for (const [pair, a, b] of all) if (families.length === 0 || families.some((f) => pair.startsWith(f))) trees.push([pair, await imageTree(a), await imageTree(b)]);
  if (families.length === 0 || families.includes('esbuild')) {
    trees.push(['esbuild 0.28.1→0.28.2', npmPackage('@esbuild/linux-x64', '0.28.1'), npmPackage('@esbuild/linux-x64', '0.28.2')]);
  }
  const fd = fs.openSync(out, 'w');
  const opts = { bsdiffThreads: 1 };
  try {
    for (const [pair, oldDir, newDir] of trees) {
      for (const rel of treeFiles(newDir).sort()) {
        if (rel === '.done') continue;
        const of = path.join(oldDir, rel);
        if (!fs.existsSync(of) || !fs.lstatSync(of).isFile()) continue;
        let [base, target] = [fs.readFileSync(of), fs.readFileSync(path.join(newDir, rel))];
        if (base.equals(target) || target.length < 64) continue;
        // a .gz file is coded as its decompressed content (gzip-member) when gzip rebuilds it: here always
        let gz = false;
        if (rel.endsWith('.gz')) {
          try {
            [base, target] = [zlib.gunzipSync(base), zlib.gunzipSync(target)];
            gz = true;
          } catch {
            /* not a gzip file after all: as it is */
          }
        }
        const kind = `${gz ? 'gz ' : ''}${contentKind(target)}`;
        // as cdimg diff: whole up to bsdiff's limit, else chunks against their base window
        const whole = target.length <= BSDIFF_MAX_INPUT;
        const unit = whole ? target.length : RECOMMENDED_CHUNK_SIZE;
        for (let pos = 0; pos < target.length; pos += unit) {
          const t = target.subarray(pos, Math.min(pos + unit, target.length));
          const r = whole && base.length <= BSDIFF_MAX_INPUT ? { start: 0, end: base.length } : chunkBaseRange(base.length, target.length, pos, t.length);
          const b = base.subarray(r.start, r.end);
          const [[p1, f1], tProbe] = time(() => [encodePatch(b, t, 'zstd-patch', 1).length, compressFull(t, 1).length]);
          const [full12, tFull12] = time(() => compressFull(t, 12).length);
          const [full19, tFull19] = time(() => compressFull(t, 19).length);
          const [zp12, tZp12] = time(() => encodePatch(b, t, 'zstd-patch', 12).length);
          const [zp19, tZp19] = time(() => encodePatch(b, t, 'zstd-patch', 19).length);
          const [bs, tBs] = time(() => {
            try {
              return encodePatch(b, t, 'bsdiff', 12, opts).length;
            } catch {
              return null;
            }
          });
          const u: CorpusUnit = { pair, path: whole ? rel : `${rel}#${pos / unit}`, kind, baseSize: b.length, size: t.length, p1, f1, tProbe, full12, tFull12, full19, tFull19, zp12, tZp12, zp19, tZp19, bs, tBs };
          fs.writeSync(fd, JSON.stringify(u) + '\n');
        }
      }
      console.error(`${pair}: done`);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** What a rule keeps for one unit and the encode time it spends (ms, the candidates it runs). */
type Rule = (u: CorpusUnit) => { bytes: number; ms: number };

const related = (u: CorpusUnit): boolean => u.p1 < 0.9 * u.f1;
/** The full frame is skipped when a patch is already below a quarter of the level-1 frame (as chooseBest does). */
const withFull = (u: CorpusUnit, patch: number, ms: number): { bytes: number; ms: number } =>
  patch * 4 < u.f1 ? { bytes: patch, ms } : { bytes: Math.min(patch, u.full12), ms: ms + u.tFull12 };

/** Chooser rules replayed on the corpus: the one before issue 14 and the candidates of its item 1. */
const RULES: Record<string, Rule> = {
  // before issue 14: bsdiff for executables of 4 KiB or more (zstd-patch 12 when it gives up), zstd-patch 12 for the rest
  'old (exe: bsdiff, else zstd-patch 12)': (u) => {
    if (!related(u)) return { bytes: u.full12, ms: u.tProbe + u.tFull12 };
    if (u.kind === 'executable' && u.size >= 4096 && u.bs !== null) return withFull(u, u.bs, u.tProbe + u.tBs);
    return withFull(u, u.zp12, u.tProbe + u.tZp12);
  },
  'all: bsdiff + zstd-patch 19 + full 12': (u) => {
    if (!related(u)) return { bytes: u.full12, ms: u.tProbe + u.tFull12 };
    return withFull(u, Math.min(u.bs ?? Infinity, u.zp19), u.tProbe + u.tBs + u.tZp19);
  },
  'all + full 19 when unrelated': (u) => {
    if (!related(u)) return { bytes: Math.min(u.full12, u.full19), ms: u.tProbe + u.tFull19 };
    return withFull(u, Math.min(u.bs ?? Infinity, u.zp19), u.tProbe + u.tBs + u.tZp19);
  },
  'exe: bsdiff; else bsdiff + zstd-patch 19': (u) => {
    if (!related(u)) return { bytes: u.full12, ms: u.tProbe + u.tFull12 };
    if (u.kind === 'executable' && u.bs !== null) return withFull(u, u.bs, u.tProbe + u.tBs);
    return withFull(u, Math.min(u.bs ?? Infinity, u.zp19), u.tProbe + u.tBs + u.tZp19);
  },
  'exe: bsdiff; else bsdiff + zstd-patch 19 (12 above 1 MiB)': (u) => {
    if (!related(u)) return { bytes: u.full12, ms: u.tProbe + u.tFull12 };
    if (u.kind === 'executable' && u.bs !== null) return withFull(u, u.bs, u.tProbe + u.tBs);
    const z = u.size <= 1 << 20 ? [u.zp19, u.tZp19] : [u.zp12, u.tZp12];
    return withFull(u, Math.min(u.bs ?? Infinity, z[0]), u.tProbe + u.tBs + z[1]);
  },
  'exe: bsdiff; else bsdiff, zstd-patch 19 unless bsdiff < p1/2': (u) => {
    if (!related(u)) return { bytes: u.full12, ms: u.tProbe + u.tFull12 };
    if (u.kind === 'executable' && u.bs !== null) return withFull(u, u.bs, u.tProbe + u.tBs);
    if (u.bs !== null && u.bs < u.p1 / 2) return withFull(u, u.bs, u.tProbe + u.tBs);
    return withFull(u, Math.min(u.bs ?? Infinity, u.zp19), u.tProbe + u.tBs + u.tZp19);
  },
  // issue 14 as built (choose.ts): bsdiff alone for executables; from 16 KiB (not text) bsdiff, then zstd-patch 19 unless
  // bsdiff < 0.6 x the probe; below, zstd-patch 19; binary data the probe calls unrelated looked at again at
  // level 12 (related when the patch is below 0.97 x the level-12 frame)
  'issue 14 (as built)': (u) => {
    const kind = u.kind.replace(/^gz /, '');
    let extra: number[] = [];
    let t = u.tProbe;
    if (!related(u)) {
      if (kind !== 'binary' || u.zp12 >= 0.97 * u.full12) return { bytes: u.full12, ms: t + u.tFull12 };
      extra = [u.zp12];
      t += u.tZp12;
    }
    if (kind === 'executable' && u.size >= 4096 && u.bs !== null) return withFull(u, Math.min(u.bs, ...extra), t + u.tBs);
    // the strong level when the probe's patch is at least 1/64 of the unit (STRONG_MIN_SHARE)
    const [zp, tz] = u.p1 * 64 >= u.size ? [u.zp19, u.tZp19] : [u.zp12, u.tZp12];
    if (u.size >= 16384 && u.bs !== null && kind !== 'text') {
      if (u.bs < 0.6 * u.p1) return withFull(u, Math.min(u.bs, ...extra), t + u.tBs);
      return withFull(u, Math.min(u.bs, zp, ...extra), t + u.tBs + tz);
    }
    return withFull(u, Math.min(zp, ...extra), t + tz);
  },
  'best of every candidate (oracle)': (u) => ({
    bytes: Math.min(u.full12, u.full19, u.zp12, u.zp19, u.bs ?? Infinity),
    ms: u.tProbe + u.tFull12 + u.tFull19 + u.tZp12 + u.tZp19 + u.tBs,
  }),
};

/** Replay RULES on a --corpus file: per pair and in total, bytes (×oracle) and encode time. */
function rules(file: string): void {
  const units = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as CorpusUnit);
  const pairs = [...new Set(units.map((u) => u.pair)), 'all'];
  const oracle = RULES['best of every candidate (oracle)'];
  const sum = (us: CorpusUnit[], r: Rule): { bytes: number; ms: number } => us.reduce((a, u) => { const x = r(u); return { bytes: a.bytes + x.bytes, ms: a.ms + x.ms }; }, { bytes: 0, ms: 0 });
  console.log(`| rule | ${pairs.join(' | ')} |`);
  console.log(`| --- |${pairs.map(() => ' --- |').join('')}`);
  for (const [name, r] of Object.entries(RULES)) {
    const cells = pairs.map((p) => {
      const us = p === 'all' ? units : units.filter((u) => u.pair === p);
      const x = sum(us, r);
      const o = sum(us, oracle);
      return `${kb(x.bytes)} ×${(x.bytes / o.bytes).toFixed(3)}, ${ms(x.ms)}`;
    });
    console.log(`| ${name} | ${cells.join(' | ')} |`);
  }
  // which candidate is the per-unit best, in bytes of the oracle, per kind
  const win: Record<string, Record<string, number>> = {};
  for (const u of units) {
    const c: [string, number][] = [['full12', u.full12], ['full19', u.full19], ['zp12', u.zp12], ['zp19', u.zp19], ['bsdiff', u.bs ?? Infinity]];
    c.sort((a, b) => a[1] - b[1]);
    const k = `${u.kind}${related(u) ? '' : ' (unrelated)'}`;
    win[k] ??= {};
    win[k][c[0][0]] = (win[k][c[0][0]] ?? 0) + c[0][1];
  }
  console.log('\nper kind, bytes of the units each candidate is smallest on:');
  for (const [k, v] of Object.entries(win)) console.log(`  ${k}: ${Object.entries(v).map(([c, n]) => `${c} ${kb(n)}`).join(', ')}`);
}

function main(): void {
  const argv = process.argv.slice(2);
  if (argv[0] === '--rules') return rules(argv[1]);
  const at = argv.indexOf('--corpus');
  if (at >= 0) {
    void corpus(argv[at + 1], argv.slice(at + 2)).catch((e) => {
      console.error(e);
      process.exitCode = 1;
    });
    return;
  }
  const args = new Set(argv);
  if (args.has('--only-gz')) return gzStudy();
  const pairs = loadPairs();
  console.log(`# d4fs codec benchmark (${os.cpus()[0]?.model ?? 'cpu'}, node ${process.version})`);
  if (!args.has('--no-whole')) whole(pairs);
  if (!args.has('--no-levels')) {
    const lc = pairs.find((p) => p.name.startsWith('libcrypto'));
    if (lc) levels(lc);
  }
  if (!args.has('--no-chunks')) chunked(pairs, args.has('--quick'));
  if (!args.has('--no-choices')) choices(pairs);
  if (!args.has('--no-gz')) gzStudy();
}

if (require.main === module) main();
