/** The report every delta command prints: what changed, what it costs, what it saves. */
import { Encoding, Entry, FileType, Index, ImageInfo, type InsertedEntry } from '../format/types';

export interface DeltaSummary {
  output: string;
  imageId: string;
  parentId: string;
  files: { same: number; patched: number; full: number; removed: number };
  contents: { same: number; patched: number; full: number; auxiliary: number };
  deltaBytes: number;
  /** What `docker pull` of the new image moves when the old one is present: its layers the old image lacks. */
  plainPullBytes: number;
  /** All compressed layers of the new image (a pull onto an empty machine). */
  newImageLayerBytes: number;
  /** 1 - deltaBytes / plainPullBytes, in percent. */
  savingPercent: number;
  seconds: number;
}

export function layerBytesNotIn(image: ImageInfo, parent?: ImageInfo): number {
  const have = new Set((parent?.layers ?? []).map((l) => l.digest));
  return image.layers.filter((l) => !have.has(l.digest)).reduce((n, l) => n + l.size, 0);
}

/**
 * Summarize a delta index. `parentEntries` (the old tree) gives the removed
 * count when known; without it (merge) removal is counted from parentImage-less data as 0.
 */
export function summarizeDelta(index: Index, fileSize: number, parentEntries: Entry[] | undefined, seconds: number, output: string): DeltaSummary {
  const enc = new Map(index.blobs.map((b) => [b.digest.toString('hex'), b.encoding]));
  const used = new Set<string>();
  const files = { same: 0, patched: 0, full: 0, removed: 0 };
  const paths = new Set<string>();
  // a merge of version 2 deltas without their base knows only the entries its edit script inserts
  for (const e of index.treeEdit?.inserted ?? index.entries) {
    paths.add(e.path);
    if (e.type !== FileType.REG) continue;
    if (e.digest.length === 0 && (e as InsertedEntry).parentRef !== undefined) {
      files.same++; // its content is the base's, by reference (a merge without the base's tree)
      continue;
    }
    const k = e.digest.toString('hex');
    used.add(k);
    const x = enc.get(k);
    if (x === Encoding.SAME) files.same++;
    else if (x === Encoding.PATCH) files.patched++;
    else files.full++;
  }
  if (parentEntries) files.removed = parentEntries.filter((e) => (e.type === FileType.REG || e.type === FileType.HARDLINK) && !paths.has(e.path)).length;
  const contents = { same: 0, patched: 0, full: 0, auxiliary: 0 };
  for (const b of index.blobs) {
    if (!used.has(b.digest.toString('hex'))) contents.auxiliary++;
    else if (b.encoding === Encoding.SAME) contents.same++;
    else if (b.encoding === Encoding.PATCH) contents.patched++;
    else contents.full++;
  }
  return deltaSummaryOf(index, fileSize, files, contents, seconds, output);
}

/** The report of a delta whose file and content counts are known (`cdimg diff` counts them from its plan, without a pass over the entries). */
export function deltaSummaryOf(index: Pick<Index, 'image' | 'parentImage' | 'imageId' | 'parentId'>, fileSize: number, files: DeltaSummary['files'], contents: DeltaSummary['contents'], seconds: number, output: string): DeltaSummary {
  const plainPullBytes = layerBytesNotIn(index.image, index.parentImage);
  return {
    output,
    imageId: `sha256:${index.imageId.toString('hex')}`,
    parentId: `sha256:${index.parentId.toString('hex')}`,
    files,
    contents,
    deltaBytes: fileSize,
    plainPullBytes,
    newImageLayerBytes: layerBytesNotIn(index.image),
    savingPercent: plainPullBytes > 0 ? 100 * (1 - fileSize / plainPullBytes) : 0,
    seconds,
  };
}
