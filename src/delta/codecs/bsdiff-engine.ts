/**
 * The encoders of the bsdiff codec: BSDIFF40's three streams (control, diff, extra),
 * uncompressed, for (base, target). The native encoder (native/bsdiff-sa: libdivsufsort
 * suffix array and a bsdiff-style scan) runs in the calling worker thread with a deadline;
 * bsdiff-node is the fallback when the addon cannot load (its bzip2 output is decoded by
 * ./bzip2.ts). ./bsdiff-container.ts packs the streams; ./bsdiff.ts is the codec.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { D4fsError, corrupt, invalidArgument } from '../../errors';
import { bsdiffSa, bsdiffSaLoadError } from './native';
import { describe, PatchOptions } from './types';

/**
 * Largest base or target (bytes) that is ever given to bsdiff. The native encoder
 * needs base + 4 x base (int32 suffix array) + 2 x target (diff and extra streams) +
 * the control stream, ~8x at this size; bsdiff-node's qsufsort ~17x and it calls exit(1)
 * if malloc fails. Callers split larger files into chunks (see `RECOMMENDED_CHUNK_SIZE`).
 */
export const BSDIFF_MAX_INPUT = 16 * 1024 * 1024;

/** The three streams of a BSDIFF40 patch, decompressed. */
export interface BsdiffStreams {
  newSize: number;
  ctrl: Buffer;
  diff: Buffer;
  extra: Buffer;
}

interface BsdiffNode {
  diffSync(oldFile: string, newFile: string, patchFile: string): void;
  patchSync(oldFile: string, newFile: string, patchFile: string): void;
}

let bsdiffModule: BsdiffNode | undefined;

/** bsdiff-node, loaded on first use (decoding never needs it). */
function bsdiffNode(): BsdiffNode {
  if (!bsdiffModule) bsdiffModule = require('bsdiff-node') as BsdiffNode;
  return bsdiffModule;
}

/** Read BSDIFF40's 8-byte sign-magnitude integer; refuses magnitudes >= 2^48. */
export function readOfft(buf: Buffer, off: number): number {
  const hi = buf.readUInt16LE(off + 6);
  if ((hi & 0x7fff) !== 0) throw corrupt('bsdiff: integer out of range');
  const v = buf.readUIntLE(off, 6);
  return hi & 0x8000 ? -v : v;
}

/**
 * bsdiff-node only (the fallback engine; the native encoder always runs in the calling
 * thread and checks its own deadline, and its longest-match search skips the prefix
 * already known to match, so periodic input is not quadratic for it: 4 MiB of
 * "aaaa..."/"abab..." in ~50 ms). Inputs up to this size (bytes, base and target each)
 * are diffed inside the calling thread; larger ones in a child process that is killed
 * at its deadline. bsdiff's
 * match search is quadratic on long periodic runs (measured: 0.35 s at 256 KiB,
 * 5.5 s at 1 MiB, 140 s at 4 MiB of "aaaa..."/"abab..."), and bsdiff-node calls
 * exit(1) when malloc fails: a child contains both.
 */
export const BSDIFF_INPROCESS_MAX = 256 * 1024;

/**
 * Deadline (ms) for one bsdiff run (native encoder, or bsdiff-node's child process):
 * 5 s plus 1 s per MiB of base + target. Normal inputs need about 0.15 s per MiB with
 * the native encoder (its slowest case, unrelated random data, ~0.5-1 s per MiB of
 * target), so this only stops pathological ones.
 */
export function bsdiffDeadlineMs(baseLength: number, targetLength: number): number {
  return 5000 + Math.ceil((baseLength + targetLength) / (1024 * 1024)) * 1000;
}

/** Script run by the bsdiff child: argv = [node, module, old, new, patch]. */
const BSDIFF_CHILD_SCRIPT = 'require(process.argv[1]).diffSync(process.argv[2], process.argv[3], process.argv[4])';

/**
 * Run bsdiff-node on two buffers (it only works on files: a private directory under
 * os.tmpdir() is created and always removed) and return its BSDIFF40 patch verbatim.
 * Large inputs run in a child process with {@link bsdiffDeadlineMs}; exceeding it
 * throws DEADLINE_EXCEEDED.
 * @internal exported for the benchmark and tests.
 */
export function bsdiffNodeRaw(base: Buffer, target: Buffer, opts: PatchOptions = {}): Buffer {
  const deadlineMs = opts.bsdiffDeadlineMs;
  if (base.length > BSDIFF_MAX_INPUT || target.length > BSDIFF_MAX_INPUT) {
    throw invalidArgument(`bsdiff input above ${BSDIFF_MAX_INPUT} bytes (base ${base.length}, target ${target.length}): chunk it`);
  }
  const dir = fs.mkdtempSync(path.join(opts.tmpDir ?? os.tmpdir(), 'd4fs-bsdiff-'));
  try {
    const oldFile = path.join(dir, 'old');
    const newFile = path.join(dir, 'new');
    const patchFile = path.join(dir, 'patch');
    fs.writeFileSync(oldFile, base, { mode: 0o600 });
    fs.writeFileSync(newFile, target, { mode: 0o600 });
    if (deadlineMs === undefined && base.length <= BSDIFF_INPROCESS_MAX && target.length <= BSDIFF_INPROCESS_MAX) {
      bsdiffNode().diffSync(oldFile, newFile, patchFile);
    } else {
      const timeout = deadlineMs ?? bsdiffDeadlineMs(base.length, target.length);
      const r = spawnSync(process.execPath, ['-e', BSDIFF_CHILD_SCRIPT, require.resolve('bsdiff-node'), oldFile, newFile, patchFile], {
        timeout,
        killSignal: 'SIGKILL',
        stdio: ['ignore', 'ignore', 'pipe'],
        maxBuffer: 64 * 1024,
      });
      if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') {
        throw new D4fsError('DEADLINE_EXCEEDED', `bsdiff exceeded its ${timeout} ms deadline (base ${base.length}, target ${target.length} bytes)`);
      }
      if (r.error || r.status !== 0) {
        const why = r.error ? describe(r.error) : r.signal ? `signal ${r.signal}` : `exit ${r.status}: ${String(r.stderr).trim().slice(0, 500)}`;
        throw new D4fsError('INTERNAL', `bsdiff failed: ${why}`);
      }
    }
    return fs.readFileSync(patchFile);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Split bsdiff-node's BSDIFF40 output into its decompressed streams. */
export function parseBsdiff40(raw: Buffer): BsdiffStreams {
  // the bzip2 decoder loads on first use: only the fallback encoder needs it
  const { bunzip2 } = require('./bzip2') as typeof import('./bzip2');
  if (raw.length < 32 || raw.toString('latin1', 0, 8) !== 'BSDIFF40') throw corrupt('bsdiff: not a BSDIFF40 patch');
  const ctrlLen = readOfft(raw, 8);
  const diffLen = readOfft(raw, 16);
  const newSize = readOfft(raw, 24);
  if (ctrlLen < 0 || diffLen < 0 || newSize < 0 || 32 + ctrlLen + diffLen > raw.length) {
    throw corrupt('bsdiff: bad BSDIFF40 header');
  }
  const ctrl = bunzip2(raw.subarray(32, 32 + ctrlLen), 24 * (newSize + 2));
  const diff = bunzip2(raw.subarray(32 + ctrlLen, 32 + ctrlLen + diffLen), newSize);
  const extra = bunzip2(raw.subarray(32 + ctrlLen + diffLen), newSize);
  return { newSize, ctrl, diff, extra };
}

/** Which encoder makes bsdiff streams here, and why bsdiff-node if it is the fallback. */
export function bsdiffEngine(): { engine: 'bsdiff-sa' | 'bsdiff-node'; detail: string } {
  const sa = bsdiffSa();
  return sa ? { engine: 'bsdiff-sa', detail: sa.version } : { engine: 'bsdiff-node', detail: `bsdiff-sa not loadable: ${bsdiffSaLoadError()}` };
}

/**
 * Threads the native encoder scans one target with by default: the machine's, up to 4. The
 * scan's output does not depend on it (see native/bsdiff-sa), so neither do patches; it
 * lets one large binary, which otherwise sets the pace of a whole diff, use every core.
 */
export function bsdiffThreads(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()));
}

/**
 * BSDIFF40's three uncompressed streams for (base, target). The native encoder runs in
 * the calling thread: it never exits the process, reports out-of-memory as an error,
 * and stops itself at the deadline ({@link bsdiffDeadlineMs} unless
 * `opts.bsdiffDeadlineMs`), which then throws DEADLINE_EXCEEDED. With
 * `opts.bsdiffEngine: 'bsdiff-node'` (or when the addon is missing) bsdiff-node runs as
 * before, in a child process for inputs above {@link BSDIFF_INPROCESS_MAX}.
 * @internal exported for tests and the benchmark.
 */
export function bsdiffStreams(base: Buffer, target: Buffer, opts: PatchOptions = {}): BsdiffStreams {
  if (base.length > BSDIFF_MAX_INPUT || target.length > BSDIFF_MAX_INPUT) {
    throw invalidArgument(`bsdiff input above ${BSDIFF_MAX_INPUT} bytes (base ${base.length}, target ${target.length}): chunk it`);
  }
  const sa = opts.bsdiffEngine === 'bsdiff-node' ? null : bsdiffSa();
  if (!sa) {
    const s = parseBsdiff40(bsdiffNodeRaw(base, target, opts));
    if (s.newSize !== target.length) throw new D4fsError('INTERNAL', 'bsdiff: patch size does not match the target');
    return s;
  }
  const deadline = opts.bsdiffDeadlineMs ?? bsdiffDeadlineMs(base.length, target.length);
  try {
    const r = sa.diff(base, target, { deadlineMs: Math.max(1, deadline), threads: opts.bsdiffThreads ?? bsdiffThreads(), matcher: opts.bsdiffMatcher === 'hash' ? 1 : 0 });
    return { newSize: target.length, ctrl: r.ctrl, diff: r.diff, extra: r.extra };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ETIMEDOUT') {
      throw new D4fsError('DEADLINE_EXCEEDED', `bsdiff exceeded its ${deadline} ms deadline (base ${base.length}, target ${target.length} bytes)`);
    }
    throw new D4fsError('INTERNAL', `bsdiff failed: ${describe(e)}`, { cause: e });
  }
}
