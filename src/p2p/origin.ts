/**
 * Where a blob comes from when no peer has it: an OCI registry (through the
 * registry client: auth, bearer tokens, redirects, TLS) or a d4fs-server
 * (its `/v1/blobs/<root digest>`, with the node's or the caller's token).
 */
import * as http from 'node:http';
import * as https from 'node:https';
import type { Readable } from 'node:stream';
import { corrupt, notFound, permissionDenied, unauthenticated, unavailable } from '../errors';
import { RegistryClient } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import { blobPath } from '../distribution/protocol';

export type Origin =
  | { kind: 'registry'; registry: string; repo: string }
  | { kind: 'server'; base: string; root: string; authorization?: string };

/** A short name of an origin for logs and metrics. */
export const originName = (o: Origin): string => (o.kind === 'registry' ? `${o.registry}/${o.repo}` : `${o.base} ${o.root}`);

export class Origins {
  private readonly clients = new Map<string, RegistryClient>();
  private readonly agent = new http.Agent({ keepAlive: true });
  private readonly tlsAgent = new https.Agent({ keepAlive: true });

  /**
   * @param registryOptions credentials (docker config.json, --creds) and TLS options of the registries mirrored
   * @param serverToken the node's token for d4fs-servers (a caller's own Authorization wins)
   */
  constructor(private readonly registryOptions: (registry: string) => RegistryOptions, private readonly serverToken?: string) {}

  registry(registry: string): RegistryClient {
    let c = this.clients.get(registry);
    if (!c) {
      // never through a mirror: the peer IS the mirror
      c = new RegistryClient(registry, { ...this.registryOptions(registry), mirror: undefined });
      this.clients.set(registry, c);
    }
    return c;
  }

  /** Size of a blob at its origin (HEAD), undefined when unknown. */
  async size(o: Origin, digest: string): Promise<number | undefined> {
    if (o.kind === 'registry') {
      const n = await this.registry(o.registry).statBlob(o.repo, digest);
      if (n === undefined) throw notFound(`registry ${o.registry}: blob ${digest} not found in ${o.repo}`);
      return n >= 0 ? n : undefined;
    }
    const res = await this.serverRequest(o, 'HEAD', {});
    res.resume();
    const n = Number(res.headers['content-length'] ?? NaN);
    return Number.isFinite(n) ? n : undefined;
  }

  /** The blob's bytes `start`..`end` (inclusive), or all of them when no range is given. Not verified. */
  async open(o: Origin, digest: string, range?: [number, number]): Promise<Readable> {
    if (o.kind === 'registry') {
      const c = this.registry(o.registry);
      return range ? c.openBlobRange(o.repo, digest, range[0], range[1]) : c.openBlob(o.repo, digest);
    }
    const res = await this.serverRequest(o, 'GET', range ? { Range: `bytes=${range[0]}-${range[1]}` } : {});
    const fileDigest = res.headers['x-d4fs-file-digest'];
    if (typeof fileDigest === 'string' && fileDigest !== digest) {
      res.resume();
      throw corrupt(`${o.base}: blob ${o.root} is ${fileDigest}, not ${digest}`);
    }
    if (range) {
      const m = /^bytes (\d+)-(\d+)\/\d+$/.exec(String(res.headers['content-range'] ?? ''));
      if (res.statusCode !== 206 || !m || Number(m[1]) !== range[0] || Number(m[2]) !== range[1]) {
        res.resume();
        throw corrupt(`${o.base}: blob ${o.root}: answered ${res.statusCode} ${String(res.headers['content-range'] ?? '')} to a request for bytes ${range[0]}-${range[1]}`);
      }
    }
    return res;
  }

  private serverRequest(o: Extract<Origin, { kind: 'server' }>, method: 'GET' | 'HEAD', headers: Record<string, string>): Promise<http.IncomingMessage> {
    const url = new URL(blobPath(o.root), o.base);
    const auth = o.authorization ?? (this.serverToken ? `Bearer ${this.serverToken}` : undefined);
    return new Promise((resolve, reject) => {
      const secure = url.protocol === 'https:';
      const req = (secure ? https : http).request(url, { method, headers: { ...headers, ...(auth ? { Authorization: auth } : {}), 'User-Agent': 'd4fs-peer/0.1' }, agent: secure ? this.tlsAgent : this.agent });
      req.setTimeout(30_000, () => req.destroy(new Error('no answer within 30 s')));
      req.once('error', (e) => reject(unavailable(`cannot reach ${url.origin}: ${e.message}`, e)));
      req.once('response', (res) => {
        const s = res.statusCode ?? 0;
        if (s === 200 || s === 206) return resolve(res);
        res.resume();
        if (s === 404) return reject(notFound(`${url.origin}: no blob ${o.root}`));
        if (s === 401) return reject(unauthenticated(`${url.origin}: the server needs a token to read (the peer's --server-token, or the caller's)`));
        if (s === 403) return reject(permissionDenied(`${url.origin}: access denied`));
        reject(unavailable(`${url.origin}: blob ${o.root}: HTTP ${s}`));
      });
      req.end();
    });
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.agent.destroy();
    this.tlsAgent.destroy();
  }
}
