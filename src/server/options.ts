/** d4fs-server's options, their defaults and the parser of its listen address. */
import type * as http from 'node:http';
import type { Logger } from 'pino';
import { invalidArgument } from '../errors';
import type { SignaturePolicy, SigningKey } from '../signing';
import type { GcOptions } from './gc';
import type { MergeStrategy } from './merges';
import type { RegistryStoreOptions } from './regstore';

export interface ServerOptions {
  /** Directory of the blob store and catalogue (created). */
  root: string;
  /**
   * More endpoints served on the same port (the embedded BitTorrent tracker,
   * `serve --tracker`): answers and returns true for its own paths, false
   * for the others. It checks its own tokens (`server.auth`).
   */
  extraHandler?: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<boolean>;
  /** "HOST:PORT" to listen on (default 127.0.0.1:8081; port 0 picks one). */
  listen?: string;
  /** Tokens file (see auth.ts); without it the server is read-only. */
  tokensFile?: string;
  /** Reads need no token. */
  readOpen?: boolean;
  /** TLS certificate and key (PEM files): serve HTTPS. */
  tls?: { cert: string; key: string };
  /** Largest upload in bytes (default 16 GiB). */
  maxUploadBytes?: number;
  /** Uploads at once (default 32); more get 503. */
  maxUploads?: number;
  /** Merges at once (default 2). */
  maxMerges?: number;
  /** compose, rediff or auto (default: compose now, rediff in the background; see merges.ts). */
  mergeStrategy?: MergeStrategy;
  /** Worker threads of rediff merges (default 1). */
  rediffThreads?: number;
  /** Idle timeout of a connection in ms (default 120 000). */
  idleTimeoutMs?: number;
  /** A request's headers must arrive within this many ms of its first byte (default 30 000; else 408). */
  headersTimeoutMs?: number;
  /**
   * Request bodies (uploads, JSON) must average at least this many bytes/s
   * over every `uploadRateWindowMs` (default 1024; 0: no minimum); a slower
   * client gets 408 and its upload slot is free again.
   */
  minUploadRate?: number;
  /** Window of `minUploadRate` in ms (default 30 000). */
  uploadRateWindowMs?: number;
  /** Run gc every so many ms (default: never). */
  gcIntervalMs?: number;
  /** gc options of the scheduled runs. */
  gc?: GcOptions;
  /** Structured logger (default: silent). */
  logger?: Logger;
  /** Collect Node process metrics too (default true). */
  processMetrics?: boolean;
  /**
   * An OCI registry as the backing store shared by several replicas
   * (catalogue and blobs live there; `root` keeps the mirror, a blob cache
   * and this replica's merges). See regstore.ts.
   */
  store?: RegistryStoreOptions;
  /** Signatures (see signatures.ts). */
  signing?: ServerSigningOptions;
}

/** What the server asks of signatures and signs with. */
export interface ServerSigningOptions {
  /** Keys the server trusts: what `requireSigned` asks of uploads, and what merges it signs must be signed by. */
  policy?: SignaturePolicy;
  /** Refuse uploads without a signature by a key of `policy` (401; nothing stored). */
  requireSigned?: boolean;
  /** Sign the merges the server composes with this key (needs `policy`: only merges of trusted files are signed). */
  signingKey?: SigningKey;
}

export const DEFAULT_LISTEN = '127.0.0.1:8081';
export const DEFAULT_MAX_UPLOAD = 16 * 1024 ** 3;
export const DEFAULT_IDLE_MS = 120_000;
export const DEFAULT_HEADERS_MS = 30_000;
export const DEFAULT_MIN_UPLOAD_RATE = 1024;
export const DEFAULT_UPLOAD_RATE_WINDOW_MS = 30_000;
/** A body the server does not want is read and dropped up to this much before the answer (see discardBody). */
export const DISCARD_MAX_BYTES = 1024 * 1024;
export const DISCARD_MAX_MS = 2_000;
/** How long a pull may wait for a merge made for it. */
export const MERGE_TIMEOUT_MS = 30 * 60_000;

/** Split "host:port" / "[v6]:port". */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw invalidArgument(`invalid listen address ${JSON.stringify(s)}: expected HOST:PORT, e.g. 127.0.0.1:8081`);
  return { host: m[1] ?? m[2], port };
}
