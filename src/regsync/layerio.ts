/**
 * Layer I/O shared by diff, apply and the incremental commands: download a
 * blob to a file, decompress a layer to its tar, each step verified against
 * its digest (the blob against the layer digest, the tar against the diff_id).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { zstdDecompressStream } from '../format/zstd';
import { classifyLayerError } from '../oci/image';
import type { LayerCompression } from '../oci/mediatypes';
import type { Descriptor, ImageSource } from '../oci/types';
import { VerifyingStream } from '../util/digest';

/** Download a blob into `path`, checked against its digest and size. */
export async function spoolBlob(source: ImageSource, desc: Descriptor, path: string, what: string): Promise<void> {
  const raw = await source.openBlob(desc);
  await pipeline(raw, new VerifyingStream(desc.digest, what, desc.size), createWriteStream(path));
}

/** Decompressor for a layer compression (a pass-through for uncompressed layers). */
function decompressor(c: LayerCompression): NodeJS.ReadWriteStream {
  if (c === 'gzip') return createGunzip({ chunkSize: 1 << 20 });
  if (c === 'zstd') return zstdDecompressStream();
  return new PassThrough();
}

/** Decompress a blob file into a tar file, checked against the diff_id. */
export async function decompressFile(blobPath: string, compression: LayerCompression, diffId: string, tarPath: string, what: string): Promise<void> {
  try {
    await pipeline(
      createReadStream(blobPath, { highWaterMark: 1 << 20 }),
      decompressor(compression),
      new VerifyingStream(diffId, `${what}: uncompressed content (diff_id)`),
      createWriteStream(tarPath),
    );
  } catch (e) {
    throw classifyLayerError(e as Error, what);
  }
}

/**
 * A layer's tar as a stream, verified on the way: the stored bytes against
 * the layer digest and the tar against the diff_id. A mismatch ends the
 * stream with a CORRUPT error (consumers must read to the end).
 */
export async function openLayerTar(source: ImageSource, desc: Descriptor, compression: LayerCompression, diffId: string, what: string): Promise<Readable> {
  const raw = await source.openBlob(desc);
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  pipeline(raw, new VerifyingStream(desc.digest, what, desc.size), decompressor(compression), new VerifyingStream(diffId, `${what}: uncompressed content (diff_id)`), out).catch(
    (e: Error) => out.destroy(classifyLayerError(e, what)),
  );
  return out;
}
