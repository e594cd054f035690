/**
 * Signatures over the root digest of a .cdimg or a registry patch: who made a
 * file, where digests only prove that it is intact.
 *
 * What is signed is one ASCII line, the payload:
 *
 *     d4fs-signature-v1 <kind> sha256:<root digest hex>
 *
 * (kind `cdimg` or `regsync-patch`; no newline). The kind and version keep a
 * signature from being taken for anything else. Keys are Ed25519 or ECDSA
 * P-256 in PEM (made by `ctr-cli keygen` or openssl); ECDSA signs SHA-256 of
 * the payload (DER signature). Both verify with plain openssl:
 *
 *     openssl pkeyutl -verify -pubin -inkey KEY.pub.pem -rawin -in payload -sigfile sig.bin
 *
 * A signature travels beside its file as `FILE.sig` (JSON, {@link SignatureFile}),
 * through the local store, the server, registries (an artifact's annotation)
 * and patches. A file may carry several signatures (several signers, a key
 * rotation); a policy accepts it when one of them is by a key it trusts.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, KeyObject, sign as cryptoSign, verify as cryptoVerify } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { corrupt, D4fsError, invalidArgument, notFound, unauthenticated } from '../errors';

export const SIGNATURE_MEDIA_TYPE = 'application/vnd.d4fs.signature.v1+json';
export const SIGNATURE_SUFFIX = '.sig';
/** Largest signature file read (a few dozen signatures). */
const MAX_SIGNATURE_FILE = 64 * 1024;
const MAX_SIGNATURES = 32;

export type SignedKind = 'cdimg' | 'regsync-patch';
export type KeyAlgorithm = 'ed25519' | 'ecdsa-p256';

export interface Signature {
  /** sha256 of the public key's DER (SubjectPublicKeyInfo). */
  keyId: string;
  algorithm: KeyAlgorithm;
  /** base64 of the raw signature (Ed25519: 64 bytes; ECDSA: DER). */
  signature: string;
}

export interface SignatureFile {
  mediaType: typeof SIGNATURE_MEDIA_TYPE;
  kind: SignedKind;
  /** The root digest signed: sha256:<hex>. */
  subject: string;
  signatures: Signature[];
}

/** The exact bytes signed for a file of `kind` with root digest `subject`. */
export function signaturePayload(kind: SignedKind, subject: string): Buffer {
  return Buffer.from(`d4fs-signature-v1 ${kind} ${subject}`, 'ascii');
}

const CDIMG_MAGIC = Buffer.from('D4FSCDIM', 'latin1');
const PATCH_MAGIC = Buffer.from('D4FSRGP\n', 'latin1');

/**
 * Kind and root digest of a .cdimg or registry patch, from its header. The
 * header alone is not proof: readers check the index against this digest when
 * they open the file, so a signature over it covers the whole file.
 */
export async function rootOf(path: string): Promise<{ kind: SignedKind; subject: string }> {
  const fh = await fsp.open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw e.code === 'ENOENT' ? notFound(`${path}: no such file`) : e;
  });
  try {
    const h = Buffer.alloc(80);
    const { bytesRead } = await fh.read(h, 0, 80, 0);
    if (bytesRead >= 80 && h.subarray(0, 8).equals(CDIMG_MAGIC)) return { kind: 'cdimg', subject: `sha256:${h.subarray(48, 80).toString('hex')}` };
    if (bytesRead >= 72 && h.subarray(0, 8).equals(PATCH_MAGIC)) return { kind: 'regsync-patch', subject: `sha256:${h.subarray(40, 72).toString('hex')}` };
    throw corrupt(`${path}: neither a .cdimg nor a registry patch (bad magic)`);
  } finally {
    await fh.close();
  }
}

function algorithmOf(k: KeyObject, what: string): KeyAlgorithm {
  if (k.asymmetricKeyType === 'ed25519') return 'ed25519';
  if (k.asymmetricKeyType === 'ec' && k.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ecdsa-p256';
  throw invalidArgument(`${what}: only Ed25519 and ECDSA P-256 keys are supported (this is ${k.asymmetricKeyType}${k.asymmetricKeyDetails?.namedCurve ? ` ${k.asymmetricKeyDetails.namedCurve}` : ''})`);
}

/** The key id of a public key: sha256 of its DER SubjectPublicKeyInfo. */
export function keyIdOf(pub: KeyObject): string {
  return `sha256:${createHash('sha256').update(pub.export({ type: 'spki', format: 'der' })).digest('hex')}`;
}

async function readPem(path: string, what: string): Promise<Buffer> {
  try {
    const st = await fsp.stat(path);
    if (st.size > 64 * 1024) throw invalidArgument(`${path}: too large to be a ${what}`);
    return await fsp.readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`${what} ${path}: no such file`);
    throw e;
  }
}

export interface SigningKey {
  key: KeyObject;
  pub: KeyObject;
  algorithm: KeyAlgorithm;
  keyId: string;
}

/** A private key in PEM (PKCS#8 or SEC1 "EC PRIVATE KEY"). */
export async function loadSigningKey(path: string): Promise<SigningKey> {
  const pem = await readPem(path, 'signing key');
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (e) {
    throw invalidArgument(`${path}: not a PEM private key (${(e as Error).message})`);
  }
  const algorithm = algorithmOf(key, path);
  const pub = createPublicKey(key);
  return { key, pub, algorithm, keyId: keyIdOf(pub) };
}

export interface VerifyKey {
  pub: KeyObject;
  algorithm: KeyAlgorithm;
  keyId: string;
  /** Where it came from (for messages). */
  source: string;
}

/** A public key in PEM (a private key is accepted too: its public half is used). */
export async function loadVerifyKey(path: string): Promise<VerifyKey> {
  const pem = await readPem(path, 'verification key');
  let pub: KeyObject;
  try {
    pub = createPublicKey(pem);
  } catch (e) {
    throw invalidArgument(`${path}: not a PEM public key (${(e as Error).message})`);
  }
  return { pub, algorithm: algorithmOf(pub, path), keyId: keyIdOf(pub), source: path };
}

/** Make a key pair; returns the PEM texts. */
export function generateKeyPair(algorithm: KeyAlgorithm): { privatePem: string; publicPem: string; keyId: string } {
  const { privateKey, publicKey } = algorithm === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
    keyId: keyIdOf(publicKey),
  };
}

/** One signature by `k` over a file of `kind` with root digest `subject`. */
export function signRoot(k: SigningKey, kind: SignedKind, subject: string): Signature {
  const payload = signaturePayload(kind, subject);
  const sig = cryptoSign(k.algorithm === 'ed25519' ? null : 'sha256', payload, k.key);
  return { keyId: k.keyId, algorithm: k.algorithm, signature: sig.toString('base64') };
}

/** Does `s` sign `kind subject` with `k`? */
export function checkSignature(k: VerifyKey, kind: SignedKind, subject: string, s: Signature): boolean {
  if (s.keyId !== k.keyId || s.algorithm !== k.algorithm) return false;
  try {
    return cryptoVerify(k.algorithm === 'ed25519' ? null : 'sha256', signaturePayload(kind, subject), k.pub, Buffer.from(s.signature, 'base64'));
  } catch {
    return false;
  }
}

/** Parse and check the shape of a signature file (untrusted input). */
export function parseSignatureFile(text: string | Buffer, what: string): SignatureFile {
  if (text.length > MAX_SIGNATURE_FILE) throw corrupt(`${what}: signature file too large`);
  let o: unknown;
  try {
    o = JSON.parse(text.toString());
  } catch (e) {
    throw corrupt(`${what}: signature file is not JSON (${(e as Error).message})`);
  }
  const f = o as Partial<SignatureFile>;
  const isStr = (v: unknown, re: RegExp): v is string => typeof v === 'string' && re.test(v);
  if (!f || typeof f !== 'object' || f.mediaType !== SIGNATURE_MEDIA_TYPE) throw corrupt(`${what}: not a d4fs signature file`);
  if (f.kind !== 'cdimg' && f.kind !== 'regsync-patch') throw corrupt(`${what}: unknown signed kind`);
  if (!isStr(f.subject, /^sha256:[0-9a-f]{64}$/)) throw corrupt(`${what}: invalid subject`);
  if (!Array.isArray(f.signatures) || f.signatures.length > MAX_SIGNATURES) throw corrupt(`${what}: invalid signature list`);
  for (const s of f.signatures) {
    if (!s || typeof s !== 'object' || !isStr(s.keyId, /^sha256:[0-9a-f]{64}$/) || (s.algorithm !== 'ed25519' && s.algorithm !== 'ecdsa-p256') || !isStr(s.signature, /^[A-Za-z0-9+/]{1,200}={0,2}$/)) {
      throw corrupt(`${what}: invalid signature entry`);
    }
  }
  return { mediaType: SIGNATURE_MEDIA_TYPE, kind: f.kind, subject: f.subject, signatures: f.signatures.map((s) => ({ keyId: s.keyId, algorithm: s.algorithm, signature: s.signature })) };
}

export const signaturePathOf = (file: string): string => `${file}${SIGNATURE_SUFFIX}`;

/** The signature file beside `file`, or undefined when there is none. */
export async function readSignatureFile(file: string, sigPath = signaturePathOf(file)): Promise<SignatureFile | undefined> {
  let text: Buffer;
  try {
    const st = await fsp.stat(sigPath);
    if (st.size > MAX_SIGNATURE_FILE) throw corrupt(`${sigPath}: signature file too large`);
    text = await fsp.readFile(sigPath);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  return parseSignatureFile(text, sigPath);
}

/** Write a signature file atomically. */
export async function writeSignatureFile(path: string, f: SignatureFile): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  await fsp.writeFile(tmp, JSON.stringify(f, null, 2) + '\n', { mode: 0o644 });
  await fsp.rename(tmp, path);
}

/**
 * Sign `file` with `k`: adds (or replaces) this key's signature in FILE.sig
 * (or `out`). Signatures in an existing FILE.sig over another root digest are
 * dropped: they belong to an older file.
 */
export async function signFile(file: string, k: SigningKey, out = signaturePathOf(file)): Promise<{ sigPath: string; subject: string; kind: SignedKind; keyId: string; signatures: number }> {
  const { kind, subject } = await rootOf(file);
  const old = await readSignatureFile(file, out).catch(() => undefined);
  const keep = old && old.subject === subject && old.kind === kind ? old.signatures.filter((s) => s.keyId !== k.keyId) : [];
  const f: SignatureFile = { mediaType: SIGNATURE_MEDIA_TYPE, kind, subject, signatures: [...keep, signRoot(k, kind, subject)] };
  await writeSignatureFile(out, f);
  return { sigPath: out, subject, kind, keyId: k.keyId, signatures: f.signatures.length };
}

/** Which signatures to ask for: none (accept anything), or one by any of these keys. */
export interface SignaturePolicy {
  keys: VerifyKey[];
}

export const NO_POLICY: SignaturePolicy = { keys: [] };

export const policyRequires = (p: SignaturePolicy | undefined): p is SignaturePolicy => !!p && p.keys.length > 0;

/**
 * A policy from `--verify-key` files and/or a policy file (JSON:
 * `{"verifyKeys": ["/etc/d4fs/keys/release.pub.pem", …]}`, relative paths
 * from the policy file's directory).
 */
export async function loadPolicy(o: { verifyKeys?: string[]; policyFile?: string }): Promise<SignaturePolicy> {
  const paths = [...(o.verifyKeys ?? [])];
  if (o.policyFile) {
    const text = await readPem(o.policyFile, 'policy file');
    let j: { verifyKeys?: unknown };
    try {
      j = JSON.parse(text.toString());
    } catch (e) {
      throw invalidArgument(`${o.policyFile}: not JSON (${(e as Error).message})`);
    }
    if (!Array.isArray(j.verifyKeys) || !j.verifyKeys.every((x) => typeof x === 'string')) throw invalidArgument(`${o.policyFile}: "verifyKeys" must be a list of PEM file paths`);
    for (const p of j.verifyKeys as string[]) paths.push(resolve(dirname(o.policyFile), p));
  }
  return { keys: await Promise.all(paths.map(loadVerifyKey)) };
}

/**
 * Check a file against a policy. With no keys in the policy every file
 * passes. Otherwise the file needs a signature file whose subject is the
 * file's own root digest and one signature by a trusted key, else
 * UNAUTHENTICATED (exit 9): unsigned, signed by an unknown key, a signature
 * of another file, or a bad signature.
 */
export async function enforcePolicy(policy: SignaturePolicy | undefined, file: string, sig?: SignatureFile | string): Promise<{ keyId?: string; subject?: string }> {
  if (!policyRequires(policy)) return {};
  const { kind, subject } = await rootOf(file);
  let f: SignatureFile | undefined;
  try {
    f = typeof sig === 'object' ? sig : await readSignatureFile(file, sig);
  } catch (e) {
    if (e instanceof D4fsError && e.kind === 'CORRUPT') throw unauthenticated(`${file}: its signature file is unusable (${e.message}); the policy requires a signature by ${keyList(policy)}`);
    throw e;
  }
  if (!f) throw unauthenticated(`${file} is not signed, and the policy requires a signature by ${keyList(policy)} (sign it: ctr-cli sign FILE --key KEY.pem)`);
  if (f.subject !== subject || f.kind !== kind) throw unauthenticated(`${file}: its signature is for another file (${f.kind} ${f.subject}, this is ${kind} ${subject})`);
  for (const s of f.signatures) {
    const k = policy.keys.find((x) => x.keyId === s.keyId);
    if (k && checkSignature(k, kind, subject, s)) return { keyId: k.keyId, subject };
  }
  const known = f.signatures.some((s) => policy.keys.some((k) => k.keyId === s.keyId));
  throw unauthenticated(
    known
      ? `${file}: its signature by a trusted key does not verify (tampered signature or file)`
      : `${file} is signed only by keys this policy does not trust (${f.signatures.map((s) => s.keyId.slice(0, 19)).join(', ') || 'none'}); trusted: ${keyList(policy)}`,
  );
}

const keyList = (p: SignaturePolicy): string => p.keys.map((k) => `${k.source} (${k.keyId.slice(0, 19)}…)`).join(', ');
