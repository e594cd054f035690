/**
 * `ctr-cli pull --image NAME:TAG --server URL`: tell the server which image
 * versions the local store can rebuild, get back the cheapest plan (at most a
 * full image and one merged delta), download each file resumably and
 * verified, add it to the store, tag it, and load it into containerd.
 */
import { dirname } from 'node:path';
import { promises as fsp } from 'node:fs';
import { CdimgReader } from '../format/reader';
import { corrupt, failedPrecondition } from '../errors';
import { checkImageName, LocalStore } from '../store/store';
import { ServerClient, ServerClientOptions } from './client';
import { downloadBlob, sweepParts } from './download';
import { containerdLoader, LoadImageFn, LoadImageResult, LoadTarget, notLoaded } from './load';
import { FileInfo, parseImageName, PlanFileJson, PullPlanJson, repoPath } from './protocol';

/** How long a pull waits for its plan (a server may merge a chain first). */
const PLAN_TIMEOUT_MS = 30 * 60_000;

/** Progress of a pull: bytes of the current file. */
export interface PullProgress {
  file: number;
  files: number;
  rootDigest: string;
  done: number;
  total: number;
}

/** Options common to pulls from a server and from a registry. */
export interface PullCommon {
  /** The local store, or its directory. */
  store: LocalStore | string;
  /** Skip loading into containerd. */
  noLoad?: boolean;
  /** Loader to use instead of containerd's (tests). */
  loader?: LoadImageFn;
  /** containerd target of the load. */
  load?: LoadTarget;
  onProgress?: (p: PullProgress) => void;
}

export interface ServerPullOptions extends ServerClientOptions, PullCommon {
  /** NAME:TAG on the server (also the local name). */
  image: string;
  /** Base URL of the server. */
  server: string;
  /** Network failures retried (resuming) per file within this run (default 2). */
  retries?: number;
  retryDelayMs?: number;
}

/** One file of a finished pull. */
export interface PulledFile extends FileInfo {
  merged: boolean;
  /** False when the store held it already. */
  downloaded: boolean;
  /** Network bytes of this run. */
  bytes: number;
  /** Bytes found from an interrupted earlier run. */
  resumedFrom: number;
  refetched: boolean;
}

export interface PullResult {
  /** Local name (REPO:TAG). */
  name: string;
  imageId: string;
  /** Held image the update started from (null: from nothing). */
  from: string | null;
  upToDate: boolean;
  files: PulledFile[];
  /** Network bytes of this run. */
  bytes: number;
  /** Whether it was loaded into containerd. */
  loaded: boolean;
  /** What the load did (when loaded). */
  load?: LoadImageResult;
  seconds: number;
}

/** Open the store when given as a directory; returns it and how to close it. */
export async function openStore(s: LocalStore | string): Promise<{ store: LocalStore; close: () => void }> {
  if (typeof s !== 'string') return { store: s, close: () => undefined };
  const store = await LocalStore.open(s);
  return { store, close: () => store.close() };
}

/**
 * Check a plan's files form a chain from a held image (or from nothing) to
 * the target, so that a confused or hostile server cannot make the client
 * store something else.
 */
export function checkPlanChain(files: readonly FileInfo[], held: ReadonlySet<string>, target: string, what: string): void {
  let at: string | undefined;
  for (const f of files) {
    if (f.kind === 'full') {
      if (at !== undefined) throw corrupt(`${what}: a full image in the middle of the chain`);
    } else if (at !== undefined ? f.parentId !== at : !held.has(f.parentId)) {
      throw corrupt(`${what}: delta ${f.rootDigest} applies to ${f.parentId}, which is neither held nor the previous file's image`);
    }
    at = f.imageId;
  }
  if ((at ?? '') !== target && !(files.length === 0 && held.has(target))) throw corrupt(`${what}: the files lead to ${at ?? 'nothing'}, not to ${target}`);
}

/** Open a downloaded file and check it is the one the plan named. */
export async function checkDownloaded(path: string, f: FileInfo, what: string): Promise<void> {
  // Decoded once: storing and loading the file reuse this index.
  const r = await CdimgReader.open(path, { reuse: true });
  try {
    const got = { rootDigest: r.rootDigest, kind: r.isDelta ? 'delta' : 'full', imageId: r.imageId, parentId: r.parentId ?? '' };
    for (const k of ['rootDigest', 'kind', 'imageId', 'parentId'] as const) {
      if (got[k] !== f[k]) throw corrupt(`${what}: the downloaded file's ${k} is ${got[k] || '(none)'}, expected ${f[k] || '(none)'}`);
    }
  } finally {
    await r.close();
  }
}

/** Tag and (unless told not to) load: the end of every pull. */
export async function finishPull(store: LocalStore, name: string, imageId: string, loader: LoadImageFn | undefined, target: LoadTarget = {}): Promise<{ loaded: boolean; load?: LoadImageResult }> {
  if (!loader) {
    store.tag(name, imageId);
    return { loaded: false };
  }
  store.tag(name, imageId);
  try {
    return { loaded: true, load: await loader({ store, name, imageId, ...target }) };
  } catch (e) {
    throw notLoaded(e, name);
  }
}

export async function pullFromServer(o: ServerPullOptions): Promise<PullResult> {
  const t0 = process.hrtime.bigint();
  const { repository, tag } = parseImageName(o.image);
  const name = checkImageName(`${repository}:${tag}`);
  const loader = o.noLoad ? undefined : (o.loader ?? containerdLoader());
  const { store, close } = await openStore(o.store);
  const client = new ServerClient(o.server, o);
  try {
    const held = new Set(store.heldImageIds());
    // the server may merge a chain for this plan before it answers
    const plan = await client.json<PullPlanJson>('POST', repoPath(repository, 'pull'), `pull of ${repository}:${tag}`, { tag, have: [...held] }, PLAN_TIMEOUT_MS);
    const what = `d4fs-server ${client.base.origin}: plan for ${repository}:${tag}`;
    if (!Array.isArray(plan?.files) || typeof plan.imageId !== 'string') throw corrupt(`${what}: malformed answer`);
    checkPlanChain(plan.files, held, plan.imageId, what);
    const tmpDir = dirname(store.tempPath('pull'));
    await fsp.mkdir(tmpDir, { recursive: true });
    const storedRoots = new Set(store.files().map((f) => f.rootDigest));
    const files: PulledFile[] = [];
    for (const [i, f] of plan.files.entries()) {
      const base: PulledFile = { rootDigest: f.rootDigest, kind: f.kind, imageId: f.imageId, parentId: f.parentId, size: f.size, merged: !!f.merged, downloaded: false, bytes: 0, resumedFrom: 0, refetched: false };
      if (storedRoots.has(f.rootDigest)) {
        files.push(base);
        continue;
      }
      const d = await downloadBlob(client, f as PlanFileJson, tmpDir, {
        retries: o.retries,
        retryDelayMs: o.retryDelayMs,
        onProgress: (done, total) => o.onProgress?.({ file: i + 1, files: plan.files.length, rootDigest: f.rootDigest, done, total }),
      });
      try {
        await checkDownloaded(d.path, f, `download of ${f.rootDigest}`);
        await store.add(d.path, { move: true });
      } catch (e) {
        await fsp.rm(d.path, { force: true });
        throw e;
      }
      files.push({ ...base, downloaded: true, bytes: d.downloaded, resumedFrom: d.resumedFrom, refetched: d.refetched });
    }
    if (!store.hasImage(plan.imageId)) throw failedPrecondition(`after the pull the store still cannot rebuild ${plan.imageId}`);
    await sweepParts(tmpDir);
    const loaded = await finishPull(store, name, plan.imageId, loader, o.load);
    return {
      name,
      imageId: plan.imageId,
      from: plan.from,
      upToDate: plan.files.length === 0,
      files,
      bytes: files.reduce((n, f) => n + f.bytes, 0),
      ...loaded,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } finally {
    client.close();
    close();
  }
}
