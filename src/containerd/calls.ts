/** The gRPC plumbing of the containerd client: errors of calls to containerd, the connection and its service stubs, calls with namespace/lease metadata and deadlines, duplex exchanges. */
import * as grpc from '@grpc/grpc-js';
import { D4fsError, errorFromWire, unavailable } from '../errors';
import { containerdServices } from './proto';
import { fromGrpcError } from './snapshots-client';

/** gRPC metadata key naming the namespace of a call. */
export const NAMESPACE_HEADER = 'containerd-namespace';
/** gRPC metadata key naming the lease a call's new objects belong to. */
export const LEASE_HEADER = 'containerd-lease';

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/** Details grpc-js gives a call that never reached the server. */
const CONNECTION_FAILURE = /No connection established|Failed to connect|connect E[A-Z]+|Connection dropped|ECONNRESET|ECONNREFUSED|ENOENT|EACCES|Socket closed|Connection (closed|refused)/i;

/** The message of every "containerd is not there" error. */
export function unreachableMessage(address: string): string {
  return `cannot reach containerd at ${address} (is it running? --address)`;
}

/** Converts a gRPC error of a call to containerd into a D4fsError. */
export function containerdError(e: unknown, address: string, method: string): D4fsError {
  const se = e as Partial<grpc.ServiceError>;
  // containerd answered, but could not dial a proxy plugin (the d4fs snapshotter) behind it
  const dial = se?.code === grpc.status.UNAVAILABLE ? /Error while dialing:?\s*dial unix ([^:\s]+)/.exec(`${se.details ?? ''} ${se.message ?? ''}`) : null;
  if (dial) {
    return unavailable(
      `containerd cannot reach the snapshotter at ${dial[1]}: the d4fs snapshotter is not running (start it: systemctl start d4fs-snapshotter, or node dist/snapshotter/main.js --address ${dial[1]}), then \`ctr-cli load NAME\` finishes the load`,
      e,
    );
  }
  if (se?.code === grpc.status.UNAVAILABLE && CONNECTION_FAILURE.test(`${se.details ?? ''} ${se.message ?? ''}`)) {
    return unavailable(`${unreachableMessage(address)}: ${se.details ?? se.message}`, e);
  }
  if (e instanceof D4fsError) return e;
  const err = fromGrpcError(e, `containerd ${method}`);
  // A proxy plugin's error comes through containerd as "…: unknown", with
  // the plugin's kind in the text when the plugin tagged it (errorToWire).
  const tagged = /\[d4fs:([A-Z_]+)\] ([\s\S]*?)(?:: unknown)?$/.exec(se?.details ?? '');
  if (tagged) {
    const inner = errorFromWire(new Error(`[d4fs:${tagged[1]}] ${tagged[2]}`));
    if (inner.kind !== 'INTERNAL') return new D4fsError(inner.kind, `containerd ${method}: ${inner.message}`, { cause: e, detail: err.detail });
  }
  return err;
}

/** True when `e` is a D4fsError of kind `kind`. */
export function isKind(e: unknown, kind: D4fsError['kind']): boolean {
  return e instanceof D4fsError && e.kind === kind;
}

// ---------------------------------------------------------------------------
// Connection and calls
// ---------------------------------------------------------------------------

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: unknown) => void) => grpc.ClientUnaryCall;
type ServerStreamFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;
type DuplexFn = (md: grpc.Metadata, opts: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, unknown>;

/** One channel to containerd and the service stubs on it (shared by lease views). */
export class Connection {
  readonly channel: grpc.Channel;
  readonly content: grpc.Client;
  readonly images: grpc.Client;
  readonly leases: grpc.Client;
  readonly snapshots: grpc.Client;

  constructor(readonly address: string) {
    const svc = containerdServices();
    const target = `unix://${address}`;
    const creds = grpc.credentials.createInsecure();
    // Large enough for any manifest or config containerd may answer with.
    const options = { 'grpc.max_receive_message_length': 64 * 1024 * 1024 };
    this.channel = new grpc.Channel(target, creds, options);
    const opts = { channelOverride: this.channel };
    this.content = new svc.Content(target, creds, opts);
    this.images = new svc.Images(target, creds, opts);
    this.leases = new svc.Leases(target, creds, opts);
    this.snapshots = new svc.Snapshots(target, creds, opts);
  }

  close(): void {
    for (const c of [this.content, this.images, this.leases, this.snapshots]) c.close();
    this.channel.close();
  }
}

/** What every call needs: connection, namespace, lease, deadline. */
export class CallContext {
  constructor(
    readonly conn: Connection,
    readonly namespace: string,
    readonly lease: string | undefined,
    readonly timeoutMs: number,
  ) {}

  metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set(NAMESPACE_HEADER, this.namespace);
    if (this.lease) md.set(LEASE_HEADER, this.lease);
    return md;
  }

  options(timeoutMs?: number): grpc.CallOptions {
    return { deadline: Date.now() + (timeoutMs ?? this.timeoutMs) };
  }

  error(e: unknown, method: string): D4fsError {
    return containerdError(e, this.conn.address, method);
  }

  unary<Res>(client: grpc.Client, method: string, req: unknown, timeoutMs?: number): Promise<Res> {
    const fn = (client as unknown as Record<string, UnaryFn>)[method];
    return new Promise((resolve, reject) => {
      fn.call(client, req, this.metadata(), this.options(timeoutMs), (err, res) => {
        if (err) reject(this.error(err, method));
        else resolve(res as Res);
      });
    });
  }

  /** All messages of a server-streaming call. */
  serverStream<Res>(client: grpc.Client, method: string, req: unknown): Promise<Res[]> {
    const fn = (client as unknown as Record<string, ServerStreamFn>)[method];
    return new Promise((resolve, reject) => {
      const out: Res[] = [];
      const stream = fn.call(client, req, this.metadata(), this.options());
      stream.on('data', (r: Res) => out.push(r));
      stream.on('error', (e) => reject(this.error(e, method)));
      stream.on('end', () => resolve(out));
    });
  }

  duplex<Req, Res>(client: grpc.Client, method: string): Exchange<Req, Res> {
    const fn = (client as unknown as Record<string, DuplexFn>)[method];
    return new Exchange<Req, Res>(fn.call(client, this.metadata(), this.options()) as grpc.ClientDuplexStream<Req, Res>, (e) => this.error(e, method));
  }
}

/**
 * A bidirectional stream used request by request: each `request` writes one
 * message and resolves with the next response (containerd's Write answers
 * every request once).
 */
export class Exchange<Req, Res> {
  private readonly queue: Res[] = [];
  private readonly waiters: { resolve: (r: Res) => void; reject: (e: unknown) => void }[] = [];
  private failure: D4fsError | undefined;
  private finished = false;
  private readonly done: Promise<void>;

  constructor(
    private readonly stream: grpc.ClientDuplexStream<Req, Res>,
    convert: (e: unknown) => D4fsError,
  ) {
    stream.on('data', (r: Res) => {
      const w = this.waiters.shift();
      if (w) w.resolve(r);
      else this.queue.push(r);
    });
    stream.on('error', (e: unknown) => this.fail(convert(e)));
    this.done = new Promise((resolve) => {
      stream.on('status', (s: grpc.StatusObject) => {
        this.finished = true;
        if (s.code === grpc.status.OK) this.fail(convert(Object.assign(new Error('stream ended early'), { code: grpc.status.INTERNAL, details: 'stream ended before the expected response' })));
        resolve();
      });
    });
  }

  private fail(e: D4fsError): void {
    this.failure ??= e;
    for (const w of this.waiters.splice(0)) w.reject(this.failure);
  }

  /** Sends `req` and resolves with the response to it. */
  request(req: Req): Promise<Res> {
    if (this.failure) return Promise.reject(this.failure);
    const queued = this.queue.shift();
    this.stream.write(req);
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      if (this.failure) reject(this.failure);
      else this.waiters.push({ resolve, reject });
    });
  }

  /** Half-closes the stream and waits for its final status (errors are ignored here). */
  async close(): Promise<void> {
    if (!this.finished) this.stream.end();
    await this.done;
  }

  /** Cancels the stream. */
  cancel(): void {
    if (!this.finished) this.stream.cancel();
  }
}
