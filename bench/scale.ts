/**
 * Scale benchmark (issue 18, "Scale: big images"): a synthetic image of
 * ~1 GiB in one gzip layer and a real one with many files (a Node
 * application's node_modules), every number next to its baseline of the same run.
 *
 * Running it: `make bench scale` (both images), or
 *   node dist/bench/run.js scale [--quick] [--scale-gib N]
 * with D4FS_BENCH_SCALE_ONLY=synthetic or =node_modules for one image only
 * (e.g. `D4FS_BENCH_SCALE_ONLY=node_modules make bench scale`, a few minutes
 * once its corpus is cached; --quick and --scale-gib change only the synthetic
 * image).
 *
 * The synthetic image (seeded, cached under <repo>/.cache/bench/scale/<variant>):
 *   v1: 1,500 directories × 100 text files of 0.5–6 KiB of word-like text,
 *       plus one 256 MiB random file and one 256 MiB text file;
 *   v2: v1 with 1% of the small files edited (a few words each) and 50 small
 *       edits in the big text file.
 * Each version's tree stays on disk (the ext4 baseline of the reads); its
 * layer is GNU tar (--sort=name, fixed mtime, numeric owner 0) | gzip (pigz
 * when installed), streamed, in an OCI layout of one layer.
 * `--quick` scales to 1/10 (150 directories, 25 MiB big files);
 * `gib` (D4FS_BENCH_SCALE_GIB=5) adds 256 MiB big files until the image
 * holds about that many GiB (memory must not grow with size).
 *
 * The node_modules image (cached under <repo>/.cache/bench/scale/node_modules,
 * made once with the npm registry; without it this image is skipped with the
 * reason in its table, the synthetic one still runs):
 *   v1: /app with a package.json of NODE_APP_V1 (21 packages, exact versions:
 *       React + MUI with its icons, Babel, webpack, eslint, jest, TypeScript,
 *       aws-sdk v2, …) and `npm install --ignore-scripts --no-audit --no-fund
 *       --prefix /app`: ~64,000 files, ~610 packages, 243 MiB;
 *   v2: NODE_APP_UPDATES (5 of them to their next patch/minor release) installed
 *       from v1's package-lock.json, as an `npm update` would (the rest of the
 *       tree stays as v1 resolved it). Only the named packages are pinned: the
 *       versions npm picks for their dependencies may differ on another day, so
 *       v1's tree can drift over time (v1 → v2 stays "these five updated").
 * Measured (medians of 3 runs, as the image is small): files and entries;
 * convert of v1 and v2 vs the same baseline as the synthetic image's; .cdimg
 * size vs the gzip layer; index bytes per entry; `cdimg diff` (time vs
 * convert of v2, RSS) and the delta's size against the sum of its
 * changed contents' patches: for each regular file of v2 whose bytes differ
 * from v1's at its path, the smaller of `zstd -19 --patch-from=old` and
 * `xdelta3 -9 -e -s old` (zstd only without xdelta3), `zstd -19` of a file
 * new at its path; removed files cost nothing. That baseline is a function
 * of the trees and the tools' versions: measured once (a minute or two), then
 * read from .cache/bench/scale/node_modules/baseline.json (the note says so).
 *
 * Measured for the synthetic image, one step at a time (the machine is small):
 *  1. `ctr-cli convert` of v1 and v2 (time, peak RSS by /usr/bin/time) vs
 *     `tar -x` of the layer + `tar -c | zstd -T2 -3` of the tree;
 *  2. .cdimg size vs the gzip layer, stored index bytes per entry (header);
 *  3. `ctr-cli cdimg diff` v1 → v2 (time, RSS, delta size, its index);
 *  4. in a private containerd + d4fs snapshotter (test/helpers/d4fs-env.ts):
 *     `ctr-cli load` of v1 (time, RSS), the FUSE manager's RSS after the
 *     mount, cold reads through the mount (1,000 small files, `find`, the big
 *     text file) vs the same on the ext4 tree, each after drop_caches, the
 *     manager's RSS after them, then `load` of the v1→v2 delta and the RSS it
 *     adds.
 */
import { execFile, spawn } from 'node:child_process';
import { createCipheriv, createHash, type Hash } from 'node:crypto';
import fs, { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { type D4fsEnv, eventually, startD4fsEnv } from '../test/helpers/d4fs-env';
import { CTR_CLI_JS } from '../test/helpers/cli';
import { prng } from '../test/helpers/prng';
import { parseHeader } from '../src/format/reader';
import { HEADER_SIZE } from '../src/format/types';
import { MT } from '../src/oci/mediatypes';
import { OciLayoutWriter } from '../src/oci/writer';
import type { OciManifest } from '../src/oci/types';
import { packageRoot } from '../src/util/paths';
import { median, printTargetTable, type TargetRow } from './stats';

const execFileP = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** One line of the table. */
export type ScaleRow = TargetRow & {
  /** The image of the row: the synthetic one when absent. */
  image?: 'node_modules';
};

export interface ScaleBenchOptions {
  /** 1/10 of the size: 150 directories, 25 MiB big files. */
  quick?: boolean;
  /** Grow the image to about this many GiB with more 256 MiB big files (default: $D4FS_BENCH_SCALE_GIB, else 1 pair). */
  gib?: number;
  /** Small files read through the mount (default 1,000). */
  reads?: number;
  /** Runs of each convert and its baseline, median reported (default 3 with quick, else 1). */
  runs?: number;
  /** Only this image (default: $D4FS_BENCH_SCALE_ONLY, else both): 'synthetic' or 'node_modules'. */
  only?: string;
}

/** The shape of a generated image. */
interface Shape {
  /** Cache directory name. */
  name: string;
  dirs: number;
  filesPerDir: number;
  minFile: number;
  maxFile: number;
  /** Size of each big file. */
  bigSize: number;
  /** Pairs of big files (one random, one text each). */
  bigPairs: number;
  /** Small files edited in v2 (1%). */
  edits: number;
  /** Edits in the (first) big text file in v2. */
  bigEdits: number;
  seed: number;
}

/** Bumped when the generator changes, so cached trees are made again. */
const GENERATOR_VERSION = 1;
const MTIME = '@1700000000';
/** Seconds of idleness before a settled RSS is taken. */
const IDLE_S = 65;
/** How long the bench waits after a mount or a burst of reads before reading the manager's RSS (it reclaims 1 s after either). */
const SETTLE_MS = 2500;
const BIG_DIR = 'big';

function shapeOf(opts: ScaleBenchOptions): Shape {
  const f = opts.quick ? 10 : 1;
  const dirs = 1500 / f;
  const bigSize = opts.quick ? 25 * MiB : 256 * MiB;
  const smallBytes = dirs * 100 * 3.25 * KiB;
  const gib = opts.gib ?? (Number(process.env.D4FS_BENCH_SCALE_GIB) || 0);
  const bigPairs = gib > 0 ? Math.max(1, Math.ceil((gib * GiB / f - smallBytes) / (2 * bigSize))) : 1;
  return {
    name: `${opts.quick ? 'quick' : 'full'}${bigPairs > 1 ? `-${bigPairs}big` : ''}`,
    dirs,
    filesPerDir: 100,
    minFile: 512,
    maxFile: 6 * KiB,
    bigSize,
    bigPairs,
    edits: Math.round((dirs * 100) / 100),
    bigEdits: 50,
    seed: 18,
  };
}

// --- generator ----------------------------------------------------------------

/** Word-like text from a seeded generator: a vocabulary of 4,096 words, common ones more often. */
class TextGen {
  private readonly r: () => number;
  readonly vocab: Buffer[];
  constructor(seed: number) {
    this.r = prng(seed);
    const letters = 'etaoinshrdlcumwfgypbvkjxqz';
    this.vocab = [];
    for (let i = 0; i < 4096; i++) {
      const len = 2 + Math.floor(this.r() * this.r() * 10);
      let w = '';
      for (let j = 0; j < len; j++) w += letters[Math.floor(this.r() * this.r() * letters.length)];
      this.vocab.push(Buffer.from(w));
    }
  }
  int(n: number): number {
    return Math.floor(this.r() * n);
  }
  word(): Buffer {
    // skewed towards the first words, as natural text is
    return this.vocab[Math.floor(this.r() * this.r() * this.vocab.length)];
  }
  /** Fills `buf` with words, spaces and a newline every ~12 words. */
  fill(buf: Buffer): void {
    let i = 0;
    let n = 0;
    while (i < buf.length) {
      const w = this.word();
      i += w.copy(buf, i);
      if (i >= buf.length) break;
      buf[i++] = ++n % 12 === 0 ? 0x0a : 0x20;
    }
  }
}

const smallRel = (s: Shape, d: number, f: number): string => {
  const dirs = String(s.dirs - 1).length;
  return `data/g${String(Math.floor(d / 100)).padStart(2, '0')}/d${String(d).padStart(dirs, '0')}/f${String(f).padStart(2, '0')}.txt`;
};
const bigRel = (kind: 'random' | 'text', i: number): string => `${BIG_DIR}/${kind}-${i}.${kind === 'text' ? 'txt' : 'bin'}`;

/** Writes `size` bytes made by `fill` to `file`, 4 MiB at a time. */
function writeStreamed(file: string, size: number, fill: (buf: Buffer) => void): void {
  const fd = fs.openSync(file, 'w');
  try {
    const buf = Buffer.allocUnsafe(4 * MiB);
    for (let done = 0; done < size; ) {
      const n = Math.min(buf.length, size - done);
      fill(buf.subarray(0, n));
      fs.writeSync(fd, buf, 0, n);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** A seeded random file: AES-256-CTR of zeros, keyed by the seed. */
function writeRandom(file: string, size: number, seed: string): void {
  const c = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  const zeros = Buffer.alloc(4 * MiB);
  writeStreamed(file, size, (buf) => {
    const out = c.update(zeros.subarray(0, buf.length));
    out.copy(buf);
  });
}

/** Generates v1's tree into `tree`; its number of entries (files and directories, root included) and bytes of files. */
function generateV1(s: Shape, tree: string): { entries: number; contentBytes: number } {
  const gen = new TextGen(s.seed);
  let entries = 1;
  let contentBytes = 0;
  const made = new Set<string>();
  const mkdir = (d: string): void => {
    if (made.has(d)) return;
    fs.mkdirSync(d, { recursive: true });
    for (let p = d; p !== tree && !made.has(p); p = path.dirname(p)) {
      made.add(p);
      entries++;
    }
  };
  const buf = Buffer.allocUnsafe(s.maxFile);
  for (let d = 0; d < s.dirs; d++) {
    mkdir(path.join(tree, path.dirname(smallRel(s, d, 0))));
    for (let f = 0; f < s.filesPerDir; f++) {
      const size = s.minFile + gen.int(s.maxFile - s.minFile + 1);
      gen.fill(buf.subarray(0, size));
      fs.writeFileSync(path.join(tree, smallRel(s, d, f)), buf.subarray(0, size));
      entries++;
      contentBytes += size;
    }
  }
  mkdir(path.join(tree, BIG_DIR));
  for (let i = 0; i < s.bigPairs; i++) {
    writeRandom(path.join(tree, bigRel('random', i)), s.bigSize, `d4fs-scale-${s.seed}-${i}`);
    const tg = new TextGen(s.seed * 1000 + i);
    writeStreamed(path.join(tree, bigRel('text', i)), s.bigSize, (b) => tg.fill(b));
    entries += 2;
    contentBytes += 2 * s.bigSize;
  }
  return { entries, contentBytes };
}

/** Replaces `file` (a hard link into v1's tree) by a file of its own with `data`. */
function rewrite(file: string, data: Buffer): void {
  fs.unlinkSync(file);
  fs.writeFileSync(file, data);
}

/** v2 = v1 (hard links, `cp -al`) with 1% of the small files edited and small edits in the big text file. */
async function generateV2(s: Shape, v1: string, v2: string): Promise<void> {
  await execFileP('cp', ['-al', v1, v2]);
  const gen = new TextGen(s.seed + 1);
  const picked = new Set<number>();
  while (picked.size < s.edits) picked.add(gen.int(s.dirs * s.filesPerDir));
  for (const k of [...picked].sort((a, b) => a - b)) {
    const file = path.join(v2, smallRel(s, Math.floor(k / s.filesPerDir), k % s.filesPerDir));
    let text = fs.readFileSync(file);
    // change 2–5 words: each replaced by another word of the vocabulary
    const n = 2 + gen.int(4);
    for (let e = 0; e < n; e++) {
      let at = gen.int(text.length);
      while (at > 0 && text[at - 1] !== 0x20 && text[at - 1] !== 0x0a) at--;
      let end = at;
      while (end < text.length && text[end] !== 0x20 && text[end] !== 0x0a) end++;
      text = Buffer.concat([text.subarray(0, at), gen.word(), text.subarray(end)]);
    }
    rewrite(file, text);
  }
  // the big text file: a copy of its own with words overwritten in place
  const big = path.join(v2, bigRel('text', 0));
  fs.unlinkSync(big);
  fs.copyFileSync(path.join(v1, bigRel('text', 0)), big);
  const fd = fs.openSync(big, 'r+');
  try {
    for (let e = 0; e < s.bigEdits; e++) fs.writeSync(fd, gen.word(), 0, undefined, gen.int(s.bigSize - 16));
  } finally {
    fs.closeSync(fd);
  }
}

/** A pass-through stream that hashes what goes through it and counts the bytes. */
function hashing(h: Hash, count: { n: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      count.n += chunk.length;
      cb(null, chunk);
    },
  });
}

/** Whether `cmd` is on the PATH. */
async function have(cmd: string): Promise<boolean> {
  return execFileP('sh', ['-c', `command -v ${cmd}`]).then(
    () => true,
    () => false,
  );
}

/** Exit of a child as a promise (rejects on a non-zero exit). */
function exited(child: ReturnType<typeof spawn>, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${what} exited ${code}: ${err.trim()}`))));
  });
}

/** An OCI layout of one gzip layer holding `tree`, streamed (tar | gzip → file), never whole in memory. */
async function writeLayout(tree: string, layout: string, tag: string): Promise<{ layerFile: string; layerBytes: number; tarBytes: number }> {
  await fsp.rm(layout, { recursive: true, force: true });
  const w = await OciLayoutWriter.create(layout);
  const tmp = path.join(layout, 'layer.tmp');
  const tar = spawn('tar', ['--sort=name', `--mtime=${MTIME}`, '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', '-C', tree, '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const gzCmd = (await have('pigz')) ? 'pigz' : 'gzip';
  const gz = spawn(gzCmd, ['-n', '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const tarHash = createHash('sha256');
  const gzHash = createHash('sha256');
  const tarCount = { n: 0 };
  const gzCount = { n: 0 };
  await Promise.all([
    exited(tar, 'tar'),
    exited(gz, gzCmd),
    pipeline(tar.stdout, hashing(tarHash, tarCount), gz.stdin),
    pipeline(gz.stdout, hashing(gzHash, gzCount), fs.createWriteStream(tmp)),
  ]);
  const diffId = `sha256:${tarHash.digest('hex')}`;
  const layer = await w.putBlobFile(tmp, { mediaType: MT.OCI_LAYER_GZIP, digest: `sha256:${gzHash.digest('hex')}`, size: gzCount.n });
  const configDoc = {
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: [diffId] },
    history: [{ created: '2024-01-01T00:00:00Z', created_by: 'd4fs bench scale' }],
  };
  const config = await w.putBlob(Buffer.from(JSON.stringify(configDoc)), MT.OCI_CONFIG);
  const manifestDoc: OciManifest = { schemaVersion: 2, mediaType: MT.OCI_MANIFEST, config, layers: [layer] };
  const manifest = await w.putBlob(Buffer.from(JSON.stringify(manifestDoc)), MT.OCI_MANIFEST);
  await w.tag(manifest, tag);
  return { layerFile: path.join(layout, 'blobs', 'sha256', layer.digest.slice(7)), layerBytes: gzCount.n, tarBytes: tarCount.n };
}

/** What the benchmark needs of one generated version. */
interface Version {
  tree: string;
  ref: string;
  layerFile: string;
  layerBytes: number;
  tarBytes: number;
  /** Files and directories of the tree, root included. */
  entries: number;
  /** Bytes of the tree's regular files. */
  contentBytes: number;
}

/**
 * One version of an image, made once by `make` into DIR/v/tree with its OCI layout in DIR/v/layout, and
 * cached: the marker DIR/v.done.json (written last) says the version is complete for `key`.
 */
async function cachedVersion(
  dir: string,
  key: string,
  v: 'v1' | 'v2',
  make: (tree: string) => Promise<{ entries: number; contentBytes: number }>,
  log: (m: string) => void,
): Promise<Version> {
  await fsp.mkdir(dir, { recursive: true });
  const marker = path.join(dir, `${v}.done.json`);
  try {
    const m = JSON.parse(await fsp.readFile(marker, 'utf8')) as Version & { key: string };
    if (m.key === key) return m;
  } catch {
    /* make it */
  }
  await fsp.rm(marker, { force: true });
  const tree = path.join(dir, v, 'tree');
  await fsp.rm(path.join(dir, v), { recursive: true, force: true });
  await fsp.mkdir(path.dirname(tree), { recursive: true });
  log(`generating ${path.basename(dir)} ${v} in ${tree}`);
  let t0 = now();
  const { entries, contentBytes } = await make(tree);
  log(`  tree: ${(now() - t0).toFixed(1)} s; layer (tar | gzip)`);
  t0 = now();
  const layout = path.join(dir, v, 'layout');
  const l = await writeLayout(tree, layout, v);
  log(`  layer: ${(l.layerBytes / MiB).toFixed(0)} MiB gzip of ${(l.tarBytes / MiB).toFixed(0)} MiB tar, ${(now() - t0).toFixed(1)} s`);
  const ver: Version = { tree, ref: `oci:${layout}:${v}`, layerFile: l.layerFile, layerBytes: l.layerBytes, tarBytes: l.tarBytes, entries, contentBytes };
  await fsp.writeFile(marker, JSON.stringify({ ...ver, key }));
  return ver;
}

/** The two versions of `s`, generated once and cached. */
async function scaleImages(s: Shape, log: (m: string) => void): Promise<{ v1: Version; v2: Version }> {
  const dir = path.join(packageRoot(), '.cache', 'bench', 'scale', s.name);
  const key = JSON.stringify({ GENERATOR_VERSION, ...s });
  const v1 = await cachedVersion(
    dir,
    key,
    'v1',
    async (tree) => {
      await fsp.mkdir(tree);
      return generateV1(s, tree);
    },
    log,
  );
  const v2 = await cachedVersion(
    dir,
    key,
    'v2',
    async (tree) => {
      await generateV2(s, v1.tree, tree);
      return { entries: v1.entries, contentBytes: v1.contentBytes };
    },
    log,
  );
  return { v1, v2 };
}

// --- measuring ----------------------------------------------------------------

const now = (): number => Number(process.hrtime.bigint()) / 1e9;
const secs = (s: number): string => (s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`);
const mib = (b: number, d = 1): string => `${(b / MiB).toFixed(d)} MiB`;
const kib = (b: number): string => `${(b / KiB).toFixed(1)} KiB`;

/** Runs a command under /usr/bin/time; wall seconds, peak RSS in bytes, stdout. */
async function timedRun(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ s: number; rss: number; stdout: string }> {
  try {
    const r = await execFileP('/usr/bin/time', ['-f', '%e %M', cmd, ...args], { maxBuffer: 64 * MiB, env: env ?? process.env, timeout: 3_600_000 });
    const [s, rssKiB] = r.stderr.trim().split('\n').pop()!.split(' ').map(Number);
    return { s, rss: rssKiB * KiB, stdout: r.stdout };
  } catch (e) {
    const x = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${x.stderr?.slice(-4000) || x.message}`);
  }
}

/** Drops the kernel's page, dentry and inode caches (the whole machine's). */
async function dropCaches(): Promise<void> {
  await execFileP('sync');
  await fsp.writeFile('/proc/sys/vm/drop_caches', '3\n');
}

/** Resident and peak resident set of `pid`, bytes. */
function rssOf(pid: number): { rss: number; hwm: number } {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(st)?.[1] ?? NaN) * KiB;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** The rows of a full .cdimg's size against its gzip layer, and of its index's stored bytes per entry of the tree. */
async function sizeRows(label: string, file: string, layer: { layerBytes: number; tarBytes: number }, entries: number, convertEntries: number): Promise<ScaleRow[]> {
  const ix = await indexLens(file);
  const perEntry = ix.stored / entries;
  const counted = convertEntries !== entries ? ` (convert counted ${convertEntries})` : '';
  return [
    row(`full .cdimg size (${label})`, mib(ix.fileSize), `${mib(layer.layerBytes)} gzip layer`, ix.fileSize / layer.layerBytes, '', null, `size ratio; tar ${mib(layer.tarBytes, 0)}`),
    row(`index bytes per entry (${label})`, `${perEntry.toFixed(1)} B`, '', null, '≤ 60 B', perEntry <= 60, `stored (zstd) index ${kib(ix.stored)} (raw ${kib(ix.raw)}, ${(ix.raw / entries).toFixed(1)} B/entry) / ${entries} entries of the tree${counted}`),
  ];
}

/** The stored and raw index lengths of a .cdimg, from its header. */
async function indexLens(file: string): Promise<{ stored: number; raw: number; fileSize: number }> {
  const fh = await fsp.open(file, 'r');
  try {
    const h = Buffer.alloc(HEADER_SIZE);
    await fh.read(h, 0, HEADER_SIZE, 0);
    const { size } = await fh.stat();
    const hd = parseHeader(h, size, file);
    return { stored: hd.indexStoredLen, raw: hd.indexRawLen, fileSize: size };
  } finally {
    await fh.close();
  }
}

/** Reads each of `files` to the end, one at a time; resolves with the bytes read (and each file's seconds in `times`). */
async function readFiles(files: string[], times?: number[]): Promise<number> {
  const buf = Buffer.allocUnsafe(MiB);
  let bytes = 0;
  for (const f of files) {
    const t0 = now();
    const fh = await fsp.open(f, 'r');
    try {
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        bytes += bytesRead;
      }
    } finally {
      await fh.close();
    }
    times?.push(now() - t0);
  }
  return bytes;
}

/** The cold reads of one tree (each after drop_caches): small files, find, the big text file. */
async function coldReads(
  root: string,
  small: string[],
  big: string,
): Promise<{ smallS: number; smallBytes: number; per: { med: number; p90: number; max: number }; findS: number; findEntries: number; findLsS: number; bigS: number; bigBytes: number }> {
  await dropCaches();
  let t0 = now();
  const times: number[] = [];
  const smallBytes = await readFiles(
    small.map((r) => path.join(root, r)),
    times,
  );
  const smallS = now() - t0;
  times.sort((a, b) => a - b);
  const per = { med: times[times.length >> 1], p90: times[Math.floor(times.length * 0.9)], max: times[times.length - 1] };
  await dropCaches();
  t0 = now();
  const { stdout } = await execFileP('find', [root], { maxBuffer: 256 * MiB });
  const findS = now() - t0;
  // the same walk with every entry's attributes (as ls -l, du, rsync, tar): lstat of each
  await dropCaches();
  t0 = now();
  await execFileP('find', [root, '-ls'], { maxBuffer: 256 * MiB });
  const findLsS = now() - t0;
  await dropCaches();
  t0 = now();
  const bigBytes = await readFiles([path.join(root, big)]);
  const bigS = now() - t0;
  return { smallS, smallBytes, per, findS, findEntries: stdout.split('\n').filter(Boolean).length, findLsS, bigS, bigBytes };
}

const row = (measurement: string, d4fs: string, baseline: string, ratio: number | null, target: string, met: boolean | null, note: string): ScaleRow => ({
  measurement,
  d4fs,
  baseline,
  ratio,
  target,
  met,
  note,
});

/** One version's convert as measured: d4fs's median seconds, peak RSS, the baseline's median, the entries convert counted. */
interface Converted {
  s: number;
  rss: number;
  base: number;
  entries: number;
  /** d4fs's and the baseline's seconds of each run. */
  ours: number[];
  bases: number[];
}

/**
 * `ctr-cli convert` of `ver` into `out` (time, peak RSS), `runs` times interleaved with its baseline
 * `tar -x` of the layer + `tar -c | zstd -T2 -3` of the tree; a failed convert is noted in `failures`
 * and tried once more.
 */
async function measureConvert(v: string, ver: Version, out: string, work: string, runs: number, failures: string[], log: (m: string) => void): Promise<Converted> {
  const tree = path.join(work, `${v}-baseline`);
  const bases: number[] = [];
  const ours: { s: number; rss: number; stdout: string }[] = [];
  // the layer in the page cache for both (an earlier drop_caches may have dropped it)
  await readFiles([ver.layerFile]);
  for (let i = 0; i < runs; i++) {
    await fsp.mkdir(tree);
    // each timed step starts with nothing dirty: the previous one's writes (and the removal of its
    // tens of thousands of files) are not left to be written back during the next
    await execFileP('sync');
    log(`baseline of ${v}: tar -x + tar -c | zstd -T2 -3`);
    bases.push((await timedRun('bash', ['-c', `set -e -o pipefail; tar -xf '${ver.layerFile}' -C '${tree}'; tar -cf - -C '${tree}' . | zstd -T2 -3 -q -f -o '${tree}.tar.zst'`])).s);
    await fsp.rm(tree, { recursive: true, force: true });
    await fsp.rm(`${tree}.tar.zst`, { force: true });
    await fsp.rm(out, { force: true });
    await execFileP('sync');
    log(`convert ${v}`);
    const args = [CTR_CLI_JS, 'convert', '--image', ver.ref, '--output', out, '--json', '--no-progress'];
    ours.push(
      await timedRun(process.execPath, args).catch(async (e: unknown) => {
        // seen once at full size ("Digest already called"): reported, and tried once more
        const msg = (e as Error).message.split('\n')[0];
        log(`convert ${v} failed, once more: ${msg}`);
        failures.push(`convert ${v}: ${msg}`);
        await fsp.rm(out, { force: true });
        return timedRun(process.execPath, args);
      }),
    );
  }
  const j = JSON.parse(ours[0].stdout) as { entries: number };
  return {
    s: median(ours.map((o) => o.s)),
    rss: Math.max(...ours.map((o) => o.rss)),
    base: median(bases),
    entries: j.entries,
    ours: ours.map((o) => o.s),
    bases,
  };
}

/** The two rows of one convert: time against the baseline, peak RSS. */
function convertRows(v: string, ver: Version, c: Converted, size: string, runs: number): ScaleRow[] {
  const each = runs > 1 ? `median of ${runs} interleaved runs (d4fs ${c.ours.map((o) => o.toFixed(2)).join(', ')} s; baseline ${c.bases.map((b) => b.toFixed(2)).join(', ')} s)` : 'one run each';
  return [
    row(`convert ${v} (${size})`, secs(c.s), secs(c.base), c.s / c.base, '≤ 1.5×', c.s / c.base <= 1.5, `time ratio; baseline: tar -x of the ${mib(ver.layerBytes, 0)} gzip layer + tar -c | zstd -T2 -3 of the tree; ${each}`),
    row(`convert ${v}: peak RSS`, mib(c.rss, 0), '', null, '≤ 512 MiB', c.rss <= 512 * MiB, '/usr/bin/time %M'),
  ];
}

/** The synthetic image's part of the benchmark; resolves with its rows. */
async function syntheticBench(opts: ScaleBenchOptions, log: (m: string) => void): Promise<ScaleRow[]> {
  const s = shapeOf(opts);
  const reads = opts.reads ?? 1000;
  const runs = opts.runs ?? (opts.quick ? 3 : 1);
  const { v1, v2 } = await scaleImages(s, log);
  const rows: ScaleRow[] = [];
  const size = `${s.name}: ${v1.entries.toLocaleString('en')} entries, ${mib(v1.contentBytes, 0)} of files`;
  const work = await fsp.mkdtemp(path.join(packageRoot(), '.cache', 'bench', 'scale', 'run-'));
  let env: D4fsEnv | undefined;
  try {
    // -- 1. convert vs tar -x + zstd -T2 -3 --------------------------------------
    const cdimg: Record<'v1' | 'v2', string> = { v1: path.join(work, 'v1.cdimg'), v2: path.join(work, 'v2.cdimg') };
    const conv: Record<string, Converted> = {};
    const failures: string[] = [];
    for (const [v, ver] of [['v1', v1], ['v2', v2]] as const) {
      conv[v] = await measureConvert(v, ver, cdimg[v], work, runs, failures, log);
      rows.push(...convertRows(v, ver, conv[v], size, runs));
    }

    // -- 2. sizes ------------------------------------------------------------------
    rows.push(...(await sizeRows('v1', cdimg.v1, v1, v1.entries, conv.v1.entries)));

    // -- 3. diff ------------------------------------------------------------------
    const delta = path.join(work, 'v1-v2.cdimg');
    log('cdimg diff v1 → v2');
    const d = await timedRun(process.execPath, [CTR_CLI_JS, 'cdimg', 'diff', '--old', cdimg.v1, '--new', cdimg.v2, '--out', delta, '--json', '--no-progress']);
    const di = await indexLens(delta);
    rows.push(row('cdimg diff v1 → v2: time', secs(d.s), `${secs(conv.v2.s)} convert v2`, d.s / conv.v2.s, '≤ 0.5×', d.s / conv.v2.s <= 0.5, `time ratio; ${s.edits} small files edited, ${s.bigEdits} edits in a ${mib(s.bigSize, 0)} text file`));
    rows.push(row('cdimg diff: peak RSS', mib(d.rss, 0), '', null, '≤ 1 GiB', d.rss <= GiB, '/usr/bin/time %M'));
    rows.push(
      row(
        'delta size',
        mib(di.fileSize, 2),
        `${mib(v2.layerBytes)} gzip layer of v2`,
        di.fileSize / v2.layerBytes,
        '≤ 0.5 MiB',
        di.fileSize <= 0.5 * MiB,
        `of which index ${kib(di.stored)} stored (raw ${kib(di.raw)})`,
      ),
    );

    // -- 4. load, FUSE manager, cold reads ----------------------------------------
    log('private containerd + d4fs snapshotter');
    env = await startD4fsEnv({ logLevel: 'warn' });
    const cliEnv = { ...process.env, D4FS_STORE: env.store };
    const addr = ['--address', env.containerd.address];
    // the snapshotter starts its FUSE manager with itself: load as on a machine where it has been up
    for (const until = now() + 30; ; await new Promise((r) => setTimeout(r, 50))) {
      if (await env.manager.ping(1000).then(() => true, () => false)) break;
      if (now() > until) throw new Error(`the FUSE manager did not start:\n${env.logs()}`);
    }
    log('load v1');
    const loadStart = now();
    const l1 = await timedRun(process.execPath, [CTR_CLI_JS, 'load', '--image', 'scale:1', '--cdimg', cdimg.v1, '--json', ...addr], cliEnv);
    const id1 = (JSON.parse(l1.stdout) as { imageId: string }).imageId;
    rows.push(row('ctr-cli load v1 (full .cdimg)', secs(l1.s), '', null, '≤ 1 s', l1.s <= 1, `${mib((await fsp.stat(cdimg.v1)).size, 0)} file into the store + containerd records + remote snapshot (mounted lazily: see the next row)`));
    rows.push(row('ctr-cli load v1: peak RSS', mib(l1.rss, 0), '', null, '≤ 256 MiB', l1.rss <= 256 * MiB, '/usr/bin/time %M'));
    const mountpoint = async (imageId: string): Promise<string> => {
      let mp = '';
      await eventually(async () => !!(mp = (await env!.manager.list()).find((m) => m.imageId === imageId)?.mountpoint ?? ''), 30_000, `a FUSE mount of ${imageId}`);
      return mp;
    };
    const mp1 = await mountpoint(id1);
    // the snapshot is mounted lazily (src/fuse/manager.ts): a check waits until the mount serves
    await env.manager.check(mp1, 120_000);
    const servingS = now() - loadStart;
    rows.push(row('v1 mount serving, from the start of load', secs(servingS), '', null, '', null, 'the manager opened and checked the chain (index against the root digest, decoded, validated) after load returned; requests before wait for it'));
    if (!env.d4fsMounts().includes(mp1)) throw new Error(`${mp1} is not a d4fs FUSE mount: ${env.d4fsMounts().join(', ')}`);
    const mgr = env.managerPid();
    if (mgr === undefined) throw new Error(`no FUSE manager runs:\n${env.logs()}`);
    const binding = (await env.manager.ping()).binding ?? 'fuse-native';
    const rssAtMount = rssOf(mgr);
    // the manager collects and trims a moment (1 s) after each mount (src/fuse/manager.ts reclaimSoon)
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const rssMounted = rssOf(mgr);
    rows.push(row('FUSE manager RSS after the mount of v1', mib(rssMounted.rss, 0), '', null, '≤ 256 MiB', rssMounted.rss <= 256 * MiB, `VmRSS ${SETTLE_MS / 1000} s after the mount was listed (${mib(rssAtMount.rss, 0)} when listed; VmHWM ${mib(rssMounted.hwm, 0)}); FUSE binding ${binding}`));

    // a fixed seeded selection of small files across the directories
    const sel = prng(s.seed + 2);
    const small: string[] = [];
    for (let i = 0; i < reads; i++) small.push(smallRel(s, Math.floor(sel() * s.dirs), Math.floor(sel() * s.filesPerDir)));
    const bigText = bigRel('text', 0);
    // The first reads after a mount wait for the worker threads to start: timed on their own,
    // 8 small files outside the selection, 2 at a time.
    const chosen = new Set(small);
    const warm: string[] = [];
    for (let k = 0; warm.length < 8; k += 7919) {
      const rel = smallRel(s, Math.floor(k / s.filesPerDir) % s.dirs, k % s.filesPerDir);
      if (!chosen.has(rel)) warm.push(rel);
    }
    const t0 = now();
    for (let i = 0; i < warm.length; i += 2) await Promise.all(warm.slice(i, i + 2).map((r) => readFiles([path.join(mp1, r)])));
    const warmS = now() - t0;
    rows.push(row('first reads after the mount (8 small files, 2 at a time)', secs(warmS), '', null, '', null, `the first contents after the mount (worker threads start); not part of the cold reads below`));
    log('cold reads through the mount');
    const fr = await coldReads(mp1, small, bigText);
    const rssAtReads = rssOf(mgr);
    // the manager collects and trims once its pool is idle after a burst of builds (reclaimSoon)
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const afterReads = rssOf(mgr);
    log('cold reads of the ext4 tree');
    const er = await coldReads(v1.tree, small, bigText);
    if (fr.smallBytes !== er.smallBytes || fr.bigBytes !== er.bigBytes) throw new Error(`the mount read ${fr.smallBytes}+${fr.bigBytes} bytes, ext4 ${er.smallBytes}+${er.bigBytes}`);
    const perFile = (x: number): string => `${((x / reads) * 1000).toFixed(2)} ms/file`;
    const dist = (p: { med: number; p90: number; max: number }): string => `median ${(p.med * 1000).toFixed(2)}, p90 ${(p.p90 * 1000).toFixed(2)}, max ${(p.max * 1000).toFixed(1)} ms`;
    rows.push(
      row(
        `cold read of ${reads} small files`,
        perFile(fr.smallS),
        `${perFile(er.smallS)} ext4`,
        fr.smallS / er.smallS,
        '≤ 1.5×',
        fr.smallS / er.smallS <= 1.5,
        `time ratio; after drop_caches; seeded selection across the directories, ${kib(fr.smallBytes)}; small contents are decoded in memory by the serving thread, larger ones built by the workers into the content cache; per file d4fs ${dist(fr.per)}; ext4 ${dist(er.per)}`,
      ),
    );
    rows.push(row('cold find of the whole tree', secs(fr.findS), `${secs(er.findS)} ext4`, fr.findS / er.findS, '≤ 2×', fr.findS / er.findS <= 2, `time ratio; after drop_caches; ${fr.findEntries} entries through the mount, ${er.findEntries} on ext4`));
    rows.push(row('cold find -ls of the whole tree', secs(fr.findLsS), `${secs(er.findLsS)} ext4`, fr.findLsS / er.findLsS, '', null, 'time ratio; after drop_caches; the walk with an lstat of every entry (readdirplus attributes or lookups: see native/fuse3 struct listing)'));
    const mbs = (b: number, t: number): string => `${(b / MiB / t).toFixed(0)} MiB/s`;
    const seqRatio = er.bigS / fr.bigS;
    rows.push(row(`cold sequential read of the ${mib(s.bigSize, 0)} text file`, mbs(fr.bigBytes, fr.bigS), `${mbs(er.bigBytes, er.bigS)} ext4`, seqRatio, '≥ 0.7×', seqRatio >= 0.7, 'throughput ratio; after drop_caches; 1 MiB reads'));
    rows.push(row('FUSE manager RSS after the reads', mib(afterReads.rss, 0), '', null, '≤ 256 MiB', afterReads.rss <= 256 * MiB, `VmRSS ${SETTLE_MS / 1000} s after the reads (${mib(rssAtReads.rss, 0)} right after); peak so far (VmHWM) ${mib(afterReads.hwm, 0)}`));
    // worker threads beyond the first stop after a minute without work (src/fuse/pool.ts)
    log(`${IDLE_S} s idle`);
    await new Promise((r) => setTimeout(r, IDLE_S * 1000));
    const idle1 = rssOf(mgr);
    rows.push(row(`FUSE manager RSS ${IDLE_S} s later`, mib(idle1.rss, 0), '', null, '≤ 256 MiB', idle1.rss <= 256 * MiB, 'VmRSS, idle (extra worker threads stop after 60 s without work)'));

    log('load the v1 → v2 delta');
    const before2 = rssOf(mgr);
    const l2 = await timedRun(process.execPath, [CTR_CLI_JS, 'load', '--image', 'scale:2', '--cdimg', delta, '--json', ...addr], cliEnv);
    const id2 = (JSON.parse(l2.stdout) as { imageId: string }).imageId;
    const mp2 = await mountpoint(id2);
    // one small read makes the mount serve (and the prefetch of the update, if any, settle)
    await readFiles([path.join(mp2, small[0])]);
    await eventually(async () => (await env!.manager.stats()).prefetch.pending === 0, 600_000, 'the prefetch to finish');
    const after2 = rssOf(mgr);
    const st = await env.manager.stats();
    log(`${IDLE_S} s idle`);
    await new Promise((r) => setTimeout(r, IDLE_S * 1000));
    const idle2 = rssOf(mgr);
    rows.push(row('FUSE manager RSS added by v2 (delta), right after its load', mib(after2.rss - before2.rss, 0), '', null, '', null, `VmRSS ${mib(before2.rss, 0)} → ${mib(after2.rss, 0)}, with the prefetch of the update done`));
    const added = idle2.rss - idle1.rss;
    rows.push(
      row(
        `FUSE manager RSS added by v2 (delta), both idle ${IDLE_S} s`,
        mib(added, 0),
        '',
        null,
        '≤ 64 MiB',
        added <= 64 * MiB,
        `VmRSS ${mib(idle1.rss, 0)} → ${mib(idle2.rss, 0)} (VmHWM ${mib(idle2.hwm, 0)}); load of the delta ${secs(l2.s)}, ${mib(l2.rss, 0)} peak; prefetch built ${st.prefetch.built} contents (${mib(st.prefetch.bytes, 1)})`,
      ),
    );
    if (failures.length) rows.push(row('failed attempts (tried again)', String(failures.length), '', null, '', null, failures.join('; ')));
    return rows;
  } finally {
    await env?.stop().catch((e: unknown) => log(`stopping the environment: ${(e as Error).message}`));
    await fsp.rm(work, { recursive: true, force: true });
  }
}

// --- the real image: a Node application's node_modules --------------------------

/** Bumped when the corpus or how it is made changes, so cached trees are made again. */
const NODE_MODULES_VERSION = 1;
/**
 * v1's dependencies, exact versions: a React + MUI front end with its build, lint and test tools
 * and a back end on aws-sdk v2 (about 610 packages with what they need, ~64,000 files, ~470 MiB).
 */
const NODE_APP_V1: Record<string, string> = {
  react: '18.3.1',
  'react-dom': '18.3.1',
  '@mui/material': '5.15.19',
  '@mui/icons-material': '5.15.19',
  '@emotion/react': '11.11.4',
  '@emotion/styled': '11.11.5',
  'aws-sdk': '2.1630.0',
  typescript: '5.4.4',
  '@babel/core': '7.24.6',
  '@babel/preset-env': '7.24.6',
  '@babel/preset-react': '7.24.6',
  '@babel/preset-typescript': '7.24.6',
  webpack: '5.91.0',
  'webpack-cli': '5.1.4',
  eslint: '8.57.0',
  rxjs: '7.8.1',
  lodash: '4.17.21',
  'date-fns': '2.30.0',
  'core-js': '3.37.1',
  jest: '29.7.0',
  moment: '2.30.1',
};
/** v2: an `npm update` of five of them to their next patch or minor release, installed from v1's lockfile. */
const NODE_APP_UPDATES: Record<string, string> = {
  '@mui/material': '5.15.20',
  '@mui/icons-material': '5.15.20',
  'aws-sdk': '2.1631.0',
  typescript: '5.4.5',
  webpack: '5.92.0',
};
/** Where the application lives in the image. */
const NODE_APP_DIR = 'app';

/** The corpus could not be made (no registry, npm failed): this image is skipped, the others run. */
class CorpusError extends Error {}

/** Runs npm with `args`; a CorpusError with the end of its output when it fails. */
async function npm(args: string[], cwd: string, timeoutMs: number): Promise<string> {
  // what a calling npm (npm run …) says of its own package and prefix is not for this npm (its registry and cache settings are)
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_(package_|lifecycle_|config_(local_|global_)?prefix$)/i.test(k)));
  try {
    return (await execFileP('npm', args, { cwd, env, timeout: timeoutMs, maxBuffer: 64 * MiB })).stdout;
  } catch (e) {
    const x = e as { stderr?: string; message: string; killed?: boolean };
    const lines = (x.stderr || x.message).trim().split('\n');
    // npm's "npm error code …" and "… failed, reason: …" lines say why; else the last lines
    const why = lines.filter((l) => /^npm (error|ERR!) code |reason: |^npm (error|ERR!) 40\d/.test(l));
    throw new CorpusError(`npm ${args.join(' ')}${x.killed ? ` (timed out after ${timeoutMs / 1000} s)` : ''}: ${(why.length ? why : lines.slice(-4)).join(' / ')}`);
  }
}

/**
 * Installs `deps` (exact versions) into DIR/app of `tree` with `npm install --ignore-scripts`; with
 * `lockfile`, starting from that package-lock.json (as `npm update` would: only what the new versions
 * need changes). Checks that the named packages got their versions.
 */
async function npmApp(tree: string, deps: Record<string, string>, lockfile?: string): Promise<{ entries: number; contentBytes: number }> {
  const app = path.join(tree, NODE_APP_DIR);
  await fsp.mkdir(app, { recursive: true });
  const pkg = { name: 'scale-app', version: '1.0.0', private: true, dependencies: Object.fromEntries(Object.entries(deps).sort(([a], [b]) => (a < b ? -1 : 1))) };
  await fsp.writeFile(path.join(app, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');
  if (lockfile) await fsp.copyFile(lockfile, path.join(app, 'package-lock.json'));
  await npm(['ping', '--fetch-retries=0', '--fetch-timeout=20000'], app, 60_000).catch((e: unknown) => {
    throw new CorpusError(`the npm registry is not reachable (${(e as Error).message})`);
  });
  await npm(['install', '--ignore-scripts', '--no-audit', '--no-fund', '--no-update-notifier', '--prefix', app], app, 1_800_000);
  for (const [name, version] of Object.entries(deps)) {
    const got = (JSON.parse(await fsp.readFile(path.join(app, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
    if (got !== version) throw new CorpusError(`npm installed ${name}@${got}, not ${version}`);
  }
  const t = await listTree(tree);
  return { entries: t.entries, contentBytes: t.contentBytes };
}

/** One entry of a listed tree. */
interface TreeEntry {
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
}

/** Every entry of `root` by relative path (root excluded from the map), with counts; entries count the root. */
async function listTree(root: string): Promise<{ map: Map<string, TreeEntry>; entries: number; files: number; dirs: number; symlinks: number; contentBytes: number }> {
  const map = new Map<string, TreeEntry>();
  let files = 0;
  let dirs = 1;
  let symlinks = 0;
  let contentBytes = 0;
  const stack = [''];
  while (stack.length) {
    const d = stack.pop()!;
    for (const e of await fsp.readdir(path.join(root, d), { withFileTypes: true })) {
      const rel = d ? `${d}/${e.name}` : e.name;
      if (e.isDirectory()) {
        dirs++;
        stack.push(rel);
        map.set(rel, { type: 'dir', size: 0 });
      } else if (e.isFile()) {
        const { size } = await fsp.lstat(path.join(root, rel));
        files++;
        contentBytes += size;
        map.set(rel, { type: 'file', size });
      } else if (e.isSymbolicLink()) {
        symlinks++;
        map.set(rel, { type: 'symlink', size: 0 });
      } else map.set(rel, { type: 'other', size: 0 });
    }
  }
  return { map, entries: map.size + 1, files, dirs, symlinks, contentBytes };
}

/** Whether two files hold the same bytes (sizes already equal). */
async function sameContent(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([fsp.readFile(a), fsp.readFile(b)]);
  return x.equals(y);
}

/** Runs `fn` over `items`, `limit` at a time. */
async function eachLimit<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

/** The package a path under node_modules belongs to ("@scope/name" or "name"; the innermost one). */
function packageOf(rel: string): string {
  const parts = rel.split('/');
  const at = parts.lastIndexOf('node_modules');
  if (at < 0 || at === parts.length - 1) return rel;
  const rest = parts.slice(at + 1);
  return rest[0].startsWith('@') && rest.length > 2 ? `${rest[0]}/${rest[1]}` : rest.length > 1 ? rest[0] : `node_modules/${rest[0]}`;
}

/** The baseline of the node_modules delta, and what changed between the versions. */
interface Baseline {
  /** Sum over the changed and new files of their smallest patch (bytes). */
  sum: number;
  /** The same with zstd only, with xdelta3 only (zstd for new files). */
  zstdSum: number;
  xdeltaSum: number;
  /** Regular files changed (same path), their bytes in v2; new; gone. */
  changed: number;
  changedBytes: number;
  added: number;
  addedBytes: number;
  removed: number;
  /** Changed or new files by package. */
  byPackage: [string, number][];
  /** Whether xdelta3 was there. */
  xdelta: boolean;
  /** Seconds to compare the trees, to make the patches. */
  compareS: number;
  patchS: number;
  /** When it was measured, when read from the cache. */
  cached?: string;
}

/**
 * The baseline of the delta: for every regular file of v2 whose content differs from v1's at the same
 * path, the smaller of `zstd -19 --patch-from=old` and `xdelta3 -9 -e -s old` (zstd only without
 * xdelta3); for a regular file with no regular file at its path in v1, its `zstd -19` size. Two at a time.
 */
async function patchBaseline(
  t1: Map<string, TreeEntry>,
  t2: Map<string, TreeEntry>,
  root1: string,
  root2: string,
  work: string,
): Promise<Baseline> {
  const t0 = now();
  const changed: string[] = [];
  const added: string[] = [];
  let changedBytes = 0;
  let addedBytes = 0;
  const same: string[] = [];
  for (const [rel, e] of t2) {
    if (e.type !== 'file') continue;
    const o = t1.get(rel);
    if (o?.type !== 'file') {
      added.push(rel);
      addedBytes += e.size;
    } else if (o.size !== e.size) {
      changed.push(rel);
      changedBytes += e.size;
    } else same.push(rel);
  }
  // files of the same size: compared byte for byte, 8 at a time (the reads overlap)
  await eachLimit(same, 8, async (rel) => {
    if (await sameContent(path.join(root1, rel), path.join(root2, rel))) return;
    changed.push(rel);
    changedBytes += t2.get(rel)!.size;
  });
  changed.sort();
  let removed = 0;
  for (const [rel, e] of t1) if (e.type === 'file' && t2.get(rel)?.type !== 'file') removed++;
  const byPackage = new Map<string, number>();
  for (const rel of [...changed, ...added]) byPackage.set(packageOf(rel), (byPackage.get(packageOf(rel)) ?? 0) + 1);
  const compareS = now() - t0;
  const xdelta = await have('xdelta3');
  const tmp = path.join(work, 'patches');
  await fsp.mkdir(tmp, { recursive: true });
  let sum = 0;
  let zstdSum = 0;
  let xdeltaSum = 0;
  let n = 0;
  const sizeOf = async (f: string): Promise<number> => (await fsp.stat(f)).size;
  await eachLimit([...changed.map((rel) => ({ rel, old: true })), ...added.map((rel) => ({ rel, old: false }))], 2, async ({ rel, old }) => {
    const k = n++;
    const nw = path.join(root2, rel);
    const zOut = path.join(tmp, `${k}.zst`);
    if (!old) {
      await execFileP('zstd', ['-19', '-q', '-f', nw, '-o', zOut]);
      const z = await sizeOf(zOut);
      sum += z;
      zstdSum += z;
      xdeltaSum += z;
    } else {
      const od = path.join(root1, rel);
      await execFileP('zstd', ['-19', '-q', '-f', `--patch-from=${od}`, nw, '-o', zOut]);
      const z = await sizeOf(zOut);
      let x = Infinity;
      if (xdelta) {
        const xOut = path.join(tmp, `${k}.xd`);
        const oldSize = t1.get(rel)!.size;
        await execFileP('xdelta3', ['-9', '-e', '-f', ...(oldSize > 64 * MiB ? ['-B', String(oldSize)] : []), '-s', od, nw, xOut]);
        x = await sizeOf(xOut);
        await fsp.rm(xOut, { force: true });
      }
      sum += Math.min(z, x);
      zstdSum += z;
      xdeltaSum += Number.isFinite(x) ? x : z;
    }
    await fsp.rm(zOut, { force: true });
  });
  await fsp.rm(tmp, { recursive: true, force: true });
  return { sum, zstdSum, xdeltaSum, changed: changed.length, changedBytes, added: added.length, addedBytes, removed, byPackage: [...byPackage.entries()], xdelta, compareS, patchS: now() - t0 - compareS };
}

/** Bumped when the baseline's method changes. */
const BASELINE_VERSION = 1;

/**
 * The baseline, measured once per corpus and tool versions and cached next to the trees (it is a
 * function of them; the patches of the big changed files take a minute on a busy machine).
 */
async function cachedBaseline(measure: () => Promise<Baseline>, log: (m: string) => void): Promise<Baseline> {
  const file = path.join(packageRoot(), '.cache', 'bench', 'scale', 'node_modules', 'baseline.json');
  const version = async (cmd: string, arg: string): Promise<string> =>
    execFileP(cmd, [arg]).then(
      (r) => (r.stdout + r.stderr).trim().split('\n')[0],
      () => 'absent',
    );
  const key = JSON.stringify({ BASELINE_VERSION, NODE_MODULES_VERSION, NODE_APP_V1, NODE_APP_UPDATES, zstd: await version('zstd', '--version'), xdelta3: await version('xdelta3', '-V') });
  try {
    const c = JSON.parse(await fsp.readFile(file, 'utf8')) as { key: string; at: string; b: Baseline };
    if (c.key === key) {
      log('node_modules: the baseline from the cache');
      return { ...c.b, cached: c.at };
    }
  } catch {
    /* measure it */
  }
  log('node_modules: per-file patches of the changed contents (zstd -19 --patch-from, xdelta3 -9)');
  const b = await measure();
  await fsp.writeFile(file, JSON.stringify({ key, at: new Date().toISOString(), b }));
  return b;
}

/** The two versions of the node_modules image, installed once and cached under .cache/bench/scale/node_modules. */
async function nodeModulesImages(log: (m: string) => void): Promise<{ v1: Version; v2: Version }> {
  const dir = path.join(packageRoot(), '.cache', 'bench', 'scale', 'node_modules');
  const key = JSON.stringify({ NODE_MODULES_VERSION, NODE_APP_V1, NODE_APP_UPDATES });
  const v1 = await cachedVersion(dir, key, 'v1', (tree) => npmApp(tree, NODE_APP_V1), log);
  const v2 = await cachedVersion(dir, key, 'v2', (tree) => npmApp(tree, { ...NODE_APP_V1, ...NODE_APP_UPDATES }, path.join(v1.tree, NODE_APP_DIR, 'package-lock.json')), log);
  return { v1, v2 };
}

/** The node_modules image's part of the benchmark: corpus, convert, sizes, diff against the sum of per-file patches. */
async function nodeModulesBench(opts: ScaleBenchOptions, log: (m: string) => void): Promise<ScaleRow[]> {
  const tag = (r: ScaleRow): ScaleRow => ({ ...r, image: 'node_modules' });
  let images: { v1: Version; v2: Version };
  try {
    images = await nodeModulesImages(log);
  } catch (e) {
    if (!(e instanceof CorpusError)) throw e;
    log(`node_modules image skipped: ${e.message}`);
    return [tag(row('node_modules image', 'skipped', '', null, '', null, `could not be installed, so not measured: ${e.message.replace(/\|/g, '\\|')}`))];
  }
  const { v1, v2 } = images;
  // the image is small enough for medians of 3 (the machine is shared: single runs are noisy)
  const runs = opts.runs ?? 3;
  const rows: ScaleRow[] = [];
  const work = await fsp.mkdtemp(path.join(packageRoot(), '.cache', 'bench', 'scale', 'run-nm-'));
  try {
    log('node_modules: listing both trees');
    const [t1, t2] = await Promise.all([listTree(v1.tree), listTree(v2.tree)]);
    for (const [v, t, deps] of [
      ['v1', t1, NODE_APP_V1],
      ['v2', t2, { ...NODE_APP_V1, ...NODE_APP_UPDATES }],
    ] as const) {
      // a package: a directory node_modules/NAME or node_modules/@SCOPE/NAME with a package.json
      const pkgs = [...t.map.entries()].filter(([r, e]) => e.type === 'dir' && /(^|\/)node_modules\/(@[^/]+\/)?[^/@.][^/]*$/.test(r) && t.map.get(`${r}/package.json`)?.type === 'file').length;
      rows.push(
        row(
          `${v}: files`,
          t.files.toLocaleString('en'),
          '',
          null,
          '≥ 50,000',
          t.files >= 50_000,
          `${t.entries.toLocaleString('en')} entries (${t.dirs.toLocaleString('en')} directories, ${t.symlinks} symlinks) in /${NODE_APP_DIR}, ${mib(t.contentBytes, 0)} of files, ${pkgs} installed packages from ${Object.keys(deps).length} dependencies`,
        ),
      );
    }
    const size = `node_modules: ${t2.entries.toLocaleString('en')} entries, ${mib(t2.contentBytes, 0)} of files`;
    // -- convert ---------------------------------------------------------------------
    const cdimg = { v1: path.join(work, 'v1.cdimg'), v2: path.join(work, 'v2.cdimg') };
    const failures: string[] = [];
    const conv: Record<string, Converted> = {};
    for (const [v, ver] of [['v1', v1], ['v2', v2]] as const) {
      conv[v] = await measureConvert(`node_modules-${v}`, ver, cdimg[v], work, runs, failures, log);
      rows.push(...convertRows(v, ver, conv[v], v === 'v2' ? size : 'node_modules', runs));
    }
    // -- sizes -----------------------------------------------------------------------
    rows.push(...(await sizeRows('v2', cdimg.v2, v2, t2.entries, conv.v2.entries)));
    // -- diff ------------------------------------------------------------------------
    const delta = path.join(work, 'v1-v2.cdimg');
    const diffs: { s: number; rss: number }[] = [];
    for (let i = 0; i < runs; i++) {
      log('node_modules: cdimg diff v1 → v2');
      await fsp.rm(delta, { force: true });
      diffs.push(await timedRun(process.execPath, [CTR_CLI_JS, 'cdimg', 'diff', '--old', cdimg.v1, '--new', cdimg.v2, '--out', delta, '--json', '--no-progress']));
    }
    const d = { s: median(diffs.map((x) => x.s)), rss: Math.max(...diffs.map((x) => x.rss)) };
    const di = await indexLens(delta);
    const b = await cachedBaseline(() => patchBaseline(t1.map, t2.map, v1.tree, v2.tree, work), log);
    const updates = Object.entries(NODE_APP_UPDATES)
      .map(([n, ver]) => `${n} ${NODE_APP_V1[n]} → ${ver}`)
      .join(', ');
    rows.push(row('cdimg diff v1 → v2: time', secs(d.s), `${secs(conv.v2.s)} convert v2`, d.s / conv.v2.s, '≤ 0.5×', d.s / conv.v2.s <= 0.5, `time ratio${runs > 1 ? `, medians of ${runs} runs (diff ${diffs.map((x) => x.s.toFixed(2)).join(', ')} s)` : ''}; npm update of ${updates}`));
    rows.push(row('cdimg diff: peak RSS', mib(d.rss, 0), '', null, '≤ 1 GiB', d.rss <= GiB, '/usr/bin/time %M'));
    rows.push(
      row(
        'delta size',
        kib(di.fileSize),
        `${kib(b.sum)} sum of the changed contents' patches`,
        di.fileSize / b.sum,
        '≤ 1.2×',
        di.fileSize <= 1.2 * b.sum,
        `size ratio; delta's index ${kib(di.stored)} stored (raw ${kib(di.raw)}); baseline per file: min(zstd -19 --patch-from, ${b.xdelta ? 'xdelta3 -9' : 'no xdelta3 on this machine: zstd only'}), zstd -19 for new files; zstd alone ${kib(b.zstdSum)}${b.xdelta ? `, xdelta3 alone ${kib(b.xdeltaSum)}` : ''}; ${mib(v2.layerBytes)} gzip layer of v2`,
      ),
    );
    const top = [...b.byPackage]
      .sort((x, y) => y[1] - x[1])
      .map(([p, c]) => `${p} ${c}`)
      .join(', ');
    rows.push(
      row(
        'regular files changed / added / removed',
        `${b.changed} / ${b.added} / ${b.removed}`,
        '',
        null,
        '',
        null,
        `${mib(b.changedBytes, 1)} changed and ${kib(b.addedBytes)} new contents; changed or new by package: ${top}; baseline: trees compared in ${secs(b.compareS)}, patches made in ${secs(b.patchS)} (2 at a time)${b.cached ? `, cached: measured ${b.cached}` : ''}`,
      ),
    );
    if (failures.length) rows.push(row('failed attempts (tried again)', String(failures.length), '', null, '', null, failures.join('; ')));
    return rows.map(tag);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/**
 * Runs the benchmark; resolves with the table's rows (the node_modules image's with `image` set).
 * `opts.only` (default $D4FS_BENCH_SCALE_ONLY) runs one image: 'synthetic' or 'node_modules'.
 */
export async function scaleBench(opts: ScaleBenchOptions = {}): Promise<ScaleRow[]> {
  const log = (m: string): void => void process.stderr.write(`scale: ${m}\n`);
  const only = opts.only ?? process.env.D4FS_BENCH_SCALE_ONLY ?? '';
  if (only && only !== 'synthetic' && only !== 'node_modules') throw new Error(`D4FS_BENCH_SCALE_ONLY=${only}: synthetic or node_modules`);
  const rows: ScaleRow[] = [];
  if (only !== 'node_modules') rows.push(...(await syntheticBench(opts, log)));
  if (only !== 'synthetic') {
    // a failure here must not lose the synthetic image's table (it took long): a MISS row with the error
    const nm = await nodeModulesBench(opts, log).catch((e: unknown): ScaleRow[] => {
      if (only === 'node_modules') throw e;
      const msg = ((e as Error).stack ?? String(e)).split('\n').slice(0, 3).join(' / ');
      log(`node_modules image failed: ${msg}`);
      return [{ ...row('node_modules image', 'failed', '', null, 'measured', false, msg.replace(/\|/g, '\\|')), image: 'node_modules' }];
    });
    rows.push(...nm);
  }
  return rows;
}

/** Prints the rows as markdown tables with targets: the synthetic image's, then the node_modules image's. */
export function printScaleTable(rows: ScaleRow[]): void {
  const synthetic = rows.filter((r) => !r.image);
  const nm = rows.filter((r) => r.image === 'node_modules');
  if (synthetic.length)
    printTargetTable(
      '## scale: a big synthetic image (1,500 × 100 small text files + 256 MiB random and text files; --quick: 1/10; --scale-gib N: more big files), same-run baselines',
      'targets: convert ≤ 1.5× tar -x + zstd -T2, RSS ≤ 512 MiB; index ≤ 60 B/entry; diff ≤ 0.5× convert, delta ≤ 0.5 MiB, RSS ≤ 1 GiB; load ≤ 1 s, ≤ 256 MiB; FUSE manager ≤ 256 MiB, +≤ 64 MiB per image; cold reads vs ext4',
      synthetic,
    );
  if (nm.length)
    printTargetTable(
      `## scale: a real image with many files (/${NODE_APP_DIR}: npm install of ${Object.keys(NODE_APP_V1).length} pinned packages; v2 = npm update of ${Object.keys(NODE_APP_UPDATES).length} of them), same-run baselines`,
      "targets: ≥ 50,000 files; convert ≤ 1.5× tar -x + zstd -T2, RSS ≤ 512 MiB; index ≤ 60 B/entry; diff ≤ 0.5× convert, RSS ≤ 1 GiB; delta ≤ 1.2× the sum of its changed contents' patches",
      nm,
    );
}
