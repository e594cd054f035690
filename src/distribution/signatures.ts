/**
 * Signatures in distribution (src/signing holds the format and the crypto):
 * how a signature file travels with a .cdimg through d4fs-server and OCI
 * registries, and the checks both ends make on it.
 *
 *  - d4fs-server: an upload carries the file's signatures in the
 *    `x-d4fs-signature` header (base64 of the SignatureFile JSON), so a server
 *    that requires signatures refuses an upload before a byte of its body
 *    moves; the server keeps them beside the blob (merged with those it has)
 *    and returns them in every pull plan (`signature` of each plan file).
 *  - OCI registry: the SignatureFile JSON is an annotation of the file's
 *    artifact manifest (see artifact.ts).
 *
 * The checks here work on a root digest the caller already trusts (the one
 * named in a URL, a catalogue row, a verified download), without the file:
 * a server checks an upload's signature before it receives the body.
 */
import { corrupt, unauthenticated } from '../errors';
import { checkSignature, parseSignatureFile, policyRequires, SIGNATURE_MEDIA_TYPE, SignatureFile, SignaturePolicy, SignedKind } from '../signing';

/** Most signatures kept for one file (the signing module reads no more). */
export const MAX_FILE_SIGNATURES = 32;

/** Signatures of `a` and `b` over the same file, without duplicates (a's first); undefined when neither has any. */
export function mergeSignatures(a: SignatureFile | undefined, b: SignatureFile | undefined, what: string): SignatureFile | undefined {
  if (!a) return b && b.signatures.length ? b : undefined;
  if (!b) return a.signatures.length ? a : undefined;
  if (a.subject !== b.subject || a.kind !== b.kind) throw corrupt(`${what}: signatures of two different files (${a.subject}, ${b.subject})`);
  const all = [...a.signatures];
  for (const s of b.signatures) if (!all.some((x) => x.keyId === s.keyId && x.signature === s.signature)) all.push(s);
  if (all.length > MAX_FILE_SIGNATURES) throw corrupt(`${what}: more than ${MAX_FILE_SIGNATURES} signatures for one file`);
  return all.length ? { mediaType: SIGNATURE_MEDIA_TYPE, kind: a.kind, subject: a.subject, signatures: all } : undefined;
}

/** Whether `b` holds a signature `a` does not. */
export function addsSignatures(a: SignatureFile | undefined, b: SignatureFile | undefined): boolean {
  if (!b) return false;
  return b.signatures.some((s) => !a?.signatures.some((x) => x.keyId === s.keyId && x.signature === s.signature));
}

/** Validate a signature file that came over the wire (shape and subject); CORRUPT when it is not usable. */
export function signatureFromWire(v: unknown, subject: string, what: string): SignatureFile | undefined {
  if (v === undefined || v === null) return undefined;
  const f = parseSignatureFile(typeof v === 'string' ? v : JSON.stringify(v), what);
  if (f.kind !== 'cdimg' || f.subject !== subject) throw corrupt(`${what}: the signature is for another file (${f.kind} ${f.subject}), this is cdimg ${subject}`);
  return f;
}

/** The value of the upload header: base64 of the compact JSON. */
export const encodeSignatureHeader = (f: SignatureFile): string => Buffer.from(JSON.stringify(f)).toString('base64');

/** The signature file of an upload header (CORRUPT when malformed). */
export function decodeSignatureHeader(v: string, what: string): SignatureFile {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(v)) throw corrupt(`${what}: the signature header is not base64`);
  return parseSignatureFile(Buffer.from(v, 'base64'), what);
}

const keyList = (p: SignaturePolicy): string => p.keys.map((k) => `${k.source} (${k.keyId.slice(0, 19)}…)`).join(', ');

/**
 * {@link enforcePolicy} for a file known by its root digest: with a policy
 * that asks for signatures, `f` must be over `kind subject` and hold a valid
 * signature by a trusted key, else UNAUTHENTICATED (the same messages).
 */
export function checkTrusted(policy: SignaturePolicy | undefined, kind: SignedKind, subject: string, f: SignatureFile | undefined, what: string): { keyId?: string } {
  if (!policyRequires(policy)) return {};
  if (!f || !f.signatures.length) throw unauthenticated(`${what} is not signed, and the policy requires a signature by ${keyList(policy)} (sign it: ctr-cli sign FILE --key KEY.pem)`);
  if (f.subject !== subject || f.kind !== kind) throw unauthenticated(`${what}: its signature is for another file (${f.kind} ${f.subject}, this is ${kind} ${subject})`);
  for (const s of f.signatures) {
    const k = policy.keys.find((x) => x.keyId === s.keyId);
    if (k && checkSignature(k, kind, subject, s)) return { keyId: k.keyId };
  }
  const known = f.signatures.some((s) => policy.keys.some((k) => k.keyId === s.keyId));
  throw unauthenticated(
    known
      ? `${what}: its signature by a trusted key does not verify (tampered signature or file)`
      : `${what} is signed only by keys this policy does not trust (${f.signatures.map((s) => s.keyId.slice(0, 19)).join(', ')}); trusted: ${keyList(policy)}`,
  );
}

/** Whether `f` holds a valid signature by a key of `policy` (no policy: false). */
export function trustedBy(policy: SignaturePolicy | undefined, kind: SignedKind, subject: string, f: SignatureFile | undefined): boolean {
  if (!policyRequires(policy)) return false;
  try {
    checkTrusted(policy, kind, subject, f, subject);
    return true;
  } catch {
    return false;
  }
}
