/**
 * A promise-based client of a Snapshots service on a unix socket (the
 * d4fs-snapshotter, or any containerd proxy snapshotter). gRPC errors come
 * back as D4fsError with the kind matching the status code.
 */
import * as grpc from '@grpc/grpc-js';
import { D4fsError, errorFromWire, type ErrorKind, GRPC_CODES } from '../errors';
import type { Labels, Mount, SnapshotInfo, Usage } from './snapshots';
import { snapshotsService } from './proto';
import {
  type CommitRequest,
  type InfoResponse,
  type KeyRequest,
  type ListRequest,
  type ListResponse,
  type MountsResponse,
  type PrepareRequest,
  type UpdateRequest,
  type UsageResponse,
  infoFromPb,
  infoToPb,
  mountFromPb,
} from './snapshots-wire';

/** gRPC status code → error kind (the first kind mapping to that code). */
const KIND_OF_CODE = new Map<number, ErrorKind>();
for (const [kind, code] of Object.entries(GRPC_CODES) as [ErrorKind, number][]) {
  if (!KIND_OF_CODE.has(code)) KIND_OF_CODE.set(code, kind);
}

/** Converts a gRPC client error into a D4fsError (kind from the status code). */
export function fromGrpcError(e: unknown, method: string): D4fsError {
  const se = e as Partial<grpc.ServiceError>;
  const code = typeof se.code === 'number' ? se.code : grpc.status.UNKNOWN;
  const kind = KIND_OF_CODE.get(code) ?? (code === grpc.status.CANCELLED ? 'DEADLINE_EXCEEDED' : 'INTERNAL');
  // a d4fs service's tagged error (see the snapshotter's toStatus): its kind and its plain message
  const tagged = /^\[d4fs:([A-Z_]+)\] /.test(se.details ?? '') ? errorFromWire(new Error(se.details)) : undefined;
  if (tagged && tagged.kind !== 'INTERNAL') return new D4fsError(tagged.kind, `${method}: ${tagged.message}`, { cause: e, detail: { grpcCode: code } });
  return new D4fsError(kind, `${method}: ${se.details ?? se.message ?? String(e)}`, { cause: e, detail: { grpcCode: code } });
}

export interface SnapshotsClientOptions {
  /** Name sent in the requests' `snapshotter` field (containerd sends the plugin name). */
  snapshotter?: string;
  /** Deadline of each call, ms (default 60 s). */
  timeoutMs?: number;
}

type Unary<Req, Res> = (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => void;

/** Client of containerd's Snapshots service. */
export class SnapshotsClient {
  private readonly client: grpc.Client;
  private readonly name: string;
  private readonly timeoutMs: number;

  /** `socket` is the path of the unix socket. */
  constructor(
    readonly socket: string,
    opts: SnapshotsClientOptions = {},
  ) {
    const Ctor = snapshotsService();
    this.client = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure());
    this.name = opts.snapshotter ?? 'd4fs';
    this.timeoutMs = opts.timeoutMs ?? 60_000;
  }

  private call<Req, Res>(method: string, req: Req): Promise<Res> {
    const fn = (this.client as unknown as Record<string, Unary<Req, Res>>)[method].bind(this.client);
    return new Promise((resolve, reject) => {
      fn(req, new grpc.Metadata(), { deadline: Date.now() + this.timeoutMs }, (err, res) => {
        if (err) reject(fromGrpcError(err, method));
        else resolve(res as Res);
      });
    });
  }

  /** Resolves once the channel is connected, or rejects after `timeoutMs`. */
  waitForReady(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())),
    );
  }

  async prepare(key: string, parent = '', labels: Labels = {}): Promise<Mount[]> {
    const r = await this.call<PrepareRequest, MountsResponse>('Prepare', { snapshotter: this.name, key, parent, labels });
    return r.mounts.map(mountFromPb);
  }

  async view(key: string, parent = '', labels: Labels = {}): Promise<Mount[]> {
    const r = await this.call<PrepareRequest, MountsResponse>('View', { snapshotter: this.name, key, parent, labels });
    return r.mounts.map(mountFromPb);
  }

  async mounts(key: string): Promise<Mount[]> {
    const r = await this.call<KeyRequest, MountsResponse>('Mounts', { snapshotter: this.name, key });
    return r.mounts.map(mountFromPb);
  }

  async commit(name: string, key: string, labels: Labels = {}): Promise<void> {
    await this.call<CommitRequest, unknown>('Commit', { snapshotter: this.name, name, key, labels });
  }

  async remove(key: string): Promise<void> {
    await this.call<KeyRequest, unknown>('Remove', { snapshotter: this.name, key });
  }

  async stat(key: string): Promise<SnapshotInfo> {
    const r = await this.call<KeyRequest, InfoResponse>('Stat', { snapshotter: this.name, key });
    return infoFromPb(r.info);
  }

  /** Update with a field mask; no paths means "all mutable fields". */
  async update(info: SnapshotInfo, paths: string[] = []): Promise<SnapshotInfo> {
    const r = await this.call<UpdateRequest, InfoResponse>('Update', {
      snapshotter: this.name,
      info: infoToPb(info),
      update_mask: { paths },
    });
    return infoFromPb(r.info);
  }

  async usage(key: string): Promise<Usage> {
    const r = await this.call<KeyRequest, UsageResponse>('Usage', { snapshotter: this.name, key });
    return { size: Number(r.size), inodes: Number(r.inodes) };
  }

  async cleanup(): Promise<void> {
    await this.call<{ snapshotter: string }, unknown>('Cleanup', { snapshotter: this.name });
  }

  /** All snapshots matching any of `filters`. */
  list(filters: string[] = []): Promise<SnapshotInfo[]> {
    return new Promise((resolve, reject) => {
      const out: SnapshotInfo[] = [];
      const list = (this.client as unknown as Record<string, (req: ListRequest, opts: grpc.CallOptions) => grpc.ClientReadableStream<ListResponse>>)
        .List;
      const stream = list.call(this.client, { snapshotter: this.name, filters }, { deadline: Date.now() + this.timeoutMs });
      stream.on('data', (r: ListResponse) => out.push(...r.info.map(infoFromPb)));
      stream.on('error', (e) => reject(fromGrpcError(e, 'List')));
      stream.on('end', () => resolve(out));
    });
  }

  close(): void {
    this.client.close();
  }
}
