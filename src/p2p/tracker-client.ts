/** The peer's client of the tracker's metadata and claim routes (src/p2p/tracker.ts). */
import * as http from 'node:http';
import * as https from 'node:https';
import { D4fsError, notFound, toD4fsError, unauthenticated, unavailable } from '../errors';
import { readBodyLimited } from './http';
import { MAX_TORRENT_BYTES } from './torrent';

export type ClaimAnswer = { granted: true; leaseMs: number } | { granted: false; ready: boolean; retryMs?: number };

export class TrackerClient {
  readonly base: URL;
  private readonly agent: http.Agent;

  constructor(url: string, private readonly token: string | undefined, private readonly node: string) {
    this.base = new URL(url);
    this.agent = this.base.protocol === 'https:' ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  }

  /** Announce URL for the engine: the tracker's /announce with the token (the engine adds its own query). */
  announceUrl(): string {
    const u = new URL('/announce', this.base);
    if (this.token) u.searchParams.set('token', this.token);
    return u.toString();
  }

  private request(method: string, path: string, body?: Buffer): Promise<{ status: number; body: Buffer; type: string; seeded: string }> {
    const url = new URL(path, this.base);
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = { 'User-Agent': 'd4fs-peer/0.1' };
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      if (body) headers['Content-Length'] = String(body.length);
      const req = (url.protocol === 'https:' ? https : http).request(url, { method, headers, agent: this.agent });
      req.setTimeout(15_000, () => req.destroy(new Error('no answer within 15 s')));
      req.once('error', (e) => reject(unavailable(`tracker ${this.base.origin}: ${e.message}`, e)));
      req.once('response', (res) => {
        readBodyLimited(res, MAX_TORRENT_BYTES + 65536, `answer of tracker ${this.base.origin}`).then(
          (b) => resolve({ status: res.statusCode ?? 0, body: b, type: String(res.headers['content-type'] ?? ''), seeded: String(res.headers['x-d4fs-seeded'] ?? '') }),
          (e: unknown) => reject(toD4fsError(e)),
        );
      });
      req.end(body);
    });
  }

  private fail(status: number, body: Buffer, what: string): D4fsError {
    let msg = '';
    try {
      msg = String((JSON.parse(body.toString('utf8')) as { error?: { message?: string } }).error?.message ?? '');
    } catch {
      /* not JSON */
    }
    const text = `tracker ${this.base.origin}: ${what}: HTTP ${status}${msg ? `: ${msg.slice(0, 300)}` : ''}`;
    if (status === 401 || status === 403) return unauthenticated(text);
    if (status === 404) return notFound(text);
    return unavailable(text);
  }

  /**
   * Torrent metadata of a blob, undefined when the tracker has none yet;
   * `seeded` is false when no node holds the blob yet (metadata a d4fs-server
   * made of its own file): the blob is then claimed like an unknown one.
   */
  async getTorrent(digest: string, root?: string): Promise<{ bytes: Buffer; seeded: boolean } | undefined> {
    const r = await this.request('GET', `/v1/p2p/torrents/${digest}${root ? `?root=${encodeURIComponent(root)}` : ''}`);
    if (r.status === 404) return undefined;
    if (r.status !== 200) throw this.fail(r.status, r.body, `metadata of ${digest}`);
    return { bytes: r.body, seeded: r.seeded !== 'no' };
  }

  async putTorrent(digest: string, bytes: Buffer): Promise<void> {
    const r = await this.request('PUT', `/v1/p2p/torrents/${digest}`, bytes);
    if (r.status !== 200 && r.status !== 201 && r.status !== 409) throw this.fail(r.status, r.body, `storing metadata of ${digest}`);
  }

  async claim(digest: string): Promise<ClaimAnswer> {
    const r = await this.request('POST', `/v1/p2p/torrents/${digest}/claim?node=${encodeURIComponent(this.node)}`);
    if (r.status !== 200) throw this.fail(r.status, r.body, `claim of ${digest}`);
    return JSON.parse(r.body.toString('utf8')) as ClaimAnswer;
  }

  async release(digest: string): Promise<void> {
    await this.request('DELETE', `/v1/p2p/torrents/${digest}/claim?node=${encodeURIComponent(this.node)}`).catch(() => undefined);
  }

  close(): void {
    this.agent.destroy();
  }
}
