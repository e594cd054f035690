/**
 * The Snapshots service's messages as @grpc/proto-loader presents them
 * (snake_case fields, enum names, int64 as strings), and conversions to the
 * snapshot model (./snapshots.ts): shared by the snapshotter's gRPC server
 * and the clients.
 */
import { invalidArgument } from '../errors';
import { Kind, type Labels, type Mount, type SnapshotInfo, type Timestamp } from './snapshots';

export type PbKind = 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';

export interface PbTimestamp {
  seconds: string | number;
  nanos: number;
}

export interface PbInfo {
  name: string;
  parent: string;
  kind: PbKind | number;
  created_at: PbTimestamp | null;
  updated_at: PbTimestamp | null;
  labels: Labels;
}

export interface PbMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface PrepareRequest {
  snapshotter: string;
  key: string;
  parent: string;
  labels: Labels;
}
export type ViewRequest = PrepareRequest;
export interface MountsResponse {
  mounts: PbMount[];
}
export interface KeyRequest {
  snapshotter: string;
  key: string;
}
export interface CommitRequest {
  snapshotter: string;
  name: string;
  key: string;
  labels: Labels;
}
export interface InfoResponse {
  info: PbInfo;
}
export interface UpdateRequest {
  snapshotter: string;
  info: PbInfo | null;
  update_mask: { paths: string[] } | null;
}
export interface ListRequest {
  snapshotter: string;
  filters: string[];
}
export interface ListResponse {
  info: PbInfo[];
}
export interface UsageResponse {
  size: string | number;
  inodes: string | number;
}
export interface CleanupRequest {
  snapshotter: string;
}
export type Empty = Record<string, never>;

const KIND_NAMES: Record<Kind, PbKind> = {
  [Kind.Unknown]: 'UNKNOWN',
  [Kind.View]: 'VIEW',
  [Kind.Active]: 'ACTIVE',
  [Kind.Committed]: 'COMMITTED',
};

export function kindToPb(kind: Kind): PbKind {
  return KIND_NAMES[kind];
}

export function kindFromPb(kind: PbKind | number): Kind {
  if (typeof kind === 'number') return kind in KIND_NAMES ? (kind as Kind) : Kind.Unknown;
  switch (kind) {
    case 'VIEW':
      return Kind.View;
    case 'ACTIVE':
      return Kind.Active;
    case 'COMMITTED':
      return Kind.Committed;
    default:
      return Kind.Unknown;
  }
}

export function timestampToPb(t: Timestamp): PbTimestamp {
  return { seconds: String(t.seconds), nanos: t.nanos };
}

export function timestampFromPb(t: PbTimestamp | null | undefined): Timestamp {
  return t ? { seconds: Number(t.seconds), nanos: t.nanos ?? 0 } : { seconds: 0, nanos: 0 };
}

export function infoToPb(i: SnapshotInfo): PbInfo {
  return {
    name: i.name,
    parent: i.parent,
    kind: kindToPb(i.kind),
    created_at: timestampToPb(i.created),
    updated_at: timestampToPb(i.updated),
    labels: i.labels,
  };
}

export function infoFromPb(i: PbInfo): SnapshotInfo {
  return {
    name: i.name,
    parent: i.parent,
    kind: kindFromPb(i.kind),
    labels: { ...(i.labels ?? {}) },
    created: timestampFromPb(i.created_at),
    updated: timestampFromPb(i.updated_at),
  };
}

export function mountToPb(m: Mount): PbMount {
  return { type: m.type, source: m.source, target: m.target ?? '', options: m.options };
}

export function mountFromPb(m: PbMount): Mount {
  const out: Mount = { type: m.type, source: m.source, options: [...(m.options ?? [])] };
  if (m.target) out.target = m.target;
  return out;
}

/** A required string field; INVALID_ARGUMENT when empty. */
export function required(value: string | undefined, field: string): string {
  if (!value) throw invalidArgument(`${field} must not be empty`);
  return value;
}
