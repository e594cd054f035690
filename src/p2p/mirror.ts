/**
 * The peer's HTTP face on loopback: a pull-through OCI registry mirror for
 * containerd (and d4fs's own registry reads), d4fs-server blobs for
 * `ctr-cli pull --peer`, status and metrics.
 *
 *   GET/HEAD /v2/                                       API version check
 *   GET/HEAD /v2/<name>/manifests/<tag|digest>?ns=REG   manifests (Accept honoured, Docker-Content-Digest)
 *   GET/HEAD /v2/<name>/blobs/<digest>?ns=REG           blobs, with Range (206, 416)
 *   GET/HEAD /d4fs/blobs/<digest>?server=URL&root=D     a d4fs-server file (Range; the caller's Authorization is used at the server)
 *   GET /status, /metrics, /healthz
 *
 * `ns` names the upstream registry (containerd adds it when it talks to a
 * mirror); without it the first mirrored registry is meant. Only registries
 * and servers the peer was configured for are fetched from. A tag the peer
 * resolved is never answered with 404 (containerd would not fall back):
 * when the registry cannot be reached the last manifest seen for it is
 * served.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import * as http from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { D4fsError, invalidArgument, notFound, toD4fsError } from '../errors';
import { checkRepository, isDigestReference } from '../oci/registry/client';
import { INDEX_TYPES, MANIFEST_TYPES } from '../oci/mediatypes';
import { parseRange, startRangeAnswer } from '../server/http';
import { parseDigest } from '../util/digest';
import type { BlobCache } from './cache';
import type { Fetcher } from './fetcher';
import type { PeerMetrics } from './metrics';
import type { Origins } from './origin';

export interface MirrorOptions {
  cache: BlobCache;
  fetcher: Fetcher;
  origins: Origins;
  metrics: PeerMetrics;
  log: Logger;
  /** Registries mirrored (the first is the default without `ns`). */
  registries: string[];
  /** d4fs-servers whose blobs may be fetched (origins, e.g. http://10.0.0.1:8081). */
  servers: string[];
  /** The status document. */
  status: () => unknown;
}

const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const ROUTES: Array<[string, RegExp]> = [
  ['manifest', /^\/v2\/(.+)\/manifests\/([^/]+)$/],
  ['blob', /^\/v2\/(.+)\/blobs\/([^/]+)$/],
  ['d4fs-blob', /^\/d4fs\/blobs\/([^/]+)$/],
];

/** OCI distribution error codes for the kinds a client can cause or meet. */
function ociError(e: D4fsError, what: 'manifest' | 'blob' | 'other'): { status: number; code: string } {
  switch (e.kind) {
    case 'NOT_FOUND':
      return { status: 404, code: what === 'manifest' ? 'MANIFEST_UNKNOWN' : what === 'blob' ? 'BLOB_UNKNOWN' : 'NAME_UNKNOWN' };
    case 'INVALID_ARGUMENT':
      return { status: 400, code: what === 'manifest' ? 'MANIFEST_INVALID' : what === 'blob' ? 'DIGEST_INVALID' : 'UNSUPPORTED' };
    case 'UNAUTHENTICATED':
      return { status: 401, code: 'UNAUTHORIZED' };
    case 'PERMISSION_DENIED':
      return { status: 403, code: 'DENIED' };
    case 'CORRUPT':
      return { status: 502, code: 'UNKNOWN' };
    default:
      return { status: 503, code: 'UNAVAILABLE' };
  }
}

function sendOciError(res: http.ServerResponse, e: unknown, what: 'manifest' | 'blob' | 'other'): number {
  const err = toD4fsError(e);
  const precise = err.detail?.httpStatus;
  const { status, code } = typeof precise === 'number' ? { status: precise, code: 'UNSUPPORTED' } : ociError(err, what);
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return status;
  }
  const body = Buffer.from(JSON.stringify({ errors: [{ code, message: err.kind === 'INTERNAL' ? 'internal error (see the peer log)' : err.message }] }));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': String(body.length), 'Docker-Distribution-API-Version': 'registry/2.0', ...(status === 405 ? { Allow: 'GET, HEAD' } : {}) });
  res.end(res.req?.method === 'HEAD' ? undefined : body);
  return status;
}

export class Mirror {
  /** Sizes and media types of blobs named by manifests this mirror served. */
  private readonly known = new Map<string, { size: number; mediaType: string }>();

  constructor(private readonly o: MirrorOptions) {}

  handler(): http.RequestListener {
    return (req, res) => {
      req.on('error', () => undefined);
      res.on('error', () => undefined);
      this.handle(req, res).catch((e: unknown) => {
        this.o.log.error({ err: (e as Error)?.message }, 'mirror request failed');
        res.destroy();
      });
    };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://peer.invalid');
    const p = url.pathname;
    let route = 'other';
    let status = 200;
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new D4fsError('INVALID_ARGUMENT', `the mirror is read-only: ${req.method} is not served`, { detail: { httpStatus: 405 } });
      if (p === '/v2/' || p === '/v2') {
        route = 'v2';
        const body = Buffer.from('{}');
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': String(body.length), 'Docker-Distribution-API-Version': 'registry/2.0' });
        res.end(req.method === 'HEAD' ? undefined : body);
        return;
      }
      if (p === '/healthz') {
        route = 'healthz';
        res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok\n');
        return;
      }
      if (p === '/metrics') {
        route = 'metrics';
        const text = await this.o.metrics.registry.metrics();
        res.writeHead(200, { 'Content-Type': this.o.metrics.registry.contentType }).end(text);
        return;
      }
      if (p === '/status') {
        route = 'status';
        const body = Buffer.from(JSON.stringify(this.o.status(), null, 2) + '\n');
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': String(body.length), 'Cache-Control': 'no-store' }).end(body);
        return;
      }
      for (const [name, re] of ROUTES) {
        const m = re.exec(p);
        if (!m) continue;
        route = name;
        if (name === 'manifest') return await this.manifest(req, res, this.registryOf(url), checkRepository(decodeURIComponent(m[1])), decodeURIComponent(m[2]));
        if (name === 'blob') return await this.blob(req, res, { kind: 'registry', registry: this.registryOf(url), repo: checkRepository(decodeURIComponent(m[1])) }, parseDigest(decodeURIComponent(m[2]), 'blob digest'));
        return await this.d4fsBlob(req, res, url, parseDigest(decodeURIComponent(m[1]), 'blob digest'));
      }
      throw notFound(`no such endpoint: ${p.slice(0, 200)}`);
    } catch (e) {
      status = sendOciError(res, e, route === 'manifest' ? 'manifest' : route === 'blob' || route === 'd4fs-blob' ? 'blob' : 'other');
      const err = toD4fsError(e);
      if (err.kind !== 'NOT_FOUND') this.o.log.warn({ path: p.slice(0, 300), kind: err.kind, err: err.message }, 'mirror request failed');
    } finally {
      this.o.metrics.requests.inc({ route, status: String(res.statusCode || status) });
    }
  }

  private registryOf(url: URL): string {
    const ns = url.searchParams.get('ns') ?? this.o.registries[0];
    if (!ns) throw notFound('this peer mirrors no registry (start it with --mirror REGISTRY)');
    const hit = this.o.registries.find((r) => r === ns || (ns === 'docker.io' && r === 'registry-1.docker.io'));
    if (!hit) throw notFound(`this peer does not mirror ${JSON.stringify(ns.slice(0, 100))} (start it with --mirror ${ns.slice(0, 100)})`);
    return hit;
  }

  private async manifest(req: http.IncomingMessage, res: http.ServerResponse, registry: string, repo: string, ref: string): Promise<void> {
    const byDigest = isDigestReference(ref);
    if (!byDigest && !TAG_RE.test(ref)) throw invalidArgument(`invalid tag ${JSON.stringify(ref.slice(0, 100))}`);
    let digest = byDigest ? parseDigest(ref, 'manifest digest') : undefined;
    let mediaType: string | undefined;
    let bytes: Buffer | undefined;
    const cached = digest ? this.o.cache.get(digest) : undefined;
    if (cached && cached.mediaType) {
      bytes = await fsp.readFile(cached.path);
      mediaType = cached.mediaType;
      this.o.cache.touch(cached.digest);
    } else {
      try {
        const doc = await this.o.origins.registry(registry).getManifest(repo, ref);
        bytes = doc.bytes;
        mediaType = doc.mediaType;
        digest = doc.digest;
        const tmp = this.o.cache.tempPath(digest);
        await fsp.writeFile(tmp, doc.bytes, { mode: 0o600 });
        await this.o.cache.commit(tmp, digest, { mediaType, fromOrigin: bytes.length });
        if (!byDigest) this.o.cache.putTag({ registry, repo, tag: ref, digest, mediaType });
      } catch (e) {
        const err = toD4fsError(e);
        const tag = !byDigest ? this.o.cache.getTag(registry, repo, ref) : undefined;
        const stale = tag ? this.o.cache.get(tag.digest) : undefined;
        if (err.kind !== 'UNAVAILABLE' || !tag || !stale) throw err;
        this.o.log.warn({ registry, repo, tag: ref, err: err.message }, 'registry unreachable: serving the last manifest seen for this tag');
        bytes = await fsp.readFile(stale.path);
        mediaType = tag.mediaType;
        digest = tag.digest;
      }
    }
    if (!bytes || !mediaType || !digest) throw notFound(`manifest ${repo}:${ref} not found`);
    this.learn(bytes, mediaType);
    const accept = String(req.headers.accept ?? '');
    if (accept && !accept.includes('*/*') && !accept.split(',').some((a) => a.trim().split(';')[0] === mediaType)) {
      this.o.log.debug({ repo, ref, mediaType, accept: accept.slice(0, 200) }, 'manifest type not in Accept: served anyway (as registries do)');
    }
    res.writeHead(200, { 'Content-Type': mediaType, 'Content-Length': String(bytes.length), 'Docker-Content-Digest': digest, 'Docker-Distribution-API-Version': 'registry/2.0' });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    res.end(bytes);
    this.o.metrics.served.inc({ kind: 'manifest' }, bytes.length);
  }

  /** Remember the sizes of the blobs a manifest names (a fetch then knows them without asking the origin). */
  private learn(bytes: Buffer, mediaType: string): void {
    if (!MANIFEST_TYPES.includes(mediaType) || INDEX_TYPES.includes(mediaType)) return;
    try {
      const m = JSON.parse(bytes.toString('utf8')) as { config?: { digest?: string; size?: number; mediaType?: string }; layers?: Array<{ digest?: string; size?: number; mediaType?: string }> };
      for (const d of [m.config, ...(m.layers ?? [])]) {
        if (d && typeof d.digest === 'string' && typeof d.size === 'number' && Number.isSafeInteger(d.size) && d.size >= 0) {
          if (this.known.size > 100_000) this.known.clear();
          this.known.set(d.digest, { size: d.size, mediaType: String(d.mediaType ?? '') });
        }
      }
    } catch {
      /* not JSON: containerd will say */
    }
  }

  private async blob(req: http.IncomingMessage, res: http.ServerResponse, origin: { kind: 'registry'; registry: string; repo: string }, digest: string): Promise<void> {
    const k = this.known.get(digest);
    if (req.method === 'HEAD' && !this.o.cache.get(digest)) {
      // a HEAD needs no bytes: ask the origin for the size rather than fetch the blob
      const size = k?.size ?? (await this.o.origins.size(origin, digest));
      res.writeHead(200, { 'Content-Length': String(size ?? 0), 'Docker-Content-Digest': digest, 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream', 'Docker-Distribution-API-Version': 'registry/2.0' });
      res.end();
      return;
    }
    const blob = await this.o.fetcher.get({ digest, size: k?.size, origin, mediaType: k?.mediaType || undefined });
    await this.serveFile(req, res, blob.path, blob.size, digest);
  }

  private async d4fsBlob(req: http.IncomingMessage, res: http.ServerResponse, url: URL, digest: string): Promise<void> {
    const server = url.searchParams.get('server') ?? '';
    const root = parseDigest(url.searchParams.get('root') ?? '', 'root digest');
    let origin: string;
    try {
      origin = new URL(server).origin;
    } catch {
      throw invalidArgument('?server= must be the URL of a d4fs-server');
    }
    if (!this.o.servers.includes(origin)) throw new D4fsError('PERMISSION_DENIED', `this peer does not fetch from ${origin} (start it with --server ${origin})`);
    const sizeParam = url.searchParams.get('size');
    const size = sizeParam && /^\d{1,15}$/.test(sizeParam) ? Number(sizeParam) : undefined;
    const authorization = typeof req.headers.authorization === 'string' ? req.headers.authorization : undefined;
    const blob = await this.o.fetcher.get({ digest, size, origin: { kind: 'server', base: origin, root, authorization } });
    await this.serveFile(req, res, blob.path, blob.size, digest, { 'x-d4fs-file-digest': digest, ETag: `"${root}"` });
  }

  private async serveFile(req: http.IncomingMessage, res: http.ServerResponse, file: string, size: number, digest: string, extra: Record<string, string> = {}): Promise<void> {
    const release = this.o.cache.pin(digest);
    try {
      const headers: Record<string, string> = { 'Content-Type': 'application/octet-stream', 'Docker-Content-Digest': digest, 'Accept-Ranges': 'bytes', 'Docker-Distribution-API-Version': 'registry/2.0', ...extra };
      const range = parseRange(typeof req.headers.range === 'string' ? req.headers.range : undefined, size);
      const part = startRangeAnswer(res, headers, range, size);
      if (!part) return;
      const { start, end } = part;
      if (req.method === 'HEAD' || size === 0) {
        res.end();
        return;
      }
      let sent = 0;
      const stream = createReadStream(file, { start, end, highWaterMark: 256 * 1024 });
      stream.on('data', (c) => (sent += (c as Buffer).length));
      await pipeline(stream, res).catch(() => undefined); // the client went away
      this.o.metrics.served.inc({ kind: 'blob' }, sent);
    } finally {
      release();
    }
  }
}
