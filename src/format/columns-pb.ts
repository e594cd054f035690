/**
 * Protobuf plumbing of format version 2's columns (compact.ts): a writer of
 * length-delimited fields (packed varint columns, NUL-separated strings,
 * bytes) and a reader that collects them by field number.
 */
import { corrupt } from '../errors';
import { Writer } from './pb';

const TWO32 = 4294967296;

/**
 * The writer of format version 2's columns (compact.ts): length-delimited
 * fields only, so that a reader collects them with readPbFields.
 */
export class PbWriter extends Writer {
  /** A packed varint column (values up to 2^53); left out when empty, or when every value is 0 and `optional`. */
  packed(field: number, values: number[], optional = false): void {
    if (values.length === 0) return;
    if (optional && values.every((v) => v === 0)) return;
    this.packedAlways(field, values);
  }
  packedAlways(field: number, values: number[]): void {
    this.u32((field << 3) | 2);
    const m = this.begin();
    for (const v of values) {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`column ${field}: ${v} is not a non-negative integer`);
      if (v < TWO32) this.u32(v);
      else this.u64(v % TWO32 >>> 0, Math.floor(v / TWO32) >>> 0);
    }
    this.end(m);
  }
  /** Strings each followed by a NUL (the strings hold none: tree paths and link targets are checked for NULs). */
  nulStrings(field: number, list: string[]): void {
    if (list.length === 0) return;
    this.u32((field << 3) | 2);
    const m = this.begin();
    for (const s of list) {
      if (s.includes('\0')) throw new RangeError(`column ${field}: "${s.replace(/\0/g, '\\0')}" holds a NUL byte`);
      const n = Buffer.byteLength(s);
      (this as Writer).bytesRaw(Buffer.from(s, 'utf8'), n);
      this.bytesRaw(Buffer.from([0]), 1);
    }
    this.end(m);
  }
  bytesField(field: number, b: Uint8Array): void {
    if (b.length === 0) return;
    this.u32((field << 3) | 2);
    this.bytes(b);
  }
  stringAlways(field: number, s: string): void {
    this.u32((field << 3) | 2);
    this.bytes(Buffer.from(s, 'utf8'));
  }
}

/**
 * The length-delimited fields of a message by number, every occurrence in
 * order (varint and fixed fields are skipped): how format version 2's
 * columns are read. Malformed input is CORRUPT.
 */
export function readPbFields(b: Buffer, what: string): Map<number, Buffer[]> {
  const out = new Map<number, Buffer[]>();
  let p = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (p >= b.length) throw corrupt(`${what}: truncated field`);
      const c = b[p++];
      v += (c & 127) * mul;
      if (c < 128) return v;
      mul *= 128;
    }
    throw corrupt(`${what}: varint longer than 10 bytes`);
  };
  while (p < b.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    if (field === 0) throw corrupt(`${what}: field number 0`);
    switch (tag & 7) {
      case 0:
        varint();
        break;
      case 1:
        p += 8;
        break;
      case 5:
        p += 4;
        break;
      case 2: {
        const n = varint();
        if (n > b.length - p) throw corrupt(`${what}: field ${field} runs past its message`);
        let list = out.get(field);
        if (!list) out.set(field, (list = []));
        list.push(b.subarray(p, p + n));
        p += n;
        break;
      }
      default:
        throw corrupt(`${what}: wire type ${tag & 7} is not supported here`);
    }
    if (p > b.length) throw corrupt(`${what}: truncated field`);
  }
  return out;
}

