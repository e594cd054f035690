/**
 * `ctr-cli push --cdimg FILE --image NAME:TAG --server URL`: stream a .cdimg
 * (full image or delta) to d4fs-server and point the tag at the image it
 * leads to. The body is sent only after the server accepted the request, so
 * a file the server holds already (by root digest) costs one round trip.
 *
 * The file's signatures (FILE.sig beside it, or `signature`) go with it in
 * the upload's header: a server that requires signatures refuses an
 * unsigned or untrusted file before its body moves.
 */
import { createReadStream } from 'node:fs';
import { CdimgReader } from '../format/reader';
import { notFound } from '../errors';
import { readSignatureFile, signaturePathOf, SignatureFile } from '../signing';
import { readBody, ServerClient, ServerClientOptions } from './client';
import { CDIMG_MEDIA_TYPE, parseImageName, repoPath, SIGNATURE_HEADER, TagJson, UploadResultJson } from './protocol';
import { encodeSignatureHeader } from './signatures';

/**
 * The signature file that goes with `file`: `explicit` (which must exist),
 * else FILE.sig when there is one. A signature file that cannot be read is
 * an error, not a silent unsigned push.
 */
export async function signatureToSend(file: string, explicit?: string): Promise<SignatureFile | undefined> {
  const at = explicit ?? signaturePathOf(file);
  const sig = await readSignatureFile(file, at).catch((e: unknown) => {
    if (e instanceof Error) e.message += ` (the signature file to push with ${file})`;
    throw e;
  });
  if (!sig && explicit) throw notFound(`signature file ${explicit}: no such file`);
  return sig;
}

export interface ServerPushOptions extends ServerClientOptions {
  /** The .cdimg to push. */
  file: string;
  /** NAME:TAG to set. */
  image: string;
  /** Base URL of the server. */
  server: string;
  /** Signature file to send (default FILE.sig when it exists). */
  signature?: string;
}

export interface ServerPushResult {
  repository: string;
  tag: string;
  rootDigest: string;
  fileDigest: string;
  kind: 'full' | 'delta';
  imageId: string;
  parentId: string;
  size: number;
  /** False when the server held the file already. */
  uploaded: boolean;
  /** The image the tag pointed at before, if any. */
  previous: string | null;
  /** Signatures sent with the file (0: none). */
  signaturesSent: number;
  /** Signatures the server holds for the file now. */
  signatures: number;
  seconds: number;
}

export async function pushToServer(o: ServerPushOptions): Promise<ServerPushResult> {
  const t0 = process.hrtime.bigint();
  const { repository, tag } = parseImageName(o.image);
  const r = await CdimgReader.open(o.file);
  const meta = { rootDigest: r.rootDigest, kind: (r.isDelta ? 'delta' : 'full') as 'full' | 'delta', imageId: r.imageId, parentId: r.parentId ?? '', size: r.fileSize };
  await r.close();
  const sig = await signatureToSend(o.file, o.signature);
  const client = new ServerClient(o.server, o);
  try {
    const headers: Record<string, string> = { 'Content-Type': CDIMG_MEDIA_TYPE };
    if (sig) headers[SIGNATURE_HEADER] = encodeSignatureHeader(sig);
    // With "Expect: 100-continue" the server answers "already stored" (or a refusal) before any byte moves.
    const res = await client.request('PUT', repoPath(repository, `blobs/${meta.rootDigest}`), {
      headers,
      body: { stream: () => createReadStream(o.file), length: meta.size },
      expectContinue: true,
    });
    if (res.statusCode !== 200 && res.statusCode !== 201) throw await client.failure(res, `upload of ${o.file}`);
    const stored = JSON.parse((await readBody(res, 1 << 20)).toString('utf8')) as UploadResultJson;
    const t = await client.json<TagJson & { previous: string | null }>('PUT', repoPath(repository, `tags/${tag}`), `setting ${repository}:${tag}`, { imageId: meta.imageId });
    return {
      repository,
      tag,
      ...meta,
      fileDigest: stored.fileDigest,
      uploaded: stored.created,
      previous: t.previous,
      signaturesSent: sig?.signatures.length ?? 0,
      signatures: stored.signatures ?? 0,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } finally {
    client.close();
  }
}
