/**
 * Prometheus metrics of d4fs-server (prom-client, one registry per server so
 * that several servers in one process, as in tests, do not collide).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'method' | 'route' | 'status'>;
  readonly latency: Histogram<'method' | 'route'>;
  readonly bytesSent: Counter<'route'>;
  readonly bytesReceived: Counter<'route'>;
  readonly mergeRequests: Counter<'outcome'>;
  readonly mergeSeconds: Histogram<'strategy'>;
  readonly pulls: Counter<'kind'>;
  readonly inflight: Gauge<'route'>;
  readonly uploads: Counter<'result'>;
  /** Reads of a repository from the registry backing store (--store). */
  readonly storeReads: Counter<'result'>;
  /** Blob bytes fetched from the registry backing store into the local cache. */
  readonly storeFetchedBytes: Counter;

  /** @param stats read at scrape time: catalogue counts */
  constructor(stats: () => { repositories: number; images: number; files: number; merges: number; bytes: number }, defaults = true) {
    const registers = [this.registry];
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'd4fs_server_' });
    this.requests = new Counter({ name: 'd4fs_http_requests_total', help: 'HTTP requests by method, route and status', labelNames: ['method', 'route', 'status'], registers });
    this.latency = new Histogram({
      name: 'd4fs_http_request_duration_seconds',
      help: 'HTTP request latency (until the response is finished)',
      labelNames: ['method', 'route'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.bytesSent = new Counter({ name: 'd4fs_http_bytes_sent_total', help: 'Body bytes sent (blob downloads)', labelNames: ['route'], registers });
    this.bytesReceived = new Counter({ name: 'd4fs_http_bytes_received_total', help: 'Body bytes received (uploads)', labelNames: ['route'], registers });
    this.mergeRequests = new Counter({
      name: 'd4fs_merge_cache_requests_total',
      help: 'Merged chains requested, by outcome: hit (cached), miss (merged now), shared (joined a merge in progress)',
      labelNames: ['outcome'],
      registers,
    });
    this.mergeSeconds = new Histogram({
      name: 'd4fs_merge_duration_seconds',
      help: 'Time to merge a chain of deltas, by strategy (compose: copying; rediff: in the background)',
      labelNames: ['strategy'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    });
    this.pulls = new Counter({ name: 'd4fs_pull_plans_total', help: 'Pull plans by shape: uptodate, full, delta, merged, full+delta, full+merged', labelNames: ['kind'], registers });
    this.inflight = new Gauge({ name: 'd4fs_http_requests_in_flight', help: 'Requests being served', labelNames: ['route'], registers });
    this.uploads = new Counter({ name: 'd4fs_uploads_total', help: 'Blob uploads by result: created, exists, refused', labelNames: ['result'], registers });
    this.storeReads = new Counter({ name: 'd4fs_store_reads_total', help: 'Repository reads from the registry backing store (--store), by result: ok, error', labelNames: ['result'], registers });
    this.storeFetchedBytes = new Counter({ name: 'd4fs_store_fetched_bytes_total', help: 'Blob bytes fetched from the registry backing store into the local cache (verified)', registers });
    const catalogue = new Gauge({
      name: 'd4fs_catalogue_objects',
      help: 'Objects in the catalogue',
      labelNames: ['type'],
      registers,
      collect() {
        const s = stats();
        catalogue.set({ type: 'repositories' }, s.repositories);
        catalogue.set({ type: 'images' }, s.images);
        catalogue.set({ type: 'files' }, s.files);
        catalogue.set({ type: 'merges' }, s.merges);
      },
    });
    const stored = new Gauge({
      name: 'd4fs_stored_bytes',
      help: 'Bytes of stored files and cached merges',
      registers,
      collect() {
        stored.set(stats().bytes);
      },
    });
  }
}
