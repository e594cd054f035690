/**
 * `ctr-cli push --cdimg FILE --image NAME:TAG --server URL`: stream a .cdimg
 * (full image or delta) to d4fs-server and point the tag at the image it
 * leads to. The body is sent only after the server accepted the request, so
 * a file the server holds already (by root digest) costs one round trip.
 */
import { createReadStream } from 'node:fs';
import { CdimgReader } from '../format/reader';
import { readBody, ServerClient, ServerClientOptions } from './client';
import { CDIMG_MEDIA_TYPE, parseImageName, repoPath, TagJson, UploadResultJson } from './protocol';

export interface ServerPushOptions extends ServerClientOptions {
  /** The .cdimg to push. */
  file: string;
  /** NAME:TAG to set. */
  image: string;
  /** Base URL of the server. */
  server: string;
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
  seconds: number;
}

export async function pushToServer(o: ServerPushOptions): Promise<ServerPushResult> {
  const t0 = process.hrtime.bigint();
  const { repository, tag } = parseImageName(o.image);
  const r = await CdimgReader.open(o.file);
  const meta = { rootDigest: r.rootDigest, kind: (r.isDelta ? 'delta' : 'full') as 'full' | 'delta', imageId: r.imageId, parentId: r.parentId ?? '', size: r.fileSize };
  await r.close();
  const client = new ServerClient(o.server, o);
  try {
    // With "Expect: 100-continue" the server answers "already stored" (or a refusal) before any byte moves.
    const res = await client.request('PUT', repoPath(repository, `blobs/${meta.rootDigest}`), {
      headers: { 'Content-Type': CDIMG_MEDIA_TYPE },
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
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } finally {
    client.close();
  }
}
