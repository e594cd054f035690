/** Prometheus metrics of d4fs-peer (prom-client, one registry per peer). */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export interface PeerGauges {
  peers: number;
  seeding: number;
  downloading: number;
  cacheBytes: number;
  cacheBlobs: number;
  uploadedToPeers: number;
}

export class PeerMetrics {
  readonly registry = new Registry();
  /** Blob bytes received, by source: origin (registry or d4fs-server) or peers (the swarm). */
  readonly bytes: Counter<'source'>;
  /** Bytes of blobs and manifests sent to local clients (containerd, ctr-cli). */
  readonly served: Counter<'kind'>;
  /** Blob fetches by how they ended: cache, swarm, origin, swarm+origin (stalled swarm, rest from the origin). */
  readonly fetches: Counter<'how'>;
  /** Falls back to the origin, by reason: stalled, corrupt, no-tracker, tracker-error, small. */
  readonly fallbacks: Counter<'reason'>;
  readonly requests: Counter<'route' | 'status'>;

  /**
   * @param gauges read at scrape time
   * @param blobs the cache's blobs at scrape time: bytes received per blob and source (as many series as blobs held)
   */
  constructor(gauges: () => PeerGauges, blobs: () => Array<{ digest: string; fromOrigin: number; fromPeers: number }> = () => [], defaults = true) {
    const registers = [this.registry];
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'd4fs_peer_' });
    this.bytes = new Counter({ name: 'd4fs_peer_blob_bytes_total', help: 'Blob bytes received, by source (origin or peers)', labelNames: ['source'], registers });
    this.served = new Counter({ name: 'd4fs_peer_served_bytes_total', help: 'Bytes sent to local clients, by kind (blob, manifest)', labelNames: ['kind'], registers });
    this.fetches = new Counter({ name: 'd4fs_peer_blob_fetches_total', help: 'Blob fetches by outcome (cache, swarm, origin, swarm+origin)', labelNames: ['how'], registers });
    this.fallbacks = new Counter({ name: 'd4fs_peer_origin_fallbacks_total', help: 'Fetches from the origin instead of the swarm, by reason', labelNames: ['reason'], registers });
    this.requests = new Counter({ name: 'd4fs_peer_http_requests_total', help: 'Mirror requests by route and status', labelNames: ['route', 'status'], registers });
    const gauge = (name: string, help: string, pick: (g: PeerGauges) => number): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(pick(gauges()));
        },
      });
    };
    new Gauge({
      name: 'd4fs_peer_cached_blob_received_bytes',
      help: 'Bytes received for each blob the cache holds, by source (origin or peers)',
      labelNames: ['digest', 'source'],
      registers,
      collect() {
        this.reset();
        for (const b of blobs()) {
          this.set({ digest: b.digest, source: 'origin' }, b.fromOrigin);
          this.set({ digest: b.digest, source: 'peers' }, b.fromPeers);
        }
      },
    });
    gauge('d4fs_peer_peers', 'Peers connected, over all swarms', (g) => g.peers);
    gauge('d4fs_peer_seeding_blobs', 'Blobs being seeded', (g) => g.seeding);
    gauge('d4fs_peer_downloading_blobs', 'Blobs being downloaded from the swarm', (g) => g.downloading);
    gauge('d4fs_peer_cache_bytes', 'Bytes held in the blob cache', (g) => g.cacheBytes);
    gauge('d4fs_peer_cache_blobs', 'Blobs held in the blob cache', (g) => g.cacheBlobs);
    gauge('d4fs_peer_uploaded_bytes', 'Bytes sent to other peers by the torrents currently held', (g) => g.uploadedToPeers);
  }
}
