/**
 * Client of the OCI distribution API (docker registry v2): manifests, blobs,
 * uploads, tags. One instance talks to one registry host and keeps its
 * connections, scheme (https, or http for insecure registries) and tokens.
 */
import { createHash } from 'node:crypto';
import type * as http from 'node:http';
import { PassThrough, Readable } from 'node:stream';
import { corrupt, D4fsError, invalidArgument, notFound, permissionDenied, unavailable } from '../../errors';
import { digestOf, parseDigest, SHA256_RE } from '../../util/digest';
import { MANIFEST_ACCEPT, MT } from '../mediatypes';
import type { RawDocument } from '../types';
import { Authenticator, isLoopbackHost, repoScope, TokenHttp } from './auth';
import { apiHostOf, checkRepository, HOST_RE, isDigestReference, manifestMediaType, nextLink, REPO_RE } from './names';
import type { RegistryOptions } from './options';
import { chunksOf, discard, firstHeader, readAll, RegistryWire, registryMessage, Slice } from './wire';

export { apiHostOf, checkRepository, isDigestReference, manifestMediaType, nextLink } from './names';

/** Knobs that are not user options (tests shrink them). */
export interface ClientTuning {
  /** Connect and idle timeout of every request, in ms (default 30 000). */
  timeoutMs?: number;
  /** Size of each PATCH of a chunked upload, in bytes (default 16 MiB). */
  chunkSize?: number;
}

/** Result of pushBlob. */
export type PushResult = 'exists' | 'uploaded';

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_CHUNK = 16 * 1024 * 1024;
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const MAX_ERROR_BODY = 64 * 1024;
const MAX_TOKEN_BODY = 1024 * 1024;
const MAX_REDIRECTS = 5;
const MAX_TAG_PAGES = 10_000;
const MAX_REFERRER_PAGES = 1000;
const MAX_REFERRERS = 10_000;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Answers of a registry without the referrers API (distribution spec 1.1: clients fall back to the referrers tag). */
const NO_REFERRERS_API = new Set([404, 405, 501]);

/** An API call: the wire request plus what auth and error messages need. */
interface ApiCall {
  method: string;
  url: URL;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Token scopes the call needs. */
  scopes: string[];
  /** Repository, for messages. */
  repo: string;
}

/**
 * Client of one registry. All methods take the repository name
 * ("library/nginx") and validate it, and map failures to D4fsError kinds:
 * UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, CORRUPT, UNAVAILABLE.
 */
export class RegistryClient {
  /** The registry name as given ("docker.io", "127.0.0.1:5000"). */
  readonly registry: string;
  /** The host contacted ("registry-1.docker.io"). */
  readonly apiHost: string;
  private readonly auth: Authenticator;
  private readonly io: RegistryWire;
  private readonly chunkSize: number;
  private base: URL | undefined;
  private pinging: Promise<URL> | undefined;
  private mirrorDownUntil = 0;

  /**
   * @param registryHost "host[:port]" of the registry ("docker.io" maps to registry-1.docker.io)
   * @param opts credentials and TLS options
   * @param tuning timeouts and chunk size
   */
  constructor(registryHost: string, private readonly opts: RegistryOptions = {}, tuning: ClientTuning = {}) {
    if (typeof registryHost !== 'string' || !HOST_RE.test(registryHost)) {
      throw invalidArgument(`invalid registry host ${JSON.stringify(String(registryHost).slice(0, 100))}`);
    }
    this.registry = registryHost;
    this.apiHost = apiHostOf(registryHost);
    this.io = new RegistryWire(opts, tuning.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.chunkSize = Math.max(1, tuning.chunkSize ?? DEFAULT_CHUNK);
    this.auth = new Authenticator(registryHost, opts, this.tokenHttp);
  }

  // -------------------------------------------------------------------------
  // Public API

  /**
   * Fetch a manifest or index by tag or digest. The digest returned is the
   * sha256 of the bytes received; for a digest reference it must match.
   */
  async getManifest(repo: string, reference: string): Promise<RawDocument> {
    checkRepository(repo);
    const byDigest = isDigestReference(reference);
    const what = `manifest ${repo}${byDigest ? '@' : ':'}${reference}`;
    const res =
      (await this.viaMirror('GET', `/v2/${repo}/manifests/${reference}`, { Accept: MANIFEST_ACCEPT }, [200])) ??
      (await this.call({
        method: 'GET',
        url: await this.endpoint(`/v2/${repo}/manifests/${reference}`),
        headers: { Accept: MANIFEST_ACCEPT },
        scopes: [repoScope(repo, 'pull')],
        repo,
      }));
    await this.expect(res, [200], what, repo);
    const bytes = await readAll(res, MAX_MANIFEST_BYTES, `registry ${this.registry}: ${what}`);
    const digest = digestOf(bytes);
    if (byDigest && digest !== reference) {
      throw corrupt(`registry ${this.registry}: ${what}: received bytes hash to ${digest}`);
    }
    const claimed = firstHeader(res.headers['docker-content-digest']);
    if (claimed && SHA256_RE.test(claimed) && claimed !== digest) {
      throw corrupt(`registry ${this.registry}: ${what}: Docker-Content-Digest says ${claimed} but the bytes hash to ${digest}`);
    }
    let mediaType: string;
    try {
      mediaType = manifestMediaType(firstHeader(res.headers['content-type']), bytes);
    } catch (e) {
      throw corrupt(`registry ${this.registry}: ${what}: ${(e as Error).message}`);
    }
    return { bytes, mediaType, digest };
  }

  /**
   * Stream a blob's stored bytes, following redirects (Authorization is not
   * sent to another origin). The bytes are NOT verified here; wrap the stream
   * in a VerifyingStream. When `size` is given, a Content-Length that
   * disagrees is refused up front.
   */
  async openBlob(repo: string, digest: string, size?: number): Promise<Readable> {
    checkRepository(repo);
    parseDigest(digest, 'blob digest');
    const what = `blob ${digest} in ${repo}`;
    const res = (await this.viaMirror('GET', `/v2/${repo}/blobs/${digest}`, {}, [200])) ?? (await this.blobRequest('GET', repo, digest));
    await this.expect(res, [200], what, repo);
    const length = Number(firstHeader(res.headers['content-length']) ?? NaN);
    if (size !== undefined && Number.isFinite(length) && length !== size) {
      discard(res);
      throw corrupt(`registry ${this.registry}: ${what}: server sends ${length} bytes but the descriptor says ${size}`);
    }
    return this.guardBody(res, what);
  }

  /**
   * Like {@link openBlob}, from byte `from` on (`Range: bytes=FROM-`): `start`
   * is `from` when the registry answered 206 with the range asked for, 0 when
   * it sent the whole blob (200). The bytes are NOT verified here.
   */
  async openBlobFrom(repo: string, digest: string, size: number, from: number): Promise<{ start: number; body: Readable }> {
    if (from <= 0) return { start: 0, body: await this.openBlob(repo, digest, size) };
    checkRepository(repo);
    parseDigest(digest, 'blob digest');
    const what = `blob ${digest} in ${repo}`;
    const res = (await this.viaMirror('GET', `/v2/${repo}/blobs/${digest}`, { Range: `bytes=${from}-` }, [200, 206])) ?? (await this.blobRequest('GET', repo, digest, { Range: `bytes=${from}-` }));
    await this.expect(res, [200, 206], what, repo);
    if (res.statusCode === 200) {
      const length = Number(firstHeader(res.headers['content-length']) ?? NaN);
      if (Number.isFinite(length) && length !== size) {
        discard(res);
        throw corrupt(`registry ${this.registry}: ${what}: server sends ${length} bytes but the descriptor says ${size}`);
      }
      return { start: 0, body: this.guardBody(res, what) };
    }
    const range = firstHeader(res.headers['content-range']) ?? '';
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(range);
    if (!m || Number(m[1]) !== from || Number(m[2]) !== size - 1 || (m[3] !== '*' && Number(m[3]) !== size)) {
      discard(res);
      throw corrupt(`registry ${this.registry}: ${what}: answered Content-Range "${range}" to a request for bytes ${from}-${size - 1}/${size}`);
    }
    return { start: from, body: this.guardBody(res, what) };
  }

  /**
   * Bytes `start`..`end` (inclusive) of a blob, asked with `Range` from the
   * registry itself (never the mirror: the d4fs-peer uses it to fill what
   * its swarm did not deliver). A registry that answers 200 with the whole
   * blob has the bytes outside the range dropped here. Not verified.
   */
  async openBlobRange(repo: string, digest: string, start: number, end: number): Promise<Readable> {
    checkRepository(repo);
    parseDigest(digest, 'blob digest');
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) throw invalidArgument(`bad byte range ${start}-${end}`);
    const what = `blob ${digest} in ${repo} (bytes ${start}-${end})`;
    const res = await this.blobRequest('GET', repo, digest, { Range: `bytes=${start}-${end}` });
    await this.expect(res, [200, 206], what, repo);
    if (res.statusCode === 206) {
      const range = firstHeader(res.headers['content-range']) ?? '';
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(range);
      if (!m || Number(m[1]) !== start || Number(m[2]) !== end) {
        discard(res);
        throw corrupt(`registry ${this.registry}: ${what}: answered Content-Range "${range}"`);
      }
      return this.guardBody(res, what);
    }
    return this.guardBody(res, what).pipe(new Slice(start, end - start + 1));
  }

  /** Size of a blob in the repository, or undefined when the registry does not have it. */
  async statBlob(repo: string, digest: string): Promise<number | undefined> {
    checkRepository(repo);
    parseDigest(digest, 'blob digest');
    const res = (await this.viaMirror('HEAD', `/v2/${repo}/blobs/${digest}`, {}, [200])) ?? (await this.blobRequest('HEAD', repo, digest));
    if (res.statusCode === 404) {
      discard(res);
      return undefined;
    }
    await this.expect(res, [200], `blob ${digest} in ${repo}`, repo);
    discard(res);
    const length = Number(firstHeader(res.headers['content-length']) ?? NaN);
    return Number.isFinite(length) ? length : -1;
  }

  /** Whether the repository holds the blob (HEAD). */
  async blobExists(repo: string, digest: string): Promise<boolean> {
    return (await this.statBlob(repo, digest)) !== undefined;
  }

  /**
   * Upload a blob unless the repository already has it: POST an upload
   * session, PATCH chunks with Content-Range, PUT ?digest=. The bytes are
   * hashed on the way and the upload is abandoned (CORRUPT) when they do not
   * match `digest` and `size`. `streamFactory` is called again for one retry
   * after a network failure.
   */
  async pushBlob(repo: string, digest: string, size: number, streamFactory: () => Readable): Promise<PushResult> {
    checkRepository(repo);
    parseDigest(digest, 'blob digest');
    if (!Number.isSafeInteger(size) || size < 0) throw invalidArgument(`invalid blob size ${size}`);
    if (await this.blobExists(repo, digest)) return 'exists';
    try {
      await this.upload(repo, digest, size, streamFactory());
    } catch (e) {
      if (!(e instanceof D4fsError) || e.kind !== 'UNAVAILABLE') throw e;
      await this.upload(repo, digest, size, streamFactory());
    }
    return 'uploaded';
  }

  /**
   * Ask the registry to mount a blob from another repository of the same
   * registry (no upload). Returns false when it would not (the upload session
   * it opened instead is cancelled).
   */
  async mountBlob(repo: string, digest: string, fromRepo: string): Promise<boolean> {
    checkRepository(repo);
    checkRepository(fromRepo);
    parseDigest(digest, 'blob digest');
    const url = await this.endpoint(`/v2/${repo}/blobs/uploads/`);
    url.searchParams.set('mount', digest);
    url.searchParams.set('from', fromRepo);
    const res = await this.call({
      method: 'POST',
      url,
      scopes: [repoScope(repo, 'pull,push'), repoScope(fromRepo, 'pull')],
      repo,
    });
    await this.expect(res, [201, 202], `mount of ${digest} from ${fromRepo} into ${repo}`, repo);
    discard(res);
    if (res.statusCode === 201) return true;
    await this.cancelUpload(repo, this.location(res, url));
    return false;
  }

  /**
   * Store a manifest under a tag or its digest; returns its digest (sha256 of
   * `bytes`).
   */
  async putManifest(repo: string, reference: string, bytes: Buffer, mediaType: string): Promise<string> {
    return (await this.putManifestInfo(repo, reference, bytes, mediaType)).digest;
  }

  /**
   * {@link putManifest}, also returning the registry's `OCI-Subject` header
   * (OCI distribution 1.1): the subject digest of a manifest with a `subject`,
   * when the registry indexed it for its referrers API. Without it the pusher
   * maintains the referrers tag itself.
   */
  async putManifestInfo(repo: string, reference: string, bytes: Buffer, mediaType: string): Promise<{ digest: string; ociSubject?: string }> {
    checkRepository(repo);
    const byDigest = isDigestReference(reference);
    const digest = digestOf(bytes);
    if (byDigest && digest !== reference) throw invalidArgument(`manifest bytes hash to ${digest}, not ${reference}`);
    if (bytes.length > MAX_MANIFEST_BYTES) throw invalidArgument(`manifest is larger than ${MAX_MANIFEST_BYTES} bytes`);
    if (!mediaType) throw invalidArgument('manifest media type is empty');
    const what = `manifest ${repo}${byDigest ? '@' : ':'}${reference}`;
    const res = await this.call({
      method: 'PUT',
      url: await this.endpoint(`/v2/${repo}/manifests/${reference}`),
      headers: { 'Content-Type': mediaType },
      body: bytes,
      scopes: [repoScope(repo, 'pull,push')],
      repo,
    });
    await this.expect(res, [200, 201, 202, 204], `upload of ${what}`, repo);
    discard(res);
    const claimed = firstHeader(res.headers['docker-content-digest']);
    if (claimed && SHA256_RE.test(claimed) && claimed !== digest) {
      throw corrupt(`registry ${this.registry}: stored ${what} as ${claimed}, expected ${digest}`);
    }
    const subject = firstHeader(res.headers['oci-subject']);
    return { digest, ...(subject && SHA256_RE.test(subject) ? { ociSubject: subject } : {}) };
  }

  /**
   * The referrers of a manifest (OCI distribution 1.1: GET
   * /v2/<repo>/referrers/<digest>[?artifactType=…], following Link
   * pagination): the descriptors of every page, as sent (unvalidated beyond
   * being objects of an index's `manifests` array), and whether the registry
   * applied the artifactType filter (`OCI-Filters-Applied`; when it did not,
   * the caller filters). Undefined when the registry has no referrers API
   * (404, 405 or 501: fall back to the referrers tag schema).
   */
  async referrers(repo: string, digest: string, artifactType?: string): Promise<{ manifests: Record<string, unknown>[]; filtered: boolean } | undefined> {
    checkRepository(repo);
    parseDigest(digest, 'subject digest');
    const what = `referrers of ${repo}@${digest}`;
    let url: URL | undefined = await this.endpoint(`/v2/${repo}/referrers/${digest}`);
    if (artifactType) url.searchParams.set('artifactType', artifactType);
    const manifests: Record<string, unknown>[] = [];
    let filtered = !!artifactType;
    const seen = new Set<string>();
    for (let page = 0; url; page++) {
      if (page >= MAX_REFERRER_PAGES || seen.has(url.href)) throw unavailable(`registry ${this.registry}: ${what} do not end`);
      seen.add(url.href);
      const res = await this.call({ method: 'GET', url, headers: { Accept: MT.OCI_INDEX }, scopes: [repoScope(repo, 'pull')], repo });
      if (page === 0 && NO_REFERRERS_API.has(res.statusCode ?? 0)) {
        discard(res);
        return undefined;
      }
      await this.expect(res, [200], what, repo);
      const body = await readAll(res, MAX_MANIFEST_BYTES, `registry ${this.registry}: ${what}`);
      let doc: { manifests?: unknown } | null;
      try {
        doc = JSON.parse(body.toString('utf8')) as { manifests?: unknown } | null;
      } catch {
        throw corrupt(`registry ${this.registry}: ${what}: the answer is not JSON`);
      }
      const list = doc?.manifests ?? [];
      if (!Array.isArray(list) || !list.every((m) => !!m && typeof m === 'object' && !Array.isArray(m))) {
        throw corrupt(`registry ${this.registry}: ${what}: the answer is not an image index of descriptors`);
      }
      manifests.push(...(list as Record<string, unknown>[]));
      if (manifests.length > MAX_REFERRERS) throw corrupt(`registry ${this.registry}: ${what}: more than ${MAX_REFERRERS} referrers`);
      // every page must say it filtered; one that did not makes the caller filter all
      const applied = (firstHeader(res.headers['oci-filters-applied']) ?? '').split(',').map((x) => x.trim());
      if (!applied.includes('artifactType')) filtered = false;
      const next = nextLink(firstHeader(res.headers.link));
      url = next ? new URL(next, url) : undefined;
    }
    return { manifests, filtered };
  }

  /** All tags of a repository, following Link pagination. `pageSize` sets n= (default: the registry's). */
  async listTags(repo: string, pageSize?: number): Promise<string[]> {
    checkRepository(repo);
    let url: URL | undefined = await this.endpoint(`/v2/${repo}/tags/list`);
    if (pageSize !== undefined) url.searchParams.set('n', String(pageSize));
    const tags: string[] = [];
    const seen = new Set<string>();
    for (let page = 0; url; page++) {
      if (page >= MAX_TAG_PAGES || seen.has(url.href)) throw unavailable(`registry ${this.registry}: tag list of ${repo} does not end`);
      seen.add(url.href);
      const res = await this.call({ method: 'GET', url, scopes: [repoScope(repo, 'pull')], repo });
      await this.expect(res, [200], `repository ${repo}`, repo);
      tags.push(...this.parseTags(await readAll(res, MAX_MANIFEST_BYTES, `tag list of ${repo}`), repo));
      const next = nextLink(firstHeader(res.headers.link));
      url = next ? new URL(next, url) : undefined;
    }
    return tags;
  }

  /**
   * Every repository of the registry (GET /v2/_catalog, following Link
   * pagination). Not every registry offers the catalog: NOT_FOUND,
   * PERMISSION_DENIED or UNAUTHENTICATED then, as for any call.
   */
  async listRepositories(pageSize?: number): Promise<string[]> {
    let url: URL | undefined = await this.endpoint('/v2/_catalog');
    if (pageSize !== undefined) url.searchParams.set('n', String(pageSize));
    const repos: string[] = [];
    const seen = new Set<string>();
    for (let page = 0; url; page++) {
      if (page >= MAX_TAG_PAGES || seen.has(url.href)) throw unavailable(`registry ${this.registry}: repository catalog does not end`);
      seen.add(url.href);
      const res = await this.call({ method: 'GET', url, scopes: ['registry:catalog:*'], repo: 'the repository catalog' });
      await this.expect(res, [200], 'repository catalog', 'the repository catalog');
      const body = await readAll(res, MAX_MANIFEST_BYTES, 'repository catalog');
      let doc: { repositories?: unknown } | null;
      try {
        doc = JSON.parse(body.toString('utf8')) as { repositories?: unknown } | null;
      } catch {
        throw unavailable(`registry ${this.registry}: repository catalog is not JSON`);
      }
      const list = doc?.repositories ?? [];
      if (!Array.isArray(list) || !list.every((r) => typeof r === 'string' && REPO_RE.test(r))) {
        throw unavailable(`registry ${this.registry}: malformed repository catalog`);
      }
      repos.push(...(list as string[]));
      const next = nextLink(firstHeader(res.headers.link));
      url = next ? new URL(next, url) : undefined;
    }
    return repos;
  }

  /** Close idle connections. */
  async close(): Promise<void> {
    this.io.close();
  }

  // -------------------------------------------------------------------------
  // Uploads

  private async upload(repo: string, digest: string, size: number, src: Readable): Promise<void> {
    const start = await this.endpoint(`/v2/${repo}/blobs/uploads/`);
    const opened = await this.call({ method: 'POST', url: start, scopes: [repoScope(repo, 'pull,push')], repo });
    await this.expect(opened, [202], `upload to ${repo}`, repo);
    discard(opened);
    let location = this.location(opened, start);
    try {
      location = await this.sendChunks(repo, digest, size, src, location);
      await this.finishUpload(repo, digest, location);
    } catch (e) {
      src.destroy();
      await this.cancelUpload(repo, location).catch(() => undefined);
      throw e;
    }
  }

  /** PATCH the stream in chunks; checks size and digest; returns the last upload location. */
  private async sendChunks(repo: string, digest: string, size: number, src: Readable, location: URL): Promise<URL> {
    const hash = createHash('sha256');
    let offset = 0;
    for await (const chunk of chunksOf(src, this.chunkSize)) {
      if (offset + chunk.length > size) throw corrupt(`blob ${digest}: the stream holds more than the declared ${size} bytes`);
      hash.update(chunk);
      location = await this.patchChunk(repo, location, chunk, offset);
      offset += chunk.length;
    }
    if (offset !== size) throw corrupt(`blob ${digest}: the stream holds ${offset} bytes, not the declared ${size}`);
    const got = `sha256:${hash.digest('hex')}`;
    if (got !== digest) throw corrupt(`blob ${digest}: the stream's bytes hash to ${got}`);
    return location;
  }

  private async patchChunk(repo: string, location: URL, chunk: Buffer, offset: number): Promise<URL> {
    const res = await this.call({
      method: 'PATCH',
      url: location,
      headers: {
        'Content-Type': 'application/octet-stream',
        'Content-Range': `${offset}-${offset + chunk.length - 1}`,
      },
      body: chunk,
      scopes: [repoScope(repo, 'pull,push')],
      repo,
    });
    await this.expect(res, [202], `upload to ${repo} (bytes from ${offset})`, repo);
    discard(res);
    return this.location(res, location);
  }

  private async finishUpload(repo: string, digest: string, location: URL): Promise<void> {
    const url = new URL(location.href);
    url.search = `${url.search ? url.search + '&' : '?'}digest=${encodeURIComponent(digest)}`;
    const res = await this.call({ method: 'PUT', url, body: Buffer.alloc(0), scopes: [repoScope(repo, 'pull,push')], repo });
    await this.expect(res, [201, 204], `upload of blob ${digest} to ${repo}`, repo);
    discard(res);
  }

  private async cancelUpload(repo: string, location: URL): Promise<void> {
    const res = await this.call({ method: 'DELETE', url: location, scopes: [repoScope(repo, 'pull,push')], repo });
    discard(res);
  }

  /** The Location of an upload answer, resolved against the request URL. */
  private location(res: http.IncomingMessage, base: URL): URL {
    const loc = firstHeader(res.headers.location);
    if (!loc) throw unavailable(`registry ${this.registry}: upload answer without a Location header`);
    return new URL(loc, base);
  }

  private parseTags(body: Buffer, repo: string): string[] {
    let doc: { tags?: unknown } | null;
    try {
      doc = JSON.parse(body.toString('utf8')) as { tags?: unknown } | null;
    } catch {
      throw unavailable(`registry ${this.registry}: tag list of ${repo} is not JSON`);
    }
    const tags = doc?.tags ?? [];
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string')) {
      throw unavailable(`registry ${this.registry}: malformed tag list for ${repo}`);
    }
    return tags as string[];
  }

  // -------------------------------------------------------------------------
  // Requests with authentication and error mapping

  /**
   * A read through the node's d4fs-peer when one is configured: the answer
   * when its status is in `ok`, undefined (ask the registry itself) when
   * the mirror is unreachable, fails or does not have it. A mirror that
   * cannot be reached is left alone for 30 s.
   */
  private async viaMirror(method: 'GET' | 'HEAD', path: string, headers: Record<string, string>, ok: number[]): Promise<http.IncomingMessage | undefined> {
    const mirror = this.opts.mirror;
    if (!mirror || Date.now() < this.mirrorDownUntil) return undefined;
    let url: URL;
    try {
      url = new URL(`${path}?ns=${encodeURIComponent(this.registry)}`, mirror);
    } catch {
      return undefined;
    }
    let res: http.IncomingMessage;
    try {
      res = await this.io.wire({ method, url, headers });
    } catch {
      this.mirrorDownUntil = Date.now() + 30_000;
      return undefined;
    }
    if (ok.includes(res.statusCode ?? 0)) return res;
    discard(res);
    return undefined;
  }

  /** GET or HEAD a blob, following redirects. */
  private async blobRequest(method: 'GET' | 'HEAD', repo: string, digest: string, headers?: Record<string, string>): Promise<http.IncomingMessage> {
    let url = await this.endpoint(`/v2/${repo}/blobs/${digest}`);
    let res = await this.call({ method, url, scopes: [repoScope(repo, 'pull')], repo, headers });
    for (let hops = 0; REDIRECTS.has(res.statusCode ?? 0); hops++) {
      discard(res);
      const loc = firstHeader(res.headers.location);
      if (!loc) throw unavailable(`registry ${this.registry}: redirect without a Location for blob ${digest}`);
      if (hops >= MAX_REDIRECTS) throw unavailable(`registry ${this.registry}: too many redirects for blob ${digest}`);
      url = new URL(loc, url);
      if (url.protocol !== 'https:' && url.protocol !== 'http:') {
        throw unavailable(`registry ${this.registry}: blob ${digest} redirects to an unsupported URL scheme ${url.protocol}`);
      }
      res = await this.call({ method, url, scopes: [repoScope(repo, 'pull')], repo, headers });
    }
    return res;
  }

  /**
   * Send an API call with credentials (only to the registry's own origin);
   * after a 401 learn the challenge and retry once.
   */
  private async call(c: ApiCall): Promise<http.IncomingMessage> {
    const base = await this.ping();
    const own = c.url.origin === base.origin;
    const attempt = async (): Promise<http.IncomingMessage> => {
      const authz = own ? await this.auth.authorization(c.scopes, c.repo) : undefined;
      const headers = { ...(c.headers ?? {}), ...(authz ? { Authorization: authz } : {}) };
      return this.io.send({ method: c.method, url: c.url, headers, body: c.body });
    };
    let res = await attempt();
    if (res.statusCode !== 401 || !own) return res;
    discard(res);
    if (!(await this.auth.challenged(res.headers['www-authenticate'], c.scopes))) throw await this.auth.failure(c.repo);
    res = await attempt();
    if (res.statusCode === 401) {
      discard(res);
      throw await this.auth.failure(c.repo);
    }
    return res;
  }

  /** Throw the D4fsError for a status outside `ok` (401 was handled by call()). */
  private async expect(res: http.IncomingMessage, ok: number[], what: string, repo: string): Promise<void> {
    const status = res.statusCode ?? 0;
    if (ok.includes(status)) return;
    const body = await readAll(res, MAX_ERROR_BODY, 'error answer').catch(() => Buffer.alloc(0));
    const detail = registryMessage(body);
    if (status === 404) throw notFound(`registry ${this.registry}: ${what} not found${detail ? ` (${detail})` : ''}`);
    if (status === 401) throw await this.auth.failure(repo);
    if (status === 403) throw permissionDenied(`registry ${this.registry}: access to ${repo} denied${detail ? `: ${detail}` : ''}`);
    throw unavailable(`registry ${this.registry}: ${what}: HTTP ${status}${detail ? `: ${detail}` : ''}`);
  }

  /** Map mid-body failures of a blob download to a clear UNAVAILABLE error. */
  private guardBody(res: http.IncomingMessage, what: string): Readable {
    const out = new PassThrough();
    res.on('error', (e: Error) => out.destroy(unavailable(`registry ${this.registry}: download of ${what} failed: ${e.message}`, e)));
    res.on('aborted', () => out.destroy(unavailable(`registry ${this.registry}: download of ${what} was interrupted`)));
    out.on('close', () => {
      if (!res.complete) res.destroy();
    });
    res.pipe(out);
    return out;
  }

  // -------------------------------------------------------------------------
  // Scheme selection

  /** Absolute URL of an API path on the registry (after choosing the scheme). */
  private async endpoint(path: string): Promise<URL> {
    return new URL(path, await this.ping());
  }

  /**
   * GET /v2/ once to choose the scheme (https; http when insecure is allowed
   * and https fails at the connection level) and learn the auth challenge.
   */
  private ping(): Promise<URL> {
    if (this.base) return Promise.resolve(this.base);
    this.pinging ??= this.probe().then(
      (base) => (this.base = base),
      (e: unknown) => {
        this.pinging = undefined;
        throw e;
      },
    );
    return this.pinging;
  }

  private async probe(): Promise<URL> {
    const secure = new URL(`https://${this.apiHost}/`);
    try {
      return await this.probeAt(secure);
    } catch (httpsErr) {
      if (!this.mayUsePlainHttp()) throw this.unreachable(httpsErr);
      try {
        return await this.probeAt(new URL(`http://${this.apiHost}/`));
      } catch (httpErr) {
        throw this.unreachable(httpErr, httpsErr);
      }
    }
  }

  private async probeAt(base: URL): Promise<URL> {
    const res = await this.io.wire({ method: 'GET', url: new URL('/v2/', base), headers: {} });
    discard(res);
    if (res.statusCode === 401) this.auth.learn(res.headers['www-authenticate']);
    return base;
  }

  private unreachable(err: unknown, httpsErr?: unknown): D4fsError {
    const msg = (e: unknown) => (e instanceof Error ? e.message : String(e));
    const detail = httpsErr !== undefined ? `https: ${msg(httpsErr)}; http: ${msg(err)}` : msg(err);
    return unavailable(`cannot reach registry ${this.registry}: ${detail}`, err);
  }

  private mayUsePlainHttp(): boolean {
    if (this.opts.tlsVerify === false) return true;
    return this.opts.tlsVerify !== true && isLoopbackHost(new URL(`http://${this.apiHost}/`).hostname);
  }

  /** Token requests go through the same wire (TLS options, timeouts). */
  private readonly tokenHttp: TokenHttp = async (url, init) => {
    const res = await this.io.send({ method: init.method, url, headers: init.headers, body: init.body });
    const body = await readAll(res, MAX_TOKEN_BODY, `token answer of ${url.origin}`);
    return { status: res.statusCode ?? 0, body };
  };
}
