/**
 * d4fs-server against broken and hostile clients, run as a child process (the
 * real CLI, `ctr-cli serve`), so that a crash is seen as the process exiting:
 *
 * - the request that used to kill it (a chunked 2 MB body to …/pull with a
 *   read-only token; a chunked upload over --max-upload);
 * - a seeded fuzz over raw sockets: random methods, paths, headers, framing,
 *   bodies and early disconnects, with no token, ro and rw tokens, wrong
 *   tokens, against a server with tokens and one with --read-open; every
 *   answer must be a documented status, and afterwards the server is alive,
 *   healthy, its stored files verify, and its fds and memory are back;
 * - slow clients (headers or bodies a byte at a time, nothing after "100
 *   Continue") get 408 or are disconnected within a bound, and the upload
 *   slots they held serve the next upload;
 * - decompression-bomb uploads (a small .cdimg whose index claims, and whose
 *   zstd frame really inflates to, a huge raw index), 8 at once: each
 *   refused with 4xx, nothing stored, the server's peak memory bounded.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp, readdirSync, readFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prng } from './helpers/prng';
import { freePort } from './helpers/registry';
import { buildTar } from '../src/tar';
import { writeSimpleImage } from '../src/oci/writer';
import { convertImage } from '../src/convert/convert';
import { diffImages } from '../src/delta/diff';
import { encodeHeader } from '../src/format/writer';
import { zstdUnframe } from '../src/format/zstd';
import { FORMAT_VERSION, HEADER_SIZE } from '../src/format/types';
import { CdimgReader } from '../src/format/reader';
import { pushToServer } from '../src/distribution/push';
import { pullFromServer } from '../src/distribution/pull';
import { verifyStoredChunks } from '../src/server/blobs';
import { fileDigestOf } from '../src/util/digest';
import { newToken } from '../src/server/auth';
import { LocalStore } from '../src/store/store';
import { packageRoot } from '../src/util/paths';

const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
const RW = newToken();
const RO = newToken();
const MiB = 1024 * 1024;

let work: string;
let tokensFile: string;
/** The small fixture: v1 and v2 full images and the v1→v2 delta. */
const fx = { v1: '', v2: '', d12: '', v1Id: '', v2Id: '', v1Root: '', v2Root: '', d12Root: '' };

// ------------------------------------------------------------------ servers

interface Srv {
  child: ChildProcess;
  port: number;
  url: string;
  root: string;
  /** The tail of its stderr (JSON log lines). */
  log(): string;
  alive(): boolean;
}
const servers: Srv[] = [];

/** `ctr-cli serve` as a child on a free port; resolves when /healthz answers. */
async function startServer(name: string, args: string[]): Promise<Srv> {
  const root = join(work, name);
  const port = await freePort();
  const child = spawn(process.execPath, [CLI, 'serve', '--root', root, '--listen', `127.0.0.1:${port}`, '--log-level', 'warn', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (c: Buffer) => (log = (log + c.toString()).slice(-32_000)));
  const srv: Srv = { child, port, url: `http://127.0.0.1:${port}`, root, log: () => log, alive: () => child.exitCode === null && child.signalCode === null };
  servers.push(srv);
  for (let i = 0; i < 150; i++) {
    if (!srv.alive()) throw new Error(`server ${name} exited (${child.exitCode ?? child.signalCode}): ${log}`);
    const a = await exchange(port, { head: 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', timeoutMs: 1000 });
    if (a.statuses[0] === 200) return srv;
    await sleep(100);
  }
  throw new Error(`server ${name} did not start: ${log}`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Open fds and memory of a process, from /proc. */
function procStats(pid: number): { fds: number; rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { fds: readdirSync(`/proc/${pid}/fd`).length, rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

const listDir = (d: string): Promise<string[]> => fsp.readdir(d).catch(() => []);

/** Wait until `ok()` holds (or the time is up); returns its last value. */
async function until(ok: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await ok()) return true;
    if (Date.now() > end) return false;
    await sleep(100);
  }
}

// ------------------------------------------------------------ raw exchanges

interface RawRequest {
  /** Request line and headers, ending with an empty line. */
  head: string | Buffer;
  body?: Buffer;
  /** Send the body only after "100 Continue" (or 500 ms without an answer), and not at all after a final answer. */
  expectContinue?: boolean;
  /** Send this many body bytes, then disconnect. */
  cutAfter?: number;
  /** The body is short of what the headers announce: wait this long for an answer, then disconnect. */
  lingerMs?: number;
  timeoutMs: number;
}

interface ParsedAnswer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

interface RawAnswer {
  /** Final statuses in order (1xx skipped). */
  statuses: number[];
  answers: ParsedAnswer[];
  how: 'end' | 'reset' | 'timeout' | 'cut';
  ms: number;
}

/** Parse the answers in `data` (HEAD answers have no body). */
function parseAnswers(data: Buffer, methods: string[]): ParsedAnswer[] {
  const out: ParsedAnswer[] = [];
  let pos = 0;
  while (pos < data.length) {
    const end = data.indexOf('\r\n\r\n', pos);
    if (end < 0) break;
    const lines = data.subarray(pos, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
    if (!m) break;
    const status = Number(m[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    pos = end + 4;
    if (status >= 100 && status < 200) continue;
    const method = methods[out.length] ?? 'GET';
    const len = method === 'HEAD' || status === 304 ? 0 : headers['content-length'] !== undefined ? Number(headers['content-length']) : data.length - pos;
    out.push({ status, headers, body: data.subarray(pos, pos + len) });
    pos += len;
  }
  return out;
}

/** One exchange over a raw socket: the bytes as given, no client-side normalisation. */
function exchange(port: number, r: RawRequest, methods: string[] = ['GET']): Promise<RawAnswer> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const parts: Buffer[] = [];
    let settled = false;
    let bodySent = false;
    const finish = (how: RawAnswer['how']): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      const answers = parseAnswers(Buffer.concat(parts), methods);
      resolve({ statuses: answers.map((a) => a.status), answers, how, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish('timeout'), r.timeoutMs);
    const sendBody = (): void => {
      if (bodySent || settled) return;
      bodySent = true;
      if (r.lingerMs !== undefined) setTimeout(() => finish('cut'), r.lingerMs);
      if (!r.body?.length) return;
      if (r.cutAfter !== undefined) {
        sock.write(r.body.subarray(0, r.cutAfter), () => setTimeout(() => finish('cut'), 5));
        return;
      }
      sock.write(r.body);
    };
    sock.on('data', (c: Buffer) => {
      parts.push(c);
      if (r.expectContinue && !bodySent) {
        const text = Buffer.concat(parts).toString('latin1');
        if (/^HTTP\/1\.1 100/.test(text)) sendBody();
        else if (/^HTTP\/1\.1 [2-5]\d\d/.test(text)) bodySent = true; // answered first: the body is not sent
      }
    });
    sock.on('end', () => finish('end'));
    sock.on('close', () => finish('end'));
    sock.on('error', () => finish('reset'));
    sock.on('connect', () => {
      sock.write(r.head);
      if (r.expectContinue) setTimeout(sendBody, 500);
      else sendBody();
    });
  });
}

/** A raw request head. */
function head(method: string, path: string, headers: [string, string][]): string {
  return `${method} ${path} HTTP/1.1\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
}

/** A chunked body (chunk sizes from `rnd`). */
function chunked(body: Buffer, rnd: () => number): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < body.length; ) {
    const n = Math.min(body.length - i, 1 + Math.floor(rnd() * 20_000));
    out.push(Buffer.from(`${n.toString(16)}\r\n`), body.subarray(i, i + n), Buffer.from('\r\n'));
    i += n;
  }
  out.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(out);
}

// -------------------------------------------------------------- fixtures

beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-server-fuzz-'));
  tokensFile = join(work, 'tokens');
  await fsp.writeFile(tokensFile, `rw ${RW} pusher\nro ${RO} puller\n`, { mode: 0o600 });
  // a small two-version image: a few KB per .cdimg, with real chunks
  const r = prng(7);
  const tool = Buffer.from(Array.from({ length: 24_000 }, () => Math.floor(r() * 256)));
  const tool2 = Buffer.from(tool);
  tool2.write('changed!', 1000);
  const layer = (conf: string, t: Buffer): Buffer =>
    buildTar([
      { header: { name: 'etc/', type: 'dir' } },
      { header: { name: 'etc/app.conf', type: 'file' }, data: Buffer.from(conf) },
      { header: { name: 'bin/', type: 'dir' } },
      { header: { name: 'bin/tool', type: 'file' }, data: t },
    ]);
  await writeSimpleImage(join(work, 'l1'), 'v1', { layers: [layer('a=1\n', tool)] });
  await writeSimpleImage(join(work, 'l2'), 'v2', { layers: [layer('a=2\n', tool2)] });
  fx.v1 = join(work, 'v1.cdimg');
  fx.v2 = join(work, 'v2.cdimg');
  fx.d12 = join(work, 'v1-v2.cdimg');
  const c1 = await convertImage({ ref: `oci:${join(work, 'l1')}:v1`, output: fx.v1 });
  const c2 = await convertImage({ ref: `oci:${join(work, 'l2')}:v2`, output: fx.v2 });
  await diffImages({ oldPath: fx.v1, newPath: fx.v2, out: fx.d12 });
  const rd = await CdimgReader.open(fx.d12);
  await rd.close();
  Object.assign(fx, { v1Id: c1.imageId, v2Id: c2.imageId, v1Root: c1.rootDigest, v2Root: c2.rootDigest, d12Root: rd.rootDigest });
}, 120_000);

afterAll(async () => {
  for (const s of servers) if (s.alive()) s.child.kill('SIGKILL');
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

// ------------------------------------------------------------------ tests

describe('d4fs-server survives what used to kill it', () => {
  test('a chunked 2 MB body to …/pull (ro token, and none with --read-open), a chunked upload over --max-upload: 400, and the server keeps serving', async () => {
    const s = await startServer('crash', ['--tokens', tokensFile, '--max-upload', '256KiB']);
    const open = await startServer('crash-open', ['--tokens', tokensFile, '--read-open']);
    const spaces = chunked(Buffer.alloc(2 * MiB, 0x20), prng(1));
    const pullHead = (auth: [string, string][]): string => head('POST', '/v1/repositories/x/pull', [['Host', 't'], ...auth, ['Transfer-Encoding', 'chunked']]);
    const ro = await exchange(s.port, { head: pullHead([['Authorization', `Bearer ${RO}`]]), body: spaces, timeoutMs: 10_000 });
    expect(ro.statuses).toEqual([400]);
    const anon = await exchange(open.port, { head: pullHead([]), body: spaces, timeoutMs: 10_000 });
    expect(anon.statuses).toEqual([400]);
    const big = chunked(Buffer.alloc(300 * 1024, 0x41), prng(2));
    const up = await exchange(s.port, { head: head('PUT', `/v1/repositories/x/blobs/sha256:${'1'.repeat(64)}`, [['Host', 't'], ['Authorization', `Bearer ${RW}`], ['Transfer-Encoding', 'chunked']]), body: big, timeoutMs: 10_000 });
    expect(up.statuses).toEqual([400]);
    await sleep(300); // the old server died in the request's 'close' handler, just after answering
    for (const srv of [s, open]) {
      expect(srv.alive()).toBe(true);
      expect((await exchange(srv.port, { head: 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', timeoutMs: 5000 })).statuses).toEqual([200]);
      expect(srv.log()).not.toMatch(/TypeError|uncaught|Unhandled/i);
    }
  });
});

/** What a fuzz case expects. */
interface Case {
  label: string;
  req: RawRequest;
  method: string;
  /** Valid framing, small, complete: an answer must come. */
  wellFormed: boolean;
  /** Bad input: the answer (if any) is a 4xx. */
  bad: boolean;
  /** The exact status, when it is known. */
  want?: number;
  /** Further checks of the answer (returns a failure message). */
  check?(a: ParsedAnswer): string | undefined;
}

/** The server's routes (src/server/server.ts), to know what a request should get. */
const ROUTES: { name: string; method: string; re: RegExp; access: 'open' | 'ro' | 'rw' }[] = [
  { name: 'healthz', method: 'GET', re: /^\/healthz$/, access: 'open' },
  { name: 'metrics', method: 'GET', re: /^\/metrics$/, access: 'open' },
  { name: 'repositories', method: 'GET', re: /^\/v1\/repositories$/, access: 'ro' },
  { name: 'blob', method: 'GET', re: /^\/v1\/blobs\/([^/]+)$/, access: 'ro' },
  { name: 'blob', method: 'HEAD', re: /^\/v1\/blobs\/([^/]+)$/, access: 'ro' },
  { name: 'tags', method: 'GET', re: /^\/v1\/repositories\/(.+)\/tags$/, access: 'ro' },
  { name: 'tag', method: 'GET', re: /^\/v1\/repositories\/(.+)\/tags\/([^/]+)$/, access: 'ro' },
  { name: 'tag', method: 'PUT', re: /^\/v1\/repositories\/(.+)\/tags\/([^/]+)$/, access: 'rw' },
  { name: 'tag', method: 'DELETE', re: /^\/v1\/repositories\/(.+)\/tags\/([^/]+)$/, access: 'rw' },
  { name: 'upload', method: 'PUT', re: /^\/v1\/repositories\/(.+)\/blobs\/([^/]+)$/, access: 'rw' },
  { name: 'pull', method: 'POST', re: /^\/v1\/repositories\/(.+)\/pull$/, access: 'ro' },
];
const repoOk = (r: string): boolean => r.length <= 255 && /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(r);
const digestOk = (d: string): boolean => /^sha256:[a-f0-9]{64}$/.test(d);
const tagOk = (t: string): boolean => /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(t);

/** The route a request lands on, and whether the names in its path are valid. */
function routeOf(method: string, path: string): { name: string; access: 'open' | 'ro' | 'rw'; namesOk: boolean; params: string[] } | undefined {
  const p = path.split('?')[0];
  for (const r of ROUTES) {
    const m = r.re.exec(p);
    if (!m || r.method !== method) continue;
    const params = m.slice(1);
    const namesOk =
      r.name === 'blob' ? digestOk(params[0])
      : r.name === 'tags' || r.name === 'pull' ? repoOk(params[0])
      : r.name === 'tag' ? repoOk(params[0]) && tagOk(params[1])
      : r.name === 'upload' ? repoOk(params[0]) && digestOk(params[1])
      : true;
    return { name: r.name, access: r.access, namesOk, params };
  }
  return undefined;
}

const DOCUMENTED = new Set([200, 201, 206, 304, 400, 401, 403, 404, 405, 408, 409, 412, 413, 415, 416, 422, 431]);
const KNOWN_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE'];

interface FuzzCtx {
  readOpen: boolean;
  files: { v1: Buffer; v2: Buffer; d12: Buffer };
}

/** One random request (deterministic for a given generator state). */
function genCase(rnd: () => number, ctx: FuzzCtx): Case {
  const int = (n: number): number => Math.floor(rnd() * n);
  const pick = <T>(a: readonly T[]): T => a[int(a.length)];
  const chance = (p: number): boolean => rnd() < p;
  const word = (n: number): string => Array.from({ length: n }, () => pick('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-~%'.split(''))).join('');
  const junk = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
  const zeros = `sha256:${'0'.repeat(64)}`;

  // where to: real routes with real and broken names, and garbage
  const readRepo = pick(['small', 'small', 'small', 'fuzz', 'LibSSL', 'a/../../b', '%2e%2e/x', 'x'.repeat(300), word(8).toLowerCase(), '']);
  const writeRepo = pick(['fuzz', 'fuzz', 'fuzz/sub', 'LibSSL', '..', word(8)]); // writes stay out of "small" (checked afterwards)
  const digest = pick([fx.v1Root, fx.d12Root, fx.v1Root, fx.v2Root, zeros, 'sha256:xyz', '..%2f..%2fcatalogue.db', word(20)]);
  const tag = pick(['v1', 'v2', 'latest', 'bad:tag', '.x', word(10)]);
  const kind = pick(['healthz', 'metrics', 'repos', 'tags', 'tag', 'tag-put', 'tag-del', 'upload', 'upload', 'upload', 'pull', 'pull', 'pull', 'blob', 'blob', 'blob', 'head', 'garbage', 'garbage']);
  let method = 'GET';
  let path = '/';
  let body: Buffer | undefined;
  switch (kind) {
    case 'healthz':
      path = '/healthz';
      break;
    case 'metrics':
      path = '/metrics';
      break;
    case 'repos':
      path = '/v1/repositories';
      break;
    case 'tags':
      path = `/v1/repositories/${readRepo}/tags`;
      break;
    case 'tag':
      path = `/v1/repositories/${readRepo}/tags/${tag}`;
      break;
    case 'tag-put':
      method = 'PUT';
      path = `/v1/repositories/${writeRepo}/tags/${tag}`;
      body = Buffer.from(pick([JSON.stringify({ imageId: pick([fx.v1Id, fx.v2Id, zeros, 'nope']) }), '{', '[]', 'null', JSON.stringify({ imageId: 7 }), junk(int(200)).toString('latin1')]));
      break;
    case 'tag-del':
      method = 'DELETE';
      path = `/v1/repositories/${writeRepo}/tags/${tag}`;
      break;
    case 'upload': {
      method = 'PUT';
      const to = chance(0.8) ? fx.v2Root : digest; // v2's full image is not stored: uploads to it are received and verified
      path = `/v1/repositories/${chance(0.5) ? writeRepo : 'small'}/blobs/${to}`;
      const b = Buffer.from(ctx.files.v2);
      const v = int(7);
      if (v === 0) for (let i = 1 + int(3); i > 0; i--) b[int(b.length)] ^= 1 << int(8); // bit flips anywhere
      body =
        v === 0 ? b
        : v === 1 ? b.subarray(0, int(b.length)) // truncated
        : v === 2 ? Buffer.concat([b, junk(1 + int(100))]) // trailing junk
        : v === 3 ? junk(int(40_000))
        : v === 4 ? Buffer.from(pick([ctx.files.v1, ctx.files.d12])) // a stored file (to its own digest: "already there"; else a mismatch)
        : v === 5 ? Buffer.concat([b.subarray(0, HEADER_SIZE), junk(int(5000))])
        : Buffer.alloc(0);
      if (body.equals(ctx.files.v2)) body = Buffer.concat([body, Buffer.from('x')]); // a flip that flipped back: still never the real v2
      break;
    }
    case 'pull':
      method = 'POST';
      path = `/v1/repositories/${readRepo}/pull`;
      body = Buffer.from(
        pick([
          JSON.stringify({ tag: pick(['v1', 'v2', 'latest', 'bad:tag']), have: pick([[], [fx.v1Id], [fx.v2Id], [zeros], ['x']]) }),
          JSON.stringify({ imageId: pick([fx.v1Id, fx.v2Id, zeros, 'junk']), have: [] }),
          JSON.stringify({ tag: 'v1', imageId: fx.v1Id }),
          JSON.stringify({ have: Array.from({ length: 10_001 }, () => 1) }),
          JSON.stringify({ have: 'all' }),
          '['.repeat(5000) + ']'.repeat(5000),
          '{"tag":',
          'null',
          junk(int(3000)).toString('latin1'),
          '',
        ]),
      );
      break;
    case 'blob':
    case 'head':
      method = kind === 'head' ? 'HEAD' : 'GET';
      path = `/v1/blobs/${digest}`;
      break;
    default:
      path = pick(['/', '/v1', '/v1/', '/v2/_catalog', '/../../etc/passwd', '/v1/blobs/', '/v1/repositories/small/blobs', `/${word(int(40))}`, `/v1/${'a/'.repeat(int(2000))}`, '/healthz/', '/HEALTHZ', `/nothing?${word(10)}`, '*']);
      method = pick(KNOWN_METHODS);
  }
  if (chance(0.03)) path += `?${word(int(30))}`;
  // the method, sometimes wrong
  if (chance(0.08)) method = pick([...KNOWN_METHODS, 'FOO', 'get', 'PROPFIND', 'CONNECT', 'G E T']);
  const methodValid = KNOWN_METHODS.includes(method);
  const route = methodValid ? routeOf(method, path) : undefined;
  const access = route?.access;
  const namesOk = route?.namesOk ?? false;
  const blobCheck = route?.name === 'blob' && (route.params[0] === fx.v1Root || route.params[0] === fx.d12Root);

  // who: no token, ro, rw, or a wrong one
  const authKind = pick(['none', 'ro', 'ro', 'rw', 'rw', 'rw', 'wrong', 'basic', 'empty-bearer', 'long']);
  const headers: [string, string][] = [['Host', '127.0.0.1']];
  const auth: Record<string, string | undefined> = { none: undefined, ro: `Bearer ${RO}`, rw: `Bearer ${RW}`, wrong: `Bearer ${newToken()}`, basic: 'Basic dXNlcjpwYXNz', 'empty-bearer': 'Bearer', long: `Bearer ${'a'.repeat(600)}` };
  if (auth[authKind] !== undefined) headers.push(['Authorization', auth[authKind] as string]);
  const badAuth = ['wrong', 'basic', 'empty-bearer', 'long'].includes(authKind);

  // headers: ranges, conditions, expect, junk
  let headersValid = true;
  if (kind === 'blob' || kind === 'head' ? chance(0.7) : chance(0.05)) {
    headers.push(['Range', pick(['bytes=0-99', 'bytes=-10', 'bytes=5-', 'bytes=100-199', 'bytes=9-1', 'bytes=abc', 'items=1-2', 'bytes=0-1,5-6', 'bytes=99999999999999999999-', 'bytes=-0', 'bytes=0-', `bytes=${int(20_000)}-${int(20_000)}`, 'bytes=-99999999'])]);
    if (chance(0.3)) headers.push(['If-Range', pick([`"${digest}"`, '"sha256:other"', 'Wed, 21 Oct 2015 07:28:00 GMT', ''])]);
  }
  if (chance(0.1)) headers.push(['If-None-Match', pick([`"${digest}"`, '*', 'W/"x", "y"', ''])]);
  if (chance(0.1)) headers.push(['Content-Type', pick(['application/json', 'application/vnd.d4fs.cdimg.v1', 'text/plain; charset=utf-8', word(30)])]);
  if (chance(0.05)) headers.push(['X-D4fs-File-Digest', pick([zeros, 'junk', fx.v1Root])]);
  // signatures that travel with uploads: garbage, not JSON, a signature file of another file, absurdly long
  if (chance(0.05)) {
    const otherSig = { mediaType: 'application/vnd.d4fs.signature.v1+json', kind: 'cdimg', subject: zeros, signatures: [{ keyId: zeros, algorithm: 'ed25519', signature: 'AAAA' }] };
    headers.push(['X-D4fs-Signature', pick(['junk', Buffer.from('{}').toString('base64'), Buffer.from(JSON.stringify(otherSig)).toString('base64'), 'A'.repeat(12_000), ''])]);
  }
  if (chance(0.05)) headers.push([`X-${word(8).replace(/[^A-Za-z0-9-]/g, 'x')}`, word(int(200))]);
  let headerTooBig = false;
  if (chance(0.02)) {
    headers.push(['X-Big', 'b'.repeat(20_000)]);
    headerTooBig = true;
  }
  if (chance(0.02)) {
    headers.push(pick([['Bad Name', 'v'], ['X-Ctl', 'a\x01b'], ['X-Nul', 'a\x00b'], ['X-Lf', 'a\nb']] as [string, string][]));
    headersValid = false; // a space in a name, a control character in a value: not HTTP
  }
  if (!body && chance(0.08)) body = junk(int(64 * 1024)); // a body where none belongs
  if (chance(0.01)) body = Buffer.alloc(2 * MiB, 0x20); // the body that used to kill the server
  const small = !body || body.length <= 64 * 1024;
  const expectContinue = !!body?.length && chance(0.2);
  if (expectContinue) headers.push(['Expect', '100-continue']);

  // framing
  const framing = body === undefined ? pick(['none', 'none', 'none', 'cl0', 'cl-bad']) : pick(['cl', 'cl', 'cl', 'cl', 'cl', 'cl', 'chunked', 'chunked', 'cl-bad', 'cl-dup', 'cl-te', 'chunked-bad', 'short', 'cut', 'cut']);
  let wire = body;
  let framingValid = true;
  let cutAfter: number | undefined;
  let lingerMs: number | undefined;
  switch (framing) {
    case 'cl0':
      headers.push(['Content-Length', '0']);
      break;
    case 'cl':
      headers.push(['Content-Length', String(body?.length ?? 0)]);
      break;
    case 'chunked':
      headers.push(['Transfer-Encoding', 'chunked']);
      wire = chunked(body ?? Buffer.alloc(0), rnd);
      break;
    case 'cl-bad':
      headers.push(['Content-Length', pick(['-1', '99999999999999999999', '1e3', 'abc', '1 2', '0x10', '+5'])]);
      framingValid = false;
      break;
    case 'cl-dup':
      headers.push(['Content-Length', String(body?.length ?? 0)], ['Content-Length', String((body?.length ?? 0) + 1)]);
      framingValid = false;
      break;
    case 'cl-te':
      headers.push(['Content-Length', String(body?.length ?? 0)], ['Transfer-Encoding', 'chunked']);
      framingValid = false;
      break;
    case 'chunked-bad':
      headers.push(['Transfer-Encoding', 'chunked']);
      wire = Buffer.concat([Buffer.from(pick(['zz\r\n', '-1\r\n', 'ffffffffffffffffffff\r\n', '5\r\nabc'])), body ?? Buffer.alloc(0)]);
      framingValid = false;
      lingerMs = 300; // may also just be incomplete: then the server waits, and the client gives up
      break;
    case 'short':
      headers.push(['Content-Length', String((body?.length ?? 0) + 1 + int(100_000))]);
      lingerMs = 150;
      break;
    case 'cut':
      headers.push(['Content-Length', String(body?.length ?? 0)]);
      cutAfter = int(body?.length ?? 0);
      break;
  }
  headers.push(['Connection', 'close']);
  const wellFormed = framingValid && headersValid && !headerTooBig && methodValid && small && framing !== 'short' && framing !== 'cut' && path !== '*';
  const authOk = access === 'open' || (!badAuth && (access === 'ro' ? authKind !== 'none' || ctx.readOpen : authKind === 'rw'));
  // a bad upload: anything sent to v2's digest differs from v2 (a stored file's digest answers "already there")
  const badUpload = route?.name === 'upload' && route.params[1] !== fx.v1Root && route.params[1] !== fx.d12Root;
  // With "Expect: 100-continue" a server may give its final answer without asking for the body (RFC 9110
  // 10.1.1): a route that reads no body never sees its framing, so a bad framing there is not bad input.
  const readsBody = route?.name === 'upload' || route?.name === 'pull' || (route?.name === 'tag' && method === 'PUT');
  const framingSeen = !expectContinue || readsBody;
  const bad = (!framingValid && framingSeen) || !headersValid || headerTooBig || !methodValid || !route || !authOk || !namesOk || badUpload;
  let want: number | undefined;
  if (wellFormed) {
    if (!route) want = 404;
    else if (access !== 'open' && badAuth) want = 401;
    else if (access === 'rw' && authKind === 'none') want = 401;
    else if (access === 'ro' && authKind === 'none' && !ctx.readOpen) want = 401;
    else if (access === 'rw' && authKind === 'ro') want = 403;
    else if (!namesOk) want = 400;
  }
  let check: Case['check'];
  if (wellFormed && blobCheck && authOk) {
    const whole = route?.params[0] === fx.v1Root ? ctx.files.v1 : ctx.files.d12;
    check = (a) => {
      if (![200, 206, 304, 416].includes(a.status)) return `blob answer ${a.status}`;
      if (method === 'HEAD' || a.status === 304 || a.status === 416) return undefined;
      if (a.status === 200 && !a.body.equals(whole)) return 'blob body differs from the stored file';
      if (a.status === 206) {
        const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(a.headers['content-range'] ?? '');
        if (!m || !a.body.equals(whole.subarray(Number(m[1]), Number(m[2]) + 1))) return `range ${a.headers['content-range']} differs from the stored file`;
      }
      return undefined;
    };
  }
  return {
    label: `${method} ${path.slice(0, 80)} auth=${authKind} framing=${framing} body=${body?.length ?? '-'}${expectContinue ? ' expect' : ''}${headersValid ? '' : ' bad-header'}${headerTooBig ? ' big-header' : ''}`,
    method,
    req: { head: head(method, path, headers), body: wire, expectContinue, cutAfter, lingerMs, timeoutMs: 15_000 },
    wellFormed,
    bad,
    want,
    check,
  };
}

/** Run `cases` with `parallel` at once; returns the failures. */
async function runCases(port: number, cases: Case[], parallel: number): Promise<string[]> {
  const failures: string[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < cases.length) {
      const c = cases[next++];
      const a = await exchange(port, c.req, [c.method]);
      const status = a.statuses[0];
      const fail = (why: string): void => void failures.push(`${why}: ${c.label} -> ${a.statuses.join(',') || 'no answer'} (${a.how}, ${a.ms} ms)`);
      if (a.how === 'timeout') fail('no answer in time');
      if (status !== undefined && !DOCUMENTED.has(status)) fail(`undocumented status ${status}`);
      if (c.wellFormed && status === undefined) fail('dropped connection for a well-formed request');
      if (status !== undefined && c.bad && (status < 400 || status >= 500)) fail('bad input answered without a 4xx');
      if (status !== undefined && c.want !== undefined && status !== c.want) fail(`expected ${c.want}`);
      const why = status !== undefined && c.check ? c.check(a.answers[0]) : undefined;
      if (why) fail(why);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return failures;
}

describe('fuzz', () => {
  const N = Number(process.env.D4FS_FUZZ_REQUESTS ?? 3000);
  const SEED = Number(process.env.D4FS_FUZZ_SEED ?? 0xd4f5);

  for (const readOpen of [false, true]) {
    test(`${N} random requests (seed ${SEED}${readOpen ? ', --read-open' : ''}): documented statuses only; afterwards alive, healthy, files intact, fds and memory back`, async () => {
      const s = await startServer(readOpen ? 'fuzz-open' : 'fuzz', ['--tokens', tokensFile, '--max-upload', '1MiB', ...(readOpen ? ['--read-open'] : [])]);
      // real files first: v1 and the v1→v2 delta, tagged in "small"
      await pushToServer({ file: fx.v1, image: 'small:v1', server: s.url, token: RW });
      await pushToServer({ file: fx.d12, image: 'small:v2', server: s.url, token: RW });
      const stored = (await listDir(join(s.root, 'blobs', 'sha256'))).sort();
      expect(stored).toHaveLength(2);
      const digests = new Map<string, string>();
      for (const f of stored) digests.set(f, await fileDigestOf(join(s.root, 'blobs', 'sha256', f)));
      const ctx: FuzzCtx = { readOpen, files: { v1: await fsp.readFile(fx.v1), v2: await fsp.readFile(fx.v2), d12: await fsp.readFile(fx.d12) } };

      // warm up (lazy modules, pools), then take the baseline
      const warm = prng(SEED ^ 0x5555);
      expect(await runCases(s.port, Array.from({ length: 150 }, () => genCase(warm, ctx)), 8)).toEqual([]);
      await sleep(500);
      const pid = s.child.pid as number;
      const before = procStats(pid);

      const rnd = prng(SEED + (readOpen ? 1 : 0));
      const cases = Array.from({ length: N }, () => genCase(rnd, ctx));
      const t0 = Date.now();
      const failures = await runCases(s.port, cases, 16);
      const seconds = (Date.now() - t0) / 1000;
      if (failures.length) console.log(`fuzz: ${failures.length} failures of ${N} (${seconds.toFixed(1)} s):\n${failures.slice(0, 40).join('\n')}\n--- server log ---\n${s.log().slice(-4000)}`);
      expect(s.alive()).toBe(true);
      expect(failures.slice(0, 20)).toEqual([]);

      // afterwards: healthy, the stored files untouched and valid, nothing half-written left
      expect((await exchange(s.port, { head: 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', timeoutMs: 5000 })).statuses).toEqual([200]);
      expect(await until(async () => (await listDir(join(s.root, 'tmp'))).length === 0, 10_000)).toBe(true);
      expect((await listDir(join(s.root, 'blobs', 'sha256'))).sort()).toEqual(stored);
      for (const f of stored) {
        const p = join(s.root, 'blobs', 'sha256', f);
        expect(await fileDigestOf(p)).toBe(digests.get(f));
        await verifyStoredChunks(p, f);
      }
      const store = await LocalStore.open(join(work, `client-${readOpen}`));
      try {
        const r = await pullFromServer({ image: 'small:v2', server: s.url, store, token: RO, noLoad: true });
        expect(r.imageId).toBe(fx.v2Id);
        await store.verifyChain(fx.v2Id);
      } finally {
        store.close();
      }
      // fds and memory come back (keep-alive and slow sockets time out; generous slack)
      let after = procStats(pid);
      await until(() => (after = procStats(pid)).fds <= before.fds + 10, 15_000);
      console.log(`fuzz${readOpen ? ' --read-open' : ''}: ${N} requests in ${seconds.toFixed(1)} s; fds ${before.fds} -> ${after.fds}; RSS ${(before.rss / MiB).toFixed(0)} -> ${(after.rss / MiB).toFixed(0)} MiB`);
      expect(after.fds).toBeLessThanOrEqual(before.fds + 10);
      expect(after.rss).toBeLessThanOrEqual(before.rss + 150 * MiB);
      expect(s.alive()).toBe(true);
    }, 120_000);
  }
});

describe('slow clients', () => {
  test('bodies and headers a byte at a time, silence after "100 Continue": 408 or disconnected within the bound, and the upload slots serve the next upload', async () => {
    // short limits: 4 KiB/s over 1 s windows, headers within 1 s; two upload slots
    const s = await startServer('slow', ['--tokens', tokensFile, '--max-uploads', '2', '--min-upload-rate', '4KiB', '--upload-rate-window', '1s', '--headers-timeout', '1s']);
    const v2 = await fsp.readFile(fx.v2);
    const uploadHead = (extra: [string, string][] = [], to = fx.v2Root): string =>
      head('PUT', `/v1/repositories/slow/blobs/${to}`, [['Host', 't'], ['Authorization', `Bearer ${RW}`], ['Content-Length', String(v2.length)], ...extra]);

    /** A client that sends `first`, then one byte of `rest` every 100 ms until it is answered or cut. */
    const trickle = (first: string, rest: Buffer): Promise<{ status?: number; ms: number }> =>
      new Promise((resolve) => {
        const t0 = Date.now();
        const sock = net.connect(s.port, '127.0.0.1');
        const parts: Buffer[] = [];
        let i = 0;
        const timer = setInterval(() => {
          if (i < rest.length && sock.writable) sock.write(rest.subarray(i, ++i));
        }, 100);
        const done = (): void => {
          clearInterval(timer);
          sock.destroy();
          const st = parseAnswers(Buffer.concat(parts), ['PUT'])[0]?.status;
          resolve({ status: st, ms: Date.now() - t0 });
        };
        sock.on('data', (c: Buffer) => {
          parts.push(c);
          if (parseAnswers(Buffer.concat(parts), ['PUT']).length) done();
        });
        sock.on('close', done);
        sock.on('error', done);
        sock.on('connect', () => sock.write(first));
      });

    // two uploads a byte at a time take both slots …
    const slow = [trickle(uploadHead(), v2), trickle(uploadHead(), v2)];
    await sleep(300);
    const third = (): Promise<RawAnswer> => exchange(s.port, { head: uploadHead([['Connection', 'close']]), body: v2, timeoutMs: 10_000 }, ['PUT']);
    expect((await third()).statuses).toEqual([503]);
    // … until they are under the pace for a window: 408 (or cut), within the bound
    const results = await Promise.all(slow);
    for (const r of results) {
      expect(r.status === undefined || r.status === 408).toBe(true);
      expect(r.ms).toBeLessThan(3_500);
    }
    // the slots are free again
    const ok = await third();
    expect(ok.statuses).toEqual([201]);

    // nothing after "100 Continue": 408 within the bound
    const silent = await exchange(s.port, { head: uploadHead([['Expect', '100-continue']], `sha256:${'0'.repeat(64)}`), timeoutMs: 10_000 }, ['PUT']);
    expect(silent.statuses).toEqual([408]);
    expect(silent.ms).toBeLessThan(3_500);
    // a JSON body a byte at a time
    const pullBody = Buffer.from(JSON.stringify({ tag: 'v1', have: [] }));
    const slowJson = await trickle(head('POST', '/v1/repositories/slow/pull', [['Host', 't'], ['Authorization', `Bearer ${RO}`], ['Content-Length', String(pullBody.length + 4096)]]), Buffer.concat([pullBody, Buffer.alloc(4096, 0x20)]));
    expect(slowJson.status === undefined || slowJson.status === 408).toBe(true);
    expect(slowJson.ms).toBeLessThan(3_500);
    // headers a byte at a time: 408 (or cut) after the headers deadline
    const slowHead = await trickle('PUT /v1/repositories/slow/blobs/', Buffer.from(`${fx.v2Root} HTTP/1.1\r\nHost: t\r\n${'X-Pad: y\r\n'.repeat(50)}\r\n`));
    expect(slowHead.status === undefined || slowHead.status === 408).toBe(true);
    expect(slowHead.ms).toBeLessThan(3_000);

    expect(s.alive()).toBe(true);
    expect(await until(async () => (await listDir(join(s.root, 'tmp'))).length === 0, 5_000)).toBe(true);
  }, 60_000);
});

// ------------------------------------------------------ decompression bombs

/**
 * A zstd frame of `size` zero bytes made of RLE blocks (4 bytes per 128 KiB):
 * what `zstd` makes of zeros, without holding them in memory here.
 */
function zeroFrame(size: number): Buffer {
  const BLOCK = 128 * 1024;
  const blocks = Math.ceil(size / BLOCK);
  const out = Buffer.alloc(4 + 1 + 8 + blocks * 4);
  out.writeUInt32LE(0xfd2fb528, 0); // magic
  out[4] = 0xe0; // frame content size: 8 bytes; single segment; no checksum, no dictionary
  out.writeBigUInt64LE(BigInt(size), 5);
  let pos = 13;
  for (let b = 0, left = size; b < blocks; b++) {
    const n = Math.min(BLOCK, left);
    left -= n;
    const last = b === blocks - 1 ? 1 : 0;
    const h = (n << 3) | (1 << 1) | last; // RLE block of n bytes
    out.writeUIntLE(h, pos, 3);
    out[pos + 3] = 0; // the byte repeated
    pos += 4;
  }
  return out;
}

/** sha256 of `size` zero bytes (streamed). */
function sha256OfZeros(size: number): Buffer {
  const h = createHash('sha256');
  const z = Buffer.alloc(MiB);
  for (let left = size; left > 0; left -= z.length) h.update(left >= z.length ? z : z.subarray(0, left));
  return h.digest();
}

/** A .cdimg with a valid header whose index (zeros, matching the root digest) inflates to `rawSize` bytes. */
function bomb(rawSize: number): { bytes: Buffer; rootDigest: string } {
  const frame = zeroFrame(rawSize);
  const root = sha256OfZeros(rawSize);
  return { bytes: Buffer.concat([encodeHeader(HEADER_SIZE, frame.length, rawSize, root, FORMAT_VERSION), frame]), rootDigest: `sha256:${root.toString('hex')}` };
}

describe('decompression bombs', () => {
  test('8 concurrent uploads of a small .cdimg whose index inflates to 1 GiB / 256 MiB: each 4xx, nothing stored, peak RSS < 400 MiB', async () => {
    // the frame is real zstd (checked on a small one with the reader's own decompressor)
    expect(zstdUnframe(zeroFrame(MiB + 5), MiB + 5).equals(Buffer.alloc(MiB + 5))).toBe(true);
    const bombs = [bomb(1024 * MiB), bomb(256 * MiB)];
    expect(bombs[0].bytes.length).toBeLessThan(64 * 1024);
    const s = await startServer('bombs', ['--tokens', tokensFile]);
    const pid = s.child.pid as number;
    const start = procStats(pid);
    let peak = start.rss;
    const sampler = setInterval(() => {
      try {
        peak = Math.max(peak, procStats(pid).rss);
      } catch {
        /* exited: seen below */
      }
    }, 10);
    let answers: RawAnswer[];
    try {
      answers = await Promise.all(
        Array.from({ length: 8 }, (_, i) => {
          const b = bombs[i % 2];
          const h = head('PUT', `/v1/repositories/bomb/blobs/${b.rootDigest}`, [['Host', 't'], ['Authorization', `Bearer ${RW}`], ['Content-Length', String(b.bytes.length)], ['Connection', 'close']]);
          return exchange(s.port, { head: h, body: b.bytes, timeoutMs: 60_000 }, ['PUT']);
        }),
      );
    } finally {
      clearInterval(sampler);
    }
    const end = s.alive() ? procStats(pid) : undefined;
    console.log(`bombs: statuses ${answers.map((a) => a.statuses.join('/') || a.how).join(' ')}; RSS ${(start.rss / MiB).toFixed(0)} MiB, sampled peak ${(peak / MiB).toFixed(0)} MiB, VmHWM ${end ? (end.hwm / MiB).toFixed(0) : '?'} MiB`);
    expect(s.alive()).toBe(true);
    for (const a of answers) expect([400, 422]).toContain(a.statuses[0]);
    expect(await listDir(join(s.root, 'blobs', 'sha256'))).toEqual([]);
    expect(await until(async () => (await listDir(join(s.root, 'tmp'))).length === 0, 5_000)).toBe(true);
    expect(peak).toBeLessThan(400 * MiB);
    expect(end?.hwm ?? Infinity).toBeLessThan(400 * MiB);
    expect((await exchange(s.port, { head: 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', timeoutMs: 5000 })).statuses).toEqual([200]);
  }, 120_000);
});
