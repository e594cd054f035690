/**
 * Typed errors for every failure a user can cause. Each kind maps, in this one
 * place, to a process exit code, a gRPC status code and an HTTP status.
 */

export type ErrorKind =
  | 'INVALID_ARGUMENT' // bad flags, malformed references
  | 'NOT_FOUND' // unknown image, digest, file
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION' // e.g. delta whose parent is absent
  | 'CORRUPT' // digest mismatch, truncated or bit-flipped data
  | 'HOSTILE' // input that tries to escape or exhaust (.. paths, absurd sizes)
  | 'UNSUPPORTED' // valid but not handled (unknown media type, format version)
  | 'UNAUTHENTICATED' // missing or wrong credentials
  | 'PERMISSION_DENIED'
  | 'UNAVAILABLE' // network, remote server down
  | 'DEADLINE_EXCEEDED'
  | 'INTERNAL';

export class D4fsError extends Error {
  readonly kind: ErrorKind;
  readonly detail?: Record<string, unknown>;
  constructor(kind: ErrorKind, message: string, opts?: { cause?: unknown; detail?: Record<string, unknown> }) {
    super(message, opts?.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'D4fsError';
    this.kind = kind;
    this.detail = opts?.detail;
  }
}

export const invalidArgument = (m: string, d?: Record<string, unknown>) => new D4fsError('INVALID_ARGUMENT', m, { detail: d });
export const notFound = (m: string, d?: Record<string, unknown>) => new D4fsError('NOT_FOUND', m, { detail: d });
export const alreadyExists = (m: string) => new D4fsError('ALREADY_EXISTS', m);
export const failedPrecondition = (m: string) => new D4fsError('FAILED_PRECONDITION', m);
export const corrupt = (m: string, cause?: unknown) => new D4fsError('CORRUPT', m, { cause });
export const hostile = (m: string) => new D4fsError('HOSTILE', m);
export const unsupported = (m: string) => new D4fsError('UNSUPPORTED', m);
export const unauthenticated = (m: string) => new D4fsError('UNAUTHENTICATED', m);
export const permissionDenied = (m: string) => new D4fsError('PERMISSION_DENIED', m);
export const unavailable = (m: string, cause?: unknown) => new D4fsError('UNAVAILABLE', m, { cause });

/** Exit codes of ctr-cli: 1 generic, 2 usage, others by kind. */
export const EXIT_CODES: Record<ErrorKind, number> = {
  INVALID_ARGUMENT: 2,
  NOT_FOUND: 3,
  ALREADY_EXISTS: 4,
  FAILED_PRECONDITION: 5,
  CORRUPT: 6,
  HOSTILE: 7,
  UNSUPPORTED: 8,
  UNAUTHENTICATED: 9,
  PERMISSION_DENIED: 10,
  UNAVAILABLE: 11,
  DEADLINE_EXCEEDED: 12,
  INTERNAL: 1,
};

/** gRPC status codes (numbers from grpc's status.proto). */
export const GRPC_CODES: Record<ErrorKind, number> = {
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  FAILED_PRECONDITION: 9,
  CORRUPT: 15, // DATA_LOSS
  HOSTILE: 3,
  UNSUPPORTED: 12, // UNIMPLEMENTED
  UNAUTHENTICATED: 16,
  PERMISSION_DENIED: 7,
  UNAVAILABLE: 14,
  DEADLINE_EXCEEDED: 4,
  INTERNAL: 13,
};

export const HTTP_CODES: Record<ErrorKind, number> = {
  INVALID_ARGUMENT: 400,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  FAILED_PRECONDITION: 412,
  CORRUPT: 422,
  HOSTILE: 400,
  UNSUPPORTED: 415,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
  INTERNAL: 500,
};

/** Turn anything thrown into a D4fsError, classifying common Node errors. */
export function toD4fsError(e: unknown): D4fsError {
  if (e instanceof D4fsError) return e;
  const err = e as NodeJS.ErrnoException;
  const msg = err && typeof err.message === 'string' ? err.message : String(e);
  switch (err?.code) {
    case 'ENOENT':
      return new D4fsError('NOT_FOUND', msg, { cause: e });
    case 'EEXIST':
      return new D4fsError('ALREADY_EXISTS', msg, { cause: e });
    case 'EACCES':
    case 'EPERM':
      return new D4fsError('PERMISSION_DENIED', msg, { cause: e });
    case 'ECONNREFUSED':
    case 'ECONNRESET':
    case 'ENOTFOUND':
    case 'ETIMEDOUT':
    case 'EAI_AGAIN':
      return new D4fsError('UNAVAILABLE', msg, { cause: e });
    case 'Z_DATA_ERROR':
    case 'Z_BUF_ERROR':
      return new D4fsError('CORRUPT', `corrupt compressed data: ${msg}`, { cause: e });
    default:
      return new D4fsError('INTERNAL', msg, { cause: e });
  }
}

export const exitCodeOf = (e: unknown): number => EXIT_CODES[toD4fsError(e).kind];
export const grpcCodeOf = (e: unknown): number => GRPC_CODES[toD4fsError(e).kind];
export const httpCodeOf = (e: unknown): number => HTTP_CODES[toD4fsError(e).kind];

const ERROR_KINDS: ReadonlySet<string> = new Set(Object.keys(EXIT_CODES));
const WIRE_TAG = /^\[d4fs:([A-Z_]+)\] ([\s\S]*)$/;

/**
 * An error as it crosses a thread or process boundary. Structured clone (worker
 * threads) keeps an Error's message and stack but not its class, so the
 * kind travels in front of the message; {@link errorFromWire} restores it. The
 * one mechanism of the worker pool (src/workers), so a CORRUPT in a worker is a CORRUPT (exit 6)
 * in the command.
 */
export function errorToWire(e: unknown): Error {
  const d = toD4fsError(e);
  const out = new Error(`[d4fs:${d.kind}] ${d.message}`);
  if (e instanceof Error && e.stack) out.stack = `${out.message}\n${e.stack.split('\n').slice(1).join('\n')}`;
  return out;
}

/** The D4fsError an {@link errorToWire} error stands for; anything else through {@link toD4fsError}. */
export function errorFromWire(e: unknown): D4fsError {
  if (e instanceof D4fsError) return e;
  const msg = e instanceof Error ? e.message : typeof e === 'object' && e && typeof (e as { message?: unknown }).message === 'string' ? (e as { message: string }).message : undefined;
  const m = msg !== undefined ? WIRE_TAG.exec(msg) : null;
  if (m && ERROR_KINDS.has(m[1])) {
    const d = new D4fsError(m[1] as ErrorKind, m[2]);
    if (e instanceof Error && e.stack) d.stack = `D4fsError: ${m[2]}\n${e.stack.split('\n').slice(1).join('\n')}`;
    return d;
  }
  return toD4fsError(e);
}
