/** Reading test .cdimg files. */
import { CdimgReader } from '../../src/format/reader';

/** sha256 hex of the regular file at `rel` in a full .cdimg. */
export async function fileDigestIn(cdimg: string, rel: string): Promise<string> {
  const r = await CdimgReader.open(cdimg);
  try {
    const e = r.byPath.get(rel);
    if (!e?.digest) throw new Error(`${rel} is not a regular file in ${cdimg}`);
    return e.digest.toString('hex');
  } finally {
    await r.close();
  }
}

/**
 * The reader of the last file of a chain (full image first), its tree known
 * (a version 2 delta opened alone has only its edit script); closing it
 * closes the whole chain.
 */
export async function openTop(paths: string[]): Promise<CdimgReader> {
  const readers = await CdimgReader.openChain(paths);
  const top = readers[readers.length - 1];
  const close = top.close.bind(top);
  top.close = async () => {
    await Promise.all(readers.slice(0, -1).map((r) => r.close()));
    await close();
  };
  return top;
}
