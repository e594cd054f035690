/**
 * The fleet part of `make demo`: one registry, a tracker and three nodes'
 * d4fs-peers on this machine; the three nodes read the same image at once
 * through their peers (`ctr-cli convert --peer`: manifests and layers come
 * through the peer's mirror); then each peer says where its bytes came
 * from. The origin sends each layer about once; the other nodes get it from
 * each other. Everything is stopped at the end.
 *   node dist/scripts/demo-fleet.js OUT_DIR
 */
import { ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import { join, resolve } from 'node:path';
import { freePort, pushOciLayout, startRegistry, TestRegistry } from '../test/helpers/registry';
import { buildSystemImage } from '../test/fixtures/systemimages';
import { packageRoot } from '../src/util/paths';
import type { PeerStatus } from '../src/p2p/peer';

const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

function say(s: string): void {
  process.stdout.write(`\n\x1b[1m== ${s}\x1b[0m\n`);
}

function cli(args: string[], echo = true): Promise<string> {
  if (echo) process.stdout.write(`$ ctr-cli ${args.join(' ')}\n`);
  return new Promise((res, rej) => {
    const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d));
    c.stderr.on('data', (d: Buffer) => (err += d));
    c.on('close', (code) => (code === 0 ? res(out) : rej(new Error(`ctr-cli ${args[0]} failed (${code}): ${err.trim().slice(-2000)}`))));
  });
}

function daemon(args: string[], log: string): ChildProcess {
  process.stdout.write(`$ ctr-cli ${args.join(' ')} &\n`);
  const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  void fsp.open(log, 'w').then((fh) => {
    c.stderr?.on('data', (d: Buffer) => void fh.write(d));
    c.on('close', () => void fh.close());
  });
  return c;
}

function getJson(url: string): Promise<unknown> {
  return new Promise((res, rej) => {
    http
      .get(url, (r) => {
        let b = '';
        r.on('data', (d: Buffer) => (b += d));
        r.on('end', () => (r.statusCode === 200 ? res(JSON.parse(b)) : rej(new Error(`${url}: HTTP ${r.statusCode}`))));
      })
      .on('error', rej);
  });
}

async function waitUp(url: string): Promise<void> {
  const end = Date.now() + 30_000;
  for (;;) {
    try {
      await getJson(url);
      return;
    } catch (e) {
      if (Date.now() > end) throw new Error(`${url} did not come up: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

async function main(): Promise<void> {
  const out = resolve(process.argv[2] ?? 'demo-out', 'fleet');
  await fsp.rm(out, { recursive: true, force: true });
  await fsp.mkdir(out, { recursive: true });
  let reg: TestRegistry | undefined;
  const procs: ChildProcess[] = [];
  try {
    say('19. A fleet on one machine: a registry, a tracker and three nodes\' d4fs-peers');
    const img = await buildSystemImage('system-nginx-v1');
    reg = await startRegistry();
    await pushOciLayout(img.layout, img.tag, reg.host, 'fleet/nginx:1');
    const tokenLine = (await cli(['serve', 'token', '--access', 'ro', '--name', 'fleet'])).trim();
    await fsp.writeFile(join(out, 'tokens'), tokenLine + '\n', { mode: 0o600 });
    await fsp.writeFile(join(out, 'node.token'), tokenLine + '\n', { mode: 0o600 });
    const trackerPort = await freePort();
    const tracker = `http://127.0.0.1:${trackerPort}`;
    procs.push(daemon(['tracker', '--listen', `127.0.0.1:${trackerPort}`, '--tokens', join(out, 'tokens'), '--dir', join(out, 'tracker'), '--log-level', 'warn'], join(out, 'tracker.log')));
    await waitUp(`${tracker}/stats`);
    const peers: string[] = [];
    for (let n = 1; n <= 3; n++) {
      const port = await freePort();
      peers.push(`http://127.0.0.1:${port}`);
      procs.push(
        daemon(
          ['peer', '--listen', `127.0.0.1:${port}`, '--cache', join(out, `node${n}`), '--tracker', tracker, '--token-file', join(out, 'node.token'), '--mirror', reg.host, '--torrent-port', '0', '--node', `node${n}`, '--log-level', 'warn'],
          join(out, `peer${n}.log`),
        ),
      );
    }
    for (const p of peers) await waitUp(`${p}/status`);
    const index = JSON.parse(await fsp.readFile(join(img.layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    const manifest = JSON.parse(await fsp.readFile(join(img.layout, 'blobs', 'sha256', index.manifests[0].digest.slice(7)), 'utf8')) as { layers: { size: number }[] };
    const imageBytes = manifest.layers.reduce((n, l) => n + l.size, 0);

    say(`20. The three nodes read ${reg.host}/fleet/nginx:1 (${mib(imageBytes)} of layers) at once, each through its own peer`);
    const t0 = Date.now();
    await Promise.all(peers.map((p, i) => cli(['convert', '--image', `docker://${reg!.host}/fleet/nginx:1`, '--peer', p, '--output', join(out, `nginx-node${i + 1}.cdimg`), '--no-progress'])));
    process.stdout.write(`all three done in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);

    say('21. Where each node\'s bytes came from (ctr-cli peer status)');
    process.stdout.write(await cli(['peer', 'status', '--peer', peers[1]]));
    let origin = 0;
    let fromPeers = 0;
    for (const [i, p] of peers.entries()) {
      const s = (await getJson(`${p}/status`)) as PeerStatus;
      origin += s.totals.fromOrigin;
      fromPeers += s.totals.fromPeers;
      process.stdout.write(`node${i + 1}: ${mib(s.totals.fromOrigin).padStart(9)} from the registry, ${mib(s.totals.fromPeers).padStart(9)} from peers, sent ${mib(s.totals.uploadedToPeers)} to peers\n`);
    }
    process.stdout.write(`the registry sent ${mib(origin)} for three copies of ${mib(imageBytes)} (${(origin / imageBytes).toFixed(2)}x one image; ${mib(fromPeers)} went peer to peer)\n`);
  } finally {
    for (const p of procs) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    await reg?.stop();
  }
}

main().catch((e) => {
  process.stderr.write(`demo: ${(e as Error).message}\n`);
  process.exit(1);
});
