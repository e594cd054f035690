/**
 * `cdimg verify` as a library call: every stored chunk against its digest,
 * and every FULL content decoded (in the worker pool) and checked against
 * its chunk and content digests. PATCH contents need their base: they are
 * checked when built (patch, the FUSE filesystem). d4fs-server's cheaper
 * check of uploads, without decoding, is verifyStoredChunks in
 * src/server/blobs.ts.
 */
import { createHash } from 'node:crypto';
import { corrupt } from '../errors';
import { CdimgReader } from '../format/reader';
import { FORMAT_TASKS } from '../format/tasks';
import { Codec, Encoding } from '../format/types';
import { storedBytesOf } from '../format/group';
import { digestFromRaw } from '../util/digest';
import { mapLimit } from '../util/ordered';
import { WorkerPool } from '../workers/pool';

export interface VerifyResult {
  file: string;
  rootDigest: string;
  imageId: string;
  chunks: number;
  storedBytes: number;
  contentsVerified: number;
  patchChunks: number;
  /**
   * Whether the tree was rebuilt and the image id recomputed: false only for
   * a version 2 delta verified without its chain (its tree is an edit script
   * against its parent's; the store, the server and the FUSE manager check
   * it against the parent's before use).
   */
  treeChecked: boolean;
}

/** Verify a .cdimg file (see the module comment); CORRUPT when anything does not match. */
export async function verifyCdimg(path: string, threads?: number, chain: string[] = []): Promise<VerifyResult> {
  // the files below it (full image first): a version 2 delta gets its tree and its image id is checked
  const below = await CdimgReader.openChain(chain);
  const r = await CdimgReader.open(path, { parent: below.at(-1) }).finally(async () => Promise.all(below.map((b) => b.close())));
  const pool = new WorkerPool(threads);
  let chunks = 0;
  let storedBytes = 0;
  let contentsVerified = 0;
  let patchChunks = 0;
  try {
    await r.verifySection(); // every stored byte, before anything is decoded
    const blobs = r.index.blobs.filter((b) => b.encoding !== Encoding.SAME);
    await mapLimit(blobs, pool.threads * 2, async (b) => {
      const whole = createHash('sha256');
      let decodable = true;
      for (const c of b.chunks) {
        chunks++;
        if (c.codec === Codec.GROUP) {
          // a member of a solid group: its frame is read (once for the group) when a member is decoded
          if (b.encoding === Encoding.FULL) whole.update(await r.readFullChunk(c));
          else {
            decodable = false;
            patchChunks++;
          }
          continue;
        }
        const stored = await r.readStored(c);
        if (c.codec !== Codec.ZSTD) {
          decodable = false;
          patchChunks++;
          continue;
        }
        const raw = await pool.run(FORMAT_TASKS, 'decodeChunk', { stored, rawSize: c.rawSize, rawDigest: c.rawDigest.toString('hex') });
        whole.update(raw);
      }
      if (decodable) {
        if (!whole.digest().equals(b.digest)) throw corrupt(`${path}: content ${digestFromRaw(b.digest)} does not match its digest`);
        contentsVerified++;
      }
    });
    storedBytes = storedBytesOf(blobs);
    return { file: path, rootDigest: r.rootDigest, imageId: r.imageId, chunks, storedBytes, contentsVerified, patchChunks, treeChecked: r.hasTree };
  } catch (e) {
    const err = e as Error;
    if (!(err as { kind?: string }).kind) throw corrupt(`${path}: ${err.message}`, e);
    throw e;
  } finally {
    await r.close();
    await pool.close();
  }
}
