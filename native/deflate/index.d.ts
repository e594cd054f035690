/**
 * The d4fs-deflate addon: deflate encoders whose output is byte for byte another
 * implementation's. d4fs loads it in one module, src/regsync/goflate.ts.
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
