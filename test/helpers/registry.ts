/**
 * Test helpers: a private Debian docker-registry on 127.0.0.1 and image
 * publishing with skopeo / umoci.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A running registry. */
export interface TestRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  /** "http://127.0.0.1:PORT" */
  url: string;
  /** Temp dir holding config, htpasswd and the storage root (data/). */
  dataDir: string;
  /** Kill the registry and remove dataDir. */
  stop(): Promise<void>;
}

export interface StartRegistryOptions {
  /** Turn on htpasswd auth with one user. */
  auth?: { user: string; pass: string };
}

const REGISTRY_BIN = '/usr/bin/docker-registry';
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

function configYaml(dataDir: string, port: number, withAuth: boolean): string {
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
  ];
  if (withAuth) {
    lines.push('auth:', '  htpasswd:', '    realm: d4fs-test', `    path: ${path.join(dataDir, 'htpasswd')}`);
  }
  return lines.join('\n') + '\n';
}

/** HTTP status of GET url, or undefined when nothing answers. */
function probe(url: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
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
async function launch(dataDir: string, port: number, withAuth: boolean): Promise<ChildProcess> {
  const configFile = path.join(dataDir, 'config.yml');
  await fsp.writeFile(configFile, configYaml(dataDir, port, withAuth));
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
    const status = await probe(`http://127.0.0.1:${port}/v2/`);
    if (status !== undefined && want.includes(status)) return child;
    await new Promise((r) => setTimeout(r, 100));
  }
  await killChild(child);
  throw new Error(`docker-registry did not start on 127.0.0.1:${port}: ${stderr.trim() || 'no output'}`);
}

/**
 * Start Debian's docker-registry on a free 127.0.0.1 port with filesystem
 * storage in a fresh temp dir (and htpasswd auth when asked).
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
        const child = await launch(dataDir, port, !!opts.auth);
        const host = `127.0.0.1:${port}`;
        return {
          host,
          url: `http://${host}`,
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
