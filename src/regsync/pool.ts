/**
 * regsync's own worker-thread pool (piscina over ./worker.ts): content
 * encoding and decoding and recipe detection run off the event loop.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import { errorFromWire } from '../errors';
import type * as W from './worker';

/** Errors cross the thread boundary with their kind (errors.errorToWire in the worker). */
function untag(e: unknown): never {
  throw errorFromWire(e);
}

/** Pool of worker threads running ./worker.ts tasks. */
export class RegsyncPool {
  private readonly pool: Piscina;

  /** @param threads worker threads (default: available parallelism) */
  constructor(readonly threads: number = availableParallelism()) {
    this.pool = new Piscina({
      filename: join(__dirname, 'worker.js'),
      minThreads: 0,
      maxThreads: Math.max(1, threads),
      idleTimeout: 5_000,
    });
  }

  /** Encode a content (see worker.encode). */
  encode(a: W.EncodeArgs): Promise<W.EncodeResult> {
    return (this.pool.run(a, { name: 'encode' }) as Promise<W.EncodeResult>).catch(untag);
  }

  /** Decode and verify a content (see worker.decode). */
  decode(a: W.DecodeArgs): Promise<Uint8Array | null> {
    return (this.pool.run(a, { name: 'decode' }) as Promise<Uint8Array | null>).catch(untag);
  }

  /** Detect a compression recipe (see worker.detect). */
  detect(a: W.DetectArgs): ReturnType<typeof W.detect> {
    return (this.pool.run(a, { name: 'detect' }) as ReturnType<typeof W.detect>).catch(untag);
  }

  /** Stop the threads. */
  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
