/**
 * The merge cache: a chain of stored deltas A→B, B→C, … composed into one
 * delta A→Z, kept in the blob store and recorded in the catalogue under a key
 * made of the strategy and the chain's input root digests.
 *
 * Two strategies of mergeDeltas:
 *  - compose: pure copying of stored patches (milliseconds); PATCH∘PATCH
 *    stays two patches, so the result is about the sum of the changes;
 *  - rediff: every changed content rebuilt and diffed against A directly
 *    (seconds of CPU in a worker thread; needs the full image A on the
 *    server): as small as a direct A→Z diff, often several times smaller.
 *
 * With strategy "auto" (the default) a pull never waits for a rediff: it gets
 * the composed merge at once, a rediff of the same chain runs in the
 * background (one at a time, one worker thread), and later pulls get the
 * smallest merge that exists. Superseded merges stay downloadable (an
 * interrupted download can still resume) until gc finds them unused.
 * Concurrent requests for the same merge share it; different chains merge in
 * parallel up to a limit.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import { mergeDeltas } from '../delta/merge';
import { corrupt, invalidArgument, notFound, toD4fsError } from '../errors';
import { WorkerPool } from '../workers/pool';
import type { BlobStore } from './blobs';
import { verifyStoredChunks } from './blobs';
import { fileDigestOf } from '../util/digest';
import type { Catalogue, FileRow, MergeRow } from './catalogue';
import type { ServerMetrics } from './metrics';

/** Version of the merge recipes: part of the key, so a new recipe never reuses old results. */
const MERGE_RECIPE = 'd4fs-merge-v1';

/** How merged chains are made (see the module comment). */
export type MergeStrategy = 'compose' | 'rediff' | 'auto';

/** Key of a chain of deltas merged with `strategy`. */
export function chainKeyOf(rootDigests: readonly string[], strategy: 'compose' | 'rediff'): string {
  return `sha256:${createHash('sha256').update(`${MERGE_RECIPE}\n${strategy}\n${rootDigests.join('\n')}`).digest('hex')}`;
}

/** How a merge was obtained. */
export type MergeOutcome = 'hit' | 'miss' | 'shared';

export interface MergeCacheOptions {
  strategy?: MergeStrategy;
  /** Merges of different chains at once (default 2). */
  maxConcurrent?: number;
  /** Worker threads of rediff merges (default 1). */
  rediffThreads?: number;
  /**
   * Make a stored file's blob present in the blob store before a merge reads
   * it (a server backed by a registry fetches it); false: it is nowhere.
   */
  ensureLocal?: (rootDigest: string) => Promise<boolean>;
}

/** Counting semaphore. */
class Semaphore {
  private waiting: (() => void)[] = [];
  private used = 0;
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.used >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    else this.used++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.used--;
    }
  }
}

export class MergeCache {
  private readonly inflight = new Map<string, Promise<MergeRow>>();
  private readonly background = new Map<string, Promise<void>>();
  private readonly slots: Semaphore;
  private readonly rediffSlot = new Semaphore(1);
  private readonly strategy: MergeStrategy;
  private readonly rediffThreads: number;
  private readonly ensureLocal: ((rootDigest: string) => Promise<boolean>) | undefined;
  private pool: WorkerPool | undefined;
  private closed = false;

  constructor(
    private readonly catalogue: Catalogue,
    private readonly blobs: BlobStore,
    private readonly metrics: ServerMetrics,
    private readonly log: Logger,
    opts: MergeCacheOptions = {},
  ) {
    this.slots = new Semaphore(Math.max(1, opts.maxConcurrent ?? 2));
    this.strategy = opts.strategy ?? 'auto';
    this.rediffThreads = Math.max(1, opts.rediffThreads ?? 1);
    this.ensureLocal = opts.ensureLocal;
  }

  /** Merges still running (shutdown waits for them). */
  get running(): Promise<unknown>[] {
    return [...this.inflight.values()];
  }

  /** Resolves when no background rediff is running or queued. */
  async idle(): Promise<void> {
    while (this.background.size) await Promise.allSettled([...this.background.values()]);
  }

  /** Stop background work (a rediff in progress is abandoned; its temp file goes). */
  async close(): Promise<void> {
    this.closed = true;
    const pool = this.pool;
    this.pool = undefined;
    await pool?.close();
    await Promise.allSettled([...this.background.values(), ...this.inflight.values()]);
  }

  /** The best merged delta of `chain` (≥ 2 consecutive deltas): from the cache, or made now. */
  async get(chain: readonly FileRow[]): Promise<{ merge: MergeRow; outcome: MergeOutcome }> {
    if (chain.length < 2) throw invalidArgument('a merge needs at least two deltas');
    const inputs = chain.map((f) => f.rootDigest);
    const composeKey = chainKeyOf(inputs, 'compose');
    const rediffKey = chainKeyOf(inputs, 'rediff');
    const base = this.catalogue.fullFileOf(chain[0].parentId);
    let best: MergeRow | undefined;
    for (const key of [rediffKey, composeKey]) {
      const row = this.catalogue.merge(key);
      if (row && (!best || row.size < best.size) && (await this.blobs.has(row.rootDigest))) best = row;
    }
    if (best) {
      this.catalogue.touchMerge(best.chainKey, true);
      this.metrics.mergeRequests.inc({ outcome: 'hit' });
      if (best.chainKey === composeKey && this.strategy === 'auto' && base) this.rediffLater(rediffKey, chain, base);
      return { merge: best, outcome: 'hit' };
    }
    const sync = this.strategy === 'rediff' && base ? { key: rediffKey, how: 'rediff' as const } : { key: composeKey, how: 'compose' as const };
    const running = this.inflight.get(sync.key);
    if (running) {
      this.metrics.mergeRequests.inc({ outcome: 'shared' });
      return { merge: await running, outcome: 'shared' };
    }
    const p = this.slots.run(() => this.make(sync.key, chain, sync.how, base));
    this.inflight.set(sync.key, p);
    try {
      const merge = await p;
      this.metrics.mergeRequests.inc({ outcome: 'miss' });
      if (sync.how === 'compose' && this.strategy === 'auto' && base) this.rediffLater(rediffKey, chain, base);
      return { merge, outcome: 'miss' };
    } finally {
      this.inflight.delete(sync.key);
    }
  }

  /** Queue a background rediff of `chain` (once per key). */
  private rediffLater(key: string, chain: readonly FileRow[], base: FileRow): void {
    if (this.closed || this.background.has(key) || this.catalogue.merge(key)) return;
    const p = this.rediffSlot
      .run(async () => {
        if (this.closed || this.catalogue.merge(key)) return;
        await this.make(key, chain, 'rediff', base);
      })
      .catch((e: unknown) => {
        if (!this.closed) this.log.warn({ chainKey: key, err: toD4fsError(e).message }, 'background rediff failed; the composed merge stays in use');
      })
      .finally(() => this.background.delete(key));
    this.background.set(key, p);
  }

  private async make(key: string, chain: readonly FileRow[], how: 'compose' | 'rediff', base: FileRow | undefined): Promise<MergeRow> {
    const t0 = process.hrtime.bigint();
    const tmp = this.blobs.tempPath('merge');
    try {
      if (this.ensureLocal) {
        for (const f of how === 'rediff' && base ? [base, ...chain] : chain) {
          if (!(await this.ensureLocal(f.rootDigest))) throw notFound(`blob ${f.rootDigest} of the chain to merge is neither on this server nor in its registry store`);
        }
      }
      const deltas = chain.map((f) => this.blobs.pathOf(f.rootDigest));
      if (how === 'rediff') {
        this.pool ??= new WorkerPool(this.rediffThreads);
        await mergeDeltas({ deltas, out: tmp, strategy: 'rediff', base: this.blobs.pathOf((base as FileRow).rootDigest), pool: this.pool });
      } else {
        await mergeDeltas({ deltas, out: tmp });
      }
      const v = await verifyStoredChunks(tmp, 'merged delta');
      const first = chain[0];
      const last = chain[chain.length - 1];
      if (v.kind !== 'delta' || v.parentId !== first.parentId || v.imageId !== last.imageId) {
        throw corrupt(`merged delta leads ${v.parentId} → ${v.imageId}, expected ${first.parentId} → ${last.imageId}`);
      }
      const fileDigest = await fileDigestOf(tmp);
      await this.blobs.land(tmp, v.rootDigest);
      const row = { chainKey: key, inputs: chain.map((f) => f.rootDigest), rootDigest: v.rootDigest, fileDigest, size: v.size, parentId: v.parentId, imageId: v.imageId };
      this.catalogue.addMerge(row);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      this.metrics.mergeSeconds.observe({ strategy: how }, seconds);
      this.log.info({ chainKey: key, strategy: how, inputs: row.inputs, rootDigest: v.rootDigest, size: v.size, seconds }, 'merged delta chain');
      return this.catalogue.merge(key) as MergeRow;
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }
}
