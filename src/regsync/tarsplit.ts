/**
 * Raw tar splitter: cuts an uncompressed layer tar into its *skeleton* (every
 * byte that is not regular-file content: header blocks, pax and GNU long-name
 * records, padding, end-of-archive blocks and whatever follows them) and the
 * *contents* of its regular files, without re-encoding anything.
 *
 * Concatenating the skeleton and the contents in the recorded order gives the
 * original tar back byte for byte, whatever the tar looks like: the split is
 * only a description of byte ranges. Parsing errors therefore never cost
 * exactness, only efficiency: from the first block that does not look like a
 * valid header on, everything is skeleton ("raw tail").
 *
 * The splitter is push-based (write chunks, then end) and synchronous, so the
 * same code runs over a file at diff time and over a network stream at apply
 * time; both sides must produce identical skeletons of the same tar (a patch's
 * skeleton may be encoded against an old layer's skeleton), so the rules here
 * are part of the patch format (see FORMAT.md, "skeleton").
 */
import { createHash, Hash } from 'node:crypto';
import { headerChecksumMatches } from '../tar';

const BLOCK = 512;

/** What the splitter reports, in stream order. */
export interface SplitSink {
  /** Skeleton bytes (a view into the input chunk; copy it to keep it). */
  raw(chunk: Buffer): void;
  /** A regular file's content begins: `size` > 0 bytes at tar offset `offset`. */
  fileStart(path: string, size: number, offset: number): void;
  /** Content bytes of the current file (a view into the input chunk). */
  fileData(chunk: Buffer): void;
  /** The current file's content is complete. */
  fileEnd(): void;
}

/** Parser state. */
type State =
  | { kind: 'header' }
  | { kind: 'meta'; size: number; left: number; pad: number; type: string; keep: Buffer[]; kept: number }
  | { kind: 'content'; left: number; pad: number }
  | { kind: 'pad'; left: number }
  | { kind: 'tail' };

/** Type flags whose entries carry no data, whatever their size field says (as GNU tar and Go read them). */
const HEADER_ONLY = new Set(['1', '2', '3', '4', '5', '6']);
/** Type flags of regular files. */
const REGULAR = new Set(['0', '\0', '7']);
/** Metadata records kept (up to this many bytes) to learn the next entry's path and size. */
const META_KEEP_LIMIT = 1024 * 1024;

/** Padding after `size` bytes of data. */
const padOf = (size: number): number => (size % BLOCK === 0 ? 0 : BLOCK - (size % BLOCK));

/** NUL-terminated string field. */
function field(b: Buffer, off: number, len: number): string {
  const end = b.indexOf(0, off);
  return b.toString('utf8', off, end < 0 || end > off + len ? off + len : end);
}

/** A numeric header field (octal, or GNU base-256); NaN when malformed. */
export function numericField(b: Buffer, off: number, len: number): number {
  if (b[off] & 0x80) {
    if (b[off] === 0xff) return NaN; // negative
    let v = b[off] & 0x7f;
    for (let i = 1; i < len; i++) {
      v = v * 256 + b[off + i];
      if (v > Number.MAX_SAFE_INTEGER) return NaN;
    }
    return v;
  }
  const s = b.toString('latin1', off, off + len).replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) return NaN;
  const v = parseInt(s, 8);
  return Number.isSafeInteger(v) ? v : NaN;
}

/** Whether the block's checksum field matches (unsigned or historic signed sum). */
export function checksumOk(b: Buffer): boolean {
  const stored = numericField(b, 148, 8);
  return Number.isFinite(stored) && headerChecksumMatches(b, stored);
}

/** Records of a pax extended header ("LEN key=value\n"...); malformed input yields what parsed before it. */
export function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let p = 0;
  while (p < data.length) {
    const sp = data.indexOf(0x20, p);
    if (sp < 0) break;
    const len = Number(data.toString('latin1', p, sp));
    if (!Number.isSafeInteger(len) || len <= sp - p + 1 || p + len > data.length) break;
    const rec = data.subarray(sp + 1, p + len - 1); // without the trailing newline
    const eq = rec.indexOf(0x3d);
    if (eq > 0) out.set(rec.toString('utf8', 0, eq), rec.toString('utf8', eq + 1));
    p += len;
  }
  return out;
}

/** Normalised path for matching across layers: no "./", no leading or trailing "/". */
export function normalizePath(p: string): string {
  let s = p;
  while (s.startsWith('./')) s = s.slice(2);
  s = s.replace(/^\/+/, '').replace(/\/+$/, '');
  return s;
}

/**
 * Push parser. Call write() with the tar's bytes in order, then end(). After
 * end(), `truncated` tells whether the stream stopped inside a file's content
 * (the sink then saw fileStart and part of the data but no fileEnd).
 */
export class TarSplitter {
  private state: State = { kind: 'header' };
  private pending = Buffer.alloc(0);
  private offset = 0;
  private zeroBlocks = 0;
  private nextPath: string | undefined;
  private nextSize: number | undefined;
  private gnuLongName: string | undefined;
  /** Set by end() when the stream ended inside a file's content. */
  truncated = false;

  constructor(private readonly sink: SplitSink) {}

  /** Feed the next bytes of the tar. */
  write(chunk: Buffer): void {
    let buf = chunk;
    while (buf.length > 0) {
      const s = this.state;
      switch (s.kind) {
        case 'tail':
          this.emitRaw(buf);
          return;
        case 'header': {
          const need = BLOCK - this.pending.length;
          if (buf.length < need) {
            this.pending = Buffer.concat([this.pending, buf]);
            return;
          }
          const block = this.pending.length ? Buffer.concat([this.pending, buf.subarray(0, need)]) : buf.subarray(0, need);
          this.pending = Buffer.alloc(0);
          buf = buf.subarray(need);
          this.header(block);
          break;
        }
        case 'meta': {
          const n = Math.min(s.left, buf.length);
          const part = buf.subarray(0, n);
          if (s.kept + n <= META_KEEP_LIMIT) {
            s.keep.push(Buffer.from(part));
            s.kept += n;
          }
          this.emitRaw(part);
          s.left -= n;
          buf = buf.subarray(n);
          if (s.left === 0) this.endMeta(s);
          break;
        }
        case 'content': {
          const n = Math.min(s.left, buf.length);
          this.sink.fileData(buf.subarray(0, n));
          this.offset += n;
          s.left -= n;
          buf = buf.subarray(n);
          if (s.left === 0) {
            this.sink.fileEnd();
            this.state = s.pad ? { kind: 'pad', left: s.pad } : { kind: 'header' };
          }
          break;
        }
        case 'pad': {
          const n = Math.min(s.left, buf.length);
          this.emitRaw(buf.subarray(0, n));
          s.left -= n;
          buf = buf.subarray(n);
          if (s.left === 0) this.state = { kind: 'header' };
          break;
        }
      }
    }
  }

  /** The input is complete. */
  end(): void {
    if (this.pending.length) {
      this.emitRaw(this.pending);
      this.pending = Buffer.alloc(0);
    }
    if (this.state.kind === 'content') this.truncated = true;
  }

  private emitRaw(b: Buffer): void {
    if (b.length === 0) return;
    this.sink.raw(b);
    this.offset += b.length;
  }

  /** One complete 512-byte block in header position. */
  private header(block: Buffer): void {
    let zero = true;
    for (let i = 0; i < BLOCK; i++) {
      if (block[i] !== 0) {
        zero = false;
        break;
      }
    }
    if (zero) {
      this.emitRaw(block);
      if (++this.zeroBlocks >= 2) this.state = { kind: 'tail' };
      return;
    }
    this.zeroBlocks = 0;
    const size = numericField(block, 124, 12);
    if (!checksumOk(block) || !Number.isFinite(size)) {
      this.emitRaw(block);
      this.state = { kind: 'tail' };
      return;
    }
    const type = String.fromCharCode(block[156]);
    this.emitRaw(block);
    if (HEADER_ONLY.has(type)) {
      this.resetNext();
      return;
    }
    if (REGULAR.has(type)) {
      const dataSize = this.nextSize ?? size;
      const path = this.nextPath ?? this.gnuLongName ?? this.ustarName(block);
      this.resetNext();
      if (dataSize === 0) return;
      this.sink.fileStart(normalizePath(path), dataSize, this.offset);
      this.state = { kind: 'content', left: dataSize, pad: padOf(dataSize) };
      return;
    }
    // pax records, GNU long names, sparse maps, unknown types: their data is skeleton.
    const dataSize = type === 'x' || type === 'g' || type === 'L' || type === 'K' ? size : (this.nextSize ?? size);
    if (type !== 'x' && type !== 'g' && type !== 'L' && type !== 'K') this.resetNext();
    if (dataSize === 0) return;
    this.state = { kind: 'meta', size: dataSize, left: dataSize, pad: padOf(dataSize), type, keep: [], kept: 0 };
  }

  private endMeta(s: Extract<State, { kind: 'meta' }>): void {
    if (s.kept === s.size) {
      const data = Buffer.concat(s.keep);
      if (s.type === 'x') {
        const recs = parsePax(data);
        const p = recs.get('path');
        if (p !== undefined) this.nextPath = p;
        const sz = recs.get('size');
        if (sz !== undefined && /^\d+$/.test(sz) && Number.isSafeInteger(Number(sz))) this.nextSize = Number(sz);
      } else if (s.type === 'L') {
        this.gnuLongName = field(data, 0, data.length);
      }
    }
    this.state = s.pad ? { kind: 'pad', left: s.pad } : { kind: 'header' };
  }

  private resetNext(): void {
    this.nextPath = undefined;
    this.nextSize = undefined;
    this.gnuLongName = undefined;
  }

  private ustarName(block: Buffer): string {
    const name = field(block, 0, 100);
    const magic = block.toString('latin1', 257, 263);
    const prefix = magic === 'ustar\0' ? field(block, 345, 155) : '';
    return prefix ? `${prefix}/${name}` : name;
  }
}

/** One regular file found by {@link splitTar}. */
export interface SplitFile {
  /** Normalised path (see {@link normalizePath}). */
  path: string;
  size: number;
  /** "sha256:<hex>" of the content. */
  digest: string;
  /** Offset of the content in the tar. */
  offset: number;
}

/** Result of {@link splitTar}. */
export interface SplitResult {
  /** All skeleton bytes in order. */
  skeleton: Buffer;
  /** Files in tar order (each a content segment). */
  files: SplitFile[];
  /**
   * Skeleton bytes before each file's content, then the tail:
   * `rawRuns.length === files.length + 1`.
   */
  rawRuns: number[];
  /** Total bytes seen. */
  size: number;
  /**
   * The tar ended inside a file's content. That file is not listed and the
   * skeleton and runs are then incomplete: such a tar cannot be rebuilt from
   * its split (callers ship it whole) nor serve as a skeleton base.
   */
  truncated: boolean;
}

/** Options of {@link splitTar}. */
export interface SplitOptions {
  /** Keep the skeleton bytes (default true). */
  keepSkeleton?: boolean;
  /** Called with every content chunk of every file (after fileStart). */
  onData?: (file: { path: string; size: number; offset: number }, chunk: Buffer) => void;
}

/**
 * Split a whole tar stream: skeleton, files with digests and the run lengths
 * that interleave them (see {@link SplitResult.truncated} for tars that end
 * inside a file).
 */
export async function splitTar(stream: AsyncIterable<Buffer | Uint8Array | string>, opts: SplitOptions = {}): Promise<SplitResult> {
  const keep = opts.keepSkeleton !== false;
  const skel: Buffer[] = [];
  const files: SplitFile[] = [];
  const rawRuns: number[] = [];
  let run = 0;
  let total = 0;
  let cur: { path: string; size: number; offset: number; hash: Hash } | undefined;
  const splitter = new TarSplitter({
    raw(b) {
      if (keep) skel.push(Buffer.from(b));
      run += b.length;
    },
    fileStart(path, size, offset) {
      cur = { path, size, offset, hash: createHash('sha256') };
    },
    fileData(b) {
      if (!cur) return;
      cur.hash.update(b);
      opts.onData?.(cur, b);
    },
    fileEnd() {
      if (!cur) return;
      files.push({ path: cur.path, size: cur.size, digest: `sha256:${cur.hash.digest('hex')}`, offset: cur.offset });
      rawRuns.push(run);
      run = 0;
      cur = undefined;
    },
  });
  for await (const c of stream) {
    const b = typeof c === 'string' ? Buffer.from(c) : Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
    total += b.length;
    splitter.write(b);
  }
  splitter.end();
  rawRuns.push(run);
  return { skeleton: Buffer.concat(skel), files, rawRuns, size: total, truncated: splitter.truncated };
}
