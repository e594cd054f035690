/**
 * Codec measurements behind src/delta/CODECS.md.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/codecs.js [--quick] [--no-whole]
 *     [--no-levels] [--no-chunks] [--no-choices] [--no-gz] [--only-gz]
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

function main(): void {
  const args = new Set(process.argv.slice(2));
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
