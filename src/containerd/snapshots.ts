/**
 * The snapshot model of containerd's Snapshots API (kinds, infos, usage,
 * mounts, timestamps): the shared contract of d4fs's snapshotter, which
 * serves the API (src/snapshotter), and of the clients that call it
 * (./client.ts, ./snapshots-client.ts).
 */

/** Kind of a snapshot; the numbers are those of containerd's API enum. */
export enum Kind {
  Unknown = 0,
  /** Read-only snapshot of a committed parent. */
  View = 1,
  /** Writable snapshot, to be committed or removed. */
  Active = 2,
  /** Immutable snapshot; the only kind that can be a parent. */
  Committed = 3,
}

/** Lower-case name of a kind, as containerd's filters spell it ("active", ...). */
export function kindName(kind: Kind): string {
  switch (kind) {
    case Kind.View:
      return 'view';
    case Kind.Active:
      return 'active';
    case Kind.Committed:
      return 'committed';
    default:
      return 'unknown';
  }
}

/** A point in time with nanosecond precision (google.protobuf.Timestamp). */
export interface Timestamp {
  seconds: number;
  nanos: number;
}

/** Snapshot labels: string keys to string values. */
export type Labels = Record<string, string>;

/** What Stat, Update and List report about a snapshot. */
export interface SnapshotInfo {
  /** Key (active, view) or name (committed). */
  name: string;
  /** Name of the parent snapshot; '' for none. */
  parent: string;
  kind: Kind;
  labels: Labels;
  created: Timestamp;
  updated: Timestamp;
}

/** Disk resources a snapshot uses by itself (not counting its parents). */
export interface Usage {
  /** Distinct inodes. */
  inodes: number;
  /** Bytes allocated on disk (st_blocks * 512). */
  size: number;
}

/** One mount for the caller to perform (containerd.types.Mount). */
export interface Mount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}

/** Milliseconds-with-fraction wall clock → Timestamp. */
export function timestampFromMs(ms: number): Timestamp {
  const seconds = Math.floor(ms / 1000);
  const nanos = Math.min(999_999_999, Math.max(0, Math.round((ms - seconds * 1000) * 1e6)));
  return { seconds, nanos };
}

/** The current wall-clock time with sub-millisecond resolution. */
export function now(): Timestamp {
  return timestampFromMs(performance.timeOrigin + performance.now());
}

/** Comparison of two timestamps: negative, zero or positive. */
export function compareTimestamps(a: Timestamp, b: Timestamp): number {
  return a.seconds !== b.seconds ? a.seconds - b.seconds : a.nanos - b.nanos;
}
