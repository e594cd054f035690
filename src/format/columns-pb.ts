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
  /** A packed varint column (values up to 2^53), written even when empty. */
  packedAlways(field: number, values: ArrayLike<number>): void {
    const at = this.open(field);
    for (let i = 0; i < values.length; i++) this.value(field, values[i]);
    this.close(at, true);
  }
  /**
   * Start a length-delimited field written in place (a column, a message);
   * returns where it starts, for close(). format/compact.ts writes the
   * columns straight into the index this way: no array of values or buffer
   * per column first (see its encodeColumns).
   */
  open(field: number): number {
    const at = this.pos;
    this.u32((field << 3) | 2);
    this.begin();
    return at;
  }
  /** End the field open() started at `at`, or take it back out when `keep` is false (an empty or all-zero optional column). */
  close(at: number, keep: boolean): void {
    if (!keep) {
      this.pos = at;
      return;
    }
    let mark = at + 1;
    while (this.buf[mark - 1] >= 128) mark++; // past the tag's varint
    this.end(mark);
  }
  /** One value of a packed varint column (up to 2^53). */
  value(field: number, v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`column ${field}: ${v} is not a non-negative integer`);
    if (v < TWO32) this.u32(v);
    else this.u64(v % TWO32 >>> 0, Math.floor(v / TWO32) >>> 0);
  }
  /**
   * One string of a NUL-separated column (tree paths and link targets are
   * checked for NULs) and its NUL, written in place: the same bytes as
   * Buffer.from(s, 'utf8') without a Buffer per string (two per name before:
   * ~300,000 garbage Buffers for the 151k-entry index of issue 18).
   */
  nulString(field: number, s: string): void {
    if (s.includes('\0')) throw new RangeError(`column ${field}: "${s.replace(/\0/g, '\\0')}" holds a NUL byte`);
    const n = Buffer.byteLength(s);
    this.reserve(n + 1);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
    this.buf[this.pos++] = 0;
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

