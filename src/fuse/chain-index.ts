/**
 * What the serving thread knows about a chain of .cdimg files (full image
 * first, then deltas): every file's blob table, to find where a content is
 * stored, and the top file's index, to build the tree. Files are opened (the
 * index verified against its root digest and validated), checked to form a
 * chain, and closed again: the worker threads read blobs themselves.
 */
import { checkChain } from '../delta/chain';
import { failedPrecondition } from '../errors';
import { CdimgReader } from '../format/reader';
import { type Blob, Encoding, type Index } from '../format/types';

/** Where a content is stored: the file, its level in the chain, its blob. */
export interface Location {
  file: string;
  level: number;
  blob: Blob;
}

export class ChainIndex {
  private constructor(
    readonly paths: readonly string[],
    private readonly blobs: ReadonlyArray<ReadonlyMap<string, Blob>>,
    /** The index of the top file (the image the chain leads to). */
    readonly top: Index,
    /** The image id the chain leads to (sha256:…). */
    readonly imageId: string,
    /** The image the top file is a delta from (undefined for a full image). */
    readonly parentId: string | undefined,
  ) {}

  /** Opens and checks the chain `paths` (full image first). */
  static async open(paths: readonly string[]): Promise<ChainIndex> {
    if (paths.length === 0) throw failedPrecondition('empty chain');
    let readers: CdimgReader[] = [];
    try {
      // The files are immutable and usually shared by several chains (a base image under its updates).
      readers = await CdimgReader.openChain(paths, { reuse: true });
      checkChain(readers);
      const top = readers[readers.length - 1];
      return new ChainIndex([...paths], readers.map((r) => r.blobs), top.index, top.imageId, top.parentId);
    } finally {
      await Promise.all(readers.map((r) => r.close()));
    }
  }

  /** The top level. */
  get topLevel(): number {
    return this.paths.length - 1;
  }

  /**
   * Where content `hex` (sha256 hex) is stored, looking from `fromLevel`
   * down (SAME entries defer to the levels below), as Chain.locate does.
   */
  locate(hex: string, fromLevel = this.topLevel): Location | undefined {
    for (let l = Math.min(fromLevel, this.topLevel); l >= 0; l--) {
      const b = this.blobs[l].get(hex);
      if (b && b.encoding !== Encoding.SAME) return { file: this.paths[l], level: l, blob: b };
    }
    return undefined;
  }
}
