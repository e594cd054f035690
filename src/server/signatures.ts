/**
 * The server's signatures: the signature file of each stored .cdimg kept
 * beside its blob (ROOT/blobs/sha256/<hex>.cdimg.sig, the FILE.sig
 * convention of src/signing), merged when a file gets new signatures, and
 * the server's own signatures over the merges it composes.
 *
 * Why the server re-signs merges, and only some: a merge is a new file (a
 * new root digest) that no publisher signed, so a client that requires
 * signatures can only accept it on the word of whoever composed it. With
 * `--signing-key` the server signs a merge with its key when every delta
 * merged into it carries a valid signature by a key of the server's own
 * policy (`--verify-key`/`--policy`): the server vouches only for what it
 * verified, and never turns unsigned inputs into a signed output. Clients
 * that should accept merges trust the server's public key next to the
 * publishers' keys; a client that does not is given the unmerged chain of
 * original signed files instead (see server.ts, pull).
 */
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import { checkSignature, readSignatureFile, signaturePathOf, SignatureFile, SignaturePolicy, SigningKey, signRoot, SIGNATURE_MEDIA_TYPE, VerifyKey, writeSignatureFile } from '../signing';
import { addsSignatures, checkTrusted, mergeSignatures } from '../distribution/signatures';
import type { BlobStore } from './blobs';

/** The public half of a signing key, as a key to verify with. */
export function verifyKeyOf(k: SigningKey, source: string): VerifyKey {
  return { pub: k.pub, algorithm: k.algorithm, keyId: k.keyId, source };
}

export class ServerSignatures {
  /** Key ids of each file's signatures (for planning; without a registry store a file's signatures change only through this class). */
  private readonly keyIdCache = new Map<string, string[]>();
  /** Writes in progress per file: one at a time, so that concurrent merges of signatures lose none. */
  private readonly writing = new Map<string, Promise<unknown>>();
  private readonly serverKey: VerifyKey | undefined;

  constructor(
    private readonly blobs: BlobStore,
    private readonly log: Logger,
    /** The server's trust: what `--require-signed` asks of uploads and what merges are signed over. */
    readonly policy: SignaturePolicy | undefined,
    /** The key merges are signed with. */
    readonly signingKey: SigningKey | undefined,
    /** Signatures held elsewhere (a registry backing store), merged with the local ones. */
    private readonly remote?: (rootDigest: string) => SignatureFile | undefined,
  ) {
    this.serverKey = signingKey ? verifyKeyOf(signingKey, 'the server signing key') : undefined;
  }

  /** Where the signature file of a blob lives. */
  pathOf(rootDigest: string): string {
    return signaturePathOf(this.blobs.pathOf(rootDigest));
  }

  /** The signatures held for a file, read now (a damaged signature file counts as none, and is logged). */
  async get(rootDigest: string): Promise<SignatureFile | undefined> {
    let local: SignatureFile | undefined;
    try {
      local = await readSignatureFile(this.blobs.pathOf(rootDigest));
    } catch (e) {
      this.log.warn({ rootDigest, err: (e as Error).message }, 'unusable signature file beside a blob: served as unsigned');
    }
    if (local && (local.subject !== rootDigest || local.kind !== 'cdimg')) local = undefined;
    let remote = this.remote?.(rootDigest);
    if (remote && (remote.subject !== rootDigest || remote.kind !== 'cdimg')) remote = undefined;
    let f: SignatureFile | undefined;
    try {
      f = mergeSignatures(local, remote, `signatures of ${rootDigest}`);
    } catch {
      f = local ?? remote;
    }
    this.keyIdCache.set(rootDigest, f?.signatures.map((s) => s.keyId) ?? []);
    return f;
  }

  /** Key ids of a file's signatures (cached after the first read). */
  async keyIds(rootDigest: string): Promise<string[]> {
    const known = this.remote ? undefined : this.keyIdCache.get(rootDigest); // a registry store changes under us: read again
    if (known) return known;
    return (await this.get(rootDigest))?.signatures.map((s) => s.keyId) ?? [];
  }

  /** Add `sig`'s signatures to those kept for the file (validated by the caller); returns what is kept now. */
  async add(rootDigest: string, sig: SignatureFile): Promise<SignatureFile | undefined> {
    return this.serial(rootDigest, async () => {
      const have = await this.get(rootDigest);
      if (!addsSignatures(have, sig)) return have;
      const merged = mergeSignatures(have, sig, `signatures of ${rootDigest}`);
      if (merged) await writeSignatureFile(this.pathOf(rootDigest), merged);
      this.keyIdCache.set(rootDigest, merged?.signatures.map((s) => s.keyId) ?? []);
      return merged;
    });
  }

  /** Drop a file's signatures (gc). */
  async remove(rootDigest: string): Promise<void> {
    this.keyIdCache.delete(rootDigest);
    await fsp.rm(this.pathOf(rootDigest), { force: true });
  }

  /** Whether the server's policy trusts the signatures of a stored file. */
  async trusted(rootDigest: string): Promise<boolean> {
    try {
      checkTrusted(this.policy, 'cdimg', rootDigest, await this.get(rootDigest), rootDigest);
      return !!this.policy?.keys.length;
    } catch {
      return false;
    }
  }

  /**
   * The signatures of a merge: with a signing key, and when every input is
   * trusted by the server's policy, the server's own signature (made once,
   * kept beside the merge); otherwise none.
   */
  async forMerge(rootDigest: string, inputs: readonly string[]): Promise<SignatureFile | undefined> {
    if (!this.signingKey || !(await this.canSign(inputs))) return undefined;
    const k = this.signingKey;
    const have = await this.get(rootDigest);
    if (have?.signatures.some((s) => checkSignature(this.serverKey as VerifyKey, 'cdimg', rootDigest, s))) return have;
    return this.add(rootDigest, { mediaType: SIGNATURE_MEDIA_TYPE, kind: 'cdimg', subject: rootDigest, signatures: [signRoot(k, 'cdimg', rootDigest)] });
  }

  /** Whether the server signs a merge of these inputs (it has a key, and trusts every input). */
  async canSign(inputs: readonly string[]): Promise<boolean> {
    if (!this.signingKey) return false;
    for (const root of inputs) if (!(await this.trusted(root))) return false;
    return true;
  }

  /** The server's key id (merges are signed with it), if it has a key. */
  get serverKeyId(): string | undefined {
    return this.serverKey?.keyId;
  }

  private serial<T>(rootDigest: string, fn: () => Promise<T>): Promise<T> {
    const before = this.writing.get(rootDigest) ?? Promise.resolve();
    const p = before.then(fn, fn);
    const tail = p.catch(() => undefined);
    this.writing.set(rootDigest, tail);
    void tail.then(() => {
      if (this.writing.get(rootDigest) === tail) this.writing.delete(rootDigest);
    });
    return p;
  }
}
