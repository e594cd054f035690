/**
 * The patch file container: a fixed header, a zstd-compressed JSON index and
 * the payloads back to back.
 *
 * ```
 *  0   8  magic "D4FSRGP\n"
 *  8   4  container version (u32 LE) = 1
 * 12   4  flags (u32 LE) = 0
 * 16   8  stored index length (u64 LE)
 * 24   8  index length after decompression (u64 LE)
 * 32   8  payload region length (u64 LE)
 * 40  32  root digest: sha256 of the stored index bytes
 * 72   .  stored index (one zstd frame, content size and checksum present)
 *  .   .  payload region: payload 0, payload 1, ... (lengths and sha256 in the index)
 * ```
 *
 * The root digest covers the index, and the index holds the digest of every
 * payload, so the root digest names the whole patch. A reader refuses a file
 * whose size is not exactly what the header says (truncation, appended data)
 * before it reads anything else, checks the root digest before decompressing
 * the index (whose size is bounded), validates the index (./validate.ts) and
 * can verify every payload in one pass ({@link PatchReader.verifyPayloads})
 * before any of it is used.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fsp, WriteStream } from 'node:fs';
import { finished } from 'node:stream/promises';
import { compressFull, decompressFull } from '../delta/codecs';
import { corrupt, hostile, notFound, unsupported } from '../errors';
import { storedRecipe } from './recipe';
import type { LayerEntry, PatchIndex, PayloadEntry } from './types';
import { validateIndex } from './validate';

/** File magic. */
export const PATCH_MAGIC = Buffer.from('D4FSRGP\n', 'latin1');
/** Container version. */
export const CONTAINER_VERSION = 1;
/** Size of the fixed header. */
export const HEADER_SIZE = 72;
/** Largest stored index accepted. */
export const MAX_STORED_INDEX = 64 * 1024 * 1024;
/** Largest decompressed index accepted. */
export const MAX_INDEX = 256 * 1024 * 1024;
/** Largest payload region accepted (1 TiB). */
export const MAX_PAYLOAD_REGION = 2 ** 40;

const sha256hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A layer entry as the index stores it: its recipe (or fallback's) in the short string form of ./recipe.ts. */
function storedLayer(l: LayerEntry): LayerEntry {
  if (l.kind !== 'rebuilt') return l;
  const out: Record<string, unknown> = { ...l };
  if (l.recipe) out.recipe = storedRecipe(l.recipe);
  if (l.fallback) out.fallback = { ...l.fallback, recipe: storedRecipe(l.fallback.recipe) };
  return out as unknown as LayerEntry;
}

/**
 * Writes a patch: payloads are appended to a spool file as they are produced,
 * then header, index and spool are assembled by {@link finish}.
 */
export class PatchWriter {
  private readonly payloads: PayloadEntry[] = [];
  private spool: WriteStream;
  private spoolSize = 0;
  private chain: Promise<void> = Promise.resolve();

  /** @param spoolPath temp file for payloads (removed by finish) */
  constructor(private readonly spoolPath: string) {
    this.spool = createWriteStream(spoolPath, { flags: 'w' });
  }

  /** Number of payloads added so far. */
  get count(): number {
    return this.payloads.length;
  }

  /** Append a payload from memory; returns its index. */
  addBuffer(data: Buffer): number {
    const idx = this.payloads.length;
    this.payloads.push({ length: data.length, digest: `sha256:${sha256hex(data)}` });
    this.spoolSize += data.length;
    this.chain = this.chain.then(() => this.writeSpool(data));
    return idx;
  }

  /** Append a payload from a file whose digest is already known (verified by the caller); returns its index. */
  addFile(path: string, length: number, digest: string): number {
    const idx = this.payloads.length;
    this.payloads.push({ length, digest });
    this.spoolSize += length;
    this.chain = this.chain.then(async () => {
      for await (const c of createReadStream(path, { highWaterMark: 1 << 20 })) await this.writeSpool(c as Buffer);
    });
    return idx;
  }

  private writeSpool(b: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.spool.write(b, (err) => (err ? reject(err) : resolve()));
    });
  }

  /**
   * Write the patch to `outPath` (through a temp name, renamed at the end).
   * The index's `payloads` are filled in here. Returns the root digest and size.
   */
  async finish(index: Omit<PatchIndex, 'payloads'>, outPath: string): Promise<{ root: string; size: number }> {
    await this.chain;
    this.spool.end();
    await finished(this.spool);
    const full: PatchIndex = { ...index, payloads: this.payloads } as PatchIndex;
    const written = { ...full, layers: full.layers.map(storedLayer) };
    const json = Buffer.from(JSON.stringify(written), 'utf8');
    validateIndex(written); // never write what a reader would refuse (it reads written's recipes back into objects)
    if (json.length > MAX_INDEX) throw unsupported(`patch index of ${json.length} bytes exceeds ${MAX_INDEX}`);
    const stored = compressFull(json, 19);
    const rootHex = sha256hex(stored);
    const header = Buffer.alloc(HEADER_SIZE);
    PATCH_MAGIC.copy(header, 0);
    header.writeUInt32LE(CONTAINER_VERSION, 8);
    header.writeUInt32LE(0, 12);
    header.writeBigUInt64LE(BigInt(stored.length), 16);
    header.writeBigUInt64LE(BigInt(json.length), 24);
    header.writeBigUInt64LE(BigInt(this.spoolSize), 32);
    Buffer.from(rootHex, 'hex').copy(header, 40);
    const tmp = `${outPath}.tmp-${process.pid}`;
    const out = createWriteStream(tmp);
    try {
      out.write(header);
      out.write(stored);
      for await (const c of createReadStream(this.spoolPath, { highWaterMark: 1 << 20 })) {
        if (!out.write(c)) await new Promise<void>((r) => out.once('drain', () => r()));
      }
      out.end();
      await finished(out);
      await fsp.rename(tmp, outPath);
    } catch (e) {
      out.destroy();
      await fsp.rm(tmp, { force: true });
      throw e;
    } finally {
      await fsp.rm(this.spoolPath, { force: true });
    }
    return { root: `sha256:${rootHex}`, size: HEADER_SIZE + stored.length + this.spoolSize };
  }

  /** Drop the spool (on failure). */
  async abort(): Promise<void> {
    this.spool.destroy();
    await fsp.rm(this.spoolPath, { force: true });
  }
}

/** An opened, validated patch. */
export class PatchReader {
  private readonly offsets: number[];

  private constructor(
    readonly path: string,
    readonly index: PatchIndex,
    /** "sha256:..." of the stored index. */
    readonly root: string,
    /** Total file size. */
    readonly size: number,
    regionStart: number,
  ) {
    this.offsets = [];
    let off = regionStart;
    for (const p of index.payloads) {
      this.offsets.push(off);
      off += p.length;
    }
  }

  /**
   * Open and validate a patch file: header, exact size, root digest (and the
   * expected one when given), index schema and cross-references. Payloads are
   * not read here (see {@link verifyPayloads}).
   */
  static async open(path: string, opts: { expectRoot?: string } = {}): Promise<PatchReader> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`patch ${path} does not exist`);
      throw e;
    }
    try {
      const size = (await fh.stat()).size;
      const what = `patch ${path}`;
      if (size < HEADER_SIZE) throw corrupt(`${what}: ${size} bytes, too short for a patch header (truncated?)`);
      const header = Buffer.alloc(HEADER_SIZE);
      await fh.read(header, 0, HEADER_SIZE, 0);
      if (!header.subarray(0, 8).equals(PATCH_MAGIC)) throw corrupt(`${what}: not a d4fs registry patch (bad magic)`);
      const version = header.readUInt32LE(8);
      if (version !== CONTAINER_VERSION) throw unsupported(`${what}: container version ${version} (this ctr-cli reads ${CONTAINER_VERSION})`);
      if (header.readUInt32LE(12) !== 0) throw unsupported(`${what}: unknown flags ${header.readUInt32LE(12)}`);
      const storedLen = header.readBigUInt64LE(16);
      const indexLen = header.readBigUInt64LE(24);
      const regionLen = header.readBigUInt64LE(32);
      if (storedLen === 0n || storedLen > BigInt(MAX_STORED_INDEX)) throw hostile(`${what}: stored index length ${storedLen} out of bounds`);
      if (indexLen === 0n || indexLen > BigInt(MAX_INDEX)) throw hostile(`${what}: index length ${indexLen} out of bounds`);
      if (regionLen > BigInt(MAX_PAYLOAD_REGION)) throw hostile(`${what}: payload region of ${regionLen} bytes out of bounds`);
      const expected = BigInt(HEADER_SIZE) + storedLen + regionLen;
      if (BigInt(size) !== expected) {
        throw corrupt(`${what}: ${size} bytes but the header describes ${expected} (${BigInt(size) < expected ? 'truncated' : 'data appended'})`);
      }
      const root = `sha256:${header.subarray(40, 72).toString('hex')}`;
      if (opts.expectRoot && opts.expectRoot !== root) throw corrupt(`${what}: root digest ${root}, expected ${opts.expectRoot}`);
      const stored = Buffer.alloc(Number(storedLen));
      await fh.read(stored, 0, stored.length, HEADER_SIZE);
      if (`sha256:${sha256hex(stored)}` !== root) throw corrupt(`${what}: index does not match the root digest (damaged)`);
      let json: Buffer;
      try {
        json = decompressFull(stored, Number(indexLen));
      } catch (e) {
        throw corrupt(`${what}: index does not decompress: ${(e as Error).message}`, e);
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(json.toString('utf8'));
      } catch {
        throw corrupt(`${what}: index is not JSON`);
      }
      const index = validateIndex(parsed);
      const total = index.payloads.reduce((a, p) => a + p.length, 0);
      if (BigInt(total) !== regionLen) throw corrupt(`${what}: payloads add up to ${total} bytes, the header says ${regionLen}`);
      return new PatchReader(path, index, root, size, HEADER_SIZE + Number(storedLen));
    } finally {
      await fh.close();
    }
  }

  /** Read every payload once and check its digest; throws CORRUPT naming the first bad one. */
  async verifyPayloads(): Promise<void> {
    const fh = await fsp.open(this.path, 'r');
    try {
      const buf = Buffer.allocUnsafe(1 << 20);
      for (let i = 0; i < this.index.payloads.length; i++) {
        const p = this.index.payloads[i];
        const h = createHash('sha256');
        let done = 0;
        while (done < p.length) {
          const n = Math.min(buf.length, p.length - done);
          const { bytesRead } = await fh.read(buf, 0, n, this.offsets[i] + done);
          if (bytesRead !== n) throw corrupt(`patch ${this.path}: payload ${i} is cut short`);
          h.update(buf.subarray(0, n));
          done += n;
        }
        if (`sha256:${h.digest('hex')}` !== p.digest) throw corrupt(`patch ${this.path}: payload ${i} does not match its digest (damaged)`);
      }
    } finally {
      await fh.close();
    }
  }

  /** A payload's bytes (checked against its digest again). */
  async payload(i: number): Promise<Buffer> {
    const p = this.index.payloads[i];
    if (!p) throw corrupt(`patch ${this.path}: no payload ${i}`);
    const fh = await fsp.open(this.path, 'r');
    try {
      const b = Buffer.alloc(p.length);
      const { bytesRead } = await fh.read(b, 0, p.length, this.offsets[i]);
      if (bytesRead !== p.length || `sha256:${sha256hex(b)}` !== p.digest) throw corrupt(`patch ${this.path}: payload ${i} is damaged`);
      return b;
    } finally {
      await fh.close();
    }
  }

  /** Where payload `i` lies in the file (for streaming large ones; the caller verifies). */
  payloadRange(i: number): { start: number; length: number; digest: string } {
    const p = this.index.payloads[i];
    if (!p) throw corrupt(`patch ${this.path}: no payload ${i}`);
    return { start: this.offsets[i], length: p.length, digest: p.digest };
  }
}
