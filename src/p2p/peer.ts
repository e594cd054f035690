/**
 * d4fs-peer: the per-node daemon. Its blob cache feeds a BitTorrent peer
 * (seeding what the node holds) and a pull-through OCI mirror on loopback
 * (what containerd, the snapshotter's CRI pulls and ctr-cli read through).
 * On start it writes containerd's hosts.toml for the registries it mirrors;
 * on stop it removes them first, so containerd goes straight to the
 * registries again.
 */
import { randomBytes } from 'node:crypto';
import * as http from 'node:http';
import path from 'node:path';
import type { Logger } from 'pino';
import { invalidArgument } from '../errors';
import type { RegistryOptions } from '../oci/registry/options';
import { BlobCache } from './cache';
import { Fetcher } from './fetcher';
import { installHostsToml } from './hosts';
import { PeerMetrics } from './metrics';
import { Mirror } from './mirror';
import { Origins } from './origin';
import { Swarm } from './swarm';
import { checkTorrent } from './torrent';
import { TrackerClient } from './tracker-client';

export interface PeerOptions {
  /** Cache directory (blobs, peer.db). */
  cacheDir: string;
  /** Cache size limit in bytes. */
  cacheBytes: number;
  /** Mirror address, "127.0.0.1:5050". */
  listen: { host: string; port: number };
  /** Tracker URL (d4fs-server with --tracker, or `ctr-cli tracker`); without one the peer is a caching mirror only. */
  tracker?: string;
  /** Token for the tracker and the d4fs-servers. */
  token?: string;
  /** Registries mirrored ("docker.io", "127.0.0.1:5000"). */
  registries: string[];
  /** d4fs-servers whose blobs the peer fetches (the tracker's server is included). */
  servers: string[];
  /** containerd's registry config_path: a hosts.toml per mirrored registry while the peer runs. */
  hostsDir?: string;
  /** Registry options (credentials, TLS) for a registry. */
  registryOptions: (registry: string) => RegistryOptions;
  /** TCP port of the BitTorrent peer (0: any). */
  torrentPort?: number;
  /** Swarm progress timeout before the origin fills in (ms; default 5000). */
  stallMs?: number;
  /** Blobs smaller than this skip the swarm (default 64 KiB). */
  minSwarmBytes?: number;
  /** Upload limit to other peers, bytes/s (default: none). */
  uploadLimit?: number;
  /** BEP 14 local service discovery as well as the tracker. */
  lsd?: boolean;
  /** Node name in claims and logs (default: random). */
  node?: string;
  log: Logger;
}

export interface PeerStatus {
  node: string;
  mirror: string;
  torrentPort: number | undefined;
  tracker: string | undefined;
  registries: string[];
  hostsDir: string | undefined;
  cache: { dir: string; bytes: number; maxBytes: number; blobs: number };
  totals: { fromOrigin: number; fromPeers: number; uploadedToPeers: number; droppedPeers: number };
  swarm: { peers: number; seeding: number; downloading: number } | undefined;
  transfers: Array<{ digest: string; origin: string; phase: string; size?: number; fromPeers: number; fromOrigin: number; seconds: number }>;
  blobs: Array<{ digest: string; size: number; fromOrigin: number; fromPeers: number; seeding: boolean; peers: number; uploaded: number }>;
}

export class PeerDaemon {
  private removeHosts: (() => void) | undefined;
  private gcTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly o: PeerOptions,
    readonly node: string,
    private readonly cache: BlobCache,
    private readonly origins: Origins,
    private readonly metrics: PeerMetrics,
    private readonly fetcher: Fetcher,
    private readonly swarm: Swarm | undefined,
    private readonly tracker: TrackerClient | undefined,
    private readonly server: http.Server,
  ) {}

  static async start(o: PeerOptions): Promise<PeerDaemon> {
    if (o.registries.length === 0 && o.servers.length === 0 && !o.tracker) throw invalidArgument('a peer needs something to serve: --mirror REGISTRY, --server URL or --tracker URL');
    const node = o.node ?? `node-${randomBytes(6).toString('hex')}`;
    const cache = new BlobCache(o.cacheDir, o.cacheBytes);
    const tracker = o.tracker ? new TrackerClient(o.tracker, o.token, node) : undefined;
    const servers = [...new Set([...o.servers.map((s) => new URL(s).origin), ...(tracker ? [tracker.base.origin] : [])])];
    const origins = new Origins(o.registryOptions, o.token);
    let swarm: Swarm | undefined;
    let daemon: PeerDaemon | undefined;
    const metrics = new PeerMetrics(() => {
      const s = swarm?.stats();
      return { peers: s?.peers ?? 0, seeding: s?.seeding ?? 0, downloading: s?.downloading ?? 0, cacheBytes: cache.usedBytes(), cacheBlobs: cache.all().length, uploadedToPeers: s?.uploaded ?? 0 };
    }, () => cache.all());
    try {
      if (tracker) swarm = await Swarm.start({ torrentPort: o.torrentPort, announce: [tracker.announceUrl()], stallMs: o.stallMs ?? 5000, lsd: o.lsd, uploadLimit: o.uploadLimit, log: o.log });
      const fetcher = new Fetcher({ cache, origins, swarm, tracker, metrics, log: o.log, stallMs: o.stallMs ?? 5000, minSwarmBytes: o.minSwarmBytes ?? 64 * 1024 });
      const mirror = new Mirror({ cache, fetcher, origins, metrics, log: o.log, registries: o.registries, servers, status: () => daemon?.status() });
      const server = http.createServer({ keepAliveTimeout: 5000, headersTimeout: 30_000, requestTimeout: 0 }, mirror.handler());
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(o.listen.port, o.listen.host, () => resolve());
      });
      daemon = new PeerDaemon({ ...o, servers }, node, cache, origins, metrics, fetcher, swarm, tracker, server);
      await daemon.reseed();
      if (o.hostsDir && o.registries.length) {
        daemon.removeHosts = await installHostsToml(o.hostsDir, o.registries, daemon.url, (r) => (o.registryOptions(r).tlsVerify === false ? true : undefined));
      }
      daemon.gcTimer = setInterval(() => void daemon?.collect(), 10_000);
      daemon.gcTimer.unref();
      o.log.info({ node, mirror: daemon.url, torrentPort: swarm?.port, tracker: o.tracker, registries: o.registries, servers, hostsDir: o.hostsDir }, 'd4fs-peer ready');
      return daemon;
    } catch (e) {
      await swarm?.close().catch(() => undefined);
      cache.close();
      throw e;
    }
  }

  /** The mirror's base URL. */
  get url(): string {
    const a = this.server.address();
    const port = typeof a === 'object' && a ? a.port : this.o.listen.port;
    const host = this.o.listen.host.includes(':') ? `[${this.o.listen.host}]` : this.o.listen.host;
    return `http://${host}:${port}`;
  }

  /** Seed what the cache holds (after a restart). */
  private async reseed(): Promise<void> {
    if (!this.swarm) return;
    for (const b of this.cache.all()) {
      if (!b.torrent) continue;
      try {
        const t = await checkTorrent(b.torrent, b.digest, b.size);
        await this.swarm.seed(t, this.cache.blobsDir);
      } catch (e) {
        this.o.log.warn({ digest: b.digest, err: (e as Error).message }, 'cannot seed a cached blob');
      }
    }
  }

  /** LRU collection to the cache's size limit; collected blobs stop being seeded first. */
  async collect(): Promise<string[]> {
    return this.cache.collect(
      async (digest) => {
        const b = this.cache.get(digest);
        if (b?.infoHash && this.swarm) await this.swarm.stop(b.infoHash);
      },
      (digest) => this.fetcher.busy(digest),
    );
  }

  status(): PeerStatus {
    const s = this.swarm?.stats();
    const byName = new Map((this.swarm?.torrentStats() ?? []).map((t) => [t.name, t]));
    const blobs = this.cache.all().map((b) => {
      const t = byName.get(path.basename(b.path));
      return { digest: b.digest, size: b.size, fromOrigin: b.fromOrigin, fromPeers: b.fromPeers, seeding: !!t?.done, peers: t?.peers ?? 0, uploaded: t?.uploaded ?? 0 };
    });
    return {
      node: this.node,
      mirror: this.url,
      torrentPort: s?.port,
      tracker: this.o.tracker,
      registries: this.o.registries,
      hostsDir: this.o.hostsDir,
      cache: { dir: this.cache.root, bytes: this.cache.usedBytes(), maxBytes: this.cache.maxBytes, blobs: blobs.length },
      totals: {
        fromOrigin: blobs.reduce((n, b) => n + b.fromOrigin, 0),
        fromPeers: blobs.reduce((n, b) => n + b.fromPeers, 0),
        uploadedToPeers: s?.uploaded ?? 0,
        droppedPeers: s?.droppedPeers ?? 0,
      },
      swarm: s ? { peers: s.peers, seeding: s.seeding, downloading: s.downloading } : undefined,
      transfers: [...this.fetcher.transfers.values()].map((t) => ({ digest: t.digest, origin: t.origin, phase: t.phase, size: t.size, fromPeers: t.fromPeers, fromOrigin: t.fromOrigin, seconds: Math.round((Date.now() - t.started) / 100) / 10 })),
      blobs,
    };
  }

  /** Remove hosts.toml first (containerd then goes to the registries), then stop serving. */
  async close(): Promise<void> {
    this.removeHosts?.();
    this.removeHosts = undefined;
    if (this.gcTimer) clearInterval(this.gcTimer);
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    await this.swarm?.close().catch(() => undefined);
    this.tracker?.close();
    await this.origins.close();
    this.cache.close();
  }

  /** For exit handlers: remove hosts.toml synchronously. */
  removeHostsNow(): void {
    this.removeHosts?.();
    this.removeHosts = undefined;
  }
}
