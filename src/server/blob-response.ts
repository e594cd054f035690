/** Sending a stored blob (GET/HEAD /v1/blobs/…): ETag, If-None-Match, Range, If-Range, and the check of a whole file's digest as it goes. */
import type { promises as fsp } from 'node:fs';
import type * as http from 'node:http';
import { createHash } from 'node:crypto';
import { Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { CDIMG_MEDIA_TYPE, etagOf, FILE_DIGEST_HEADER } from '../distribution/protocol';
import { bodyPending, parseRange, startRangeAnswer } from './http';
import type { ServerMetrics } from './metrics';

/** Counts body bytes into a metric as they pass. */
class ByteMeter extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  constructor(private readonly onBytes: (n: number) => void, private readonly hashing: boolean) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.onBytes(chunk.length);
    if (this.hashing) this.hash.update(chunk);
    cb(null, chunk);
  }
}

/**
 * Answer with the blob open in `fh` (closed here): 304, 416, 206 or 200,
 * its bytes unless `head`. A client going away mid-body ends the answer
 * quietly (it resumes with Range).
 */
export async function sendBlob(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  fh: fsp.FileHandle,
  blob: { rootDigest: string; fileDigest: string; head: boolean },
  metrics: ServerMetrics,
  log: Logger,
): Promise<void> {
  const { rootDigest, fileDigest, head } = blob;
  let owned = true;
  try {
    const size = (await fh.stat()).size;
    const etag = etagOf(rootDigest);
    const headers: Record<string, string> = {
      ETag: etag,
      'Accept-Ranges': 'bytes',
      'Content-Type': CDIMG_MEDIA_TYPE,
      'Cache-Control': 'public, max-age=31536000, immutable',
      [FILE_DIGEST_HEADER]: fileDigest,
    };
    if (bodyPending(req)) headers.Connection = 'close'; // a body nobody reads: do not keep the connection for it
    const inm = req.headers['if-none-match'];
    if (inm && (inm === '*' || inm.split(',').map((s) => s.trim()).includes(etag))) {
      res.writeHead(304, headers);
      res.end();
      return;
    }
    const ifRange = req.headers['if-range'];
    const range = ifRange === undefined || ifRange === etag ? parseRange(req.headers.range, size) : undefined;
    const part = startRangeAnswer(res, headers, range, size);
    if (!part) return;
    const { start, end } = part;
    if (head || size === 0) {
      res.end();
      return;
    }
    const whole = !range;
    const meter = new ByteMeter((n) => metrics.bytesSent.inc({ route: 'blob' }, n), whole);
    owned = false;
    const stream = fh.createReadStream({ start, end, highWaterMark: 256 * 1024, autoClose: true });
    try {
      await pipeline(stream, meter, res);
    } catch {
      return; // the client went away; it resumes with Range
    }
    if (whole && `sha256:${meter.hash.digest('hex')}` !== fileDigest) {
      // Too late to change the status: the client's digest check refuses the file; make it loud here.
      log.error({ rootDigest, fileDigest }, 'stored blob does not match its recorded digest (damaged on disk): remove it and push it again');
    }
  } finally {
    if (owned) await fh.close();
  }
}
