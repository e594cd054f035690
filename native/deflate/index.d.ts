/**
 * The d4fs-deflate addon: deflate encoders whose output is byte for byte another
 * implementation's (Go's compress/flate; klauspost's flate and pgzip; the system's zlib), the
 * reconstruction records, and a fork-free way to run GNU gzip. d4fs loads it in
 * src/regsync/goflate.ts (encoders, records), src/delta/zipmember.ts (zlibRaw) and
 * src/util/process.ts (pipeThrough).
 */

/** An open encoder (opaque). */
export interface GoEncoder {
  readonly __goEncoder: unique symbol;
}

/** A new encoder of Go's compress/flate at `level` (-2 Huffman only, 0 stored, 1-9, -1 = 6); RangeError for others. */
export function goNew(level: number): GoEncoder;
/** Compresses `bytes`; returns the compressed bytes produced so far (often none: output comes in blocks). */
export function goWrite(e: GoEncoder, bytes: Uint8Array): Buffer;
/** Go's Writer.Flush (a sync flush): the pending blocks and an empty stored block. */
export function goFlush(e: GoEncoder): Buffer;
/** Go's Writer.Close: the rest of the stream, final block included; the encoder cannot be used again. */
export function goClose(e: GoEncoder): Buffer;

/** An open klauspost encoder (opaque). */
export interface KpEncoder {
  readonly __kpEncoder: unique symbol;
}

/**
 * A new encoder of klauspost/compress's flate (v1.15.12) at `level` (-2..9; -1 is 5, its default): one
 * stream (`pgzipBlock` 0, what klauspost's gzip writes) or pgzip's blocks of `pgzipBlock` bytes (> 16384).
 * `threads` (pgzip): how many blocks are compressed at once, each in a native thread (0 or absent: one per
 * processor online, at most 16, no more than 64 MiB of blocks held); the output is the same for any number.
 */
export function kpNew(level: number, pgzipBlock: number, threads?: number): KpEncoder;
/** Compresses `bytes`; returns the compressed bytes produced so far. */
export function kpWrite(e: KpEncoder, bytes: Uint8Array): Buffer;
/** Ends the stream: the rest of it; the encoder cannot be used again. */
export function kpClose(e: KpEncoder): Buffer;

/**
 * Raw deflate (window 2^15, default strategy) of `bytes` by the system's zlib (the reference
 * implementation, not Node's fork) at `level` (0-9) and `memLevel` (1-9): the compressed bytes, or,
 * given `expected`, whether they are exactly `expected` (it stops at the first difference).
 */
export function zlibRaw(bytes: Uint8Array, level: number, memLevel: number): Buffer;
export function zlibRaw(bytes: Uint8Array, level: number, memLevel: number, expected: Uint8Array): boolean;

/** An open reconstruction-record decoder (opaque). */
export interface RecDecoder {
  readonly __recDecoder: unique symbol;
}

/**
 * The reconstruction record of a raw deflate body: what rebuilds it exactly from its uncompressed
 * bytes (`size` of them), or, as a string, why the body cannot be recorded (not a deflate stream,
 * data after its end, a construct no encoder writes).
 */
export function recEncode(body: Uint8Array): { record: Buffer; size: number } | string;
/** The deflate stream at the start of `body` (more may follow: the next gzip member): its length in bytes and its inflated size, or why it is not one. */
export function recScan(body: Uint8Array): { consumed: number; size: number } | string;
/** A decoder that rebuilds the body `record` describes, writing at most `maxOut` bytes. */
export function recNew(record: Uint8Array, maxOut: number): RecDecoder;
/** Feeds the next uncompressed bytes; returns body bytes produced so far. Throws (code CORRUPT) when the record does not fit them. */
export function recWrite(d: RecDecoder, bytes: Uint8Array): Buffer;
/** Ends the input: the rest of the body. Throws (code CORRUPT) when the record does not fit the bytes given. */
export function recClose(d: RecDecoder): Buffer;

/**
 * Runs `file` (looked up in PATH) with `args`, `input` on its standard input and its standard error
 * discarded, by posix_spawn (no fork: the cost does not grow with this process's memory); its exit
 * status (-1: killed by a signal) and what it wrote on its standard output. Throws an Error whose
 * `code` is ENOENT (no such program), EFBIG (more than `maxOut` bytes of output: the child is
 * killed), ENOMEM, EACCES or EIO.
 */
export function pipeThrough(file: string, args: string[], input: Uint8Array, maxOut: number): { status: number; stdout: Buffer };
