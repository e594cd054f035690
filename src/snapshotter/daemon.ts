/**
 * Running d4fs-snapshotter as a daemon: directories, the socket (a stale one
 * is removed, a live one is refused), the snapshot core, the gRPC server, a
 * self-check call, and an orderly shutdown.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { D4fsError, failedPrecondition, toD4fsError } from '../errors';
import type { SnapshotterConfig } from './config';
import type { FileSystem } from './filesystem';
import { SnapshotsClient } from '../containerd/snapshots-client';
import { serveSnapshotter, type SnapshotterServer } from './grpc/server';
import { OverlaySnapshotter } from './overlay';
import type { RemoteSnapshotProvider } from './remote';
import { ensureSocketDir } from './sockdir';

/** A serving snapshotter. */
export interface RunningSnapshotter {
  readonly snapshotter: OverlaySnapshotter;
  readonly server: SnapshotterServer;
  /** Stops serving, closes the metadata and removes the socket. Idempotent. */
  shutdown(graceMs?: number): Promise<void>;
}

/** True when something accepts connections on the unix socket `socket`. */
function socketIsLive(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    const done = (live: boolean) => {
      c.destroy();
      resolve(live);
    };
    c.once('connect', () => done(true));
    c.once('error', () => done(false));
    c.setTimeout(2000, () => done(false));
  });
}

/** Removes a socket file no process listens on; refuses a live one or a non-socket. */
async function clearStaleSocket(socket: string, log: Logger): Promise<void> {
  let st: fs.Stats;
  try {
    st = await fsp.lstat(socket);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!st.isSocket()) throw failedPrecondition(`${socket} exists and is not a socket; refusing to replace it`);
  if (await socketIsLive(socket)) throw failedPrecondition(`another process is already serving on ${socket}`);
  await fsp.unlink(socket);
  log.info({ socket }, 'removed stale socket');
}

/**
 * Starts the snapshotter described by `cfg`. Resolves once the server has
 * answered a real call (Stat of a missing key → NOT_FOUND) on its socket.
 */
export async function runSnapshotter(
  cfg: SnapshotterConfig,
  log: Logger,
  plug: { fileSystem?: FileSystem; remote?: RemoteSnapshotProvider } = {},
): Promise<RunningSnapshotter> {
  await fsp.mkdir(cfg.root, { recursive: true, mode: 0o700 });
  // Created 0700 when missing; refused when another user owns it or others may write to it.
  await ensureSocketDir(path.dirname(cfg.address));
  await clearStaleSocket(cfg.address, log);

  const snapshotter = await OverlaySnapshotter.open({
    root: cfg.root,
    logger: log,
    asyncRemove: cfg.asyncRemove,
    upperdirLabel: cfg.upperdirLabel,
    fileSystem: plug.fileSystem,
    remote: plug.remote,
  });
  let server: SnapshotterServer;
  try {
    server = await serveSnapshotter(cfg.address, { snapshotter, logger: log, requestTimeoutMs: cfg.requestTimeoutMs });
  } catch (e) {
    await snapshotter.close();
    throw e;
  }

  let stopping: Promise<void> | undefined;
  const shutdown = (graceMs = 5000): Promise<void> => {
    stopping ??= (async () => {
      await server.shutdown(graceMs);
      await snapshotter.close();
      await fsp.unlink(cfg.address).catch(() => undefined);
      log.info('stopped');
    })();
    return stopping;
  };

  // Self-check: the server must answer a real call before we call it ready.
  const client = new SnapshotsClient(cfg.address, { timeoutMs: 10_000 });
  try {
    await client.stat('d4fs-readiness-probe/does-not-exist');
    throw failedPrecondition('readiness probe unexpectedly found its snapshot');
  } catch (e) {
    const err = toD4fsError(e);
    if (!(err instanceof D4fsError) || err.kind !== 'NOT_FOUND') {
      await shutdown(0);
      throw err;
    }
  } finally {
    client.close();
  }
  log.info({ root: cfg.root, address: cfg.address, stores: cfg.stores }, 'ready');
  return { snapshotter, server, shutdown };
}
