/**
 * Context-mixing coder for bsdiff's diff stream (container v2, section method 3).
 *
 * The diff stream (new − old byte by byte along bsdiff's matches) is mostly zeros; its
 * non-zero bytes are where machine code's addresses and offsets moved. Which bytes
 * change is predicted well by the *old* bytes under and around them (an instruction's
 * opcode says where its displacement is), which general-purpose compressors cannot see.
 * Both sides know those old bytes before the diff stream is decoded (control stream and
 * base come first), so the coder uses them as context:
 *
 *  - one binary decision per diff byte, "non-zero?", predicted by five models (the old
 *    byte and the last two decisions; the four old bytes before; the last 16
 *    decisions; old bytes i-1..i+1; old bytes i-2..i+3), mixed by a small
 *    logistic mixer selected by the last two decisions;
 *  - the value of a non-zero byte as 8 binary decisions down a bit tree, predicted by
 *    the previous one or two values, the old bytes under it, the four old bytes before
 *    it and the distance to the previous non-zero byte, mixed the same way.
 *
 * Integer arithmetic only (12-bit probabilities, fixed tables), so encoder and decoder
 * agree on every platform. Decoding performs exactly `n` flag decisions plus 8 per
 * non-zero byte whatever the input, so time and memory are linear in the target size
 * (worst case, every byte non-zero: 9 decisions per byte). The decoder never reads past
 * the coded stream (the encoder's output is exactly what it consumes), so most damage
 * fails fast with CORRUPT; the rest shows as a CRC mismatch of the result (bsdiff
 * container), never as an over-long or over-large output.
 *
 * Measured on esbuild 0.28.1→0.28.2: flags 66 K + literals 140 K, against 169 K + 173 K
 * for the same information as split streams with brotli -q 11 (see CODECS.md).
 */

import { corrupt } from '../../errors';
import { bsdiffSaWith } from './native';

// Module-level aliases: the hot loops below must not look up the global `Math` on every
// call (under a vm context such as jest's, each global lookup is ~20x slower).
const imul = Math.imul;
const trunc = Math.trunc;
const floor = Math.floor;
const min = Math.min;

// ---------------------------------------------------------------------------
// Fixed-point logistic helpers
// ---------------------------------------------------------------------------

/** 4096 / (1 + e^-(i/2)) for i = -16..16, rounded: the logistic curve at 33 points. */
const SQUASH_POINTS = [1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349, 3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095];

/** squash(x) for x in [-2047, 2047] (logit × 256) → probability in [1, 4095] (of 4096). */
function squash(x: number): number {
  if (x > 2047) x = 2047;
  if (x < -2047) x = -2047;
  const w = x & 127;
  const i = (x >> 7) + 16;
  return (SQUASH_POINTS[i] * (128 - w) + SQUASH_POINTS[i + 1] * w + 64) >> 7;
}

/** squash over its whole domain, and the mixer's output: squash(trunc(dot / 2^16)) clamped to ±2047. */
const SQUASH_T = (() => {
  const t = new Uint16Array(4095);
  for (let x = -2047; x <= 2047; x++) t[x + 2047] = squash(x);
  return t;
})();

function mixOut(dot: number): number {
  let x = trunc(dot / 65536);
  if (x > 2047) x = 2047;
  else if (x < -2047) x = -2047;
  return SQUASH_T[x + 2047];
}

/** stretch(p) = inverse of squash, tabulated by integer search (deterministic). */
const STRETCH = (() => {
  const t = new Int16Array(4096);
  let pi = 0;
  for (let x = -2047; x <= 2047; x++) {
    const v = squash(x);
    for (let j = pi; j <= v; j++) t[j] = x;
    pi = v + 1;
  }
  for (let j = pi; j < 4096; j++) t[j] = 2047;
  return t;
})();

// ---------------------------------------------------------------------------
// Binary arithmetic coder (32-bit range, carry-less, bytes most significant first)
// ---------------------------------------------------------------------------

/** Something that codes one binary decision with P(1) = p1/4096 and returns the bit. */
interface BitCoder {
  code(bit: number, p1: number): number;
}

class Encoder implements BitCoder {
  private x1 = 0;
  private x2 = 0xffffffff;
  private out: Buffer;
  len = 0;
  constructor(capacity: number) {
    this.out = Buffer.allocUnsafe(Math.max(64, capacity));
  }
  /** Code `bit` with p1 = P(bit = 1) in [1, 4095]. */
  bit(bit: number, p1: number): void {
    // (x2 - x1) * p1 < 2^44: exact in a double.
    const xmid = this.x1 + floor(((this.x2 - this.x1) * p1) / 4096);
    if (bit) this.x2 = xmid;
    else this.x1 = xmid + 1;
    while (((this.x1 ^ this.x2) & 0xff000000) === 0) {
      this.put(this.x2 >>> 24);
      this.x1 = (this.x1 << 8) >>> 0;
      this.x2 = ((this.x2 << 8) | 255) >>> 0;
    }
  }
  /** BitCoder: code the model's decision as given. */
  code(bit: number, p1: number): number {
    this.bit(bit, p1);
    return bit;
  }
  private put(b: number): void {
    if (this.len === this.out.length) {
      const n = Buffer.allocUnsafe(this.out.length * 2);
      this.out.copy(n);
      this.out = n;
    }
    this.out[this.len++] = b;
  }
  finish(): Buffer {
    // Enough bytes of x1 to land inside [x1, x2].
    this.put(this.x1 >>> 24);
    this.put((this.x1 >>> 16) & 255);
    this.put((this.x1 >>> 8) & 255);
    this.put(this.x1 & 255);
    return Buffer.from(this.out.subarray(0, this.len));
  }
}

class Decoder implements BitCoder {
  private x1 = 0;
  private x2 = 0xffffffff;
  private x = 0;
  private pos = 0;
  constructor(private readonly src: Uint8Array) {
    for (let i = 0; i < 4; i++) this.x = ((this.x << 8) | this.next()) >>> 0;
  }
  private next(): number {
    // The decoder reads exactly the bytes the encoder wrote, never more: running past the
    // end means the stream is damaged (or not this coder's), which ends garbage early.
    if (this.pos >= this.src.length) throw corrupt('bsdiff: coded diff stream ends early');
    return this.src[this.pos++];
  }
  bit(p1: number): number {
    // (x2 - x1) * p1 < 2^44: exact in a double.
    const xmid = this.x1 + floor(((this.x2 - this.x1) * p1) / 4096);
    let bit: number;
    if (this.x <= xmid) {
      bit = 1;
      this.x2 = xmid;
    } else {
      bit = 0;
      this.x1 = xmid + 1;
    }
    while (((this.x1 ^ this.x2) & 0xff000000) === 0) {
      this.x1 = (this.x1 << 8) >>> 0;
      this.x2 = ((this.x2 << 8) | 255) >>> 0;
      this.x = ((this.x << 8) | this.next()) >>> 0;
    }
    return bit;
  }
  /** BitCoder: the decision comes from the stream, not from the model's argument. */
  code(_bit: number, p1: number): number {
    return this.bit(p1);
  }
  /** Bytes consumed (the encoder's output length when the stream is intact). */
  get consumed(): number {
    return this.pos;
  }
}

// ---------------------------------------------------------------------------
// The model (shared by encoder and decoder: same calls in the same order)
// ---------------------------------------------------------------------------

const FLAG_INPUTS = 5;
const LIT_INPUTS = 5;
const LEARN = 6; // mixer learning rate
const RATE = 4; // probability adaptation rate (shift)

/** Moves a probability (12 bits) toward the coded bit; cm.c's UPD. */
function upd(t: Uint16Array, i: number, bit: number): void {
  t[i] += bit ? (4096 - t[i]) >> RATE : -(t[i] >> RATE);
}

/** Moves a mixer weight by input `s` times error `e`; cm.c's WUPD. */
function wupd(w: Int32Array, i: number, s: number, e: number): void {
  w[i] += (s * e) >> 10;
}
const MAX_BITS = 18; // 2^18-entry hashed tables stay in L2: esbuild 224.7 K vs 222.5 K at 2^22, ~2x faster
const PAD = 4; // zero bytes around the old bytes, so context reads need no bounds checks

function hash(a: number, b: number): number {
  return (imul(a, 0x9e3779b1) ^ imul(b + 0x7f4a7c15, 0x85ebca77)) >>> 0;
}


/**
 * Run the model over the diff stream: encode `diff` (when given) or decode into a new
 * buffer, coding every decision through `coder`. One function for both directions so
 * that encoder and decoder cannot drift apart.
 */
function runModel(ouRaw: Uint8Array, diff: Uint8Array | null, coder: BitCoder): Buffer {
  const n = ouRaw.length;
  const ou = new Uint8Array(n + 2 * PAD);
  ou.set(ouRaw, PAD);
  const out = diff ? Buffer.alloc(0) : Buffer.alloc(n);
  // Hashed tables: 2^16 .. 2^MAX_BITS entries for flags, 1/16 of that for literals, by stream length.
  let bits = 16;
  while (bits < MAX_BITS && 1 << bits < n) bits++;
  const fm = (1 << bits) - 1;
  const lm = (1 << (bits - 4)) - 1;
  const f0 = new Uint16Array(1024).fill(2048);
  const f1 = new Uint16Array(fm + 1).fill(2048);
  const f2 = new Uint16Array(65536).fill(2048);
  const f3 = new Uint16Array(fm + 1).fill(2048);
  const f4 = new Uint16Array(fm + 1).fill(2048);
  const fw = new Int32Array(4 * FLAG_INPUTS).fill(1 << 14);
  const l0 = new Uint16Array(256 * 256).fill(2048);
  const l1 = new Uint16Array(lm + 1).fill(2048);
  const l2 = new Uint16Array(lm + 1).fill(2048);
  const l3 = new Uint16Array(lm + 1).fill(2048);
  const l4 = new Uint16Array(16 * 256 * 256).fill(2048);
  const lw = new Int32Array(256 * LIT_INPUTS).fill(1 << 14);

  let h = 0; // last 16 flags
  let prev = 0;
  let prev2 = 0;
  let last = 0;
  let before = 0; // old bytes i-1 .. i-4
  for (let i = 0; i < n; i++) {
    const j = i + PAD;
    const c = ou[j];
    const next = ou[j + 1] | (ou[j + 2] << 8) | (ou[j + 3] << 16);
    // --- flag ---
    const i0 = (c << 2) | (h & 3);
    const i1 = hash(before, 1) & fm;
    const i2 = h;
    const i3 = hash(c | ((next & 255) << 8) | ((before & 255) << 16), 3) & fm;
    const i4 = hash(c | (next << 8), (before & 0xffff) + 5) & fm;
    const s0 = STRETCH[f0[i0]];
    const s1 = STRETCH[f1[i1]];
    const s2 = STRETCH[f2[i2]];
    const s3 = STRETCH[f3[i3]];
    const s4 = STRETCH[f4[i4]];
    const ws = (h & 3) * FLAG_INPUTS;
    const p = mixOut(fw[ws] * s0 + fw[ws + 1] * s1 + fw[ws + 2] * s2 + fw[ws + 3] * s3 + fw[ws + 4] * s4);
    const bit = coder.code(diff ? (diff[i] !== 0 ? 1 : 0) : 0, p);
    const err = ((bit << 12) - p) * LEARN;
    wupd(fw, ws, s0, err); wupd(fw, ws + 1, s1, err); wupd(fw, ws + 2, s2, err); wupd(fw, ws + 3, s3, err); wupd(fw, ws + 4, s4, err);
    upd(f0, i0, bit); upd(f1, i1, bit); upd(f2, i2, bit); upd(f3, i3, bit); upd(f4, i4, bit);
    h = ((h << 1) | bit) & 0xffff;
    // --- literal ---
    if (bit) {
      const value = diff ? diff[i] : 0;
      const b0 = prev << 8;
      const h1 = hash(prev | (prev2 << 8), 11);
      const h2 = hash(c | ((before & 255) << 8), 12);
      const h3 = hash(before, c + 13);
      const b4 = ((min(i - last, 15) << 8) | prev) << 8;
      let node = 1;
      for (let b = 7; b >= 0; b--) {
        const k = imul(node, 0x2545f491);
        const j0 = b0 | node;
        const j1 = (h1 + k) & lm;
        const j2 = (h2 + k) & lm;
        const j3 = (h3 + k) & lm;
        const j4 = b4 | node;
        const t0 = STRETCH[l0[j0]];
        const t1 = STRETCH[l1[j1]];
        const t2 = STRETCH[l2[j2]];
        const t3 = STRETCH[l3[j3]];
        const t4 = STRETCH[l4[j4]];
        const wl = node * LIT_INPUTS;
        const q = mixOut(lw[wl] * t0 + lw[wl + 1] * t1 + lw[wl + 2] * t2 + lw[wl + 3] * t3 + lw[wl + 4] * t4);
        const y = coder.code((value >> b) & 1, q);
        const e = ((y << 12) - q) * LEARN;
        wupd(lw, wl, t0, e); wupd(lw, wl + 1, t1, e); wupd(lw, wl + 2, t2, e); wupd(lw, wl + 3, t3, e); wupd(lw, wl + 4, t4, e);
        upd(l0, j0, y); upd(l1, j1, y); upd(l2, j2, y); upd(l3, j3, y); upd(l4, j4, y);
        node = (node << 1) | y;
      }
      const v = node & 255;
      if (!diff) out[i] = v;
      prev2 = prev;
      prev = v;
      last = i + 1;
    }
    before = ((before << 8) | c) >>> 0;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/**
 * The old byte under every diff byte: diff byte k of triple t sits on base position
 * oldPos(t) + k (positions outside the base read as 0, as bspatch does).
 */
export function oldUnderDiff(base: Uint8Array, xs: ArrayLike<number>, zs: ArrayLike<number>, diffTotal: number): Uint8Array {
  const ou = new Uint8Array(diffTotal);
  let oldPos = 0;
  let d = 0;
  for (let t = 0; t < xs.length; t++) {
    const x = xs[t];
    const lo = min(x, Math.max(0, -oldPos));
    const hi = Math.max(lo, min(x, base.length - oldPos));
    if (hi > lo) ou.set(base.subarray(oldPos + lo, oldPos + hi), d + lo);
    d += x;
    oldPos += x + zs[t];
  }
  return ou;
}

/** The C coder of the bsdiff-sa addon (same output, about 3x faster), or null when it is not built. */
const native = () => bsdiffSaWith('cmEncode', 'cmDecode');

/** Which implementation codes here ('typescript' forces this module's own; for tests). */
export type CmEngine = 'native' | 'typescript';

/** Whether the C coder is available. */
export function cmNativeAvailable(): boolean {
  return native() !== null;
}

/** Encode the diff stream given the old bytes under it (same length). */
export function cmEncodeDiff(diff: Uint8Array, ou: Uint8Array, engine?: CmEngine): Buffer {
  if (diff.length !== ou.length) throw new Error('cmEncodeDiff: length mismatch');
  const n = engine === 'typescript' ? null : native();
  if (n) return n.cmEncode(diff, ou);
  const enc = new Encoder(diff.length >> 4);
  runModel(ou, diff, enc);
  return enc.finish();
}

/**
 * Decode a diff stream of `ou.length` bytes. Always performs the same number of
 * decisions and returns exactly that many bytes; damage surfaces as a wrong result
 * (caught by the container's CRC) or as `consumed` differing from the input length.
 */
export function cmDecodeDiff(packed: Uint8Array, ou: Uint8Array, engine?: CmEngine): { diff: Buffer; consumed: number } {
  const n = engine === 'typescript' ? null : native();
  if (n) {
    try {
      return n.cmDecode(packed, ou);
    } catch (e) {
      if ((e as { code?: string }).code === 'ECORRUPT') throw corrupt('bsdiff: coded diff stream ends early');
      throw e;
    }
  }
  const dec = new Decoder(packed);
  const diff = runModel(ou, null, dec);
  return { diff, consumed: dec.consumed };
}

// ---------------------------------------------------------------------------
// Section method 4: the block model ("cmb"), twin of cmb_* in native/bsdiff-sa/src/cm.c
// ---------------------------------------------------------------------------
//
// Codes only which diff bytes are non-zero (the non-zero bytes go to the container's
// literals section, packed like any section). Same coder, squash/stretch and update rules
// as above, but most diff bytes cost no decision of their own: one decision per 8-byte
// block ("does this block change?"), the per-byte flag model of method 3 only inside
// blocks that change (the last byte of a changing block whose first seven bytes are zero
// is implied non-zero). Tables have at most 2^16 entries. The stream is cut into
// independent segments of at most CMB_SEGMENT bytes (own tables, own coder, zero padding
// at the segment's edges) so that the C coder can code them on several threads; this
// module codes them one after another, with the same bytes.
//
// Section layout: segment count k (u32 LE) = ceil(n / CMB_SEGMENT), k packed lengths
// (u32 LE), the k coded segments. Segment s covers diff bytes [s*L, min(n, (s+1)*L)) with
// L = ceil(ceil(n / k) / 8) * 8.

/** Largest segment of a method-4 stream (bytes of diff). */
export const CMB_SEGMENT = 2 << 20;
const CMB_PAD = 16;
const CMB_BLK = 8;
const CMB_BI = 3;
const CMB_FI = 5;
const CMB_FM = 0xffff;
const CMB_BM = 0x7fff;

/** Number of segments of a method-4 stream of `n` diff bytes. */
export function cmbSegments(n: number): number {
  return Math.ceil(n / CMB_SEGMENT);
}

function cmbSegLen(n: number): number {
  const k = cmbSegments(n);
  return k ? Math.ceil(Math.ceil(n / k) / 8) * 8 : 0;
}

/** One segment; see cm.c's run_blocks (decision for decision the same). Decoding writes 1 where a diff byte is non-zero. */
function runBlocks(ouRaw: Uint8Array, diff: Uint8Array | null, out: Uint8Array | null, coder: BitCoder): void {
  const n = ouRaw.length;
  const ou = new Uint8Array(n + 2 * CMB_PAD);
  ou.set(ouRaw, CMB_PAD);
  const b0 = new Uint16Array(65536).fill(2048);
  const b1 = new Uint16Array(CMB_BM + 1).fill(2048);
  const b2 = new Uint16Array(CMB_BM + 1).fill(2048);
  const f0 = new Uint16Array(1024).fill(2048);
  const f1 = new Uint16Array(CMB_FM + 1).fill(2048);
  const f2 = new Uint16Array(65536).fill(2048);
  const f3 = new Uint16Array(CMB_FM + 1).fill(2048);
  const f4 = new Uint16Array(CMB_FM + 1).fill(2048);
  const bw = new Int32Array(4 * CMB_BI).fill(1 << 14);
  const fw = new Int32Array(8 * CMB_FI).fill(1 << 14);
  const I1 = new Int32Array(CMB_BLK);
  const I3 = new Int32Array(CMB_BLK);
  const I4 = new Int32Array(CMB_BLK);
  let h = 0;
  let bh = 0;
  for (let s = 0; s < n; s += CMB_BLK) {
    const e = s + CMB_BLK < n ? s + CMB_BLK : n;
    const pb = s + CMB_PAD;
    const lo = ou[pb] | (ou[pb + 1] << 8) | (ou[pb + 2] << 16) | (ou[pb + 3] << 24);
    const hi = ou[pb + 4] | (ou[pb + 5] << 8) | (ou[pb + 6] << 16) | (ou[pb + 7] << 24);
    const k0 = (bh & 0xff) | (ou[pb] << 8);
    const k1 = hash(lo, 21) & CMB_BM;
    const k2 = hash(hi, 22) & CMB_BM;
    const s0 = STRETCH[b0[k0]];
    const s1 = STRETCH[b1[k1]];
    const s2 = STRETCH[b2[k2]];
    const ws = (bh & 3) * CMB_BI;
    const p = mixOut(bw[ws] * s0 + bw[ws + 1] * s1 + bw[ws + 2] * s2);
    let any = 0;
    if (diff) for (let i = s; i < e; i++) any |= diff[i];
    const B = coder.code(any !== 0 ? 1 : 0, p);
    const err = ((B << 12) - p) * LEARN;
    wupd(bw, ws, s0, err); wupd(bw, ws + 1, s1, err); wupd(bw, ws + 2, s2, err);
    upd(b0, k0, B); upd(b1, k1, B); upd(b2, k2, B);
    if (!B) {
      bh = (bh << 1) & 0xffff;
      h = (h << (e - s)) & 0xffff;
      continue;
    }
    bh = ((bh << 1) | 1) & 0xffff;
    for (let i = s; i < e; i++) {
      const q = i + CMB_PAD;
      const c = ou[q];
      const before = (ou[q - 1] | (ou[q - 2] << 8) | (ou[q - 3] << 16) | (ou[q - 4] << 24)) >>> 0;
      const next = ou[q + 1] | (ou[q + 2] << 8) | (ou[q + 3] << 16);
      const k = i - s;
      I1[k] = hash(before, 1) & CMB_FM;
      I3[k] = hash(c | ((next & 255) << 8) | ((before & 255) << 16), 3) & CMB_FM;
      I4[k] = hash(c | (next << 8), (before & 0xffff) + 5) & CMB_FM;
    }
    let seen = 0;
    for (let i = s; i < e; i++) {
      const c = ou[i + CMB_PAD];
      const k = i - s;
      let bit: number;
      if (i === e - 1 && !seen) {
        bit = 1; // a changing block has a non-zero byte
      } else {
        const i0 = (c << 2) | (h & 3);
        const i1 = I1[k];
        const i2 = h;
        const i3 = I3[k];
        const i4 = I4[k];
        const t0 = STRETCH[f0[i0]];
        const t1 = STRETCH[f1[i1]];
        const t2 = STRETCH[f2[i2]];
        const t3 = STRETCH[f3[i3]];
        const t4 = STRETCH[f4[i4]];
        const wf = ((h & 3) | (seen << 2)) * CMB_FI;
        const pf = mixOut(fw[wf] * t0 + fw[wf + 1] * t1 + fw[wf + 2] * t2 + fw[wf + 3] * t3 + fw[wf + 4] * t4);
        bit = coder.code(diff ? (diff[i] !== 0 ? 1 : 0) : 0, pf);
        const ef = ((bit << 12) - pf) * LEARN;
        wupd(fw, wf, t0, ef); wupd(fw, wf + 1, t1, ef); wupd(fw, wf + 2, t2, ef); wupd(fw, wf + 3, t3, ef); wupd(fw, wf + 4, t4, ef);
        upd(f0, i0, bit); upd(f1, i1, bit); upd(f2, i2, bit); upd(f3, i3, bit); upd(f4, i4, bit);
      }
      h = ((h << 1) | bit) & 0xffff;
      if (!bit) continue;
      seen = 1;
      if (out) out[i] = 1;
    }
  }
}

/** The C side of method 4 (same bytes), or null when the addon lacks it. */
const nativeCmb = () => bsdiffSaWith('cmEncode', 'cmDecode', 'cmbEncode', 'cmbDecode');

/** Code which bytes of a diff stream are non-zero with method 4 (segment table + segments); the non-zero bytes are the caller's. */
export function cmbEncodeDiff(diff: Uint8Array, ou: Uint8Array, engine?: CmEngine): Buffer {
  if (diff.length !== ou.length) throw new Error('cmbEncodeDiff: length mismatch');
  const nat = engine === 'typescript' ? null : nativeCmb();
  if (nat) return nat.cmbEncode(diff, ou);
  const n = diff.length;
  const k = cmbSegments(n);
  const L = cmbSegLen(n);
  const parts: Buffer[] = [];
  const head = Buffer.alloc(4 + 4 * k);
  head.writeUInt32LE(k, 0);
  for (let s = 0; s < k; s++) {
    const a = s * L;
    const b = min(n, a + L);
    const enc = new Encoder((b - a) >> 4);
    runBlocks(ou.subarray(a, b), diff.subarray(a, b), null, enc);
    const part = enc.finish();
    head.writeUInt32LE(part.length, 4 + 4 * s);
    parts.push(part);
  }
  return Buffer.concat([head, ...parts]);
}

/**
 * Decode a method-4 section into `ou.length` diff bytes, placing the non-zero bytes
 * `literals` in order. The segment table must match the stream length exactly, every
 * segment's coder must read exactly its bytes, and there must be exactly one non-zero
 * literal per flagged position; anything else is CORRUPT. Time and memory are linear in
 * the stream length.
 */
export function cmbDecodeDiff(packed: Uint8Array, ou: Uint8Array, literals: Uint8Array, engine?: CmEngine): Buffer {
  const nat = engine === 'typescript' ? null : nativeCmb();
  if (nat) {
    try {
      return nat.cmbDecode(packed, ou, literals);
    } catch (e) {
      if ((e as { code?: string }).code === 'ECORRUPT') throw corrupt('bsdiff: damaged coded diff stream (method 4)');
      throw e;
    }
  }
  const n = ou.length;
  const k = cmbSegments(n);
  const L = cmbSegLen(n);
  const buf = Buffer.from(packed.buffer, packed.byteOffset, packed.byteLength);
  if (buf.length < 4 || buf.readUInt32LE(0) !== k || buf.length < 4 + 4 * k) throw corrupt('bsdiff: bad segment table in the coded diff stream');
  const out = Buffer.alloc(n);
  let pos = 4 + 4 * k;
  const lens: number[] = [];
  for (let s = 0; s < k; s++) {
    const len = buf.readUInt32LE(4 + 4 * s);
    if (len > buf.length - pos) throw corrupt('bsdiff: coded diff segment outside its section');
    lens.push(len);
    pos += len;
  }
  if (pos !== buf.length) throw corrupt('bsdiff: trailing bytes in the coded diff stream');
  pos = 4 + 4 * k;
  for (let s = 0; s < k; s++) {
    const a = s * L;
    const b = min(n, a + L);
    const dec = new Decoder(buf.subarray(pos, pos + lens[s]));
    runBlocks(ou.subarray(a, b), null, out.subarray(a, b), dec);
    if (dec.consumed !== lens[s]) throw corrupt('bsdiff: coded diff segment has the wrong length');
    pos += lens[s];
  }
  let j = 0;
  for (let i = 0; i < n; i++) {
    if (!out[i]) continue;
    if (j === literals.length || literals[j] === 0) throw corrupt('bsdiff: literals do not match the coded diff stream');
    out[i] = literals[j++];
  }
  if (j !== literals.length) throw corrupt('bsdiff: literals do not match the coded diff stream');
  return out;
}
