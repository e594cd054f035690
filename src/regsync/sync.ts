/**
 * `registry sync`: bring a replica up to date with a primary by patch.
 *
 * The repositories are the ones named (--repos) or, by default, every
 * repository under the primary's prefix in its catalog (GET /v2/_catalog).
 *
 * For every tag of the given repositories at the primary, the replica's tag
 * is compared: same manifest digest, or the same images (same config
 * digests — a manifest rewritten because its compression could not be
 * reproduced) means up to date. The out-of-date tags form the new set, every
 * tag the replica already has in those repositories the old set; one patch is
 * made (./diff.ts) and applied to the replica (./apply.ts).
 *
 * Safe to interrupt and re-run: apply pushes blobs first and tags last, every
 * push skips what exists, so a re-run finds the interrupted tags still out of
 * date, makes the same patch and only uploads what is still missing.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { D4fsError, failedPrecondition, invalidArgument, notFound } from '../errors';
import { INDEX_TYPES } from '../oci/mediatypes';
import { RegistryClient } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import type { RawDocument } from '../oci/types';
import type { CodecChoice, LevelPreset } from '../delta/codecs';
import { applyPatch, ApplyReport } from './apply';
import { diffImageSets, DiffReport } from './diff';
import { ImageSpec, PlatformSelection } from './imageset';
import { parseTarget, refIn, repoIn } from './target';

/** Options of {@link syncRegistries}. */
export interface SyncOptions {
  /** "docker://PRIMARY[/PREFIX]". */
  from: string;
  /** "docker://REPLICA[/PREFIX]". */
  to: string;
  src?: RegistryOptions;
  dest?: RegistryOptions;
  /** Repositories relative to the prefixes; default: every repository under the primary's prefix, from its catalog. */
  repos?: string[];
  /** Default: all platforms (a replica mirrors indexes whole). */
  platforms?: PlatformSelection;
  level?: LevelPreset;
  codec?: CodecChoice;
  threads?: number;
  workDir?: string;
  /** Keep the patch here (default: a temp file, removed). */
  keepPatch?: string;
  /** Deflate reconstruction records for layers no encoder reproduces (default true; false: such layers are rewritten). */
  records?: boolean;
  onProgress?: (message: string) => void;
}

/** The report of a sync. */
export interface SyncReport {
  from: string;
  to: string;
  /** Repositories compared (given, or from the primary's catalog). */
  repos: string[];
  upToDate: string[];
  updated: string[];
  diff?: DiffReport;
  apply?: ApplyReport;
  seconds: number;
}

/** Config digests of an image (one per manifest), sorted: equal lists mean the same images. */
async function identity(client: RegistryClient, repo: string, doc: RawDocument): Promise<string[]> {
  const parsed = JSON.parse(doc.bytes.toString('utf8')) as { mediaType?: string; manifests?: { digest: string }[]; config?: { digest: string } };
  const isIndex = Array.isArray(parsed.manifests) || INDEX_TYPES.includes(parsed.mediaType ?? doc.mediaType);
  if (!isIndex) return [parsed.config?.digest ?? ''];
  const out: string[] = [];
  for (const m of parsed.manifests ?? []) {
    const child = await client.getManifest(repo, m.digest);
    out.push(...(await identity(client, repo, child)));
  }
  return out.sort();
}

/** A tag's manifest, or undefined when the tag (or repository) does not exist. */
async function getOptional(client: RegistryClient, repo: string, tag: string): Promise<RawDocument | undefined> {
  try {
    return await client.getManifest(repo, tag);
  } catch (e) {
    if (e instanceof D4fsError && e.kind === 'NOT_FOUND') return undefined;
    throw e;
  }
}

/** Tags of a repository, or [] when it does not exist. */
async function tagsOptional(client: RegistryClient, repo: string): Promise<string[]> {
  try {
    return await client.listTags(repo);
  } catch (e) {
    if (e instanceof D4fsError && e.kind === 'NOT_FOUND') return [];
    throw e;
  }
}

/**
 * Repositories of the primary under `prefix` (relative to it), from the
 * catalog. A registry that does not offer its catalog (or not to these
 * credentials) is a failed precondition: name the repositories with --repos.
 */
async function catalogUnder(client: RegistryClient, prefix: string): Promise<string[]> {
  let all: string[];
  try {
    all = await client.listRepositories();
  } catch (e) {
    if (e instanceof D4fsError && (e.kind === 'NOT_FOUND' || e.kind === 'PERMISSION_DENIED')) {
      throw failedPrecondition(`${e.message}; the primary does not list its repositories: name them with --repos`);
    }
    throw e;
  }
  const under = prefix ? all.filter((r) => r.startsWith(`${prefix}/`)).map((r) => r.slice(prefix.length + 1)) : all;
  return under.sort();
}

/** Bring the replica up to date; see the module comment. */
export async function syncRegistries(opts: SyncOptions): Promise<SyncReport> {
  const started = Date.now();
  const progress = opts.onProgress ?? (() => undefined);
  if (opts.repos !== undefined && opts.repos.length === 0) throw invalidArgument('--repos names no repository');
  const primary = parseTarget(opts.from, opts.src ?? {});
  const replica = parseTarget(opts.to, opts.dest ?? {});
  const pc = new RegistryClient(primary.registry, primary.opts);
  const rc = new RegistryClient(replica.registry, replica.opts);
  const report: SyncReport = { from: opts.from, to: opts.to, repos: [], upToDate: [], updated: [], seconds: 0 };
  const tmp = await fsp.mkdtemp(path.join(opts.workDir ?? process.env.D4FS_TMPDIR ?? os.tmpdir(), 'd4fs-regsync-'));
  try {
    const repos = opts.repos ?? (await catalogUnder(pc, primary.prefix));
    report.repos = repos;
    if (repos.length === 0) {
      throw notFound(`${opts.from} holds no repository${primary.prefix ? ` under ${primary.prefix}/` : ''} (check the address and prefix, or name repositories with --repos)`);
    }
    const newSpecs: ImageSpec[] = [];
    const oldSpecs: ImageSpec[] = [];
    for (const name of repos) {
      const prepo = repoIn(primary, name);
      const rrepo = repoIn(replica, name);
      const ptags = (await pc.listTags(prepo)).sort();
      const rtags = new Set(await tagsOptional(rc, rrepo));
      for (const t of [...rtags].sort()) oldSpecs.push({ ref: refIn(replica, name, t), name, tag: t });
      for (const tag of ptags) {
        const label = `${name}:${tag}`;
        const pdoc = await pc.getManifest(prepo, tag);
        const rdoc = rtags.has(tag) ? await getOptional(rc, rrepo, tag) : undefined;
        if (rdoc && (rdoc.digest === pdoc.digest || (await identity(rc, rrepo, rdoc)).join() === (await identity(pc, prepo, pdoc)).join())) {
          report.upToDate.push(label);
          continue;
        }
        newSpecs.push({ ref: refIn(primary, name, tag), name, tag });
        report.updated.push(label);
      }
    }
    progress(`${report.upToDate.length} tags up to date, ${report.updated.length} to bring over`);
    if (newSpecs.length === 0) return report;
    const patchPath = opts.keepPatch ?? path.join(tmp, 'sync.patch');
    report.diff = await diffImageSets({
      old: oldSpecs,
      new: newSpecs,
      out: patchPath,
      platforms: opts.platforms ?? 'all',
      registry: primary.opts,
      oldRegistry: replica.opts,
      level: opts.level,
      codec: opts.codec,
      threads: opts.threads,
      workDir: opts.workDir,
      records: opts.records,
      onProgress: progress,
    });
    report.apply = await applyPatch({
      patch: patchPath,
      to: opts.to,
      dest: replica.opts,
      threads: opts.threads,
      workDir: opts.workDir,
      onProgress: progress,
    });
    return report;
  } finally {
    report.seconds = Math.round((Date.now() - started) / 100) / 10;
    await pc.close();
    await rc.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
