/**
 * Test helpers: a private Debian docker-registry on 127.0.0.1 and image
 * publishing with skopeo / umoci.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A running registry. */
export interface TestRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  /** "http://127.0.0.1:PORT" ("https://…" with TLS) */
  url: string;
  /** Temp dir holding config, htpasswd and the storage root (data/). */
  dataDir: string;
  /** Kill the registry and remove dataDir. */
  stop(): Promise<void>;
}

export interface StartRegistryOptions {
  /** Turn on htpasswd auth with one user. */
  auth?: { user: string; pass: string };
  /** Serve HTTPS with this certificate and key (PEM files); see {@link makeTestCa}. */
  tls?: { cert: string; key: string };
}

/** A test CA and a server certificate it signed for 127.0.0.1 (PEM files in `dir`). */
export interface TestCa {
  /** The CA certificate (for NODE_EXTRA_CA_CERTS, or skopeo's --cert-dir as ca.crt). */
  ca: string;
  cert: string;
  key: string;
}

/** Make a throw-away CA and a certificate for IP 127.0.0.1 and localhost signed by it, with openssl. */
export async function makeTestCa(dir: string): Promise<TestCa> {
  await fsp.mkdir(dir, { recursive: true });
  const f = (n: string): string => path.join(dir, n);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-subj', '/CN=d4fs test CA', '-days', '2', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await run('openssl', ['req', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', f('server.key'), '-out', f('server.csr')]);
  await fsp.writeFile(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await run('openssl', ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('ext.cnf'), '-out', f('server.pem')]);
  return { ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key') };
}

/** The Debian docker-registry binary the private registries run. */
export const REGISTRY_BIN = '/usr/bin/docker-registry';
const START_TIMEOUT_MS = 15_000;
const START_ATTEMPTS = 3;
const running = new Set<ChildProcess>();

process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function configYaml(dataDir: string, port: number, withAuth: boolean, id: string, tls?: { cert: string; key: string }): string {
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${path.join(dataDir, 'data')}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '  secret: d4fs-test-secret',
    // which registry answers on the port (launch): two started at once may be handed the same free port
    '  headers:',
    `    ${ID_HEADER}: [${id}]`,
  ];
  if (tls) lines.push('  tls:', `    certificate: ${tls.cert}`, `    key: ${tls.key}`);
  if (withAuth) {
    lines.push('auth:', '  htpasswd:', '    realm: d4fs-test', `    path: ${path.join(dataDir, 'htpasswd')}`);
  }
  return lines.join('\n') + '\n';
}

/** Response header naming the test registry that answers (its config's http.headers). */
const ID_HEADER = 'X-D4fs-Test-Registry';

/** HTTP status of GET url and the registry id it names, or undefined when nothing answers (certificates are not checked). */
function probe(url: string): Promise<{ status: number | undefined; id: string } | undefined> {
  return new Promise((resolve) => {
    const get = url.startsWith('https:') ? (u: string, o: https.RequestOptions, cb: (res: http.IncomingMessage) => void) => https.get(u, { ...o, rejectUnauthorized: false }, cb) : http.get;
    const req = get(url, { timeout: 1000 }, (res) => {
      res.resume();
      const id = res.headers[ID_HEADER.toLowerCase()];
      resolve({ status: res.statusCode, id: Array.isArray(id) ? id.join(',') : (id ?? '') });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/** The registry's environment without REGISTRY_* variables (they override its config). */
function registryEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
}

async function killChild(child: ChildProcess): Promise<void> {
  running.delete(child);
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** Spawn on `port` and wait until /v2/ answers; rejects (after killing it) when it exits or hangs. */
async function launch(dataDir: string, port: number, withAuth: boolean, tls?: { cert: string; key: string }): Promise<ChildProcess> {
  const configFile = path.join(dataDir, 'config.yml');
  // Only this child's answer counts: another registry started at the same time on the same port
  // (a free port handed to both) answered for this one once, and an htpasswd test ran against
  // the registry without auth (its pushes and pulls succeeded without credentials).
  const id = randomBytes(8).toString('hex');
  await fsp.writeFile(configFile, configYaml(dataDir, port, withAuth, id, tls));
  const child = spawn(REGISTRY_BIN, ['serve', configFile], { env: registryEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const deadline = Date.now() + START_TIMEOUT_MS;
  const want = withAuth ? [200, 401] : [200];
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    const answer = await probe(`${tls ? 'https' : 'http'}://127.0.0.1:${port}/v2/`);
    if (answer?.status !== undefined && want.includes(answer.status) && answer.id === id) return child;
    await new Promise((r) => setTimeout(r, 100));
  }
  await killChild(child);
  throw new Error(`docker-registry did not start on 127.0.0.1:${port}: ${stderr.trim() || 'no output'}`);
}

/**
 * Start Debian's docker-registry on a free 127.0.0.1 port with filesystem
 * storage in a fresh temp dir (and htpasswd auth, HTTPS when asked).
 */
export async function startRegistry(opts: StartRegistryOptions = {}): Promise<TestRegistry> {
  const dataDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-registry-'));
  try {
    if (opts.auth) {
      const { stdout } = await run('htpasswd', ['-Bbn', opts.auth.user, opts.auth.pass]);
      await fsp.writeFile(path.join(dataDir, 'htpasswd'), stdout.trim() + '\n', { mode: 0o600 });
    }
    let lastError: unknown;
    for (let i = 0; i < START_ATTEMPTS; i++) {
      const port = await freePort();
      try {
        const child = await launch(dataDir, port, !!opts.auth, opts.tls);
        const host = `127.0.0.1:${port}`;
        return {
          host,
          url: `${opts.tls ? 'https' : 'http'}://${host}`,
          dataDir,
          stop: async () => {
            await killChild(child);
            await fsp.rm(dataDir, { recursive: true, force: true });
          },
        };
      } catch (e) {
        lastError = e; // most likely the port was taken in between: try another
      }
    }
    throw lastError;
  } catch (e) {
    await fsp.rm(dataDir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Copy oci:LAYOUT:TAG to docker://REGISTRY/REPO:TAG with skopeo (plain http,
 * optional "user:pass" credentials).
 */
export async function pushOciLayout(layoutDir: string, tag: string, registryHost: string, repoTag: string, creds?: string): Promise<void> {
  const args = ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false'];
  if (creds) args.push('--dest-creds', creds);
  args.push(`oci:${layoutDir}:${tag}`, `docker://${registryHost}/${repoTag}`);
  try {
    await run('skopeo', args, { env: registryEnv() });
  } catch (e) {
    const err = e as Error & { stderr?: string };
    throw new Error(`skopeo copy to ${registryHost}/${repoTag} failed: ${err.stderr?.trim() || err.message}`);
  }
}

/**
 * Build a one-layer OCI image with umoci in `layoutDir` (created) under `tag`,
 * holding `files` (relative path -> content).
 */
export async function buildOciLayout(layoutDir: string, tag: string, files: Record<string, string | Buffer>): Promise<void> {
  const src = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-layer-'));
  try {
    for (const [rel, content] of Object.entries(files)) {
      const file = path.join(src, rel);
      await fsp.mkdir(path.dirname(file), { recursive: true });
      await fsp.writeFile(file, content);
    }
    await run('umoci', ['init', '--layout', layoutDir]);
    await run('umoci', ['new', '--image', `${layoutDir}:${tag}`]);
    await run('umoci', ['insert', '--image', `${layoutDir}:${tag}`, src, '/']);
  } finally {
    await fsp.rm(src, { recursive: true, force: true });
  }
}

/**
 * Every file of a registry's storage (relative paths, sorted): blobs,
 * repository links, upload sessions. Equal lists before and after a command
 * show that it pushed nothing, not even a started upload.
 */
export async function storageFiles(reg: TestRegistry): Promise<string[]> {
  const root = path.join(reg.dataDir, 'data');
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch {
      return; // nothing stored yet
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(path.relative(root, p));
    }
  };
  await walk(root);
  return out.sort();
}
