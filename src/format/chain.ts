import { failedPrecondition } from '../errors';
import type { CdimgReader } from './reader';

/** Check that readers form a chain: a full image, then deltas each naming the previous as parent. */
export function checkChain(readers: CdimgReader[]): void {
  if (readers.length === 0) throw failedPrecondition('empty chain');
  if (readers[0].isDelta) throw failedPrecondition(`${readers[0].path} is a delta (parent ${readers[0].parentId}); the chain must start with a full image`);
  for (let i = 1; i < readers.length; i++) {
    const r = readers[i];
    if (!r.isDelta) throw failedPrecondition(`${r.path} is a full image, not a delta: it cannot follow ${readers[i - 1].path}`);
    if (r.parentId !== readers[i - 1].imageId) {
      throw failedPrecondition(`${r.path} does not apply to ${readers[i - 1].path}: it needs parent ${r.parentId}, that image is ${readers[i - 1].imageId}`);
    }
  }
}
