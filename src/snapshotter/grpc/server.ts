/**
 * The gRPC face of the snapshot core: containerd's Snapshots service on a
 * unix socket. Every handler runs under a deadline (the caller's, capped by
 * the configured request timeout) and every error leaves through one
 * function, toStatus, which maps it to a gRPC status with grpcCodeOf.
 */
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { D4fsError, errorToWire, grpcCodeOf, toD4fsError } from '../../errors';
import type { OverlaySnapshotter } from '../overlay';
import { snapshotsService } from '../../containerd/proto';
import {
  type CleanupRequest,
  type CommitRequest,
  type Empty,
  type InfoResponse,
  type KeyRequest,
  type ListRequest,
  type ListResponse,
  type MountsResponse,
  type PrepareRequest,
  type UpdateRequest,
  type UsageResponse,
  type ViewRequest,
  infoFromPb,
  infoToPb,
  mountToPb,
  required,
} from '../../containerd/snapshots-wire';

/** Default cap on the time one request may take. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;

/** Infos per List response message (containerd's service batches likewise). */
const LIST_BATCH = 100;

export interface ServiceOptions {
  snapshotter: OverlaySnapshotter;
  logger: Logger;
  /** Cap on each request's duration, ms (default DEFAULT_REQUEST_TIMEOUT_MS). */
  requestTimeoutMs?: number;
}

/** The single translation of any error into a gRPC status. */
export function toStatus(e: unknown): Partial<grpc.StatusObject> {
  const err = toD4fsError(e);
  // containerd passes a proxy plugin's error on through its own error kinds,
  // which have no "unauthenticated", "permission denied" or "data loss": those
  // travel with their kind in the text ({@link errorToWire}), so that
  // `ctr-cli load` still exits 9, 10 or 6 (errorFromWire on its side).
  const details = TAGGED_KINDS.has(err.kind) ? errorToWire(err).message : err.message;
  return { code: grpcCodeOf(err) as grpc.status, details, metadata: new grpc.Metadata() };
}

const TAGGED_KINDS: ReadonlySet<string> = new Set(['UNAUTHENTICATED', 'PERMISSION_DENIED', 'CORRUPT']);

/** Milliseconds left before the call's deadline, capped at `capMs`. */
function budgetMs(call: { getDeadline(): grpc.Deadline }, capMs: number): number {
  const d = call.getDeadline();
  const at = d instanceof Date ? d.getTime() : Number(d);
  if (!Number.isFinite(at)) return capMs;
  return Math.max(0, Math.min(capMs, at - Date.now()));
}

/** What every handler of the service needs: the log and the cap on a request's duration. */
interface HandlerCtx {
  log: Logger;
  /** Cap on each request's duration, ms. */
  cap: number;
}

/**
 * Runs `fn` with an AbortSignal that fires at the deadline (the call's,
 * capped at `cap` ms) or when the client cancels; the result is
 * DEADLINE_EXCEEDED then, even if `fn` does not stop by itself.
 */
async function withDeadline<T>(
  method: string,
  call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
  cap: number,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const ms = budgetMs(call, cap);
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    const fail = (why: string) => {
      const err = new D4fsError('DEADLINE_EXCEEDED', `${method}: ${why}`);
      ac.abort(err);
      reject(err);
    };
    timer = setTimeout(() => fail(`deadline of ${ms} ms exceeded`), ms);
    call.on('cancelled', () => fail('cancelled by the client'));
  });
  expired.catch(() => undefined);
  try {
    return await Promise.race([fn(ac.signal), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** A unary handler: `fn` under the deadline, logged, its error answered through toStatus. */
function unaryHandler<Req, Res>(h: HandlerCtx, method: string, fn: (req: Req, signal: AbortSignal) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  const { log, cap } = h;
  return (call, callback) => {
    const t0 = process.hrtime.bigint();
    withDeadline(method, call as grpc.ServerUnaryCall<unknown, unknown>, cap, (signal) => fn(call.request, signal)).then(
      (res) => {
        log.debug({ method, req: call.request, ms: Number(process.hrtime.bigint() - t0) / 1e6 }, 'ok');
        callback(null, res);
      },
      (e: unknown) => {
        const status = toStatus(e);
        const code = grpc.status[status.code ?? grpc.status.UNKNOWN];
        if (status.code === grpc.status.INTERNAL || status.code === grpc.status.DATA_LOSS) {
          log.error({ method, req: call.request, code, err: e }, 'failed');
        } else {
          log.debug({ method, req: call.request, code, error: status.details }, 'failed');
        }
        callback(status);
      },
    );
  };
}

/** The List handler: the snapshots matching the filters, LIST_BATCH infos a message. */
function listHandler(sn: OverlaySnapshotter, h: HandlerCtx): grpc.handleServerStreamingCall<ListRequest, ListResponse> {
  const { log, cap } = h;
  return (call: grpc.ServerWritableStream<ListRequest, ListResponse>) => {
    withDeadline('List', call as grpc.ServerWritableStream<unknown, unknown>, cap, async () => {
      const infos = await sn.list(call.request.filters ?? []);
      for (let i = 0; i < infos.length; i += LIST_BATCH) {
        call.write({ info: infos.slice(i, i + LIST_BATCH).map(infoToPb) });
      }
      return infos.length;
    }).then(
      (n) => {
        log.debug({ method: 'List', filters: call.request.filters, count: n }, 'ok');
        call.end();
      },
      (e: unknown) => {
        const status = toStatus(e);
        log.debug({ method: 'List', filters: call.request.filters, code: grpc.status[status.code ?? grpc.status.UNKNOWN], error: status.details }, 'failed');
        call.emit('error', status);
      },
    );
  };
}

/** The Snapshots service implementation for grpc.Server.addService. */
export function createSnapshotsService(opts: ServiceOptions): grpc.UntypedServiceImplementation {
  const sn = opts.snapshotter;
  const h: HandlerCtx = { log: opts.logger, cap: opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS };
  const unary = <Req, Res>(method: string, fn: (req: Req, signal: AbortSignal) => Promise<Res>): grpc.handleUnaryCall<Req, Res> => unaryHandler(h, method, fn);
  const empty = (): Empty => ({});

  return {
    Prepare: unary<PrepareRequest, MountsResponse>('Prepare', async (r, signal) => ({
      mounts: (await sn.prepare(r.key, r.parent, r.labels, signal)).map(mountToPb),
    })),
    View: unary<ViewRequest, MountsResponse>('View', async (r, signal) => ({
      mounts: (await sn.view(r.key, r.parent, r.labels, signal)).map(mountToPb),
    })),
    Mounts: unary<KeyRequest, MountsResponse>('Mounts', async (r, signal) => ({
      mounts: (await sn.mounts(r.key, signal)).map(mountToPb),
    })),
    Commit: unary<CommitRequest, Empty>('Commit', async (r, signal) => {
      await sn.commit(r.name, r.key, r.labels, signal);
      return empty();
    }),
    Remove: unary<KeyRequest, Empty>('Remove', async (r, signal) => {
      await sn.remove(r.key, signal);
      return empty();
    }),
    Stat: unary<KeyRequest, InfoResponse>('Stat', async (r) => ({ info: infoToPb(await sn.stat(r.key)) })),
    Update: unary<UpdateRequest, InfoResponse>('Update', async (r) => {
      if (!r.info) throw new D4fsError('INVALID_ARGUMENT', 'info must be set');
      const info = infoFromPb(r.info);
      required(info.name, 'info.name');
      return { info: infoToPb(await sn.update(info, r.update_mask?.paths ?? [])) };
    }),
    Usage: unary<KeyRequest, UsageResponse>('Usage', async (r, signal) => {
      const u = await sn.usage(r.key, signal);
      return { size: String(u.size), inodes: String(u.inodes) };
    }),
    Cleanup: unary<CleanupRequest, Empty>('Cleanup', async () => {
      await sn.cleanup();
      return empty();
    }),
    List: listHandler(sn, h),
  };
}

/** A running server. */
export interface SnapshotterServer {
  readonly server: grpc.Server;
  /** Path of the unix socket. */
  readonly socket: string;
  /** Stops accepting calls, waits up to `graceMs` for running ones, then closes. */
  shutdown(graceMs?: number): Promise<void>;
}

/**
 * Serves the snapshotter on the unix socket `socket` (which must not exist).
 * The socket is made accessible to its owner and group only.
 */
export async function serveSnapshotter(socket: string, opts: ServiceOptions): Promise<SnapshotterServer> {
  const server = new grpc.Server();
  server.addService(snapshotsService().service, createSnapshotsService(opts));
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  fs.chmodSync(socket, 0o660);
  let stopped: Promise<void> | undefined;
  return {
    server,
    socket,
    shutdown(graceMs = 5000) {
      stopped ??= new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      return stopped;
    },
  };
}
