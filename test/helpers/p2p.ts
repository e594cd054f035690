/**
 * Test helpers for the fleet (P2P) tests: a metering, rate-limiting TCP
 * proxy in front of an origin, and the processes of a fleet (tracker,
 * d4fs-peers, d4fs-server, the malicious peer of p2p-bad-peer.ts), each a
 * child process: the BitTorrent engine is ESM-only and loads with a real
 * dynamic import, which jest's module sandbox cannot do, so nothing here
 * loads it in the test process.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { PeerStatus } from '../../src/p2p/peer';
import type { TrackerStats } from '../../src/p2p/tracker';
import { CTR_CLI_JS } from './cli';
import { freePort } from './registry';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// The origin's link: a TCP proxy that limits and counts what the origin sends
// ---------------------------------------------------------------------------

/** A TCP proxy in front of an origin, its server→client bytes rate-limited (one shared link) and counted. */
export interface MeteredProxy {
  /** "127.0.0.1:PORT" */
  host: string;
  port: number;
  /** Bytes the origin sent to clients through the proxy so far (its egress). */
  sent(): number;
  /** Bytes clients sent to the origin. */
  received(): number;
  /** Connections accepted. */
  connections(): number;
  stop(): Promise<void>;
}

/**
 * Start a proxy on 127.0.0.1 that forwards to `target` ("host:port"); what
 * the target sends back is paced at `bytesPerSecond` over all connections
 * together (the origin's uplink) and counted.
 */
export async function startMeteredProxy(target: string, bytesPerSecond: number): Promise<MeteredProxy> {
  const [tHost, tPort] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  let sent = 0;
  let received = 0;
  let connections = 0;
  let linkFreeAt = 0; // performance.now() at which the link has sent everything queued so far
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect(tPort, tHost);
    sockets.add(client).add(upstream);
    let queue = Promise.resolve();
    const close = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    // the origin closing: what is queued still goes out (end, not destroy, unless it failed)
    upstream.on('error', close).on('close', (failed: boolean) => void queue.then(() => (failed ? close() : client.end())));
    client.on('data', (c: Buffer) => {
      received += c.length;
      if (!upstream.write(c)) {
        client.pause();
        upstream.once('drain', () => client.resume());
      }
    });
    client.on('end', () => upstream.end());
    upstream.on('data', (c: Buffer) => {
      // the chunk leaves when the shared link has carried it: bytes/s over all connections
      upstream.pause();
      const now = performance.now();
      linkFreeAt = Math.max(now, linkFreeAt) + (c.length * 1000) / bytesPerSecond;
      const delay = linkFreeAt - now;
      queue = queue.then(async () => {
        if (delay >= 1) await sleep(delay);
        if (client.destroyed) return;
        sent += c.length;
        if (client.write(c)) upstream.resume();
        else client.once('drain', () => upstream.resume());
      });
    });
    upstream.on('end', () => void queue.then(() => client.end()));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    port,
    sent: () => sent,
    received: () => received,
    connections: () => connections,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/** A child process whose stdout and stderr go to a log file. */
export class Proc {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private out = '';

  constructor(readonly name: string, readonly child: ChildProcess, readonly logFile: string) {
    const log = fs.createWriteStream(logFile, { flags: 'a' });
    child.stdout?.on('data', (d: Buffer) => {
      this.out += d.toString();
      log.write(d);
    });
    child.stderr?.on('data', (d: Buffer) => log.write(d));
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    void this.exited.then(() => log.end());
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** What it printed on stdout. */
  stdout(): string {
    return this.out;
  }

  /** Its log (stdout and stderr), the last `max` characters. */
  log(max = 1 << 20): string {
    try {
      const t = fs.readFileSync(this.logFile, 'utf8');
      return t.slice(-max);
    } catch {
      return '';
    }
  }

  /** Send `signal` and wait for the exit (SIGKILL after `graceMs`). */
  async kill(signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.alive()) {
      this.child.kill(signal);
      const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      const r = await this.exited;
      clearTimeout(timer);
      procs.delete(this);
      return r;
    }
    procs.delete(this);
    return this.exited;
  }
}

const procs = new Set<Proc>();
process.once('exit', () => {
  for (const p of procs) p.child.kill('SIGKILL');
});

/** `node SCRIPT ARGS…`, logging to LOGDIR/NAME.log. */
export function spawnNode(name: string, script: string, args: string[], logDir: string, env: NodeJS.ProcessEnv = process.env): Proc {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  const p = new Proc(name, child, path.join(logDir, `${name}.log`));
  procs.add(p);
  return p;
}

/** `ctr-cli ARGS…` as a child process. */
export function spawnCli(name: string, args: string[], logDir: string, env?: NodeJS.ProcessEnv): Proc {
  return spawnNode(name, CTR_CLI_JS, args, logDir, env);
}

/** Stop every process these helpers started and that still runs (SIGTERM, then SIGKILL). */
export async function stopAllProcs(): Promise<void> {
  await Promise.all([...procs].map((p) => p.kill('SIGTERM', 5000)));
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request, the whole answer in memory (small documents only). */
export function httpRequest(url: string, o: { method?: string; headers?: Record<string, string>; timeoutMs?: number } = {}): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: o.method ?? 'GET', headers: o.headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.setTimeout(o.timeoutMs ?? 30_000, () => req.destroy(new Error(`${url}: no answer within ${o.timeoutMs ?? 30_000} ms`)));
    req.on('error', reject);
    req.end();
  });
}

export async function getJson<T>(url: string, headers?: Record<string, string>): Promise<T> {
  const r = await httpRequest(url, { headers });
  if (r.status !== 200) throw new Error(`GET ${url}: HTTP ${r.status}: ${r.body.toString('utf8').slice(0, 300)}`);
  return JSON.parse(r.body.toString('utf8')) as T;
}

/** GET a (large) body, streamed: its status, size and sha256 digest. */
export function fetchDigest(url: string, o: { headers?: Record<string, string>; timeoutMs?: number } = {}): Promise<{ status: number; size: number; digest: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: o.headers, agent: false }, (res) => {
      const h = createHash('sha256');
      let size = 0;
      res.on('data', (c: Buffer) => {
        h.update(c);
        size += c.length;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, size, digest: `sha256:${h.digest('hex')}`, headers: res.headers }));
      res.on('error', reject);
    });
    req.setTimeout(o.timeoutMs ?? 180_000, () => req.destroy(new Error(`${url}: no answer within ${o.timeoutMs ?? 180_000} ms`)));
    req.on('error', reject);
  });
}

/** sha256 digest of a file. */
export async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** Poll `probe` until it returns a value other than undefined (or throw after `ms`). */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await sleep(everyMs);
  }
}

/** Wait until GET url answers 200 while `proc` runs. */
async function waitHealthy(proc: Proc, url: string, ms = 30_000): Promise<void> {
  await waitFor(`${proc.name} at ${url}`, async () => {
    if (!proc.alive()) throw new Error(`${proc.name} exited: ${proc.log(3000)}`);
    const r = await httpRequest(url, { timeoutMs: 2000 }).catch(() => undefined);
    return r?.status === 200 ? true : undefined;
  }, ms);
}

// ---------------------------------------------------------------------------
// The fleet's processes
// ---------------------------------------------------------------------------

export interface TrackerProc extends Proc {
  url: string;
  stats(): Promise<TrackerStats>;
}

/** `ctr-cli tracker --listen 127.0.0.1:PORT --tokens FILE --dir DIR`. */
export async function startTracker(name: string, o: { tokensFile: string; dir: string; logDir: string }): Promise<TrackerProc> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const p = spawnCli(name, ['tracker', '--listen', `127.0.0.1:${port}`, '--tokens', o.tokensFile, '--dir', o.dir, '--log-level', 'debug'], o.logDir);
  await waitHealthy(p, `${url}/healthz`);
  return Object.assign(p, { url, stats: () => getJson<TrackerStats>(`${url}/stats`) });
}

export interface PeerOpts {
  cacheDir: string;
  logDir: string;
  tracker?: string;
  tokenFile?: string;
  mirror?: string[];
  hostsDir?: string;
  stallTimeout?: string;
  uploadLimit?: string;
  extra?: string[];
}

export interface PeerProc extends Proc {
  /** The mirror's URL. */
  url: string;
  node: string;
  cacheDir: string;
  status(): Promise<PeerStatus>;
  /** The cache's file of a blob. */
  blobFile(digest: string): string;
}

/** `ctr-cli peer …` (torrent port 0, debug logs), once its mirror answers. */
export async function startPeer(node: string, o: PeerOpts): Promise<PeerProc> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = ['peer', '--listen', `127.0.0.1:${port}`, '--cache', o.cacheDir, '--torrent-port', '0', '--node', node, '--log-level', 'debug'];
  if (o.tracker) args.push('--tracker', o.tracker);
  if (o.tokenFile) args.push('--token-file', o.tokenFile);
  for (const m of o.mirror ?? []) args.push('--mirror', m);
  if (o.hostsDir) args.push('--hosts-dir', o.hostsDir);
  if (o.stallTimeout) args.push('--stall-timeout', o.stallTimeout);
  if (o.uploadLimit) args.push('--upload-limit', o.uploadLimit);
  args.push(...(o.extra ?? []));
  // no $D4FS_TOKEN from the environment: a peer without --token-file has no token
  const env = { ...process.env };
  delete env.D4FS_TOKEN;
  const p = spawnCli(node, args, o.logDir, env);
  await waitHealthy(p, `${url}/healthz`);
  return Object.assign(p, {
    url,
    node,
    cacheDir: o.cacheDir,
    status: () => getJson<PeerStatus>(`${url}/status`),
    blobFile: (digest: string) => path.join(o.cacheDir, 'blobs', `sha256-${digest.replace(/^sha256:/, '')}`),
  });
}

export interface ServerProc extends Proc {
  url: string;
  /** d4fs_http_bytes_sent_total{route="blob"} of its /metrics. */
  blobBytesSent(): Promise<number>;
}

/** `ctr-cli serve --root ROOT --tokens FILE --tracker --listen 127.0.0.1:PORT`. */
export async function startServer(name: string, o: { root: string; tokensFile: string; logDir: string }): Promise<ServerProc> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const p = spawnCli(name, ['serve', '--root', o.root, '--tokens', o.tokensFile, '--tracker', '--listen', `127.0.0.1:${port}`], o.logDir);
  await waitHealthy(p, `${url}/healthz`);
  return Object.assign(p, {
    url,
    blobBytesSent: async () => {
      const r = await httpRequest(`${url}/metrics`);
      const m = /^d4fs_http_bytes_sent_total\{route="blob"\} (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(r.body.toString('utf8'));
      return m ? Number(m[1]) : 0;
    },
  });
}

// ---------------------------------------------------------------------------
// Pulling through a mirror as a client does
// ---------------------------------------------------------------------------

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export const MANIFEST_ACCEPT = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.oci.image.index.v1+json'].join(', ');

export interface MirrorPull {
  manifestDigest: string;
  manifestSize: number;
  /** Config and layers: what was asked and what came (size, sha256). */
  blobs: Array<Descriptor & { got: { status: number; size: number; digest: string } }>;
  ms: number;
}

/**
 * Pull REPO:TAG through a mirror's registry API: the manifest by tag (its
 * Docker-Content-Digest must be its sha256), then config and layers at once,
 * each hashed as it streams.
 */
export async function pullThroughMirror(mirrorUrl: string, repo: string, tag: string): Promise<MirrorPull> {
  const t0 = Date.now();
  const m = await httpRequest(`${mirrorUrl}/v2/${repo}/manifests/${tag}`, { headers: { Accept: MANIFEST_ACCEPT }, timeoutMs: 120_000 });
  if (m.status !== 200) throw new Error(`manifest ${repo}:${tag} through ${mirrorUrl}: HTTP ${m.status}: ${m.body.toString('utf8').slice(0, 300)}`);
  const digest = `sha256:${createHash('sha256').update(m.body).digest('hex')}`;
  if (m.headers['docker-content-digest'] !== digest) throw new Error(`manifest through ${mirrorUrl}: Docker-Content-Digest ${String(m.headers['docker-content-digest'])}, the bytes hash to ${digest}`);
  const doc = JSON.parse(m.body.toString('utf8')) as { config: Descriptor; layers: Descriptor[] };
  const blobs = await Promise.all(
    [doc.config, ...doc.layers].map(async (d) => ({ ...d, got: await fetchDigest(`${mirrorUrl}/v2/${repo}/blobs/${d.digest}`) })),
  );
  return { manifestDigest: digest, manifestSize: m.body.length, blobs, ms: Date.now() - t0 };
}
