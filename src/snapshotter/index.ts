/**
 * d4fs's containerd snapshotter: an overlayfs snapshotter with containerd's
 * semantics, SQLite metadata, a remote-snapshot hook for delta images and a
 * gRPC server implementing containerd's Snapshots service.
 */
export * from './types';
export { parseFilter, parseFilters, type Filter, type FieldAdaptor } from './filters';
export { MetaStore, snapshotAdaptor, normalizeLabels, validateLabels } from './metastore';
export { OverlaySnapshotter, type OverlaySnapshotterOptions, type ReconcileReport } from './overlay';
export { type FileSystem, NoopFileSystem } from './filesystem';
export { type RemoteSnapshotProvider, type RemotePrepareTarget, NoRemoteSnapshots, FileSystemRemoteProvider } from './remote';
export { diskUsage } from './usage';
export { mountsUnder, unmount } from './mountinfo';
export { DEFAULT_CONFIG, DEFAULT_STORE, loadConfigFile, resolveConfig, storesOf, type SnapshotterConfig } from './config';
export { checkSocketDir, ensureSocketDir } from './sockdir';
export { createLogger } from './log';
export { serveSnapshotter, createSnapshotsService, toStatus, DEFAULT_REQUEST_TIMEOUT_MS, type SnapshotterServer } from './grpc/server';
export { SnapshotsClient, fromGrpcError } from '../containerd/snapshots-client';
export { snapshotsService, SNAPSHOTS_SERVICE } from '../containerd/proto';
export { runSnapshotter, type RunningSnapshotter } from './daemon';
