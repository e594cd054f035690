/**
 * An OCI registry as the backing store of d4fs-server
 * (`ctr-cli serve --root DIR --store docker://REGISTRY/PREFIX`), so that
 * several server replicas share one catalogue and one copy of the bytes.
 *
 * The registry holds everything that matters, in the artifact layout of
 * src/distribution/artifact.ts (the one `ctr-cli push --to` writes, so
 * `ctr-cli pull --from docker://REGISTRY/PREFIX/REPO:TAG` reads the same
 * data): server repository REPO is registry repository PREFIX/REPO; every
 * pushed file is an artifact under its content tag; every server tag is an
 * index artifact naming the version it points at and the files that lead
 * there.
 *
 * Each replica keeps, under its --root:
 *  - its SQLite catalogue as a mirror of what it has read from the registry
 *    (refreshed per repository when older than a short TTL, and at once when
 *    a request names something the mirror does not know);
 *  - a cache of blobs, fetched from the registry on first use and verified
 *    (sha256 of the bytes and the .cdimg's own digests; a version 2 delta's
 *    tree rebuilt on its parent's, which brings the chain below it from a
 *    full image into the cache too) before they are used;
 *  - its own merges of delta chains (never written to the registry).
 *
 * Writes go to the registry first and then to the mirror: a push to any
 * replica is visible to every replica once their TTL has passed (or at once
 * for a tag they did not know). The registry's own consistency is what the
 * replicas share; two replicas moving the same tag at the same moment: the
 * last write wins, as with any registry tag.
 *
 * Limits, by design of this first version:
 *  - a tag moved through another replica is seen here after at most the TTL
 *    (a tag this replica does not know yet is looked up at once);
 *  - deleting a tag is done in the registry (DELETE through a replica is
 *    refused), and unreferenced artifacts are the registry's garbage
 *    collection's job; `serve gc` on a replica only trims its cache and merges;
 *  - GET /v1/repositories lists the repositories this replica has read;
 *  - a content tag is read once: if a second, different delta between the
 *    same two versions is pushed later under the same content tag, replicas
 *    that read the first one learn of the second through the tag indexes
 *    that list it (they name files by manifest digest).
 */
import { createWriteStream, promises as fsp } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { corrupt, D4fsError, failedPrecondition, invalidArgument, toD4fsError, unavailable } from '../errors';
import { MT } from '../oci/mediatypes';
import { ClientTuning, RegistryClient } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import { fileDigestOf, VerifyingStream } from '../util/digest';
import { mapLimit } from '../util/ordered';
import { ArtifactEntry, ArtifactFile, contentTag, isContentTag, parseFileManifest, parseTagIndex, tagIndex } from '../distribution/artifact';
import { pushFileArtifact } from '../distribution/registry';
import { addsSignatures, mergeSignatures } from '../distribution/signatures';
import type { BlobStore } from './blobs';
import { verifyDeltaTree, verifyStoredChunks } from './blobs';
import type { Catalogue } from './catalogue';
import type { ServerMetrics } from './metrics';
import { ancestorsOf } from '../distribution/planner';

/** Default time a repository's catalogue read from the registry is trusted. */
export const DEFAULT_STORE_TTL_MS = 5_000;

/** Where the registry store is and how to talk to it. */
export interface RegistryStoreOptions {
  /** docker://REGISTRY/PREFIX (the docker:// is optional; PREFIX may be empty). */
  url: string;
  /** Credentials and TLS of the registry. */
  registry?: RegistryOptions;
  tuning?: ClientTuning;
  /** How long a repository read from the registry is trusted, in ms (default 5 s). */
  ttlMs?: number;
}

/** "docker://HOST[:PORT]/PREFIX" → registry host and repository prefix (no tag, no digest). */
export function parseStoreUrl(s: string): { registry: string; prefix: string } {
  const rest = s.replace(/^docker:\/\//, '').replace(/\/+$/, '');
  const slash = rest.indexOf('/');
  const registry = slash < 0 ? rest : rest.slice(0, slash);
  const prefix = slash < 0 ? '' : rest.slice(slash + 1);
  if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9a-fA-F:]+\](:\d{1,5})?$/.test(registry)) {
    throw invalidArgument(`invalid --store ${JSON.stringify(s)}: expected docker://REGISTRY[:PORT]/PREFIX`);
  }
  if (prefix && !/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(prefix)) {
    throw invalidArgument(`invalid repository prefix ${JSON.stringify(prefix)} in --store (lower-case path components; no tag or digest)`);
  }
  return { registry, prefix };
}

/** What the replica knows of one repository in the registry. */
interface RepoState {
  /** When it was last read (ms since the epoch; 0: never). */
  syncedAt: number;
  /** Files the repository holds, by root digest. */
  files: Map<string, ArtifactEntry>;
  /** Content tags already read (content tag → root digest; null: not a valid d4fs artifact). */
  contentTags: Map<string, string | null>;
  /** Server tags → image id. */
  tags: Map<string, string>;
  /** Tags this replica wrote, and when (a read that started earlier must not undo them). */
  tagWrites: Map<string, { imageId: string; at: number }>;
}

/** The registry side of a server replica. */
export class RegistryStore {
  readonly registry: string;
  readonly prefix: string;
  readonly ttlMs: number;
  private readonly client: RegistryClient;
  private readonly repos = new Map<string, RepoState>();
  private readonly syncing = new Map<string, Promise<void>>();
  private readonly fetching = new Map<string, Promise<void>>();
  /** File manifests read by digest (immutable): manifest digest → file. */
  private readonly manifests = new Map<string, ArtifactFile>();

  /**
   * Local paths of a chain leading to an image from a full image (the
   * server's, fetching from this store as needed): a version 2 delta read
   * from the registry is opened on its parent's chain, so that its tree is
   * rebuilt and its image id checked, as an upload's is (server/blobs.ts
   * verifyDeltaTree). Without it such a delta is refused.
   */
  chainTo?: (imageId: string) => Promise<string[] | undefined>;

  constructor(
    opts: RegistryStoreOptions,
    private readonly catalogue: Catalogue,
    private readonly blobs: BlobStore,
    private readonly log: Logger,
    private readonly metrics?: ServerMetrics,
  ) {
    const { registry, prefix } = parseStoreUrl(opts.url);
    this.registry = registry;
    this.prefix = prefix;
    this.ttlMs = Math.max(0, opts.ttlMs ?? DEFAULT_STORE_TTL_MS);
    this.client = new RegistryClient(registry, opts.registry ?? {}, opts.tuning);
  }

  /** "docker://REGISTRY/PREFIX" (for logs). */
  get url(): string {
    return `docker://${this.registry}${this.prefix ? `/${this.prefix}` : ''}`;
  }

  /** The registry repository of a server repository. */
  registryRepo(repository: string): string {
    return this.prefix ? `${this.prefix}/${repository}` : repository;
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  private state(repository: string): RepoState {
    let s = this.repos.get(repository);
    if (!s) {
      s = { syncedAt: 0, files: new Map(), contentTags: new Map(), tags: new Map(), tagWrites: new Map() };
      this.repos.set(repository, s);
    }
    return s;
  }

  /**
   * Bring the mirror of `repository` up to date with the registry when it is
   * older than the TTL (or always, with `force`). Concurrent calls for one
   * repository share one read.
   */
  async sync(repository: string, force = false): Promise<void> {
    const s = this.state(repository);
    if (!force && Date.now() - s.syncedAt < this.ttlMs) return;
    const running = this.syncing.get(repository);
    if (running) {
      await running;
      // a forced sync wants a read that started after the call (it may know of a write the running one missed)
      if (!force) return;
      const next = this.syncing.get(repository);
      if (next) return next;
    }
    const p = this.guard(this.read(repository, s))
      .then(
        () => void this.metrics?.storeReads.inc({ result: 'ok' }),
        (e: unknown) => {
          this.metrics?.storeReads.inc({ result: 'error' });
          throw e;
        },
      )
      .finally(() => this.syncing.delete(repository));
    this.syncing.set(repository, p);
    return p;
  }

  /** One read of a repository: tags, new content tags, tag indexes; then the mirror is updated. */
  private async read(repository: string, s: RepoState): Promise<void> {
    const started = Date.now();
    const repo = this.registryRepo(repository);
    let tags: string[];
    try {
      tags = await this.client.listTags(repo);
    } catch (e) {
      if (!(e instanceof D4fsError) || e.kind !== 'NOT_FOUND') throw e;
      tags = [];
    }
    const warnings: string[] = [];
    /** Files found by this read that were not known. */
    const files = new Map<string, ArtifactEntry>();
    // files under content tags not read before
    await mapLimit(
      tags.filter((t) => isContentTag(t) && !s.contentTags.has(t)),
      8,
      async (t) => {
        try {
          const m = await this.client.getManifest(repo, t);
          const { file } = parseFileManifest(m.bytes, `${repo}:${t}`);
          if (contentTag(file) !== t) throw corrupt(`${repo}:${t} carries ${contentTag(file)}`);
          this.manifests.set(m.digest, file);
          files.set(file.rootDigest, { ...file, manifestDigest: m.digest, manifestSize: m.bytes.length });
          s.contentTags.set(t, file.rootDigest);
        } catch (e) {
          if (!skippable(e)) throw e;
          warnings.push(`${repo}:${t}: ${(e as Error).message}`);
          s.contentTags.set(t, null);
        }
      },
    );
    // server tags: their index artifacts (and any file they list that no content tag showed)
    const tagMap = new Map<string, string>();
    await mapLimit(
      tags.filter((t) => !isContentTag(t)),
      8,
      async (t) => {
        try {
          const top = await this.client.getManifest(repo, t);
          if (top.mediaType !== MT.OCI_INDEX) return; // not ours (an ordinary image in the same repository)
          const idx = parseTagIndex(top.bytes, `${repo}:${t}`);
          for (const e of idx.entries) {
            const prev = files.get(e.rootDigest) ?? s.files.get(e.rootDigest);
            if (prev?.manifestDigest === e.manifestDigest) continue;
            const file = await this.fileManifest(repo, e.manifestDigest);
            for (const k of ['rootDigest', 'kind', 'imageId', 'parentId', 'size'] as const) {
              if (file[k] !== e[k]) throw corrupt(`${repo}@${e.manifestDigest}: ${k} is ${file[k]}, the index ${t} says ${e[k]}`);
            }
            if (prev) {
              // the same file under another manifest: it was pushed again with more signatures (kept: all of them)
              if (prev.fileDigest !== file.fileDigest || !addsSignatures(prev.signature, file.signature)) continue;
              let signature = file.signature;
              try {
                signature = mergeSignatures(prev.signature, file.signature, `signatures of ${file.rootDigest}`);
              } catch {
                /* too many: the newer manifest's */
              }
              const newer = !addsSignatures(file.signature, prev.signature);
              files.set(file.rootDigest, { ...(newer ? { ...file, manifestDigest: e.manifestDigest, manifestSize: e.manifestSize } : prev), ...(signature ? { signature } : {}) });
              continue;
            }
            files.set(file.rootDigest, { ...file, manifestDigest: e.manifestDigest, manifestSize: e.manifestSize });
          }
          tagMap.set(t, idx.target);
        } catch (e) {
          if (!skippable(e)) throw e;
          warnings.push(`${repo}:${t}: ${(e as Error).message}`);
        }
      },
    );
    for (const [root, f] of files) s.files.set(root, f);
    for (const [t, w] of s.tagWrites) {
      if (w.at >= started) tagMap.set(t, w.imageId);
      else s.tagWrites.delete(t);
    }
    s.tags = tagMap;
    s.syncedAt = started;
    for (const w of warnings) this.log.warn({ registry: this.registry, repository: repo }, `registry store: skipped ${w}`);
    this.apply(repository, s);
  }

  /** A file manifest by digest (cached: a digest names one content forever). */
  private async fileManifest(repo: string, manifestDigest: string): Promise<ArtifactFile> {
    const known = this.manifests.get(manifestDigest);
    if (known) return known;
    const m = await this.client.getManifest(repo, manifestDigest);
    const { file } = parseFileManifest(m.bytes, `${repo}@${manifestDigest}`);
    this.manifests.set(manifestDigest, file);
    return file;
  }

  /** Write what was read into the mirror: files (parents first), tags set, moved and removed. */
  private apply(repository: string, s: RepoState): void {
    const pending = [...s.files.values()].sort((a, b) => (a.kind === b.kind ? (a.rootDigest < b.rootDigest ? -1 : 1) : a.kind === 'full' ? -1 : 1));
    for (let progress = true; pending.length && progress; ) {
      progress = false;
      for (let i = 0; i < pending.length; ) {
        const f = pending[i];
        if (f.kind === 'delta' && !this.catalogue.hasImage(f.parentId)) {
          i++;
          continue;
        }
        this.catalogue.addFile({ rootDigest: f.rootDigest, fileDigest: f.fileDigest, kind: f.kind, imageId: f.imageId, parentId: f.parentId, size: f.size, repository });
        pending.splice(i, 1);
        progress = true;
      }
    }
    for (const f of pending) this.log.warn({ repository, rootDigest: f.rootDigest, parentId: f.parentId }, 'registry store: a delta whose parent image no file in the registry leads to; left out');
    let local: Map<string, string>;
    try {
      local = new Map(this.catalogue.tags(repository).map((t) => [t.tag, t.imageId]));
    } catch (e) {
      if (!(e instanceof D4fsError) || e.kind !== 'NOT_FOUND') throw e;
      local = new Map();
    }
    for (const [tag, imageId] of s.tags) {
      if (local.get(tag) === imageId) continue;
      try {
        this.catalogue.setTag(repository, tag, imageId);
      } catch (e) {
        this.log.warn({ repository, tag, imageId, err: toD4fsError(e).message }, 'registry store: tag left out');
      }
    }
    for (const tag of local.keys()) if (!s.tags.has(tag)) this.catalogue.deleteTag(repository, tag);
  }

  /**
   * Store a verified file in the registry (its artifact and content tag),
   * unless the repository has it already. `path` holds the bytes.
   */
  async putFile(repository: string, file: ArtifactFile, path: string): Promise<ArtifactEntry> {
    const s = this.state(repository);
    const known = s.files.get(file.rootDigest);
    // a file held already is written again only to carry new signatures (merged with those it has: none is dropped)
    if (known && known.fileDigest === file.fileDigest && !addsSignatures(known.signature, file.signature)) return known;
    const repo = this.registryRepo(repository);
    const { rootDigest, fileDigest, kind, imageId, parentId, size } = file;
    const had = known && known.fileDigest === file.fileDigest && known.signature?.subject === rootDigest ? known.signature : undefined;
    const signature = mergeSignatures(had, file.signature?.subject === rootDigest ? file.signature : undefined, `signatures of ${rootDigest}`);
    const f: ArtifactFile = { rootDigest, fileDigest, kind, imageId, parentId, size, ...(signature ? { signature } : {}) };
    const { uploaded, ...entry } = await this.guard(pushFileArtifact(this.client, repo, f, path));
    this.manifests.set(entry.manifestDigest, f);
    s.files.set(entry.rootDigest, entry);
    s.contentTags.set(contentTag(entry), entry.rootDigest);
    this.log.info({ registry: this.registry, repository: repo, rootDigest: file.rootDigest, uploaded }, 'registry store: file stored');
    return entry;
  }

  /**
   * Point REPO:TAG at `imageId` in the registry: write the tag's index
   * artifact, listing every file of the repository that leads toward the
   * image (read fresh from the registry first, so files other replicas
   * pushed are listed too).
   */
  async putTag(repository: string, tag: string, imageId: string): Promise<void> {
    if (isContentTag(tag)) throw invalidArgument(`tag ${tag} is reserved for d4fs content tags`);
    await this.sync(repository, true);
    const s = this.state(repository);
    const all = [...s.files.values()];
    if (!all.some((f) => f.imageId === imageId)) {
      throw failedPrecondition(`image ${imageId} is not in ${this.registry}/${this.registryRepo(repository)}: push a file leading to it to this repository before tagging it`);
    }
    const useful = ancestorsOf(all, imageId);
    const listed = all.filter((f) => useful.has(f.imageId));
    await this.guard(this.client.putManifest(this.registryRepo(repository), tag, tagIndex(imageId, listed), MT.OCI_INDEX));
    s.tags.set(tag, imageId);
    s.tagWrites.set(tag, { imageId, at: Date.now() });
  }

  /** Whether the registry repository of `repository` holds the file (as far as this replica has read). */
  holds(repository: string, rootDigest: string): boolean {
    return !!this.repos.get(repository)?.files.has(rootDigest);
  }

  /** Where the registry holds the file (as far as this replica has read). */
  where(rootDigest: string): { repository: string; file: ArtifactEntry } | undefined {
    for (const [repository, s] of this.repos) {
      const file = s.files.get(rootDigest);
      if (file) return { repository, file };
    }
    return undefined;
  }

  /**
   * Make sure the blob of a stored file is in the local cache: fetch it from
   * the registry, check the bytes' sha256 as they arrive and the whole
   * .cdimg (root digest, every chunk) before it lands. One fetch per blob at
   * a time. Returns false when the registry does not hold it.
   */
  async ensureLocal(rootDigest: string): Promise<boolean> {
    if (await this.blobs.has(rootDigest)) return true;
    let loc = this.where(rootDigest);
    const row = loc ? undefined : this.catalogue.file(rootDigest);
    if (row) {
      // known to the mirror from before a restart: read its repository again
      await this.sync(row.repository, true);
      loc = this.where(rootDigest);
    }
    if (!loc) return false;
    let p = this.fetching.get(rootDigest);
    if (!p) {
      p = this.guard(this.fetch(loc.repository, loc.file)).finally(() => this.fetching.delete(rootDigest));
      this.fetching.set(rootDigest, p);
    }
    await p;
    return true;
  }

  /**
   * The registry refusing this server's credentials is the server's
   * problem, not the client's: it must not reach the client as a 401/403
   * (which would read as "your token is wrong"), so it becomes UNAVAILABLE.
   */
  private async guard<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (e) {
      if (e instanceof D4fsError && (e.kind === 'UNAUTHENTICATED' || e.kind === 'PERMISSION_DENIED')) {
        throw unavailable(`registry store ${this.url} refused this server's credentials (${e.message}): check --creds/--authfile of the server`, e);
      }
      throw e;
    }
  }

  private async fetch(repository: string, f: ArtifactEntry): Promise<void> {
    const t0 = process.hrtime.bigint();
    const repo = this.registryRepo(repository);
    const what = `${this.registry}/${repo}: blob ${f.fileDigest} of ${f.rootDigest}`;
    const tmp = this.blobs.tempPath('upload');
    try {
      const body = await this.client.openBlob(repo, f.fileDigest, f.size);
      await pipeline(body, new VerifyingStream(f.fileDigest, what, f.size), createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
      const v = await verifyStoredChunks(tmp, what);
      if (v.rootDigest !== f.rootDigest || v.kind !== f.kind || v.imageId !== f.imageId || v.parentId !== f.parentId) {
        throw corrupt(`${what}: the file is ${v.kind} ${v.parentId || '∅'} → ${v.imageId} (${v.rootDigest}), the registry's manifest says otherwise`);
      }
      // the image id a version 2 delta claims is that of the tree it rebuilds on its parent's
      if (v.kind === 'delta') await verifyDeltaTree(tmp, this.chainTo ? await this.chainTo(v.parentId) : undefined, what);
      if ((await fileDigestOf(tmp)) !== f.fileDigest) throw corrupt(`${what}: changed while it was verified`);
      await this.blobs.land(tmp, f.rootDigest);
      this.metrics?.storeFetchedBytes.inc(f.size);
      this.log.info({ registry: this.registry, repository: repo, rootDigest: f.rootDigest, size: f.size, seconds: Number(process.hrtime.bigint() - t0) / 1e9 }, 'registry store: blob fetched');
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }
}

/** Failures that make one artifact unusable without making the whole read fail. */
function skippable(e: unknown): boolean {
  return e instanceof D4fsError && (e.kind === 'CORRUPT' || e.kind === 'UNSUPPORTED' || e.kind === 'NOT_FOUND');
}
