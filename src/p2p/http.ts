/** Small HTTP helpers of the peer and tracker. */
import type * as http from 'node:http';
import { hostile, unavailable } from '../errors';

/** Read a request or response body of at most `limit` bytes. */
export async function readBodyLimited(msg: http.IncomingMessage, limit: number, what: string): Promise<Buffer> {
  const declared = Number(msg.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > limit) {
    msg.resume();
    throw hostile(`${what}: ${declared} bytes is over the limit of ${limit}`);
  }
  const parts: Buffer[] = [];
  let total = 0;
  try {
    for await (const c of msg) {
      total += (c as Buffer).length;
      if (total > limit) throw hostile(`${what}: over the limit of ${limit} bytes`);
      parts.push(c as Buffer);
    }
  } catch (e) {
    if ((e as { kind?: string }).kind) throw e;
    throw unavailable(`${what}: ${(e as Error).message}`, e);
  }
  return Buffer.concat(parts);
}
