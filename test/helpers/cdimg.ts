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
