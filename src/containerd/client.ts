/**
 * A typed, promise-based client of containerd's gRPC API on its unix socket:
 * the content, images, leases and snapshots services, which is what
 * `ctr-cli load` needs to register a d4fs image.
 *
 * Every call carries the `containerd-namespace` header (containerd refuses
 * calls without one) and, on a client made with {@link ContainerdClient.withLease},
 * the `containerd-lease` header, so that what the call creates (blobs,
 * snapshots) belongs to the lease until it is deleted.
 *
 * Errors come back as D4fsError with the kind of the gRPC status code. When
 * containerd cannot be reached at all, the error is UNAVAILABLE with the
 * message "cannot reach containerd at ADDRESS (is it running? --address)".
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { D4fsError, permissionDenied, unavailable } from '../errors';
import { CallContext, Connection, isKind, unreachableMessage } from './calls';
import { type PbInfo, infoFromPb, mountFromPb } from './snapshots-wire';
import type { Labels, Mount, SnapshotInfo } from './snapshots';

export { containerdError, isKind, LEASE_HEADER, NAMESPACE_HEADER, unreachableMessage } from './calls';

/** containerd's default gRPC socket. */
export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock';
/** containerd's default namespace (the one `ctr` uses). */
export const DEFAULT_NAMESPACE = 'default';
/** Default deadline of one call. */
const DEFAULT_TIMEOUT_MS = 60_000;
/** Bytes sent per WRITE request of a content write session. */
const WRITE_CHUNK = 1024 * 1024;
/** Waiting for another writer's lock on a content ref: attempts and pause. */
const LOCKED_RETRIES = 50;
const LOCKED_RETRY_MS = 200;

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/** An OCI content descriptor. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** A committed blob of the content store. */
export interface ContentInfo {
  digest: string;
  size: number;
  labels: Labels;
  createdAt?: Date;
  updatedAt?: Date;
}

/** An image record: a name pointing at a manifest (or index) descriptor. */
export interface ImageRecord {
  name: string;
  labels: Labels;
  target: Descriptor;
  createdAt?: Date;
  updatedAt?: Date;
}

/** A lease. */
export interface Lease {
  id: string;
  labels: Labels;
  createdAt?: Date;
}

/** A resource held by a lease: type "content" (id: digest), "snapshots/<snapshotter>" (id: key) or "ingests" (id: ref). */
export interface LeaseResource {
  id: string;
  type: string;
}

/** Result of {@link ContentApi.writeBlob}. */
export interface WriteResult {
  /** True when the blob was already present (its labels were then updated). */
  existed: boolean;
}

export interface ContainerdClientOptions {
  /** containerd's gRPC socket (default /run/containerd/containerd.sock). */
  address?: string;
  /** Namespace of every call (default "default"). */
  namespace?: string;
  /** Deadline of each call, ms (default 60 s). */
  timeoutMs?: number;
}

// ---------------------------------------------------------------------------
// Wire shapes (as @grpc/proto-loader presents them: snake_case, int64 as string)
// ---------------------------------------------------------------------------

interface PbTimestamp {
  seconds: string | number;
  nanos: number;
}
interface PbDescriptor {
  media_type: string;
  digest: string;
  size: string | number;
  annotations: Record<string, string>;
}
interface PbImage {
  name: string;
  labels: Labels;
  target: PbDescriptor | null;
  created_at?: PbTimestamp | null;
  updated_at?: PbTimestamp | null;
}
interface PbContentInfo {
  digest: string;
  size: string | number;
  created_at?: PbTimestamp | null;
  updated_at?: PbTimestamp | null;
  labels: Labels;
}
interface PbLease {
  id: string;
  created_at?: PbTimestamp | null;
  labels: Labels;
}
interface PbWriteRequest {
  action: 'STAT' | 'WRITE' | 'COMMIT';
  ref: string;
  total?: number;
  expected?: string;
  offset?: number;
  data?: Buffer;
  labels?: Labels;
}
interface PbWriteResponse {
  action: string;
  offset: string | number;
  total: string | number;
  digest: string;
}

function dateFromPb(t: PbTimestamp | null | undefined): Date | undefined {
  if (!t) return undefined;
  const ms = Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6);
  return ms > 0 ? new Date(ms) : undefined;
}

function descriptorToPb(d: Descriptor): PbDescriptor {
  return { media_type: d.mediaType, digest: d.digest, size: String(d.size), annotations: d.annotations ?? {} };
}

function descriptorFromPb(d: PbDescriptor | null | undefined): Descriptor {
  const out: Descriptor = { mediaType: d?.media_type ?? '', digest: d?.digest ?? '', size: Number(d?.size ?? 0) };
  if (d?.annotations && Object.keys(d.annotations).length > 0) out.annotations = { ...d.annotations };
  return out;
}

function imageFromPb(i: PbImage): ImageRecord {
  return { name: i.name, labels: { ...(i.labels ?? {}) }, target: descriptorFromPb(i.target), createdAt: dateFromPb(i.created_at), updatedAt: dateFromPb(i.updated_at) };
}

function contentInfoFromPb(i: PbContentInfo): ContentInfo {
  return { digest: i.digest, size: Number(i.size), labels: { ...(i.labels ?? {}) }, createdAt: dateFromPb(i.created_at), updatedAt: dateFromPb(i.updated_at) };
}

function leaseFromPb(l: PbLease): Lease {
  return { id: l.id, labels: { ...(l.labels ?? {}) }, createdAt: dateFromPb(l.created_at) };
}

// ---------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------

/** containerd's content store. */
export class ContentApi {
  constructor(private readonly ctx: CallContext) {}

  /** Information of a committed blob (NOT_FOUND when absent). */
  async info(digest: string): Promise<ContentInfo> {
    const r = await this.ctx.unary<{ info: PbContentInfo }>(this.ctx.conn.content, 'Info', { digest });
    return contentInfoFromPb(r.info);
  }

  /** Information of the blobs matching any of `filters` (containerd filter syntax). */
  async list(filters: string[] = []): Promise<ContentInfo[]> {
    const rs = await this.ctx.serverStream<{ info: PbContentInfo[] }>(this.ctx.conn.content, 'List', { filters });
    return rs.flatMap((r) => r.info.map(contentInfoFromPb));
  }

  /**
   * Sets labels of a blob. With no `paths`, `labels` are set one by one
   * (paths "labels.<key>", other labels are kept); pass ['labels'] to replace
   * them all. An empty value removes a label.
   */
  async update(digest: string, labels: Labels, paths?: string[]): Promise<ContentInfo> {
    const mask = paths ?? Object.keys(labels).map((k) => `labels.${k}`);
    const r = await this.ctx.unary<{ info: PbContentInfo }>(this.ctx.conn.content, 'Update', { info: { digest, labels }, update_mask: { paths: mask } });
    return contentInfoFromPb(r.info);
  }

  /** Deletes a blob. */
  async delete(digest: string): Promise<void> {
    await this.ctx.unary(this.ctx.conn.content, 'Delete', { digest });
  }

  /** Abandons the ongoing write `ref` (NOT_FOUND when there is none). */
  async abort(ref: string): Promise<void> {
    await this.ctx.unary(this.ctx.conn.content, 'Abort', { ref });
  }

  /**
   * Writes `data` as the blob `desc` (digest and size are checked by
   * containerd at commit) with `labels`, through a Write session named
   * `ref`: STAT, WRITE in chunks, COMMIT. If the blob is already present,
   * containerd ends the session with ALREADY_EXISTS (and, under a lease,
   * adds the blob to it); `labels` are then applied with Update.
   */
  async writeBlob(desc: Pick<Descriptor, 'digest' | 'size'>, data: Buffer, labels: Labels = {}, ref = `d4fs-${desc.digest}`): Promise<WriteResult> {
    if (data.length !== desc.size) throw new D4fsError('INVALID_ARGUMENT', `writeBlob ${desc.digest}: ${data.length} bytes given for a descriptor of ${desc.size}`);
    // Another writer of the same blob holds the ref's lock: wait for it (it
    // usually ends with the blob present, hence ALREADY_EXISTS here).
    for (let attempt = 0; ; attempt++) {
      try {
        await this.writeSession(desc, data, labels, ref);
        return { existed: false };
      } catch (e) {
        if (isKind(e, 'ALREADY_EXISTS')) break;
        if (!(isKind(e, 'UNAVAILABLE') && /locked/.test((e as Error).message)) || attempt >= LOCKED_RETRIES) throw e;
        await new Promise((r) => setTimeout(r, LOCKED_RETRY_MS));
      }
    }
    if (Object.keys(labels).length > 0) await this.update(desc.digest, labels);
    return { existed: true };
  }

  /**
   * One Write session. A blob of at most one chunk (every blob a load writes)
   * goes in a single COMMIT message carrying its data, as containerd's Write
   * handles data before committing; a larger one is STAT, WRITE in chunks,
   * COMMIT.
   */
  private async writeSession(desc: Pick<Descriptor, 'digest' | 'size'>, data: Buffer, labels: Labels, ref: string): Promise<void> {
    const session = this.ctx.duplex<PbWriteRequest, PbWriteResponse>(this.ctx.conn.content, 'Write');
    try {
      if (data.length <= WRITE_CHUNK) {
        await session.request({ action: 'COMMIT', ref, total: desc.size, expected: desc.digest, offset: 0, data, labels });
        await session.close();
        return;
      }
      await session.request({ action: 'STAT', ref, total: desc.size, expected: desc.digest });
      let offset = 0;
      while (offset < data.length) {
        const chunk = data.subarray(offset, Math.min(data.length, offset + WRITE_CHUNK));
        const r = await session.request({ action: 'WRITE', ref, offset, data: chunk });
        offset += chunk.length;
        if (Number(r.offset) !== offset) throw new D4fsError('INTERNAL', `containerd Write ${ref}: at offset ${String(r.offset)}, expected ${offset}`);
      }
      await session.request({ action: 'COMMIT', ref, total: desc.size, expected: desc.digest, offset, labels });
      await session.close();
    } catch (e) {
      session.cancel();
      throw e;
    }
  }
}

/** containerd's image records. */
export class ImagesApi {
  constructor(private readonly ctx: CallContext) {}

  /** The record named `name` (NOT_FOUND when absent). */
  async get(name: string): Promise<ImageRecord> {
    const r = await this.ctx.unary<{ image: PbImage }>(this.ctx.conn.images, 'Get', { name });
    return imageFromPb(r.image);
  }

  /** Records matching any of `filters`. */
  async list(filters: string[] = []): Promise<ImageRecord[]> {
    const r = await this.ctx.unary<{ images: PbImage[] }>(this.ctx.conn.images, 'List', { filters });
    return r.images.map(imageFromPb);
  }

  /** Creates a record (ALREADY_EXISTS when the name is taken). */
  async create(image: Pick<ImageRecord, 'name' | 'target'> & { labels?: Labels }): Promise<ImageRecord> {
    const r = await this.ctx.unary<{ image: PbImage }>(this.ctx.conn.images, 'Create', { image: { name: image.name, labels: image.labels ?? {}, target: descriptorToPb(image.target) } });
    return imageFromPb(r.image);
  }

  /**
   * Updates a record: the fields named by `paths` ("target", "labels",
   * "labels.<key>", "annotations"); no paths: every mutable field.
   */
  async update(image: Pick<ImageRecord, 'name' | 'target'> & { labels?: Labels }, paths: string[] = []): Promise<ImageRecord> {
    const r = await this.ctx.unary<{ image: PbImage }>(this.ctx.conn.images, 'Update', {
      image: { name: image.name, labels: image.labels ?? {}, target: descriptorToPb(image.target) },
      update_mask: paths.length ? { paths } : null,
    });
    return imageFromPb(r.image);
  }

  /** Deletes a record; with `sync`, containerd's garbage collection has run when this resolves. */
  async delete(name: string, sync = false): Promise<void> {
    await this.ctx.unary(this.ctx.conn.images, 'Delete', { name, sync }, sync ? Math.max(this.ctx.timeoutMs, 5 * 60_000) : undefined);
  }
}

/** containerd's leases. */
export class LeasesApi {
  constructor(private readonly ctx: CallContext) {}

  /** Creates lease `id` (ALREADY_EXISTS when taken). */
  async create(id: string, labels: Labels = {}): Promise<Lease> {
    const r = await this.ctx.unary<{ lease: PbLease }>(this.ctx.conn.leases, 'Create', { id, labels });
    return leaseFromPb(r.lease);
  }

  /** Deletes lease `id`; with `sync`, garbage collection has run when this resolves. */
  async delete(id: string, sync = false): Promise<void> {
    await this.ctx.unary(this.ctx.conn.leases, 'Delete', { id, sync }, sync ? Math.max(this.ctx.timeoutMs, 5 * 60_000) : undefined);
  }

  /** Leases matching any of `filters`. */
  async list(filters: string[] = []): Promise<Lease[]> {
    const r = await this.ctx.unary<{ leases: PbLease[] }>(this.ctx.conn.leases, 'List', { filters });
    return r.leases.map(leaseFromPb);
  }

  /** Adds `resource` to lease `id`. */
  async addResource(id: string, resource: LeaseResource): Promise<void> {
    await this.ctx.unary(this.ctx.conn.leases, 'AddResource', { id, resource });
  }

  /** Removes `resource` from lease `id`. */
  async deleteResource(id: string, resource: LeaseResource): Promise<void> {
    await this.ctx.unary(this.ctx.conn.leases, 'DeleteResource', { id, resource });
  }

  /** The resources lease `id` holds. */
  async listResources(id: string): Promise<LeaseResource[]> {
    const r = await this.ctx.unary<{ resources: LeaseResource[] }>(this.ctx.conn.leases, 'ListResources', { id });
    return r.resources.map((x) => ({ id: x.id, type: x.type }));
  }
}

/**
 * containerd's snapshots service for one snapshotter. Keys are containerd's
 * (namespaced by its metadata layer), not the backend snapshotter's.
 */
export class SnapshotsApi {
  constructor(
    private readonly ctx: CallContext,
    readonly snapshotter: string,
  ) {}

  /**
   * Creates the active snapshot `key` on `parent`. With the label
   * containerd.io/snapshot.ref, a snapshotter that provides that snapshot
   * itself answers ALREADY_EXISTS (rejected as a D4fsError of that kind).
   */
  async prepare(key: string, parent = '', labels: Labels = {}, timeoutMs?: number): Promise<Mount[]> {
    const r = await this.ctx.unary<{ mounts: Parameters<typeof mountFromPb>[0][] }>(this.ctx.conn.snapshots, 'Prepare', { snapshotter: this.snapshotter, key, parent, labels }, timeoutMs);
    return r.mounts.map(mountFromPb);
  }

  /** Creates the read-only view `key` of `parent`. */
  async view(key: string, parent = '', labels: Labels = {}): Promise<Mount[]> {
    const r = await this.ctx.unary<{ mounts: Parameters<typeof mountFromPb>[0][] }>(this.ctx.conn.snapshots, 'View', { snapshotter: this.snapshotter, key, parent, labels });
    return r.mounts.map(mountFromPb);
  }

  /** The mounts of an active or view snapshot. */
  async mounts(key: string): Promise<Mount[]> {
    const r = await this.ctx.unary<{ mounts: Parameters<typeof mountFromPb>[0][] }>(this.ctx.conn.snapshots, 'Mounts', { snapshotter: this.snapshotter, key });
    return r.mounts.map(mountFromPb);
  }

  /** Commits the active snapshot `key` as `name`. */
  async commit(name: string, key: string, labels: Labels = {}): Promise<void> {
    await this.ctx.unary(this.ctx.conn.snapshots, 'Commit', { snapshotter: this.snapshotter, name, key, labels });
  }

  /** Information of snapshot `key` (NOT_FOUND when absent). */
  async stat(key: string): Promise<SnapshotInfo> {
    const r = await this.ctx.unary<{ info: PbInfo }>(this.ctx.conn.snapshots, 'Stat', { snapshotter: this.snapshotter, key });
    return infoFromPb(r.info);
  }

  /** Information of snapshot `key`, or undefined when it does not exist. */
  async find(key: string): Promise<SnapshotInfo | undefined> {
    try {
      return await this.stat(key);
    } catch (e) {
      if (isKind(e, 'NOT_FOUND')) return undefined;
      throw e;
    }
  }

  /** Removes snapshot `key`. */
  async remove(key: string): Promise<void> {
    await this.ctx.unary(this.ctx.conn.snapshots, 'Remove', { snapshotter: this.snapshotter, key });
  }

  /** Snapshots matching any of `filters`. */
  async list(filters: string[] = []): Promise<SnapshotInfo[]> {
    const rs = await this.ctx.serverStream<{ info: PbInfo[] }>(this.ctx.conn.snapshots, 'List', { snapshotter: this.snapshotter, filters });
    return rs.flatMap((r) => r.info.map(infoFromPb));
  }
}

/** A client of one containerd, in one namespace (and optionally under one lease). */
export class ContainerdClient {
  readonly content: ContentApi;
  readonly images: ImagesApi;
  readonly leases: LeasesApi;

  private constructor(
    private readonly ctx: CallContext,
    private readonly owner: boolean,
  ) {
    this.content = new ContentApi(ctx);
    this.images = new ImagesApi(ctx);
    this.leases = new LeasesApi(ctx);
  }

  /**
   * A client of the containerd at `opts.address`. Connecting is lazy: use
   * {@link ContainerdClient.connect} to fail early and clearly when
   * containerd is not there.
   */
  static create(opts: ContainerdClientOptions = {}): ContainerdClient {
    const address = path.resolve(opts.address ?? DEFAULT_CONTAINERD_ADDRESS);
    const namespace = opts.namespace ?? DEFAULT_NAMESPACE;
    if (!/^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/.test(namespace) || namespace.length > 76) {
      throw new D4fsError('INVALID_ARGUMENT', `invalid containerd namespace "${namespace.slice(0, 80)}"`);
    }
    return new ContainerdClient(new CallContext(new Connection(address), namespace, undefined, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS), true);
  }

  /** Creates a client and waits until its channel is connected (at most `timeoutMs`, default 5 s). */
  static async connect(opts: ContainerdClientOptions & { connectTimeoutMs?: number } = {}): Promise<ContainerdClient> {
    const c = ContainerdClient.create(opts);
    try {
      await c.ready(opts.connectTimeoutMs);
      return c;
    } catch (e) {
      c.close();
      throw e;
    }
  }

  /** containerd's socket. */
  get address(): string {
    return this.ctx.conn.address;
  }

  /** Namespace of the calls. */
  get namespace(): string {
    return this.ctx.namespace;
  }

  /** The lease new objects are created under, if any. */
  get lease(): string | undefined {
    return this.ctx.lease;
  }

  /** Resolves when the channel to containerd is connected; UNAVAILABLE otherwise. */
  async ready(timeoutMs = 5000): Promise<void> {
    const address = this.ctx.conn.address;
    try {
      fs.statSync(address);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EACCES') throw permissionDenied(`${unreachableMessage(address)}: permission denied`);
      throw unavailable(`${unreachableMessage(address)}: no such socket`, e);
    }
    // A plain connect first: a dead or wrong socket fails at once instead of
    // after gRPC's reconnect back-off has run out of time.
    await new Promise<void>((resolve, reject) => {
      const sock = net.connect(address);
      const timer = setTimeout(() => sock.destroy(new Error('connect timed out')), timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.destroy();
        resolve();
      });
      sock.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        sock.destroy();
        if (e.code === 'EACCES') reject(permissionDenied(`${unreachableMessage(address)}: permission denied`));
        else reject(unavailable(`${unreachableMessage(address)}: ${e.code ?? e.message}`, e));
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.ctx.conn.content.waitForReady(Date.now() + timeoutMs, (err) => {
        if (err) reject(unavailable(`${unreachableMessage(address)}: ${err.message}`, err));
        else resolve();
      });
    });
  }

  /** A client on the same connection whose calls carry the lease header `leaseId`. */
  withLease(leaseId: string): ContainerdClient {
    return new ContainerdClient(new CallContext(this.ctx.conn, this.ctx.namespace, leaseId, this.ctx.timeoutMs), false);
  }

  /** A client on the same connection in another namespace. */
  withNamespace(namespace: string): ContainerdClient {
    return new ContainerdClient(new CallContext(this.ctx.conn, namespace, this.ctx.lease, this.ctx.timeoutMs), false);
  }

  /** containerd's snapshots service for snapshotter `name` (e.g. "d4fs"). */
  snapshots(name: string): SnapshotsApi {
    return new SnapshotsApi(this.ctx, name);
  }

  /** Closes the connection (only the client made by create/connect owns it; views do nothing). */
  close(): void {
    if (this.owner) this.ctx.conn.close();
  }
}
