/**
 * d4fs-server: an HTTP(S) server over a content-addressed blob store of .cdimg
 * files and a SQLite catalogue (see src/distribution/protocol.ts for the API).
 *
 * Pushes stream into a temp file while they are hashed, are verified
 * completely and land by atomic rename; pulls get the cheapest chain in bytes
 * from what the client holds, with the deltas merged into one (cached,
 * shared between concurrent identical requests), served with ETag and Range.
 * Nothing holds a lock across a transfer.
 *
 * With `store` (`--store docker://REGISTRY/PREFIX`) an OCI registry is the
 * backing store that several replicas share (see regstore.ts): pushes land
 * in the registry, the catalogue is a mirror of the registry's index
 * artifacts refreshed with a short TTL, blobs are fetched into the local
 * root on first use, merges stay local to each replica.
 *
 * Signatures (signatures.ts): an upload's signature file comes in the
 * `x-d4fs-signature` header and is kept beside the blob; with
 * `requireSigned` an upload without a signature trusted by the server's
 * policy is refused (401) before its body moves. Pull plans carry each
 * file's signatures; merges are signed with the server's key when it has
 * one (and trusts every input). A pull that asks for signed files gets
 * merges only when the server signs them with a key the client trusts,
 * else the unmerged chain of the original signed files.
 */
import { promises as fsp } from 'node:fs';
import type * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { corrupt, D4fsError, failedPrecondition, hostile, invalidArgument, notFound, toD4fsError, unauthenticated, unavailable, unsupported } from '../errors';
import { policyRequires, SignatureFile } from '../signing';
import { checkTrusted, decodeSignatureHeader, mergeSignatures } from '../distribution/signatures';
import { parseDigest } from '../util/digest';
import {
  API,
  checkRepoName,
  checkTag,
  FILE_DIGEST_HEADER,
  MAX_HAVE,
  MAX_JSON_BODY,
  MAX_TRUSTED_KEYS,
  PlanFileJson,
  SIGNATURE_HEADER,
  PullPlanJson,
  TagJson,
  UploadResultJson,
} from '../distribution/protocol';
import { Access, Principal, TokenAuth } from './auth';
import { sendBlob } from './blob-response';
import { BlobStore, verifyDeltaTree, verifyStoredChunks } from './blobs';
import { Catalogue, CATALOGUE_FILE, FileRow } from './catalogue';
import { collectGarbage, GcOptions, GcReport } from './gc';
import { acceptBody, awaitingContinue, bodyOf, BodyPace, bodyPending, discardBody, hasBody, readJson, sendError, sendJson } from './http';
import { createListener } from './listener';
import { MergeCache } from './merges';
import { ServerMetrics } from './metrics';
import {
  DEFAULT_IDLE_MS,
  DEFAULT_MAX_UPLOAD,
  DEFAULT_MIN_UPLOAD_RATE,
  DEFAULT_UPLOAD_RATE_WINDOW_MS,
  DISCARD_MAX_BYTES,
  DISCARD_MAX_MS,
  MERGE_TIMEOUT_MS,
  ServerOptions,
} from './options';
import { planChain } from '../distribution/planner';
import { parseStoreUrl, RegistryStore } from './regstore';
import { ServerSignatures } from './signatures';

export { MERGE_TIMEOUT_MS, parseListen } from './options';
export type { ServerOptions, ServerSigningOptions } from './options';

/** What a route handler gets. */
interface Ctx {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  params: string[];
  who: Principal;
}

interface Route {
  name: string;
  method: string;
  re: RegExp;
  access: Access | 'open';
  /** The handler reads the request body. */
  body?: boolean;
  run(c: Ctx): Promise<void>;
}

/** An upload in progress (shutdown aborts it and its temp file goes). */
interface Upload {
  req: http.IncomingMessage;
  done: Promise<unknown>;
}

export class D4fsServer {
  readonly catalogue: Catalogue;
  readonly blobs: BlobStore;
  readonly metrics: ServerMetrics;
  readonly auth: TokenAuth;
  /** The registry backing store, when configured. */
  readonly store: RegistryStore | undefined;
  private readonly merges: MergeCache;
  /** Signatures kept beside the blobs; the server's policy and signing key. */
  readonly signatures: ServerSignatures;
  private readonly requireSigned: boolean;
  private readonly log: Logger;
  private readonly routes: Route[];
  private readonly uploads = new Set<Upload>();
  private readonly active = new Set<Promise<unknown>>();
  private server: http.Server | undefined;
  private draining = false;
  private gcTimer: NodeJS.Timeout | undefined;
  private gcRunning: Promise<GcReport | undefined> | undefined;
  private readonly maxUpload: number;
  private readonly maxUploads: number;
  private readonly pace: BodyPace;

  private constructor(private readonly opts: ServerOptions, catalogue: Catalogue, blobs: BlobStore, auth: TokenAuth) {
    this.catalogue = catalogue;
    this.blobs = blobs;
    this.auth = auth;
    this.log = opts.logger ?? pino({ level: 'silent' });
    this.metrics = new ServerMetrics(() => this.catalogue.stats(), opts.processMetrics !== false);
    const store = opts.store ? new RegistryStore(opts.store, catalogue, blobs, this.log, this.metrics) : undefined;
    this.store = store;
    if (store) store.chainTo = (imageId) => this.localChainTo(imageId);
    this.signatures = new ServerSignatures(blobs, this.log, opts.signing?.policy, opts.signing?.signingKey, store ? (root) => store.where(root)?.file.signature : undefined);
    this.requireSigned = !!opts.signing?.requireSigned;
    this.merges = new MergeCache(catalogue, blobs, this.metrics, this.log, {
      maxConcurrent: opts.maxMerges,
      strategy: opts.mergeStrategy,
      rediffThreads: opts.rediffThreads,
      ensureLocal: store ? (rootDigest) => store.ensureLocal(rootDigest) : undefined,
    });
    this.maxUpload = opts.maxUploadBytes ?? DEFAULT_MAX_UPLOAD;
    this.maxUploads = opts.maxUploads ?? 32;
    this.pace = { minBytesPerSecond: opts.minUploadRate ?? DEFAULT_MIN_UPLOAD_RATE, windowMs: opts.uploadRateWindowMs ?? DEFAULT_UPLOAD_RATE_WINDOW_MS };
    const R = (name: string, method: string, re: RegExp, access: Access | 'open', run: (c: Ctx) => Promise<void>): Route => ({ name, method, re, access, run, body: method === 'PUT' || method === 'POST' });
    const repo = '(.+)'; // validated by the handlers (400 on a bad name, not 404)
    this.routes = [
      R('healthz', 'GET', /^\/healthz$/, 'open', async (c) => this.healthz(c)),
      R('metrics', 'GET', /^\/metrics$/, 'open', async (c) => this.scrape(c)),
      R('repositories', 'GET', new RegExp(`^${API}/repositories$`), 'ro', async (c) => sendJson(c.res, 200, { repositories: this.catalogue.repositories() })),
      R('blob', 'GET', new RegExp(`^${API}/blobs/([^/]+)$`), 'ro', async (c) => this.getBlob(c, false)),
      R('blob', 'HEAD', new RegExp(`^${API}/blobs/([^/]+)$`), 'ro', async (c) => this.getBlob(c, true)),
      R('tags', 'GET', new RegExp(`^${API}/repositories/${repo}/tags$`), 'ro', async (c) => this.listTags(c)),
      R('tag', 'GET', new RegExp(`^${API}/repositories/${repo}/tags/([^/]+)$`), 'ro', async (c) => sendJson(c.res, 200, await this.lookupTag(checkRepoName(c.params[0]), checkTag(c.params[1])))),
      R('tag', 'PUT', new RegExp(`^${API}/repositories/${repo}/tags/([^/]+)$`), 'rw', async (c) => this.putTag(c)),
      R('tag', 'DELETE', new RegExp(`^${API}/repositories/${repo}/tags/([^/]+)$`), 'rw', async (c) => this.deleteTag(c)),
      R('upload', 'PUT', new RegExp(`^${API}/repositories/${repo}/blobs/([^/]+)$`), 'rw', async (c) => this.upload(c)),
      R('pull', 'POST', new RegExp(`^${API}/repositories/${repo}/pull$`), 'ro', async (c) => this.pull(c)),
    ];
  }

  /** Open the root, load the tokens and listen. */
  static async start(opts: ServerOptions): Promise<D4fsServer> {
    if (opts.store) parseStoreUrl(opts.store.url); // refuse a bad --store before anything is opened
    if (opts.signing?.requireSigned && !policyRequires(opts.signing.policy)) throw invalidArgument('requiring signed uploads needs the keys to trust (--verify-key KEY.pub.pem or --policy FILE)');
    if (opts.signing?.signingKey && !policyRequires(opts.signing.policy)) {
      throw invalidArgument('a signing key needs the keys to trust (--verify-key KEY.pub.pem or --policy FILE): the server signs only merges of files signed by those keys');
    }
    const blobs = new BlobStore(opts.root);
    await blobs.init();
    const auth = new TokenAuth(opts.tokensFile, !!opts.readOpen);
    const { warnings } = await auth.load();
    const catalogue = Catalogue.open(join(opts.root, CATALOGUE_FILE));
    const s = new D4fsServer(opts, catalogue, blobs, auth);
    try {
      for (const w of warnings) s.log.warn(w);
      const removed = await blobs.removeDeadTemps();
      if (removed) s.log.info({ removed }, 'removed temp files of a previous run');
      if (s.store) s.log.info({ store: s.store.url, ttlMs: s.store.ttlMs }, 'backing store: OCI registry (catalogue mirrored, blobs cached here)');
      await s.listen();
    } catch (e) {
      catalogue.close();
      await s.store?.close();
      throw e;
    }
    if (opts.gcIntervalMs) {
      s.gcTimer = setInterval(() => void s.runGc(), opts.gcIntervalMs);
      s.gcTimer.unref();
    }
    return s;
  }

  private async listen(): Promise<void> {
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      // handle() answers every failure itself; this is the last guard: no request ends the process
      const p = this.handle(req, res).catch((e: unknown) => {
        this.log.error({ err: (e as Error)?.message, stack: (e as Error)?.stack }, 'request handler failed');
        res.destroy();
      });
      this.active.add(p);
      void p.finally(() => this.active.delete(p));
    };
    const server = await createListener(this.opts, handler, this.log);
    this.server = server;
    this.log.info(
      {
        url: this.url,
        root: this.opts.root,
        tokens: !!this.opts.tokensFile,
        readOpen: !!this.opts.readOpen,
        requireSigned: this.requireSigned,
        trustedKeys: this.signatures.policy?.keys.map((k) => k.keyId),
        signingKey: this.signatures.serverKeyId,
      },
      'd4fs-server listening',
    );
  }

  /** The base URL ("http://127.0.0.1:8081"). */
  get url(): string {
    const a = this.server?.address() as AddressInfo | null;
    if (!a) throw failedPrecondition('server is not listening');
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `${this.opts.tls ? 'https' : 'http'}://${host}:${a.port}`;
  }

  get port(): number {
    return (this.server?.address() as AddressInfo).port;
  }

  /** Resolves when no background merge (rediff) is running or queued. */
  async mergesIdle(): Promise<void> {
    await this.merges.idle();
  }

  /** Re-read the tokens file (SIGHUP); the old tokens stay when it is broken. */
  async reloadTokens(): Promise<void> {
    try {
      const r = await this.auth.load();
      for (const w of r.warnings) this.log.warn(w);
      this.log.info({ tokens: r.tokens }, 'tokens reloaded');
    } catch (e) {
      this.log.error({ err: toD4fsError(e).message }, 'tokens file not reloaded; the previous tokens stay in force');
    }
  }

  /** One gc run (scheduled runs skip when one is going). */
  async runGc(opts: GcOptions = this.opts.gc ?? {}): Promise<GcReport | undefined> {
    if (this.gcRunning) return this.gcRunning;
    this.gcRunning = collectGarbage(this.catalogue, this.blobs, opts)
      .then((r) => {
        this.log.info({ gc: { ...r, files: r.files.length, merges: r.merges.length, orphanBlobs: r.orphanBlobs.length } }, 'gc done');
        return r;
      })
      .catch((e: unknown) => {
        this.log.error({ err: toD4fsError(e).message }, 'gc failed');
        return undefined;
      })
      .finally(() => (this.gcRunning = undefined));
    return this.gcRunning;
  }

  /**
   * Stop: refuse new requests, let requests in flight (uploads included)
   * finish for up to `graceMs`, then cut what is left; an upload cut this
   * way leaves nothing behind (its temp file is removed, nothing landed).
   */
  async stop(graceMs = 30_000): Promise<void> {
    if (!this.server) return;
    const server = this.server;
    this.draining = true;
    if (this.gcTimer) clearInterval(this.gcTimer);
    const closed = new Promise<void>((r) => server.close(() => r()));
    server.closeIdleConnections();
    const settled = Promise.allSettled([...this.active]);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([settled.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs)))]);
    clearTimeout(timer);
    if (timedOut) {
      this.log.warn({ uploads: this.uploads.size, requests: this.active.size }, 'shutdown grace over: aborting requests in flight');
      for (const u of this.uploads) u.req.destroy(unavailable('server is shutting down'));
      await Promise.allSettled([...this.uploads].map((u) => u.done));
    }
    server.closeAllConnections();
    await closed;
    await Promise.allSettled([...this.active, ...this.merges.running, this.gcRunning]);
    await this.merges.close();
    await this.store?.close();
    this.server = undefined;
    this.catalogue.close();
    this.log.info('d4fs-server stopped');
  }

  // ------------------------------------------------------------ dispatch

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (this.opts.extraHandler && !this.draining) {
      req.on('error', () => undefined);
      res.on('error', () => undefined);
      if (await this.opts.extraHandler(req, res)) return;
    }
    const t0 = process.hrtime.bigint();
    const method = req.method ?? 'GET';
    const path = (req.url ?? '/').split('?')[0];
    let route: Route | undefined;
    let params: string[] = [];
    for (const r of this.routes) {
      const m = r.re.exec(path);
      if (m && r.method === method) {
        route = r;
        params = m.slice(1);
        break;
      }
    }
    const name = route?.name ?? 'unknown';
    let who: Principal | undefined;
    // taken now: once the request is over, req.socket may be null
    const remote = req.socket?.remoteAddress;
    // errors of the body reach whoever reads it (bodyOf); these listeners only keep a stray 'error' from throwing
    req.on('error', (err) => this.log.debug({ err: err.message, method, path }, 'request stream error'));
    res.on('error', (err) => this.log.debug({ err: err.message, method, path }, 'response stream error'));
    this.metrics.inflight.inc({ route: name });
    res.once('close', () => {
      try {
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        this.metrics.inflight.dec({ route: name });
        // the status clients saw; a response cut before its headers counts as 499 (nginx's "client closed request")
        const status = res.headersSent ? res.statusCode : 499;
        this.metrics.requests.inc({ method: method.length <= 16 ? method : 'OTHER', route: name, status: String(status) });
        this.metrics.latency.observe({ method: method.length <= 16 ? method : 'OTHER', route: name }, seconds);
        if (name !== 'healthz' && name !== 'metrics') {
          this.log.info({ method, route: name, path: path.slice(0, 512), status, ms: Math.round(seconds * 1000), who: who?.name, remote, complete: res.writableFinished }, 'request');
        }
      } catch (e) {
        this.log.error({ err: (e as Error)?.message }, 'request accounting failed');
      }
    });
    try {
      // a body no handler reads: taken off the wire first, so that the answer is not lost to a reset
      if (!route?.body && hasBody(req) && !awaitingContinue(req, res)) await discardBody(req, DISCARD_MAX_BYTES, DISCARD_MAX_MS);
      if (this.draining) {
        res.setHeader('Connection', 'close');
        throw unavailable('server is shutting down');
      }
      if (!route) throw notFound(`no such endpoint: ${method} ${path.slice(0, 200)}`);
      who = route.access === 'open' ? { access: 'ro', name: 'anonymous' } : this.auth.check(req.headers.authorization, route.access);
      await route.run({ req, res, params, who });
    } catch (e) {
      const err = toD4fsError(e);
      if (err.kind === 'INTERNAL') this.log.error({ err: err.message, stack: (e as Error)?.stack, method, path: path.slice(0, 512) }, 'request failed');
      await this.settleBody(req, res, err);
      // A body the handler did not read would otherwise be read (or waited for) in vain.
      if (bodyPending(req) && !res.headersSent && !res.destroyed) res.setHeader('Connection', 'close');
      sendError(res, err);
    }
  }

  /**
   * Before an early answer (a refusal, "already stored"): read and drop a
   * small rest of the body (bounded) unless the client waits for "100
   * Continue", went away, or is too slow; the connection closes after the
   * answer when the body did not end.
   */
  private async settleBody(req: http.IncomingMessage, res: http.ServerResponse, err?: D4fsError): Promise<void> {
    if (!bodyPending(req) || req.destroyed || res.headersSent || awaitingContinue(req, res)) return;
    if (err && (err.kind === 'DEADLINE_EXCEEDED' || err.kind === 'HOSTILE')) return; // too slow, or over a limit: not worth reading
    await discardBody(req, DISCARD_MAX_BYTES, DISCARD_MAX_MS);
  }

  // ----------------------------------------------------------- handlers

  private healthz(c: Ctx): void {
    sendJson(c.res, this.draining ? 503 : 200, { status: this.draining ? 'draining' : 'ok' });
  }

  private async scrape(c: Ctx): Promise<void> {
    const text = await this.metrics.registry.metrics();
    c.res.writeHead(200, { 'Content-Type': this.metrics.registry.contentType, 'Cache-Control': 'no-store' });
    c.res.end(text);
  }

  /** A tag (with a registry store: read again from the registry when the mirror does not know it). */
  private async lookupTag(repository: string, tag: string): Promise<TagJson> {
    if (this.store) {
      await this.store.sync(repository);
      try {
        return this.catalogue.tag(repository, tag);
      } catch (e) {
        if (!(e instanceof D4fsError) || e.kind !== 'NOT_FOUND') throw e;
        await this.store.sync(repository, true);
      }
    }
    return this.catalogue.tag(repository, tag);
  }

  private async listTags(c: Ctx): Promise<void> {
    const repository = checkRepoName(c.params[0]);
    await this.store?.sync(repository);
    sendJson(c.res, 200, { repository, tags: this.catalogue.tags(repository) });
  }

  /**
   * Whether a file is stored for `repository` already. With a registry
   * store: the registry repository holds it, or this replica's cache does
   * (then it is copied into that registry repository from the cache).
   */
  private async alreadyStored(repository: string, f: FileRow, signature: SignatureFile | undefined): Promise<boolean> {
    if (!this.store) return this.blobs.has(f.rootDigest);
    if (this.store.holds(repository, f.rootDigest)) {
      if (signature) await this.store.putFile(repository, { ...f, signature }, this.blobs.pathOf(f.rootDigest)); // new signatures reach the registry
      return true;
    }
    if (!(await this.blobs.has(f.rootDigest))) return false;
    await this.store.putFile(repository, { ...f, ...(signature ? { signature } : {}) }, this.blobs.pathOf(f.rootDigest));
    return true;
  }

  /**
   * The signature file an upload carries (header), checked against the
   * blob it names: malformed or over another file → CORRUPT (422).
   */
  private uploadSignature(c: Ctx, rootDigest: string, what: string): SignatureFile | undefined {
    const h = c.req.headers[SIGNATURE_HEADER];
    if (h === undefined) return undefined;
    if (typeof h !== 'string') throw invalidArgument(`${what}: one ${SIGNATURE_HEADER} header at most`);
    const f = decodeSignatureHeader(h.trim(), `${what}: ${SIGNATURE_HEADER}`);
    if (f.kind !== 'cdimg' || f.subject !== rootDigest) throw corrupt(`${what}: the signature sent is for another file (${f.kind} ${f.subject}), this upload is cdimg ${rootDigest}`);
    return f;
  }

  /** With `requireSigned`: the signatures a file would have must include one by a key this server trusts (401). */
  private checkSignedUpload(rootDigest: string, sig: SignatureFile | undefined, what: string): void {
    if (!this.requireSigned) return;
    try {
      checkTrusted(this.signatures.policy, 'cdimg', rootDigest, sig, what);
    } catch (e) {
      if (e instanceof D4fsError && e.kind === 'UNAUTHENTICATED') {
        this.metrics.uploads.inc({ result: 'refused' });
        throw unauthenticated(`this server accepts only signed files: ${e.message}`);
      }
      throw e;
    }
  }

  private async putTag(c: Ctx): Promise<void> {
    const repository = checkRepoName(c.params[0]);
    const tag = checkTag(c.params[1]);
    const body = (await readJson(c.req, c.res, MAX_JSON_BODY, this.pace)) as { imageId?: unknown } | null;
    const imageId = parseDigest(String(body?.imageId ?? ''), 'imageId');
    await this.store?.putTag(repository, tag, imageId); // the registry first: it is what every replica reads
    const previous = this.catalogue.setTag(repository, tag, imageId);
    this.log.info({ repository, tag, imageId, previous, who: c.who.name }, 'tag set');
    sendJson(c.res, 200, { ...this.catalogue.tag(repository, tag), previous: previous ?? null });
  }

  private async deleteTag(c: Ctx): Promise<void> {
    const repository = checkRepoName(c.params[0]);
    const tag = checkTag(c.params[1]);
    if (this.store) {
      throw unsupported(`this server's catalogue lives in ${this.store.url}: delete ${this.store.registryRepo(repository)}:${tag} in the registry (the replicas drop the tag within ${this.store.ttlMs} ms)`);
    }
    this.catalogue.deleteTag(repository, tag);
    this.log.info({ repository, tag, who: c.who.name }, 'tag deleted');
    sendJson(c.res, 200, { repository, tag, deleted: true });
  }

  /** PUT …/blobs/sha256:HEX: receive, verify, land, record. */
  private async upload(c: Ctx): Promise<void> {
    const repository = checkRepoName(c.params[0]);
    const rootDigest = parseDigest(c.params[1], 'blob digest (the root digest of the .cdimg)');
    const declared = c.req.headers['content-length'] !== undefined ? Number(c.req.headers['content-length']) : undefined;
    if (declared !== undefined && (!Number.isSafeInteger(declared) || declared < 0)) throw invalidArgument('invalid Content-Length');
    if (declared !== undefined && declared > this.maxUpload) {
      this.metrics.uploads.inc({ result: 'refused' });
      throw hostile(`upload of ${declared} bytes is over this server's limit of ${this.maxUpload}`);
    }
    const sent = this.uploadSignature(c, rootDigest, `upload of ${rootDigest}`);
    const existing = this.catalogue.file(rootDigest);
    // held already: the signatures it has and those sent, together, must satisfy a server that requires them
    const have = existing ? await this.signatures.get(rootDigest) : undefined;
    const would = mergeSignatures(have, sent, `signatures of ${rootDigest}`);
    // refused before a byte of the body moves (the signature names the root digest of the URL, which the file must have)
    this.checkSignedUpload(rootDigest, would, `upload of ${rootDigest}`);
    if (existing && (await this.alreadyStored(repository, existing, sent ? would : undefined))) {
      const kept = sent ? await this.signatures.add(rootDigest, sent) : have;
      this.catalogue.addFile({ ...existing, repository }); // links the repository; changes nothing else
      this.metrics.uploads.inc({ result: 'exists' });
      if (sent) this.log.info({ repository, rootDigest, signatures: kept?.signatures.length ?? 0, who: c.who.name }, 'signatures added');
      const body: UploadResultJson = { rootDigest, fileDigest: existing.fileDigest, kind: existing.kind, imageId: existing.imageId, parentId: existing.parentId, size: existing.size, created: false, signatures: kept?.signatures.length ?? 0 };
      await this.settleBody(c.req, c.res);
      if (bodyPending(c.req)) c.res.setHeader('Connection', 'close');
      sendJson(c.res, 200, body);
      return;
    }
    if (this.uploads.size >= this.maxUploads) throw unavailable(`too many uploads in progress (${this.maxUploads}); try again shortly`);
    const tmp = this.blobs.tempPath('upload');
    let finish: () => void = () => undefined;
    const entry: Upload = { req: c.req, done: new Promise<void>((r) => (finish = r)) };
    this.uploads.add(entry);
    try {
      acceptBody(c.req, c.res);
      const what = `upload of ${rootDigest}`;
      let got: { bytes: number; fileDigest: string };
      try {
        // bodyOf: a client under the minimum pace gets 408 and frees its slot; the request is never destroyed under the answer
        got = await this.blobs.receive(bodyOf(c.req, what, this.pace), tmp, this.maxUpload, what, (n) => this.metrics.bytesReceived.inc({ route: 'upload' }, n));
      } catch (e) {
        if (e instanceof D4fsError) throw e;
        throw unavailable(`${what} was interrupted: ${(e as Error).message}`, e);
      }
      if (declared !== undefined && got.bytes !== declared) throw corrupt(`${what}: received ${got.bytes} bytes, Content-Length said ${declared}`);
      const v = await verifyStoredChunks(tmp, what);
      if (v.rootDigest !== rootDigest) throw corrupt(`${what}: the file's root digest is ${v.rootDigest}, not the one named in the URL`);
      const claimed = c.req.headers[FILE_DIGEST_HEADER];
      if (typeof claimed === 'string' && claimed !== got.fileDigest) throw corrupt(`${what}: the bytes hash to ${got.fileDigest}, the client said ${claimed}`);
      if (v.kind === 'delta' && !this.catalogue.hasImage(v.parentId)) {
        await this.store?.sync(repository, true); // another replica may have stored the parent
        if (!this.catalogue.hasImage(v.parentId)) {
          throw failedPrecondition(`${what}: a delta from image ${v.parentId}, which this server does not know: push that image (or a chain leading to it) first`);
        }
      }
      if (v.kind === 'delta') await verifyDeltaTree(tmp, await this.localChainTo(v.parentId), what);
      // the signatures first (a signature file without its blob is harmless; a blob served unsigned is not what was pushed)
      const kept = sent ? await this.signatures.add(rootDigest, sent) : await this.signatures.get(rootDigest);
      // with a registry store the file is in the registry before it counts as stored
      await this.store?.putFile(repository, { ...v, fileDigest: got.fileDigest, ...(kept ? { signature: kept } : {}) }, tmp);
      await this.blobs.land(tmp, rootDigest);
      const created = this.catalogue.addFile({ ...v, fileDigest: got.fileDigest, repository });
      this.metrics.uploads.inc({ result: created ? 'created' : 'exists' });
      this.log.info({ repository, rootDigest, kind: v.kind, imageId: v.imageId, parentId: v.parentId || undefined, size: v.size, signatures: kept?.signatures.length ?? 0, who: c.who.name }, 'blob stored');
      const body: UploadResultJson = { ...v, fileDigest: got.fileDigest, created, signatures: kept?.signatures.length ?? 0 };
      sendJson(c.res, created ? 201 : 200, body);
    } catch (e) {
      this.metrics.uploads.inc({ result: 'refused' });
      throw e;
    } finally {
      await fsp.rm(tmp, { force: true });
      this.uploads.delete(entry);
      finish();
    }
  }

  /** Local paths of a chain of stored files leading to `imageId` from a full image (fetched from the registry store when needed); undefined when there is none. */
  private async localChainTo(imageId: string): Promise<string[] | undefined> {
    const plan = planChain(this.catalogue.files(), [], imageId);
    if (!plan) return undefined;
    for (const f of plan.files) {
      if (this.store && !(await this.blobs.has(f.rootDigest)) && !(await this.store.ensureLocal(f.rootDigest))) return undefined;
    }
    return plan.files.map((f) => this.blobs.pathOf(f.rootDigest));
  }

  /** POST …/pull: plan the cheapest chain, merge its deltas, answer with the files to fetch. */
  private async pull(c: Ctx): Promise<void> {
    const repository = checkRepoName(c.params[0]);
    const body = (await readJson(c.req, c.res, MAX_JSON_BODY, this.pace)) as { tag?: unknown; imageId?: unknown; have?: unknown; signed?: unknown; trustedKeys?: unknown } | null;
    if (!body || typeof body !== 'object') throw invalidArgument('pull request body must be a JSON object');
    const have = body.have ?? [];
    if (!Array.isArray(have) || have.length > MAX_HAVE) throw invalidArgument(`"have" must be an array of at most ${MAX_HAVE} image ids`);
    const held = have.map((h) => parseDigest(String(h), 'held image id'));
    if (body.signed !== undefined && typeof body.signed !== 'boolean') throw invalidArgument('"signed" must be true or false');
    const signed = body.signed === true;
    let trustedKeys: string[] | undefined;
    if (body.trustedKeys !== undefined) {
      if (!Array.isArray(body.trustedKeys) || body.trustedKeys.length > MAX_TRUSTED_KEYS) throw invalidArgument(`"trustedKeys" must be an array of at most ${MAX_TRUSTED_KEYS} key ids`);
      trustedKeys = body.trustedKeys.map((k) => parseDigest(String(k), 'trusted key id'));
    }
    let tag: string | undefined;
    let target: string;
    if (body.tag !== undefined && body.imageId !== undefined) throw invalidArgument('give "tag" or "imageId", not both');
    if (body.imageId !== undefined) {
      target = parseDigest(String(body.imageId), 'imageId');
      await this.store?.sync(repository, !this.catalogue.hasImage(target));
      if (!this.catalogue.hasImage(target)) throw notFound(`image ${target} is not on this server`);
    } else {
      tag = checkTag(String(body.tag ?? 'latest'));
      target = (await this.lookupTag(repository, tag)).imageId;
    }
    // a client that requires signatures: the cheapest chain of files it can verify, if there is one
    // (else the cheapest chain: the client refuses it, and says which file is not signed)
    const planOf = async (): Promise<ReturnType<typeof planChain<FileRow>>> => {
      const all = this.catalogue.files();
      if (signed) {
        const ok = await this.signedFiles(all, trustedKeys);
        const p = planChain(ok, held, target);
        if (p) return p;
      }
      return planChain(all, held, target);
    };
    let plan = await planOf();
    if (!plan && this.store) {
      await this.store.sync(repository, true);
      plan = await planOf();
    }
    if (!plan) throw failedPrecondition(`no chain of stored files leads to image ${target}`);
    const files: PlanFileJson[] = [];
    let deltas: FileRow[] = plan.files;
    const asPlanFile = async (f: FileRow): Promise<PlanFileJson> => {
      const signature = await this.signatures.get(f.rootDigest);
      return { rootDigest: f.rootDigest, fileDigest: f.fileDigest, kind: f.kind, imageId: f.imageId, parentId: f.parentId, size: f.size, merged: false, ...(signature ? { signature } : {}) };
    };
    if (deltas.length && deltas[0].kind === 'full') {
      files.push(await asPlanFile(deltas[0]));
      deltas = deltas.slice(1);
    }
    let shape = files.length ? 'full' : '';
    // A client that requires signatures can take a merge only when this server signs it with a key the
    // client trusts; otherwise it gets the original (signed) deltas, unmerged.
    const serverKeyId = this.signatures.serverKeyId;
    const mergeOk =
      !signed ||
      deltas.length < 2 ||
      (serverKeyId !== undefined && (!trustedKeys || trustedKeys.includes(serverKeyId)) && (await this.signatures.canSign(deltas.map((d) => d.rootDigest))));
    if (deltas.length === 1) {
      files.push(await asPlanFile(deltas[0]));
      shape += shape ? '+delta' : 'delta';
    } else if (deltas.length > 1 && !mergeOk) {
      for (const d of deltas) files.push(await asPlanFile(d));
      shape += shape ? '+chain' : 'chain';
    } else if (deltas.length > 1) {
      // a merge made now (strategy rediff: minutes for big images) may keep this request silent for a while
      c.req.socket?.setTimeout(MERGE_TIMEOUT_MS);
      const { merge, outcome } = await this.merges.get(deltas);
      c.req.socket?.setTimeout(this.opts.idleTimeoutMs ?? DEFAULT_IDLE_MS);
      // signed by this server when it has a key and trusts every input
      const signature = await this.signatures.forMerge(merge.rootDigest, merge.inputs);
      files.push({ rootDigest: merge.rootDigest, fileDigest: merge.fileDigest, kind: 'delta', imageId: merge.imageId, parentId: merge.parentId, size: merge.size, merged: true, mergedFrom: merge.inputs, ...(signature ? { signature } : {}) });
      shape += shape ? '+merged' : 'merged';
      this.log.debug({ chainKey: merge.chainKey, outcome }, 'merge');
    }
    this.metrics.pulls.inc({ kind: shape || 'uptodate' });
    const answer: PullPlanJson = {
      repository,
      tag,
      imageId: target,
      from: plan.from ?? null,
      bytes: files.reduce((n, f) => n + f.size, 0),
      chainBytes: plan.bytes,
      chain: plan.files.map((f) => f.rootDigest),
      files,
      ...(serverKeyId ? { serverKeyId } : {}),
    };
    sendJson(c.res, 200, answer);
  }

  /** The files a client asking for signed files can verify: signed by one of `trustedKeys` (any key when it names none). */
  private async signedFiles(files: FileRow[], trustedKeys: string[] | undefined): Promise<FileRow[]> {
    const out: FileRow[] = [];
    for (const f of files) {
      const ids = await this.signatures.keyIds(f.rootDigest);
      if (trustedKeys ? ids.some((k) => trustedKeys.includes(k)) : ids.length > 0) out.push(f);
    }
    return out;
  }

  /** GET/HEAD /v1/blobs/sha256:HEX with ETag, If-None-Match, Range and If-Range. */
  /** The local file of a blob this server serves and its sha256 (brought into the local cache first with a registry store). */
  async localBlob(rootDigest: string): Promise<{ path: string; fileDigest: string } | undefined> {
    const fileDigest = this.catalogue.file(rootDigest)?.fileDigest ?? this.catalogue.mergeByRoot(rootDigest)?.fileDigest;
    if (!fileDigest) return undefined;
    if (this.store && !(await this.blobs.has(rootDigest))) await this.store.ensureLocal(rootDigest);
    return (await this.blobs.has(rootDigest)) ? { path: this.blobs.pathOf(rootDigest), fileDigest } : undefined;
  }

  private async getBlob(c: Ctx, head: boolean): Promise<void> {
    const rootDigest = parseDigest(c.params[0], 'blob digest');
    const file = this.catalogue.file(rootDigest);
    const fileDigest = file?.fileDigest ?? this.catalogue.mergeByRoot(rootDigest)?.fileDigest;
    if (!fileDigest) throw notFound(`no blob ${rootDigest} on this server`);
    let fh: fsp.FileHandle;
    try {
      // with a registry store a blob comes into the local cache on first use (verified)
      if (this.store && !(await this.blobs.has(rootDigest))) await this.store.ensureLocal(rootDigest);
      fh = await fsp.open(this.blobs.pathOf(rootDigest), 'r');
    } catch (e) {
      if (e instanceof D4fsError) throw e;
      this.log.error({ rootDigest, err: (e as Error).message }, 'the catalogue names a blob that is not on disk');
      throw notFound(`blob ${rootDigest} is missing on this server`);
    }
    await sendBlob(c.req, c.res, fh, { rootDigest, fileDigest, head }, this.metrics, this.log);
  }
}
