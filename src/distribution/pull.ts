/**
 * `ctr-cli pull --image NAME:TAG --server URL`: tell the server which image
 * versions the local store can rebuild, get back the cheapest plan (at most a
 * full image and one merged delta), download each file resumably and
 * verified, add it to the store, tag it, and load it into containerd.
 *
 * Signatures come with the plan and are kept beside the stored files. With a
 * policy (`--verify-key`, `--policy`) the pull asks the server for files it
 * can verify, checks the files it holds already (the chain of the image it
 * starts from), downloads every new file, checks them all, and only then
 * stores any: one file without a trusted signature and nothing is stored
 * (UNAUTHENTICATED, exit 9).
 */
import { dirname } from 'node:path';
import { promises as fsp } from 'node:fs';
import { CdimgReader } from '../format/reader';
import { corrupt, D4fsError, failedPrecondition } from '../errors';
import { enforcePolicy, policyRequires, readSignatureFile, signaturePathOf, SignatureFile, SignaturePolicy, writeSignatureFile } from '../signing';
import { checkImageName, LocalStore } from '../store/store';
import { ServerClient, ServerClientOptions } from './client';
import { downloadBlob, peerSource, serverSource, sweepParts } from './download';
import { containerdLoader, LoadImageFn, LoadImageResult, LoadTarget, notLoaded } from './load';
import { FileInfo, parseImageName, PlanFileJson, PullPlanJson, PullRequestJson, repoPath } from './protocol';
import { addsSignatures, mergeSignatures, signatureFromWire } from './signatures';

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
  /**
   * Signatures to require: every file of the image's chain (downloaded or
   * held) must carry a valid signature by one of these keys, else
   * UNAUTHENTICATED and nothing is stored. No keys: none required.
   */
  policy?: SignaturePolicy;
}

export interface ServerPullOptions extends ServerClientOptions, PullCommon {
  /** NAME:TAG on the server (also the local name). */
  image: string;
  /** Base URL of the server. */
  server: string;
  /** Network failures retried (resuming) per file within this run (default 2). */
  retries?: number;
  retryDelayMs?: number;
  /** The node's d4fs-peer (its mirror URL): files come through its cache and swarm. */
  peer?: string;
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
  /** Key id of the trusted signature the file was accepted with (pulls with a policy). */
  signedBy?: string;
  /** Signatures that came with the file. */
  signatures: number;
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

/** A file downloaded by a pull, verified against its plan, not stored yet. */
export interface Downloaded {
  path: string;
  file: FileInfo;
  /** What came with it as its signature (validated shape), if anything. */
  signature?: SignatureFile;
  /** Why the signature that came with it is unusable, if it is. */
  signatureError?: string;
  /** Describes the file in messages. */
  what: string;
  /** Added to a refusal of this file (e.g. how to trust a server's merges). */
  hint?: string;
}

/** A plan file's signature as it came over the wire: the file, or why it is unusable. */
export function wireSignature(v: unknown, rootDigest: string, what: string): { signature?: SignatureFile; signatureError?: string } {
  try {
    return { signature: signatureFromWire(v, rootDigest, what) };
  } catch (e) {
    if (e instanceof D4fsError && e.kind === 'CORRUPT') return { signatureError: e.message };
    throw e;
  }
}

/**
 * The images a pull offers as held: all the store can rebuild; with a
 * policy only those whose chain is trusted (an update is never built on a
 * file the policy would refuse).
 */
export async function offeredImages(store: LocalStore, policy: SignaturePolicy | undefined): Promise<string[]> {
  const all = store.heldImageIds();
  if (!policyRequires(policy)) return all;
  const ok: string[] = [];
  for (const id of all) {
    if (await store.checkChainSignatures(id, policy).then(() => true, () => false)) ok.push(id);
  }
  return ok;
}

/** A file of the plan the store holds already, with the signatures the plan brings for it. */
export interface HeldPlanFile {
  rootDigest: string;
  signature?: SignatureFile;
}

/**
 * Before any download: with a policy, the files the store holds already and
 * the pull builds on (the chain of `from`, and the plan's files it holds)
 * must be trusted too. A held file of the plan may be trusted through the
 * signatures the plan brings for it: returns those to keep beside the
 * stored files once the pull succeeds (see {@link keepHeldSignatures}).
 */
export async function checkHeld(store: LocalStore, policy: SignaturePolicy | undefined, from: string | null | undefined, heldFiles: readonly HeldPlanFile[]): Promise<{ path: string; signature: SignatureFile }[]> {
  const keep: { path: string; signature: SignatureFile }[] = [];
  for (const h of heldFiles) {
    const path = store.filePath(h.rootDigest);
    const have = await readSignatureFile(path).catch(() => undefined);
    const mine = have?.subject === h.rootDigest ? have : undefined;
    const more = h.signature?.subject === h.rootDigest && h.signature.kind === 'cdimg' ? h.signature : undefined;
    let merged: SignatureFile | undefined;
    try {
      merged = mergeSignatures(mine, more, `signatures of ${h.rootDigest}`);
    } catch {
      merged = mine;
    }
    if (policyRequires(policy)) await enforcePolicy(policy, path, merged);
    if (merged && addsSignatures(mine, more)) keep.push({ path, signature: merged });
  }
  if (policyRequires(policy) && from) await store.checkChainSignatures(from, policy);
  return keep;
}

/** Keep the signatures a plan brought for files the store held (after a pull succeeded). */
export async function keepHeldSignatures(keep: readonly { path: string; signature: SignatureFile }[]): Promise<void> {
  for (const k of keep) await writeSignatureFile(signaturePathOf(k.path), k.signature);
}

/**
 * Store downloaded files, in chain order. With a policy every one is checked
 * first (its own root digest, signed by a trusted key): one refusal and none
 * is stored, the downloads are dropped, UNAUTHENTICATED. The store checks
 * each again on its own copy when it adds it, and keeps the signatures
 * beside the stored files.
 */
export async function storeDownloaded(store: LocalStore, files: Downloaded[], policy: SignaturePolicy | undefined): Promise<void> {
  try {
    if (policyRequires(policy)) {
      for (const d of files) {
        try {
          if (!d.signature && d.signatureError) throw new D4fsError('UNAUTHENTICATED', `${d.path}: its signature is unusable (${d.signatureError})`);
          // no signature came: enforcePolicy looks beside the part file, where there is none
          await enforcePolicy(policy, d.path, d.signature);
        } catch (e) {
          if (e instanceof Error) {
            e.message = `refusing the pull, nothing stored: ${e.message.split(d.path).join(d.what)}${d.hint ? `; ${d.hint}` : ''}`;
          }
          throw e;
        }
      }
    }
    for (const d of files) {
      await store.add(d.path, { move: true, signature: d.signature, policy }).catch((e: unknown) => {
        if (e instanceof Error) e.message = e.message.split(d.path).join(d.what);
        throw e;
      });
    }
  } finally {
    await Promise.all(files.map((d) => fsp.rm(d.path, { force: true })));
  }
}

/** How a plan file is named in messages. */
export function describe(f: FileInfo & { merged?: boolean }, origin: string): string {
  return `${f.merged ? 'merged ' : ''}${f.kind} ${f.rootDigest} (${f.parentId ? `${f.parentId.slice(0, 19)}… → ` : ''}${f.imageId.slice(0, 19)}…) from ${origin}`;
}

/** With a policy: which trusted key each file of the result (stored now) is signed by. */
export async function noteSignedBy(store: LocalStore, files: PulledFile[], policy: SignaturePolicy | undefined): Promise<void> {
  if (!policyRequires(policy)) return;
  for (const f of files) f.signedBy = (await enforcePolicy(policy, store.filePath(f.rootDigest))).keyId;
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
  const policy = policyRequires(o.policy) ? o.policy : undefined;
  try {
    const held = new Set(await offeredImages(store, policy));
    const ask: PullRequestJson = { tag, have: [...held] };
    if (policy) {
      // only files this client can verify: merges only when the server signs them with a key trusted here
      ask.signed = true;
      ask.trustedKeys = policy.keys.map((k) => k.keyId);
    }
    // the server may merge a chain for this plan before it answers
    const plan = await client.json<PullPlanJson>('POST', repoPath(repository, 'pull'), `pull of ${repository}:${tag}`, ask, PLAN_TIMEOUT_MS);
    const what = `d4fs-server ${client.base.origin}: plan for ${repository}:${tag}`;
    if (!Array.isArray(plan?.files) || typeof plan.imageId !== 'string') throw corrupt(`${what}: malformed answer`);
    checkPlanChain(plan.files, held, plan.imageId, what);
    const storedRoots = new Set(store.files().map((f) => f.rootDigest));
    // with a policy, what the pull builds on must be trusted too (checked before anything moves)
    const heldSigs = await checkHeld(
      store,
      policy,
      plan.files.length ? plan.from : plan.imageId,
      plan.files.filter((f) => storedRoots.has(f.rootDigest)).map((f) => ({ rootDigest: f.rootDigest, signature: wireSignature(f.signature, f.rootDigest, `signature of ${f.rootDigest}`).signature })),
    );
    const tmpDir = dirname(store.tempPath('pull'));
    await fsp.mkdir(tmpDir, { recursive: true });
    const files: PulledFile[] = [];
    const pending: Downloaded[] = [];
    for (const [i, f] of plan.files.entries()) {
      const sig = wireSignature(f.signature, f.rootDigest, `signature of ${f.rootDigest}`);
      const base: PulledFile = { rootDigest: f.rootDigest, kind: f.kind, imageId: f.imageId, parentId: f.parentId, size: f.size, merged: !!f.merged, downloaded: false, bytes: 0, resumedFrom: 0, refetched: false, signatures: sig.signature?.signatures.length ?? 0 };
      if (storedRoots.has(f.rootDigest)) {
        files.push(base);
        continue;
      }
      const d = await downloadBlob(o.peer ? peerSource(o.peer, serverSource(client), o.token) : client, f as PlanFileJson, tmpDir, {
        retries: o.retries,
        retryDelayMs: o.retryDelayMs,
        onProgress: (done, total) => o.onProgress?.({ file: i + 1, files: plan.files.length, rootDigest: f.rootDigest, done, total }),
      });
      try {
        await checkDownloaded(d.path, f, `download of ${f.rootDigest}`);
      } catch (e) {
        await fsp.rm(d.path, { force: true });
        throw e;
      }
      const dl: Downloaded = {
        path: d.path,
        file: f,
        ...sig,
        what: describe(f, client.base.origin),
        hint: f.merged
          ? `it is a merge the server composed${plan.serverKeyId ? ` and signed with its own key ${plan.serverKeyId.slice(0, 19)}…` : ' (unsigned: the server has no signing key)'}: to accept the server's merges, trust its public key too (--verify-key SERVER.pub.pem)`
          : undefined,
      };
      // no policy: each file is stored as soon as it is here (an interrupted pull keeps what it has);
      // with one, every downloaded file is checked before any is stored
      if (policy) pending.push(dl);
      else await storeDownloaded(store, [dl], undefined);
      files.push({ ...base, downloaded: true, bytes: d.downloaded, resumedFrom: d.resumedFrom, refetched: d.refetched });
    }
    await storeDownloaded(store, pending, policy);
    await keepHeldSignatures(heldSigs);
    await noteSignedBy(store, files, policy);
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
