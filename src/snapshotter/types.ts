/**
 * The snapshot model of containerd (src/containerd/snapshots.ts), as d4fs's
 * snapshot core sees it, and the core's own record of a snapshot.
 */
import type { Kind } from '../containerd/snapshots';

export * from '../containerd/snapshots';

/**
 * Internal view of an active or view snapshot: its id (directory name) and
 * the ids of its committed ancestors, nearest parent first.
 */
export interface SnapshotRecord {
  id: string;
  kind: Kind;
  parentIds: string[];
}
