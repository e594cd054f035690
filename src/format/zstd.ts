/**
 * The zstd module of d4fs: every zstd frame and stream of the project goes
 * through here (zstd-napi is imported nowhere else).
 *
 *  - Plain frames of the .cdimg blob section (`zstdFrame`, `zstdFrameInto`,
 *    `zstdUnframe`): content size and checksum, decompression into a buffer of
 *    exactly the expected size, so a hostile frame can never make us allocate
 *    more than the index allows.
 *  - The frames of the delta codecs (src/delta/codecs/): `zstdCompress` (level
 *    clamped; with a raw-content dictionary, zstd's `--patch-from`) and the strict
 *    `zstdDecompressChecked`, which refuses any frame that is not exactly one
 *    canonical frame declaring the expected size, before decoding it.
 *  - Streams of OCI layers (`zstdCompressStream`, `zstdDecompressStream`,
 *    `zstdCompressOneShot`): zstd-napi's high-level API, loaded on first use.
 *
 * Uses zstd-napi's native binding directly (loaded on first use): no JS wrapper
 * to load in every worker, no scratch buffer and trimming copy per frame. One
 * compression and one decompression context per thread serve every caller.
 */
import type * as Binding from 'zstd-napi/binding';
import type * as Napi from 'zstd-napi';
import { corrupt, invalidArgument } from '../errors';

let z: typeof Binding | undefined;
const binding = (): typeof Binding => (z ??= require('zstd-napi/binding') as typeof Binding);

/** Highest level used. Levels 20-22 ("ultra") raise windowLog and chainLog to 27 and need over 1 GiB of encoder memory on large inputs; they are clamped. */
export const ZSTD_MAX_LEVEL = 19;

/** Lowest level used (negative "fast" levels are clamped). */
export const ZSTD_MIN_LEVEL = 1;

/**
 * Largest window of a frame compressed against a dictionary (2^27 = 128 MiB, the default
 * maximum every zstd decoder accepts). When dictionary + data exceed it the encoder still
 * works, but the beginning of the dictionary is out of reach; chunk large contents instead.
 */
export const ZSTD_MAX_WINDOW_LOG = 27;

/** First four bytes (little-endian) of every zstd frame. */
export const ZSTD_FRAME_MAGIC = 0xfd2fb528;

/** First four bytes (little-endian) of a trained zstd dictionary (a raw-content one must not start with them). */
export const ZSTD_DICT_MAGIC = 0xec30a437;

/** `ZSTD_c_forceAttachDict` (ZSTD_c_experimentalParam4) in zstd 1.4.x-1.5.x. */
const ZSTD_C_FORCE_ATTACH_DICT = 1001;
/** `ZSTD_dictForceLoad`: load the dictionary content into the working context, so LDM sees it. */
const ZSTD_DICT_FORCE_LOAD = 3;

/** Supported zstd versions for the experimental `forceAttachDict` parameter (1.4.5 - 1.5.x); decided on first use. */
let forceLoadSupported: boolean | undefined;

/**
 * One compression context per thread, reused. zstd-napi frees native contexts in
 * N-API finalizers, which Node runs only when the event loop turns: creating a context
 * per call inside one long synchronous task (a worker diffing many chunks) grew a
 * benchmark to 19 GB RSS. A reused context keeps its workspace sized for the largest
 * recent job (zstd shrinks it after ~128 smaller uses).
 */
let cctx: Binding.CCtx | undefined;
/** Level the context is set up for plain frames; -1 after any other use. */
let cctxLevel = -1;
let dctx: Binding.DCtx | undefined;

function compressor(level: number): Binding.CCtx {
  const b = binding();
  if (!cctx || cctxLevel !== level) {
    cctx ??= new b.CCtx();
    cctx.reset(b.ResetDirective.parameters);
    cctx.setParameter(b.CParameter.compressionLevel, level);
    cctx.setParameter(b.CParameter.contentSizeFlag, 1);
    cctx.setParameter(b.CParameter.checksumFlag, 1);
    cctxLevel = level;
  }
  return cctx;
}

/** The thread's decompression context (small and stateless between calls). */
function decompressor(): Binding.DCtx {
  if (!dctx) {
    const b = binding();
    dctx = new b.DCtx();
    // Frames made against a dictionary may use windows up to 2^27; single-pass decoding does not allocate the window.
    dctx.setParameter(b.DParameter.windowLogMax, ZSTD_MAX_WINDOW_LOG);
  }
  return dctx;
}

/**
 * Drop this thread's cached contexts (call when a worker goes idle after big jobs; the
 * memory is returned once the event loop runs their finalizers).
 */
export function releaseZstdContexts(): void {
  cctx = undefined;
  cctxLevel = -1;
  dctx = undefined;
}

/** Largest frame `n` bytes can compress to. */
export function zstdBound(n: number): number {
  return binding().compressBound(n);
}

/** Compress `data` as one frame into `dst` (at least zstdBound(data.length) long); returns the frame's length. */
export function zstdFrameInto(dst: Uint8Array, data: Uint8Array, level: number): number {
  return compressor(level).compress2(dst, data);
}

/** One deterministic zstd frame (content size + checksum flags on). */
export function zstdFrame(data: Uint8Array, level: number): Buffer {
  const dst = Buffer.allocUnsafe(zstdBound(data.length));
  const n = zstdFrameInto(dst, data, level);
  return n < dst.length * 0.75 ? Buffer.from(dst.subarray(0, n)) : dst.subarray(0, n);
}

/** Decode a frame that must yield exactly `expectedSize` bytes. */
export function zstdUnframe(frame: Uint8Array, expectedSize: number): Buffer {
  const out = Buffer.allocUnsafe(expectedSize);
  let n: number;
  try {
    n = decompressor().decompress(out, frame);
  } catch (e) {
    throw corrupt(`zstd frame does not decode: ${(e as Error).message}`, e);
  }
  if (n !== expectedSize) throw corrupt(`zstd frame decodes to ${n} bytes, expected ${expectedSize}`);
  return out;
}

/** `level` rounded and clamped to [{@link ZSTD_MIN_LEVEL}, {@link ZSTD_MAX_LEVEL}]. */
export function clampLevel(level: number): number {
  if (!Number.isFinite(level)) throw invalidArgument(`invalid zstd level ${level}`);
  return Math.min(ZSTD_MAX_LEVEL, Math.max(ZSTD_MIN_LEVEL, Math.round(level)));
}

/**
 * One deterministic frame with the content size and a checksum, `level` clamped (see
 * {@link clampLevel}). With a non-empty `dict`: compressed against it as a raw-content
 * dictionary, with a window covering dict + data (at most 2^{@link ZSTD_MAX_WINDOW_LOG})
 * and long-distance matching: what `zstd --patch-from=DICT` produces. Decode such a frame
 * with the same `dict` ({@link zstdDecompressChecked}). `searchLog` (with a dict only): zstd's
 * parameter of that name instead of the level's (fewer candidates per position: faster, larger).
 */
export function zstdCompress(data: Uint8Array, level: number, dict?: Uint8Array, searchLog?: number): Buffer {
  const l = clampLevel(level);
  if (!dict || dict.length === 0) return zstdFrame(data, l);
  if (searchLog !== undefined && !(Number.isInteger(searchLog) && searchLog >= 1 && searchLog <= 26)) throw invalidArgument(`invalid zstd searchLog ${searchLog}`);
  const b = binding();
  const c = (cctx ??= new b.CCtx());
  const P = b.CParameter;
  cctxLevel = -1;
  c.reset(b.ResetDirective.sessionAndParameters);
  try {
    c.setParameter(P.compressionLevel, l);
    c.setParameter(P.contentSizeFlag, 1);
    c.setParameter(P.checksumFlag, 1);
    c.setParameter(P.dictIDFlag, 0);
    c.setParameter(P.nbWorkers, 0);
    const need = Math.ceil(Math.log2(dict.length + data.length + 1));
    c.setParameter(P.windowLog, Math.min(ZSTD_MAX_WINDOW_LOG, Math.max(10, need)));
    c.setParameter(P.enableLongDistanceMatching, 1);
    if (searchLog !== undefined) c.setParameter(P.searchLog, searchLog);
    // Without this zstd attaches or copies a CDict built for the dictionary, which
    // long-distance matching does not search: measured 1.94 MB instead of 656 KB at
    // level 3 on libcrypto.so.3 (src/delta/CODECS.md). Only affects the encoder.
    forceLoadSupported ??= b.versionNumber() >= 10405 && b.versionNumber() < 10600;
    if (forceLoadSupported) c.setParameter(ZSTD_C_FORCE_ATTACH_DICT as Binding.CParameter, ZSTD_DICT_FORCE_LOAD);
    c.loadDictionary(dict);
    const dst = Buffer.allocUnsafe(b.compressBound(data.length));
    const n = c.compress2(dst, data);
    return Buffer.from(dst.subarray(0, n)); // copy: do not pin the oversized buffer
  } finally {
    // frees the dictionary copy and the CDict built from it
    c.reset(b.ResetDirective.sessionAndParameters);
  }
}

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** The content size a frame's header declares (null: not declared); throws when `frame` does not start with a readable frame header. */
export function zstdContentSize(frame: Uint8Array): number | null {
  return binding().getFrameContentSize(frame);
}

/** The content size declared by the header of the zstd frame `frame` starts with; null when it starts with none or declares none. */
export function zstdDeclaredSize(frame: Uint8Array): number | null {
  if (frame.length < 4 || Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength).readUInt32LE(0) !== ZSTD_FRAME_MAGIC) return null;
  try {
    return zstdContentSize(frame);
  } catch {
    return null;
  }
}

/**
 * Check that `frame` is exactly one zstd frame that declares `expectedSize` bytes of
 * content and carries a checksum, without decoding it. Throws CORRUPT otherwise.
 */
export function checkZstdFrame(frame: Uint8Array, expectedSize: number, what: string): void {
  if (frame.length < 9 || Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength).readUInt32LE(0) !== ZSTD_FRAME_MAGIC) {
    throw corrupt(`${what}: not a zstd frame`);
  }
  const fhd = frame[4];
  if ((fhd & 0x04) === 0) throw corrupt(`${what}: zstd frame without checksum`);
  if ((fhd & 0x03) !== 0) throw corrupt(`${what}: zstd frame names a dictionary id`);
  // Bit 4 is "unused" (decoders ignore it, encoders write 0) and bit 3 reserved: refusing
  // them keeps accepted frames canonical, so any altered byte is detected.
  if ((fhd & 0x18) !== 0) throw corrupt(`${what}: zstd frame header has reserved bits set`);
  let declared: number | null;
  let frameLen: number;
  try {
    declared = binding().getFrameContentSize(frame);
    frameLen = binding().findFrameCompressedSize(frame);
  } catch (e) {
    throw corrupt(`${what}: damaged zstd frame: ${describe(e)}`, e);
  }
  if (declared === null) throw corrupt(`${what}: zstd frame without content size`);
  if (declared !== expectedSize) {
    throw corrupt(`${what}: zstd frame declares ${declared} bytes, expected ${expectedSize}`);
  }
  if (frameLen !== frame.length) throw corrupt(`${what}: ${frame.length - frameLen} bytes after the zstd frame`);
}

/**
 * Decode a frame made by {@link zstdCompress} (with the same `dict`, if any) into exactly
 * `expectedSize` bytes, after {@link checkZstdFrame}; damage throws CORRUPT naming `what`.
 */
export function zstdDecompressChecked(frame: Uint8Array, expectedSize: number, what: string, dict?: Uint8Array): Buffer {
  checkZstdFrame(frame, expectedSize, what);
  const out = Buffer.allocUnsafe(expectedSize);
  let n: number;
  try {
    n = dict && dict.length > 0 ? decompressor().decompressUsingDict(out, frame, dict) : decompressor().decompress(out, frame);
  } catch (e) {
    throw corrupt(`${what}: ${describe(e)}`, e);
  }
  if (n !== expectedSize) throw corrupt(`${what}: decoded ${n} bytes, expected ${expectedSize}`);
  return out;
}

// ---------------------------------------------------------------------------
// Streams of OCI layers: zstd-napi's high-level API, loaded on first use
// ---------------------------------------------------------------------------

let napi: typeof Napi | undefined;
const highLevel = (): typeof Napi => (napi ??= require('zstd-napi') as typeof Napi);

/** A streaming decompressor (zstd layers). */
export function zstdDecompressStream(): Napi.DecompressStream {
  return new (highLevel().DecompressStream)();
}

/** A streaming compressor with these parameters (zstd-napi's defaults for the rest). */
export function zstdCompressStream(params: Napi.CompressParameters): Napi.CompressStream {
  return new (highLevel().CompressStream)(params);
}

/** zstd-napi's one-shot `compress` with these parameters (its defaults for the rest: no checksum). */
export function zstdCompressOneShot(data: Uint8Array, params: Napi.CompressParameters): Buffer {
  return highLevel().compress(data, params);
}
