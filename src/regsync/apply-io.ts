/**
 * `registry apply`, its byte plumbing (./apply.ts runs the phases): hashed
 * file writes, payload ranges, old blobs as stored, layer tars assembled from
 * a skeleton and contents, and contents captured from an old layer's tar.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { corrupt } from '../errors';
import type { ImageSource } from '../oci/types';
import type { SetLayer } from './imageset';
import { TarSplitter } from './tarsplit';

/** Write a stream to a file, returning digest and size. */
export async function writeHashed(chunks: AsyncIterable<Buffer>, out: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  const ws = createWriteStream(out);
  try {
    for await (const c of chunks) {
      h.update(c);
      size += c.length;
      if (!ws.write(c)) await new Promise<void>((r) => ws.once('drain', () => r()));
    }
    ws.end();
    await finished(ws);
  } catch (e) {
    ws.destroy();
    throw e;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

/** Chunks of a file range. */
export async function* fileRange(p: string, start: number, length: number): AsyncGenerator<Buffer> {
  if (length === 0) return;
  for await (const c of createReadStream(p, { start, end: start + length - 1, highWaterMark: 1 << 20 })) yield c as Buffer;
}

/** A layer blob of the old set, as stored. */
export async function* streamOf(source: ImageSource, layer: SetLayer): AsyncGenerator<Buffer> {
  for await (const c of await source.openBlob(layer.desc)) yield c as Buffer;
}

/** The tar of a rebuilt layer: skeleton runs and file contents interleaved. */
export async function* assembleTar(skeleton: Buffer, runs: number[], files: { path: string; size: number }[]): AsyncGenerator<Buffer> {
  let pos = 0;
  for (let i = 0; i < runs.length; i++) {
    if (runs[i] > 0) {
      yield skeleton.subarray(pos, pos + runs[i]);
      pos += runs[i];
    }
    if (i < files.length) {
      let n = 0;
      for await (const c of createReadStream(files[i].path, { highWaterMark: 1 << 20 })) {
        n += (c as Buffer).length;
        yield c as Buffer;
      }
      if (n !== files[i].size) throw corrupt(`content ${files[i].path} has ${n} bytes, expected ${files[i].size}`);
    }
  }
}

/** A byte range of a tar to capture into a file, verified by digest. */
export interface Capture {
  offset: number;
  size: number;
  digest: string;
  out: string;
}

/**
 * Read a (verified) tar stream to its end, writing the given ranges to files
 * (each checked against its digest) and, when asked, collecting the skeleton.
 */
export async function extractFromTar(tar: Readable, captures: Capture[], wantSkeleton: boolean, what: string): Promise<{ skeleton?: Buffer }> {
  const skel: Buffer[] = [];
  const splitter = wantSkeleton
    ? new TarSplitter({ raw: (b) => skel.push(Buffer.from(b)), fileStart: () => undefined, fileData: () => undefined, fileEnd: () => undefined })
    : undefined;
  let pos = 0;
  let k = 0;
  let cur: { c: Capture; hash: ReturnType<typeof createHash>; parts: Buffer[]; got: number } | undefined;
  const flush = async (): Promise<void> => {
    if (!cur) return;
    const d = `sha256:${cur.hash.digest('hex')}`;
    if (d !== cur.c.digest) throw corrupt(`${what}: bytes at ${cur.c.offset} hash to ${d}, the patch expects ${cur.c.digest}`);
    await fsp.writeFile(cur.c.out, Buffer.concat(cur.parts));
    cur = undefined;
  };
  for await (const chunk of tar) {
    const b = chunk as Buffer;
    splitter?.write(b);
    let i = 0;
    while (i < b.length) {
      if (!cur && k < captures.length && pos + i >= captures[k].offset) cur = { c: captures[k++], hash: createHash('sha256'), parts: [], got: 0 };
      if (cur) {
        const take = Math.min(cur.c.size - cur.got, b.length - i);
        const part = b.subarray(i, i + take);
        cur.hash.update(part);
        cur.parts.push(Buffer.from(part));
        cur.got += take;
        i += take;
        if (cur.got === cur.c.size) await flush();
      } else {
        const next = k < captures.length ? captures[k].offset - pos : b.length;
        i = Math.max(i, Math.min(b.length, next));
      }
    }
    pos += b.length;
  }
  splitter?.end();
  if (cur || k < captures.length) throw corrupt(`${what}: layer ends before the contents the patch takes from it`);
  return { skeleton: wantSkeleton ? Buffer.concat(skel) : undefined };
}
