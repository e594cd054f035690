/**
 * The fleet's tracker: BitTorrent announces (bittorrent-tracker's HTTP
 * protocol) plus the two things a private blob swarm needs beside them,
 * over the same HTTP port:
 *
 *   GET  /announce, /scrape                 the BitTorrent tracker
 *   GET  /v1/p2p/torrents/<digest>           torrent metadata of a blob (404: none yet)
 *   PUT  /v1/p2p/torrents/<digest>           metadata from a node that fetched the blob from its origin and verified it
 *   POST /v1/p2p/torrents/<digest>/claim     who fetches a blob from the origin first (a lease; the others wait for its metadata)
 *   DELETE /v1/p2p/torrents/<digest>/claim   give the lease back (the origin fetch failed)
 *
 * Every route needs a token (`?token=` on announces, whose URLs the engine
 * builds; `Authorization: Bearer` on the others), checked by the
 * `authorize` function given (d4fs-server's tokens file): a node without a
 * token cannot join a swarm, learn a peer or read metadata. Metadata is
 * first-writer-wins and checked to be a d4fs torrent of that digest; when
 * the tracker runs inside d4fs-server, the server makes the metadata of its
 * own files itself (`ownTorrent`, kept in memory, not in the store).
 *
 * Metadata answers say whether the swarm can deliver (`X-D4fs-Seeded`):
 * `yes` when a node published it (it fetched the blob and seeds it) or a
 * seeder is announced; `no` for metadata the server made of its own file
 * while no node holds it yet. A node then claims the origin fetch as for an
 * unknown blob, so that one node, not every node, reads the file from the
 * server, and the others wait for its seed.
 */
import { promises as fsp } from 'node:fs';
import fs from 'node:fs';
import type * as http from 'node:http';
import path from 'node:path';
import type { Logger } from 'pino';
import { D4fsError, invalidArgument, notFound, unauthenticated } from '../errors';
import { readBodyLimited } from './http';
import { sendError, sendJson } from '../server/http';
import { hexOfDigest, parseDigest } from '../util/digest';
import { loadEngine, TrackerServer } from './esm';
import { checkTorrent, MAX_TORRENT_BYTES } from './torrent';

/** Throws UNAUTHENTICATED (or PERMISSION_DENIED) unless the token may use the tracker. */
export type Authorize = (token: string | undefined) => void;

export interface TrackerOptions {
  /** Directory of the metadata store. */
  dir: string;
  authorize: Authorize;
  log: Logger;
  /** How long a claim to fetch from the origin lasts without renewal (ms; default 15 000). */
  leaseMs?: number;
  /** Announce interval told to peers (s; default 60). */
  intervalS?: number;
  /** Metadata the host makes of its own blobs (d4fs-server's files); undefined when it does not hold the blob. */
  ownTorrent?: (digest: string, root: string | undefined) => Promise<Buffer | undefined>;
}

interface Claim {
  node: string;
  expires: number;
}

export interface TrackerStats {
  torrents: number;
  swarms: number;
  peers: number;
  announces: number;
  refused: number;
  claims: number;
}

const TORRENT_TYPE = 'application/x-bittorrent';
/** Own metadata kept in memory (a 4 GiB file's is 320 KiB). */
const OWN_CACHE_ENTRIES = 64;
const ROUTE = /^\/v1\/p2p\/torrents\/(sha256:[a-f0-9]{64})(\/claim)?$/;

/** The token of a request: `?token=` or `Authorization: Bearer`. */
export function tokenOf(req: http.IncomingMessage, query?: URLSearchParams): string | undefined {
  const q = query?.get('token');
  if (q) return q;
  const h = req.headers.authorization;
  if (!h) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  if (!m) throw unauthenticated('Authorization must be "Bearer <token>"');
  return m[1];
}

export class TrackerService {
  private readonly claims = new Map<string, Claim>();
  /** Metadata the host made of its own blobs, with its info hash (most recent last). */
  private readonly own = new Map<string, { bytes: Buffer; infoHash: string }>();
  private readonly leaseMs: number;
  private constructor(private readonly opts: TrackerOptions, private readonly server: TrackerServer, private readonly counters: { announces: number; refused: number }) {
    this.leaseMs = opts.leaseMs ?? 15_000;
  }

  static async create(opts: TrackerOptions): Promise<TrackerService> {
    fs.mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    const { TrackerServer } = await loadEngine();
    const counters = { announces: 0, refused: 0 };
    const server = new TrackerServer({
      http: false,
      udp: false,
      ws: false,
      stats: false,
      trustProxy: false,
      interval: (opts.intervalS ?? 60) * 1000,
      // the token check of every announce: peers of a private image never learn of a node without a token
      filter: (_infoHash: string, params: Record<string, unknown>, cb: (err: Error | null) => void) => {
        try {
          const token = typeof params.token === 'string' ? params.token : undefined;
          const req = params.httpReq as http.IncomingMessage | undefined;
          opts.authorize(token ?? (req ? tokenOf(req) : undefined));
          counters.announces++;
          cb(null);
        } catch (e) {
          counters.refused++;
          cb(new Error(e instanceof D4fsError ? e.message : 'not authorized'));
        }
      },
    });
    server.on('warning', (e: Error) => opts.log.debug({ err: e.message }, 'tracker warning'));
    server.on('error', (e: Error) => opts.log.warn({ err: e.message }, 'tracker error'));
    return new TrackerService(opts, server, counters);
  }

  private file(digest: string): string {
    return path.join(this.opts.dir, `sha256-${hexOfDigest(digest)}.torrent`);
  }

  /** Stored (or own) metadata of a blob. */
  async torrentOf(digest: string, root?: string): Promise<Buffer | undefined> {
    return (await this.lookup(digest, root))?.bytes;
  }

  /**
   * Metadata of a blob and whether the swarm can deliver it: `seeded` when a
   * node published it (stored) or a seeder of its info hash is announced.
   */
  private async lookup(digest: string, root?: string): Promise<{ bytes: Buffer; seeded: boolean } | undefined> {
    const stored = await fsp.readFile(this.file(digest)).catch(() => undefined);
    if (stored) return { bytes: stored, seeded: true };
    let own = this.own.get(digest);
    if (!own && root && this.opts.ownTorrent) {
      const bytes = await this.opts.ownTorrent(digest, root);
      if (bytes) {
        own = { bytes, infoHash: (await checkTorrent(bytes, digest)).infoHash };
        this.own.set(digest, own);
        if (this.own.size > OWN_CACHE_ENTRIES) this.own.delete(this.own.keys().next().value!);
      }
    }
    if (!own) return undefined;
    return { bytes: own.bytes, seeded: (this.server.torrents?.[own.infoHash]?.complete ?? 0) > 0 };
  }

  private async store(digest: string, bytes: Buffer): Promise<boolean> {
    const tmp = `${this.file(digest)}.${process.pid}.${Math.random().toString(36).slice(2)}`;
    await fsp.writeFile(tmp, bytes, { mode: 0o600 });
    try {
      await fsp.link(tmp, this.file(digest));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }

  /**
   * Answer the request if it is one of the tracker's; false when the path is
   * not (the host serves it). Never rejects.
   */
  async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<boolean> {
    const url = new URL(req.url ?? '/', 'http://tracker.invalid');
    const p = url.pathname;
    if (p === '/announce' || p === '/scrape') {
      if (req.method !== 'GET') {
        sendError(res, invalidArgument(`${p} takes GET`));
        return true;
      }
      this.server.onHttpRequest(req, res, { action: p.slice(1) });
      return true;
    }
    const m = ROUTE.exec(p);
    if (!m && !p.startsWith('/v1/p2p/')) return false;
    try {
      this.opts.authorize(tokenOf(req));
      if (!m) throw notFound(`no such endpoint: ${req.method} ${p.slice(0, 200)}`);
      const digest = parseDigest(m[1], 'blob digest');
      if (m[2]) await this.claim(req, res, digest);
      else await this.torrentRoute(req, res, digest, url.searchParams.get('root') ?? undefined);
    } catch (e) {
      sendError(res, e);
    }
    return true;
  }

  private async torrentRoute(req: http.IncomingMessage, res: http.ServerResponse, digest: string, root: string | undefined): Promise<void> {
    if (req.method === 'GET' || req.method === 'HEAD') {
      const found = await this.lookup(digest, root && /^sha256:[a-f0-9]{64}$/.test(root) ? root : undefined);
      if (!found) throw notFound(`no torrent metadata for ${digest} yet`);
      res.writeHead(200, { 'Content-Type': TORRENT_TYPE, 'Content-Length': String(found.bytes.length), 'Cache-Control': 'no-store', 'X-D4fs-Seeded': found.seeded ? 'yes' : 'no' });
      res.end(req.method === 'HEAD' ? undefined : found.bytes);
      return;
    }
    if (req.method === 'PUT') {
      const body = await readBodyLimited(req, MAX_TORRENT_BYTES, `torrent metadata of ${digest}`);
      const t = await checkTorrent(body, digest);
      const stored = await this.store(digest, t.bytes);
      this.claims.delete(digest);
      if (!stored) {
        const have = await fsp.readFile(this.file(digest));
        const same = have.equals(body) || (await checkTorrent(have, digest).then((h) => h.infoHash === t.infoHash, () => false));
        sendJson(res, same ? 200 : 409, { infoHash: same ? t.infoHash : undefined, stored: false, conflict: !same });
        if (!same) this.opts.log.warn({ digest }, 'a node sent other metadata for a blob whose metadata is stored: kept the first');
        return;
      }
      this.opts.log.info({ digest, infoHash: t.infoHash, size: t.size }, 'torrent metadata stored');
      sendJson(res, 201, { infoHash: t.infoHash, stored: true });
      return;
    }
    throw invalidArgument(`${req.method} is not a method of torrent metadata`);
  }

  private async claim(req: http.IncomingMessage, res: http.ServerResponse, digest: string): Promise<void> {
    const node = String(new URL(req.url ?? '/', 'http://x').searchParams.get('node') ?? '');
    if (!/^[A-Za-z0-9._-]{1,128}$/.test(node)) throw invalidArgument('a claim names its node: ?node=<id> (1-128 of [A-Za-z0-9._-])');
    if (req.method === 'DELETE') {
      if (this.claims.get(digest)?.node === node) this.claims.delete(digest);
      sendJson(res, 200, { released: true });
      return;
    }
    if (req.method !== 'POST') throw invalidArgument(`${req.method} is not a method of claims`);
    if ((await this.lookup(digest))?.seeded) {
      sendJson(res, 200, { granted: false, ready: true });
      return;
    }
    // read the claim after the await, and decide and record it with no await
    // in between: claims that arrive together must not all see "no claim"
    const now = Date.now();
    const held = this.claims.get(digest);
    if (!held || held.expires < now || held.node === node) {
      this.claims.set(digest, { node, expires: now + this.leaseMs });
      sendJson(res, 200, { granted: true, leaseMs: this.leaseMs });
      return;
    }
    sendJson(res, 200, { granted: false, ready: false, retryMs: Math.min(200, Math.max(50, held.expires - now)) });
  }

  stats(): TrackerStats {
    const swarms = Object.values(this.server.torrents ?? {});
    let torrents = 0;
    try {
      torrents = fs.readdirSync(this.opts.dir).filter((n) => n.endsWith('.torrent')).length;
    } catch {
      /* the directory went away */
    }
    const now = Date.now();
    return {
      torrents,
      swarms: swarms.length,
      peers: swarms.reduce((n, s) => n + (s.complete ?? 0) + (s.incomplete ?? 0), 0),
      announces: this.counters.announces,
      refused: this.counters.refused,
      claims: [...this.claims.values()].filter((c) => c.expires >= now).length,
    };
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
