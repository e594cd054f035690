/** Making and reading test .cdimg files. */
import { CdimgReader } from '../../src/format/reader';
import { writeSimpleImage } from '../../src/oci/writer';
import { buildTar } from '../../src/tar';

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

/**
 * A one-layer OCI image of `files` (and their directories) in the layout at `dir`, tagged `v`,
 * gzip-compressed; returns its reference for convertImage.
 */
export async function imageOfFiles(dir: string, files: { name: string; data: Buffer }[]): Promise<string> {
  const dirs = [...new Set(files.flatMap((f) => f.name.split('/').slice(0, -1).map((_, i, a) => a.slice(0, i + 1).join('/'))))].sort();
  await writeSimpleImage(dir, 'v', {
    layers: [buildTar([...dirs.map((name) => ({ header: { name: `${name}/`, type: 'dir' as const } })), ...files.map((f) => ({ header: { name: f.name, type: 'file' as const }, data: f.data }))])],
    compression: 'gzip',
  });
  return `oci:${dir}:v`;
}
