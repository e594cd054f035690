/**
 * `ctr-cli peer` (and the `d4fs-peer` binary): the per-node daemon of a
 * fleet: pull-through registry mirror for containerd on loopback, blob
 * cache, BitTorrent peer. `ctr-cli peer status` shows what it holds and
 * where the bytes came from. `ctr-cli tracker`: the fleet's tracker on its
 * own (d4fs-server embeds one with `serve --tracker`).
 */
import { Command, Option } from 'commander';
import pino from 'pino';
import * as http from 'node:http';
import { invalidArgument, unauthenticated, unavailable } from '../errors';
import { parseListen } from '../server/server';
import { isLoopbackHost } from '../oci/registry/auth';
import { TokenAuth } from '../server/auth';
import type { PeerStatus } from '../p2p/peer';
import { action, humanBytes, parseBool, parseIntOpt, parseSize, printJson, registryOptionsOf, say } from './common';
import { tokenOf } from './push';
import { parseDuration, parseRate } from './serve';
import { checkLogLevel, LOG_LEVELS } from '../util/loglevel';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** Default mirror address of the node's peer. */
export const DEFAULT_PEER = 'http://127.0.0.1:5050';

function addPeerOptions(c: Command): Command {
  return c
    .option('--listen <host:port>', 'address of the mirror (keep it on loopback)', '127.0.0.1:5050')
    .option('--cache <dir>', 'blob cache directory', '/var/lib/d4fs-peer')
    .option('--cache-size <size>', 'cache size limit; least recently used blobs not in use are removed beyond it', parseSize, 20 * 1024 ** 3)
    .option('--tracker <url>', 'the fleet tracker (d4fs-server with --tracker, or `ctr-cli tracker`); without it the peer only caches')
    .option('--token <token>', 'token for the tracker and d4fs-servers (default: $D4FS_TOKEN; prefer --token-file)')
    .option('--token-file <file>', 'read the token from this file')
    .option('--mirror <registry>', 'a registry to mirror for containerd (repeatable), e.g. docker.io, registry.example:5000', collect, [])
    .option('--server <url>', 'a d4fs-server whose files may be fetched through the peer (repeatable; the tracker\'s server is included)', collect, [])
    .option('--hosts-dir <dir>', "containerd's registry config_path (e.g. /etc/containerd/certs.d): hosts.toml for each --mirror while the peer runs")
    .option('--insecure-registry <registry>', 'a --mirror registry reached over plain HTTP or with an unverified certificate (repeatable)', collect, [])
    .option('--torrent-port <port>', 'TCP port for other peers (0: any)', parseIntOpt('--torrent-port', 0, 65535), 6881)
    .addOption(new Option('--stall-timeout <duration>', 'when the swarm delivers nothing for this long, the rest comes from the origin').argParser(parseDuration).default(5000, '5s'))
    .option('--min-swarm-size <size>', 'smaller blobs come straight from the origin', parseSize, 64 * 1024)
    .option('--upload-limit <rate>', 'bytes/s sent to other peers (e.g. 50MiB/s; default: no limit)', parseRate)
    .option('--lsd', 'also find peers on the LAN by BEP 14 local service discovery')
    .option('--node <name>', 'this node\'s name in claims and logs (default: random)')
    .option('--creds <user:pass>', 'registry credentials (default: from the docker config.json)')
    .option('--authfile <file>', 'docker config.json / containers auth.json to read registry credentials from')
    .option('--tls-verify <bool>', 'verify registries\' TLS certificates (default: yes, except loopback registries)', parseBool)
    .option('--log-level <level>', `log level: ${LOG_LEVELS.join(', ')}`, 'info');
}

async function runPeer(o: Record<string, unknown>): Promise<void> {
  const level = String(o.logLevel);
  checkLogLevel(level);
  const listen = parseListen(String(o.listen));
  const registries = o.mirror as string[];
  const insecure = new Set(o.insecureRegistry as string[]);
  for (const r of insecure) if (!registries.includes(r)) throw invalidArgument(`--insecure-registry ${r} is not a --mirror registry`);
  const servers = (o.server as string[]).map((s) => {
    try {
      return new URL(s).origin;
    } catch {
      throw invalidArgument(`--server ${JSON.stringify(s)} is not a URL`);
    }
  });
  if (o.tracker) {
    try {
      new URL(String(o.tracker));
    } catch {
      throw invalidArgument(`--tracker ${JSON.stringify(o.tracker)} is not a URL`);
    }
  }
  const base = registryOptionsOf(o as { creds?: string; authfile?: string; tlsVerify?: boolean });
  const token = await tokenOf(o);
  const log = pino({ name: 'd4fs-peer', level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
  // lazy on purpose: the peer daemon (and its BitTorrent engine) loads only for `peer`
  const { PeerDaemon } = require('../p2p/peer') as typeof import('../p2p/peer');
  const peer = await PeerDaemon.start({
    cacheDir: String(o.cache),
    cacheBytes: o.cacheSize as number,
    listen,
    tracker: o.tracker as string | undefined,
    token,
    registries,
    servers,
    hostsDir: o.hostsDir as string | undefined,
    registryOptions: (r) => (insecure.has(r) ? { ...base, tlsVerify: false } : base),
    torrentPort: o.torrentPort as number,
    stallMs: o.stallTimeout as number,
    minSwarmBytes: o.minSwarmSize as number,
    uploadLimit: o.uploadLimit as number | undefined,
    lsd: !!o.lsd,
    node: o.node as string | undefined,
    log,
  });
  if (!isLoopbackHost(listen.host)) log.warn({ listen: String(o.listen) }, 'the mirror listens beyond loopback: it has no authentication of its own, so whoever reaches it reads through this node\'s registry credentials and token');
  say(`d4fs-peer ${peer.node}: mirror ${peer.url}${o.tracker ? `, tracker ${String(o.tracker)}` : ' (no tracker: cache only)'}\n`);
  // hosts.toml must not outlive the peer: containerd 1.6 would stall on a dead mirror
  process.on('exit', () => peer.removeHostsNow());
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    peer.removeHostsNow();
    peer.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await new Promise<never>(() => undefined);
}

/** GET a JSON document from the peer. */
function getJson(url: URL): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 10_000 }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(unavailable(`${url.origin}: HTTP ${res.statusCode}`));
        try {
          resolve(JSON.parse(Buffer.concat(parts).toString('utf8')));
        } catch {
          reject(unavailable(`${url.origin} did not answer JSON: is it a d4fs-peer?`));
        }
      });
      res.on('error', (e) => reject(unavailable(`${url.origin}: ${e.message}`)));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 10 s')));
    req.on('error', (e) => reject(unavailable(`cannot reach the peer at ${url.origin}: ${e.message}`, e)));
  });
}

function printStatus(s: PeerStatus): void {
  const t = s.totals;
  const got = t.fromOrigin + t.fromPeers;
  say(`node ${s.node}: mirror ${s.mirror}, torrent port ${s.torrentPort ?? '-'}, tracker ${s.tracker ?? '(none)'}\n`);
  say(`mirrors: ${s.registries.join(', ') || '(none)'}${s.hostsDir ? ` (hosts.toml in ${s.hostsDir})` : ''}\n`);
  say(`cache: ${s.cache.blobs} blobs, ${humanBytes(s.cache.bytes)} of ${humanBytes(s.cache.maxBytes)} in ${s.cache.dir}\n`);
  say(`received: ${humanBytes(t.fromOrigin)} from origins, ${humanBytes(t.fromPeers)} from peers${got ? ` (${((100 * t.fromPeers) / got).toFixed(0)}% from peers)` : ''}; sent ${humanBytes(t.uploadedToPeers)} to peers\n`);
  if (s.swarm) say(`swarm: ${s.swarm.peers} peers, seeding ${s.swarm.seeding}, downloading ${s.swarm.downloading}${t.droppedPeers ? `, ${t.droppedPeers} peers dropped for bad pieces` : ''}\n`);
  for (const x of s.transfers) say(`  ${x.phase.padEnd(9)} ${x.digest.slice(0, 19)}… ${humanBytes(x.fromPeers + x.fromOrigin)}${x.size ? ` of ${humanBytes(x.size)}` : ''} (${x.seconds} s) from ${x.origin}\n`);
  if (s.blobs.length) {
    say('BLOB                     SIZE       ORIGIN     PEERS      SEEDING\n');
    for (const b of s.blobs) say(`${b.digest.slice(0, 19)}…  ${humanBytes(b.size).padEnd(10)} ${humanBytes(b.fromOrigin).padEnd(10)} ${humanBytes(b.fromPeers).padEnd(10)} ${b.seeding ? `yes (${b.peers} peers, sent ${humanBytes(b.uploaded)})` : 'no'}\n`);
  }
}

const PEER_EXAMPLES = `
Examples:
  ctr-cli peer --tracker http://d4fs.example:8081 --token-file /etc/d4fs/token --mirror docker.io --hosts-dir /etc/containerd/certs.d
  ctr-cli peer --mirror registry.example:5000 --cache /var/lib/d4fs-peer --cache-size 50GiB     (caching mirror, no swarm)
  ctr-cli peer status
  ctr-cli pull --image app:2 --server http://d4fs.example:8081 --peer http://127.0.0.1:5050

Signals: SIGTERM/SIGINT remove the hosts.toml files, then stop.
`;

function trackerCommand(program: Command): void {
  program
    .command('tracker')
    .description('run the fleet\'s BitTorrent tracker and blob metadata store on its own (d4fs-server has one with --tracker)')
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:8090')
    .option('--dir <dir>', 'directory of the metadata store', '/var/lib/d4fs-tracker')
    .option('--tokens <file>', 'tokens file ("rw|ro TOKEN [name]" lines, as d4fs-server\'s): a node needs one of them to join a swarm')
    .option('--open', 'no token needed (a closed network only: anyone who reaches the port joins the swarms)')
    .option('--log-level <level>', `log level: ${LOG_LEVELS.join(', ')}`, 'info')
    .addHelpText('after', '\nExamples:\n  ctr-cli tracker --listen 0.0.0.0:8090 --tokens /etc/d4fs/tokens --dir /var/lib/d4fs-tracker\n')
    .action(
      action(async (o: Record<string, unknown>) => {
        const level = String(o.logLevel);
        checkLogLevel(level);
        if (!o.tokens && !o.open) throw invalidArgument('give --tokens FILE (nodes need a token to join a swarm) or --open');
        const { host, port } = parseListen(String(o.listen));
        const auth = new TokenAuth(o.tokens as string | undefined, false);
        const log = pino({ name: 'd4fs-tracker', level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
        for (const w of (await auth.load()).warnings) log.warn(w);
        // lazy on purpose: the tracker loads only for `tracker`
        const { TrackerService } = require('../p2p/tracker') as typeof import('../p2p/tracker');
        const svc = await TrackerService.create({ dir: String(o.dir), log, authorize: trackerAuthorize(auth, !!o.open) });
        const server = http.createServer({ headersTimeout: 30_000, requestTimeout: 60_000 }, (req, res) => {
          req.on('error', () => undefined);
          res.on('error', () => undefined);
          void (async () => {
            if (req.url === '/healthz') return void res.writeHead(200).end('ok\n');
            if (req.url === '/stats') return void res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(svc.stats()) + '\n');
            if (!(await svc.handle(req, res))) res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"error":{"kind":"NOT_FOUND","message":"no such endpoint"}}\n');
          })().catch(() => res.destroy());
        });
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, host, () => resolve());
        });
        process.on('SIGHUP', () => void auth.load().catch((e: Error) => log.error({ err: e.message }, 'tokens file not reloaded')));
        const a = server.address();
        log.info({ listen: typeof a === 'object' && a ? `${a.address}:${a.port}` : String(o.listen) }, 'd4fs tracker ready');
        say(`d4fs tracker on http://${String(o.listen)}/announce\n`);
        const stop = (): void => {
          server.close();
          server.closeAllConnections();
          void svc.close().then(() => process.exit(0));
        };
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
        await new Promise<never>(() => undefined);
      }),
    );
}

/** The tracker's token check: a token of the tokens file, or none with `open`. */
export function trackerAuthorize(auth: TokenAuth, open: boolean): (token: string | undefined) => void {
  return (token) => {
    if (!token) {
      if (open) return;
      throw unauthenticated('the tracker needs a token: give the peer --token-file (a line of the tracker\'s tokens file)');
    }
    auth.identify(`Bearer ${token}`);
  };
}

/** `ctr-cli peer [status]` and `ctr-cli tracker`. */
export function registerPeer(program: Command): void {
  const peer = addPeerOptions(program.command('peer').description('run the node\'s d4fs-peer: registry mirror for containerd on loopback, blob cache, BitTorrent peer of the fleet'));
  peer.addHelpText('after', PEER_EXAMPLES).action(action(runPeer));
  peer
    .command('status')
    .description('what the node\'s peer holds, seeds and is fetching, and where its bytes came from')
    .option('--peer <url>', 'the peer\'s mirror URL (default $D4FS_PEER or http://127.0.0.1:5050)')
    .option('--json', 'print the status as JSON')
    .action(
      action(async (o: Record<string, unknown>, cmd: Command) => {
        const up = cmd.parent?.opts() ?? {};
        const base = String(o.peer ?? process.env.D4FS_PEER ?? DEFAULT_PEER);
        void up;
        let url: URL;
        try {
          url = new URL('/status', base);
        } catch {
          throw invalidArgument(`--peer ${JSON.stringify(base)} is not a URL`);
        }
        const s = (await getJson(url)) as PeerStatus;
        if (o.json) printJson(s);
        else printStatus(s);
      }),
    );
  trackerCommand(program);
}

/** The `d4fs-peer` program (cli/d4fs-peer.ts). */
export function buildPeerProgram(): Command {
  const p = addPeerOptions(new Command('d4fs-peer').description('d4fs-peer: the node\'s registry mirror, blob cache and BitTorrent peer (same as `ctr-cli peer`)'));
  p.option('--debug', 'print stack traces on errors').addHelpText('after', PEER_EXAMPLES.replace(/ctr-cli peer --/g, 'd4fs-peer --')).action(action(runPeer));
  return p;
}
