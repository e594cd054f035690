/**
 * The snapshot core: an overlayfs snapshotter with the behaviour of
 * containerd's own (snapshots/overlay), plus d4fs's remote-snapshot hook.
 *
 * Layout under `root`:
 *
 *     metadata.db            SQLite metadata (see metastore.ts)
 *     snapshots/<id>/fs      the snapshot's files (upper dir; for a remote
 *                            snapshot the mountpoint of its FUSE mount)
 *     snapshots/<id>/work    overlayfs work dir (active snapshots)
 *
 * Mounts returned to containerd:
 *
 *  - no parent: a bind mount of the snapshot's own fs dir, rw (active) or ro (view);
 *  - view with one parent: a read-only bind mount of the parent's fs dir;
 *  - otherwise overlay: lowerdir = parents' fs dirs, nearest first, plus
 *    upperdir/workdir for an active snapshot.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { alreadyExists, failedPrecondition, toD4fsError, unavailable } from '../errors';
import { D4FS_REMOTE, D4FS_STANDALONE, LABEL_TRUE, SNAPSHOT_OVERLAY_UPPERDIR, SNAPSHOT_REF } from '../labels';
import { type FileSystem, NoopFileSystem } from './filesystem';
import { parseFilters } from './filters';
import { MetaStore } from './metastore';
import { mountsUnder, unmount } from './mountinfo';
import { NoRemoteSnapshots, type RemoteSnapshotProvider } from './remote';
import { Kind, type Labels, type Mount, type SnapshotInfo, type SnapshotRecord, type Usage } from './types';
import { diskUsage } from './usage';

/** Options of OverlaySnapshotter.open. */
export interface OverlaySnapshotterOptions {
  /** Root directory (created 0700 if missing). */
  root: string;
  logger?: Logger;
  /** Filesystem of remote snapshots; defaults to NoopFileSystem. */
  fileSystem?: FileSystem;
  /** Remote-snapshot provider; defaults to NoRemoteSnapshots. */
  remote?: RemoteSnapshotProvider;
  /** Defer deleting directories of removed snapshots until Cleanup (containerd's AsynchronousRemove). */
  asyncRemove?: boolean;
  /** Report each snapshot's upper dir in the label containerd.io/snapshot/overlay.upperdir. */
  upperdirLabel?: boolean;
}

/** What reconcile() found and fixed. */
export interface ReconcileReport {
  /** Directories under snapshots/ without a record, removed. */
  removedDirs: string[];
  /** Keys of records whose directory was missing (and of their descendants), removed. */
  removedRecords: string[];
  /** Keys of remote snapshots that could not be mounted again. */
  unavailableRemote: string[];
}

const ZERO_USAGE: Usage = { inodes: 0, size: 0 };

/**
 * Labels callers may not set: the remote marker is the snapshot core's own
 * bookkeeping, and the upperdir label is computed when reported, never stored.
 */
const RESERVED_LABELS = [D4FS_REMOTE, D4FS_STANDALONE, SNAPSHOT_OVERLAY_UPPERDIR];

function withoutReserved(labels: Labels | undefined): Labels {
  const out: Labels = { ...(labels ?? {}) };
  for (const k of RESERVED_LABELS) delete out[k];
  return out;
}

const isRemote = (labels: Labels): boolean => labels[D4FS_REMOTE] === LABEL_TRUE;

/** True when this process runs in a user namespace other than the initial one. */
function runningInUserNS(): boolean {
  try {
    const map = fs.readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    return !(map[0] === '0' && map[1] === '0' && map[2] === '4294967295');
  } catch {
    return false;
  }
}

/**
 * Whether overlay mounts need "userxattr": only inside a user namespace, on
 * kernels (5.11+) where unprivileged overlay uses user.* xattrs.
 */
function needsUserXattr(): boolean {
  if (!runningInUserNS()) return false;
  const m = /^(\d+)\.(\d+)/.exec(fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8'));
  if (!m) return false;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > 5 || (maj === 5 && min >= 11);
}

/** containerd's overlayfs snapshotter, in TypeScript, with a pluggable remote-snapshot hook. */
export class OverlaySnapshotter {
  readonly root: string;
  readonly snapshotsDir: string;
  private readonly ms: MetaStore;
  private readonly log: Logger;
  private readonly fileSystem: FileSystem;
  private readonly remote: RemoteSnapshotProvider;
  private readonly asyncRemove: boolean;
  private readonly upperdirLabel: boolean;
  /** "index=off" is passed when the kernel knows the option. */
  private readonly indexOff: boolean;
  private readonly userxattr: boolean;
  private closed = false;

  private constructor(opts: OverlaySnapshotterOptions, ms: MetaStore) {
    this.root = path.resolve(opts.root);
    this.snapshotsDir = path.join(this.root, 'snapshots');
    this.ms = ms;
    this.log = opts.logger ?? pino({ level: 'silent' });
    this.fileSystem = opts.fileSystem ?? new NoopFileSystem();
    this.remote = opts.remote ?? new NoRemoteSnapshots();
    this.asyncRemove = opts.asyncRemove ?? false;
    this.upperdirLabel = opts.upperdirLabel ?? false;
    this.indexOff = fs.existsSync('/sys/module/overlay/parameters/index');
    this.userxattr = needsUserXattr();
  }

  /**
   * Opens the snapshotter at `opts.root`: creates the layout, opens the
   * metadata, reconciles directories with records and mounts remote
   * snapshots again.
   */
  static async open(opts: OverlaySnapshotterOptions): Promise<OverlaySnapshotter> {
    const root = path.resolve(opts.root);
    await fsp.mkdir(root, { recursive: true, mode: 0o700 });
    await fsp.mkdir(path.join(root, 'snapshots'), { recursive: true, mode: 0o700 });
    const ms = new MetaStore(path.join(root, 'metadata.db'));
    const s = new OverlaySnapshotter(opts, ms);
    try {
      const report = await s.reconcile();
      if (report.removedDirs.length || report.removedRecords.length || report.unavailableRemote.length) {
        s.log.warn(report, 'reconciled snapshot directories with metadata');
      }
    } catch (e) {
      ms.close();
      throw e;
    }
    return s;
  }

  /** The directory holding the files of snapshot `id`. */
  upperPath(id: string): string {
    return path.join(this.snapshotsDir, id, 'fs');
  }

  /** The overlayfs work directory of snapshot `id`. */
  workPath(id: string): string {
    return path.join(this.snapshotsDir, id, 'work');
  }

  private decorate(id: string, info: SnapshotInfo): SnapshotInfo {
    if (this.upperdirLabel) info.labels = { ...info.labels, [SNAPSHOT_OVERLAY_UPPERDIR]: this.upperPath(id) };
    return info;
  }

  /** Information of an active, view or committed snapshot. */
  async stat(key: string): Promise<SnapshotInfo> {
    const { id, info } = this.ms.get(key);
    return this.decorate(id, info);
  }

  /** Updates labels (see MetaStore.update); reserved labels cannot be changed. */
  async update(info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldpaths: readonly string[]): Promise<SnapshotInfo> {
    const updated = this.ms.update(info, fieldpaths, RESERVED_LABELS);
    const { id } = this.ms.get(updated.name);
    return this.decorate(id, updated);
  }

  /**
   * Disk usage of a snapshot by itself: measured now for an active snapshot,
   * recorded at commit for a committed one (zero for remote snapshots).
   */
  async usage(key: string, signal?: AbortSignal): Promise<Usage> {
    const { id, info, usage } = this.ms.get(key);
    if (info.kind === Kind.Active && !isRemote(info.labels)) return diskUsage(this.upperPath(id), signal);
    return usage;
  }

  /** Infos of the snapshots matching any of `filters` (containerd filter syntax). */
  async list(filters: readonly string[] = []): Promise<SnapshotInfo[]> {
    const filter = parseFilters(filters);
    const infos = this.ms.list(filter);
    if (!this.upperdirLabel) return infos;
    const ids = this.ms.idMap();
    const byKey = new Map([...ids].map(([id, key]) => [key, id]));
    return infos.map((i) => this.decorate(byKey.get(i.name) ?? '', i));
  }

  /**
   * Creates the active snapshot `key` on `parent`. When the labels carry
   * containerd.io/snapshot.ref and the remote provider supplies the snapshot,
   * it is committed under that name and ALREADY_EXISTS is thrown.
   */
  async prepare(key: string, parent: string, labels?: Labels, signal?: AbortSignal): Promise<Mount[]> {
    const own = withoutReserved(labels);
    const rec = await this.createSnapshot(Kind.Active, key, parent, own);
    const target = own[SNAPSHOT_REF];
    if (target && (await this.provideRemote(key, rec, own, target, signal))) {
      throw alreadyExists(`target snapshot ${JSON.stringify(target)}: already exists`);
    }
    return this.mountsFor(rec, signal);
  }

  /** Creates the read-only view `key` of `parent`. */
  async view(key: string, parent: string, labels?: Labels, signal?: AbortSignal): Promise<Mount[]> {
    const rec = await this.createSnapshot(Kind.View, key, parent, withoutReserved(labels));
    return this.mountsFor(rec, signal);
  }

  /** The mounts of an active or view snapshot. */
  async mounts(key: string, signal?: AbortSignal): Promise<Mount[]> {
    return this.mountsFor(this.ms.getSnapshot(key), signal);
  }

  /** Commits the active snapshot `key` as `name` with `labels` (which replace the active's labels). */
  async commit(name: string, key: string, labels?: Labels, signal?: AbortSignal): Promise<void> {
    const { id, info } = this.ms.get(key);
    const remote = isRemote(info.labels);
    const usage = info.kind === Kind.Active && !remote ? await diskUsage(this.upperPath(id), signal) : ZERO_USAGE;
    const own = withoutReserved(labels);
    if (remote) own[D4FS_REMOTE] = LABEL_TRUE;
    this.ms.commit(key, name, usage, own, id);
    this.log.debug({ key, name, id, usage }, 'committed snapshot');
  }

  /**
   * Removes a snapshot without children. Its directory is deleted at once
   * (unless asyncRemove), after unmounting a remote snapshot's filesystem.
   */
  async remove(key: string, signal?: AbortSignal): Promise<void> {
    const removed = this.ms.remove(key);
    this.log.debug({ key, id: removed.id }, 'removed snapshot');
    if (isRemote(removed.labels)) {
      try {
        await this.fileSystem.unmount(this.upperPath(removed.id), signal);
      } catch (e) {
        this.log.warn({ err: e, key, id: removed.id }, 'failed to unmount remote snapshot; its directory is kept for Cleanup');
      }
    }
    if (!this.asyncRemove) await this.removeOrphans();
  }

  /** Deletes the directories of removed or abandoned snapshots. */
  async cleanup(): Promise<void> {
    await this.removeOrphans();
  }

  /** Closes the metadata store; closing twice is harmless. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.ms.close();
  }

  /**
   * Brings directories and records back in line, as after a crash: removes
   * directories without records (and stale temporary ones), drops records
   * whose directory is gone together with their descendants, recreates a
   * missing work dir of an active snapshot, and mounts remote snapshots again.
   */
  async reconcile(): Promise<ReconcileReport> {
    const missing: string[] = [];
    const ids = this.ms.idMap();
    const infos = new Map(this.ms.list().map((i) => [i.name, i]));
    for (const [id, key] of ids) {
      if (!fs.existsSync(this.upperPath(id))) {
        missing.push(id);
        continue;
      }
      const info = infos.get(key);
      if (info?.kind === Kind.Active && !fs.existsSync(this.workPath(id))) {
        await fsp.mkdir(this.workPath(id), { mode: 0o711 });
      }
    }
    const removedRecords = missing.length ? this.ms.removeWithDescendants(missing) : [];
    if (removedRecords.length) this.log.warn({ removedRecords }, 'dropped snapshot records whose directory is missing');
    // After dropping records: their descendants' directories are orphans too.
    const removedDirs = await this.removeOrphans();

    const unavailableRemote: string[] = [];
    for (const info of this.ms.list()) {
      if (info.kind !== Kind.Committed || !isRemote(info.labels)) continue;
      const { id } = this.ms.get(info.name);
      try {
        await this.ensureRemoteMounted(id, info);
      } catch (e) {
        unavailableRemote.push(info.name);
        this.log.error({ err: e, key: info.name, id }, 'remote snapshot could not be mounted again');
      }
    }
    return { removedDirs, removedRecords, unavailableRemote };
  }

  // -------------------------------------------------------------------------

  /**
   * Creates the record and the directory of a new active or view snapshot.
   * The directory is built under a temporary name and renamed to its id
   * inside the metadata transaction; any failure undoes both.
   */
  private async createSnapshot(kind: Kind, key: string, parent: string, labels: Labels): Promise<SnapshotRecord> {
    // Owner of the parent's root directory, read asynchronously up front
    // (it may be a FUSE mount): the new upper dir gets the same owner.
    let parentOwner: { id: string; uid: number; gid: number } | undefined;
    if (parent !== '') {
      let p: ReturnType<MetaStore['get']> | undefined;
      try {
        p = this.ms.get(parent);
      } catch {
        p = undefined; // reported by the create transaction below
      }
      if (p && p.info.kind === Kind.Committed) {
        const st = await fsp.stat(this.upperPath(p.id));
        parentOwner = { id: p.id, uid: st.uid, gid: st.gid };
      }
    }
    const td = fs.mkdtempSync(path.join(this.snapshotsDir, 'new-'));
    try {
      fs.mkdirSync(path.join(td, 'fs'));
      fs.chmodSync(path.join(td, 'fs'), 0o755);
      if (kind === Kind.Active) {
        fs.mkdirSync(path.join(td, 'work'));
        fs.chmodSync(path.join(td, 'work'), 0o711);
      }
      return this.ms.create(kind, key, parent, {
        labels,
        inTransaction: (rec) => {
          if (rec.parentIds.length > 0) {
            if (!parentOwner || parentOwner.id !== rec.parentIds[0]) {
              throw failedPrecondition(`parent ${JSON.stringify(parent)} changed while ${JSON.stringify(key)} was being created`);
            }
            fs.lchownSync(path.join(td, 'fs'), parentOwner.uid, parentOwner.gid);
          }
          fs.renameSync(td, path.join(this.snapshotsDir, rec.id));
        },
      });
    } catch (e) {
      fs.rmSync(td, { recursive: true, force: true });
      throw e;
    }
  }

  /** Asks the remote provider for the snapshot; true when it is now committed as `target`. */
  private async provideRemote(key: string, rec: SnapshotRecord, labels: Labels, target: string, signal?: AbortSignal): Promise<boolean> {
    const mountpoint = this.upperPath(rec.id);
    let provided = false;
    let standalone = false;
    try {
      const answer = await this.remote.prepare(key, labels, { id: rec.id, mountpoint, parentIds: rec.parentIds, signal });
      provided = !!answer;
      standalone = typeof answer === 'object' && answer.standalone;
    } catch (e) {
      await this.unmountStale(mountpoint);
      const kind = toD4fsError(e).kind;
      if (kind === 'UNAUTHENTICATED' || kind === 'CORRUPT' || kind === 'HOSTILE') {
        // A refusal (no trusted signature, a damaged or forged file) is the
        // answer, not a reason to try another way: the Prepare fails with it
        // and its active snapshot goes, so nothing is mounted or left behind.
        this.log.warn({ err: e, key, target }, 'remote snapshot refused');
        await this.remove(key).catch((re: unknown) => this.log.warn({ err: re, key }, 'failed to remove the refused snapshot'));
        throw e;
      }
      this.log.warn({ err: e, key, target }, 'remote snapshot provider failed; falling back to unpacking');
      return false;
    }
    if (!provided) return false;
    try {
      // containerd finds the target by its label and its parent: the parent stays recorded even for a standalone snapshot
      this.ms.commit(key, target, ZERO_USAGE, { ...labels, [D4FS_REMOTE]: LABEL_TRUE, ...(standalone ? { [D4FS_STANDALONE]: LABEL_TRUE } : {}) }, rec.id);
      this.log.info({ key, target, id: rec.id }, 'remote snapshot prepared and committed');
      return true;
    } catch (e) {
      const err = toD4fsError(e);
      await this.fileSystem.unmount(mountpoint, signal).catch((ue: unknown) => this.log.warn({ err: ue, mountpoint }, 'unmount failed'));
      await this.unmountStale(mountpoint);
      if (err.kind === 'ALREADY_EXISTS') {
        // The target appeared meanwhile: it stands, our active snapshot goes.
        await this.remove(key).catch((re: unknown) => this.log.warn({ err: re, key }, 'failed to remove superseded snapshot'));
        return true;
      }
      this.log.warn({ err, key, target }, 'committing remote snapshot failed; falling back to unpacking');
      return false;
    }
  }

  /** Checks remote parents, then builds the mounts of `rec`. */
  private async mountsFor(rec: SnapshotRecord, signal?: AbortSignal): Promise<Mount[]> {
    if (rec.parentIds.length === 0) return this.buildMounts(rec);
    const infos = this.ms.infosById(rec.parentIds);
    // a standalone parent holds the whole tree: the layers below it are not stacked
    const parentIds: string[] = [];
    for (const id of rec.parentIds) {
      parentIds.push(id);
      if (infos.get(id)?.labels[D4FS_STANDALONE] === LABEL_TRUE) break;
    }
    for (const id of parentIds) {
      const info = infos.get(id);
      if (!info || !isRemote(info.labels)) continue;
      await this.remote.ensureParent?.(info.name, signal);
      await this.ensureRemoteMounted(id, info, signal);
    }
    return this.buildMounts({ ...rec, parentIds });
  }

  /** Resolves when remote snapshot `id` is served; mounts it again if its check fails. */
  private async ensureRemoteMounted(id: string, info: SnapshotInfo, signal?: AbortSignal): Promise<void> {
    const mountpoint = this.upperPath(id);
    try {
      await this.fileSystem.check(mountpoint, info.labels, signal);
      return;
    } catch (e) {
      this.log.warn({ err: e, key: info.name, id }, 'remote snapshot check failed; mounting it again');
    }
    try {
      // The snapshot's name, not a label (labels can be updated), says which snapshot it is.
      await this.fileSystem.mount(mountpoint, { ...info.labels, [SNAPSHOT_REF]: info.name }, signal);
    } catch (e) {
      throw unavailable(`remote snapshot ${JSON.stringify(info.name)} is not available: ${toD4fsError(e).message}`, e);
    }
  }

  /** containerd overlayfs snapshotter's mounts, option for option. */
  private buildMounts(rec: SnapshotRecord): Mount[] {
    if (rec.parentIds.length === 0) {
      return [{ type: 'bind', source: this.upperPath(rec.id), options: [rec.kind === Kind.View ? 'ro' : 'rw', 'rbind'] }];
    }
    const options: string[] = [];
    if (this.indexOff) options.push('index=off');
    if (this.userxattr) options.push('userxattr');
    if (rec.kind === Kind.Active) {
      options.push(`workdir=${this.workPath(rec.id)}`, `upperdir=${this.upperPath(rec.id)}`);
    } else if (rec.parentIds.length === 1) {
      return [{ type: 'bind', source: this.upperPath(rec.parentIds[0]), options: ['ro', 'rbind'] }];
    }
    options.push(`lowerdir=${rec.parentIds.map((id) => this.upperPath(id)).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', options }];
  }

  /**
   * Deletes every entry of snapshots/ without a record. The directory is
   * listed before the records are read, so a snapshot created meanwhile is
   * never taken for an orphan. Returns the paths removed.
   */
  private async removeOrphans(): Promise<string[]> {
    const names = await fsp.readdir(this.snapshotsDir);
    const ids = this.ms.idMap();
    const removed: string[] = [];
    for (const name of names) {
      if (ids.has(name)) continue;
      const dir = path.join(this.snapshotsDir, name);
      if (await this.removeDir(dir)) removed.push(dir);
    }
    return removed;
  }

  /** Unmounts whatever is left mounted at or under `dir` (lazily as a last resort). */
  private async unmountStale(dir: string): Promise<void> {
    for (const m of await mountsUnder(dir)) {
      try {
        await this.fileSystem.unmount(m);
      } catch {
        /* fall through to umount */
      }
      if ((await mountsUnder(m)).includes(m)) {
        await unmount(m, { lazy: true }).catch((e: unknown) => this.log.warn({ err: e, mountpoint: m }, 'lazy unmount failed'));
      }
    }
  }

  /**
   * Deletes a snapshot directory, never descending into a mount: stale
   * mounts inside are unmounted first, and if one stays the directory is
   * kept (and retried by the next Cleanup). True when deleted.
   */
  private async removeDir(dir: string): Promise<boolean> {
    await this.unmountStale(dir);
    const left = await mountsUnder(dir);
    if (left.length > 0) {
      this.log.warn({ dir, mounts: left }, 'not removing snapshot directory: something is still mounted inside');
      return false;
    }
    try {
      await fsp.rm(dir, { recursive: true, force: true });
      return true;
    } catch (e) {
      this.log.warn({ err: e, dir }, 'failed to remove snapshot directory');
      return false;
    }
  }
}
