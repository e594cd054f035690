/**
 * A malicious BitTorrent peer for test/p2p.test.ts (run as a child process:
 * the engine is ESM-only and cannot load inside jest):
 *
 *   node dist/test/helpers/p2p-bad-peer.js --tracker URL --token T --digest sha256:… --source FILE --dir DIR
 *
 * It takes the blob's torrent metadata from the tracker (as an honest node
 * does), seeds the correct bytes (copied from FILE) so that its own start-up
 * check passes and it announces itself as a seeder, then overwrites its copy
 * with garbage in place: every piece it serves from then on fails
 * verification. Prints JSON lines on stdout: {"event":"seeding",…} once the
 * start-up check passed, {"event":"corrupted"} once the garbage is in place,
 * then {"event":"stats","uploaded":N,"peers":N} every 250 ms.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import * as http from 'node:http';
import path from 'node:path';
import { loadEngine } from '../../src/p2p/esm';

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i > 0 ? process.argv[i + 1] : undefined;
  if (!v) throw new Error(`usage: p2p-bad-peer --tracker URL --token T --digest D --source FILE --dir DIR (missing --${name})`);
  return v;
}

const say = (o: Record<string, unknown>): void => void process.stdout.write(JSON.stringify(o) + '\n');

function getTorrent(tracker: string, token: string, digest: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    http
      .get(new URL(`/v1/p2p/torrents/${digest}`, tracker), { headers: { Authorization: `Bearer ${token}` } }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(parts)) : reject(new Error(`tracker: HTTP ${res.statusCode}`))));
      })
      .on('error', reject);
  });
}

async function main(): Promise<void> {
  const tracker = arg('tracker');
  const token = arg('token');
  const digest = arg('digest');
  const dir = arg('dir');
  const name = `sha256-${digest.replace(/^sha256:/, '')}`;
  const file = path.join(dir, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(arg('source'), file);
  const meta = await getTorrent(tracker, token, digest);
  const { WebTorrent } = await loadEngine();
  const client = new WebTorrent({ dht: false, lsd: false, utPex: false, natUpnp: false, natPmp: false, utp: false, webSeeds: false, tracker: { wrtc: false }, torrentPort: 0 });
  client.on('error', (e: Error) => process.stderr.write(`engine error: ${e.message}\n`));
  const announce = new URL('/announce', tracker);
  announce.searchParams.set('token', token);
  // no chunk cache: every piece is read from the file, garbage once it is overwritten
  const t = client.add(meta, { path: dir, announce: [announce.toString()], storeCacheSlots: 0 });
  t.on('warning', (w: Error) => process.stderr.write(`warning: ${w.message}\n`));
  await new Promise<void>((resolve, reject) => {
    t.once('ready', () => resolve());
    t.once('error', reject);
  });
  if (!t.done) throw new Error(`start-up check: only ${Math.round(t.progress * 100)}% of ${name} verified`);
  say({ event: 'seeding', infoHash: t.infoHash, port: client.address()?.port, size: t.length });
  const fd = fs.openSync(file, 'r+');
  const size = fs.fstatSync(fd).size;
  for (let pos = 0; pos < size; pos += 1 << 20) {
    const junk = randomBytes(Math.min(1 << 20, size - pos));
    fs.writeSync(fd, junk, 0, junk.length, pos);
  }
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  say({ event: 'corrupted', size });
  setInterval(() => say({ event: 'stats', uploaded: t.uploaded, peers: t.numPeers }), 250);
  const stop = (): void => client.destroy(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e: unknown) => {
  process.stderr.write(`p2p-bad-peer: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
