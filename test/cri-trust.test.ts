/**
 * Issue 12, what the CRI path must not trust or must not need: d4fs data
 * attached to another image's manifest is refused and the image is unpacked
 * normally; a registry with basic auth works with the snapshotter's own
 * credentials, and without them the pull still succeeds the ordinary way.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { buildDebImage, BuiltDebImage } from './fixtures/debimages';
import { startCriRig, CriRig, CriPod } from './helpers/cri';
import { buildBusyboxImage } from './helpers/containerd';
import { makeTestCa, startRegistry, TestCa, TestRegistry } from './helpers/registry';
import { RegistryClient } from '../src/oci/registry/client';
import { packageRoot } from '../src/util/paths';

const run = promisify(execFile);
const CLI = path.join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
const AUTH = { user: 'd4fs', pass: 'secret-pass' };

let rig: CriRig | undefined;
let authReg: TestRegistry | undefined;
let tlsReg: TestRegistry | undefined;
let ca: TestCa;
let savedCaEnv: string | undefined;
let work: string;
let v1: BuiltDebImage;
let v2: BuiltDebImage;
const pods: CriPod[] = [];

const logSince = (mark: number): string => fs.readFileSync(rig?.env.snapshotterLogFile as string, 'utf8').slice(mark);
const logSize = (): number => fs.statSync(rig?.env.snapshotterLogFile as string).size;
const sleeper = { command: ['/bin/sh', '-c', 'sleep 600'] };

async function digestOf(ref: string, creds?: string): Promise<string> {
  const r = await run('skopeo', ['inspect', '--format', '{{.Digest}}', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), `docker://${ref}`]);
  return r.stdout.trim();
}

beforeAll(async () => {
  work = await fsp.mkdtemp(path.join('/tmp', 'd4fs-cri-trust-'));
  v1 = await buildDebImage('nginx-v1');
  v2 = await buildDebImage('nginx-v2');
  authReg = await startRegistry({ auth: AUTH });
  // an HTTPS registry with its own CA: the snapshotter (and ctr-cli) trust it through NODE_EXTRA_CA_CERTS, containerd through hosts.toml
  ca = await makeTestCa(path.join(work, 'ca'));
  tlsReg = await startRegistry({ tls: { cert: ca.cert, key: ca.key } });
  savedCaEnv = process.env.NODE_EXTRA_CA_CERTS;
  process.env.NODE_EXTRA_CA_CERTS = ca.ca; // the rig's snapshotter inherits it
  // the snapshotter's credentials: a docker config.json named in its config
  const authFile = path.join(work, 'auth.json');
  await fsp.writeFile(authFile, JSON.stringify({ auths: { [authReg.host]: { auth: Buffer.from(`${AUTH.user}:${AUTH.pass}`).toString('base64') } } }), { mode: 0o600 });
  const cfg = path.join(work, 'snapshotter.toml');
  await fsp.writeFile(cfg, `registry_auth_file = "${authFile}"\n`);
  rig = await startCriRig({ snapshotterArgs: ['--config', cfg] });
}, 900_000);

afterAll(async () => {
  if (rig) for (const p of pods) await rig.removePod(p).catch(() => undefined);
  await rig?.stop();
  await authReg?.stop();
  await tlsReg?.stop();
  // jest runs every file in this process: later files' child processes must not inherit the test CA
  if (savedCaEnv === undefined) delete process.env.NODE_EXTRA_CA_CERTS;
  else process.env.NODE_EXTRA_CA_CERTS = savedCaEnv;
  await fsp.rm(work, { recursive: true, force: true });
});

describe('CRI pulls: what is not trusted, what is not needed', () => {
  it('d4fs data attached to another image\'s manifest is refused; that image unpacks normally and runs', async () => {
    const r = rig as CriRig;
    const host = r.registry.host;
    await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${v1.layout}:${v1.tag}`, `docker://${host}/evil:v1`]);
    await run(process.execPath, [CLI, 'publish', `docker://${host}/evil:v1`, '--no-progress']);
    const bb = path.join(work, 'bb');
    await buildBusyboxImage(bb, 'v1');
    await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${bb}:v1`, `docker://${host}/evil:bb`]);
    // an attacker copies v1's referrers list to the busybox image's referrers tag
    const v1Digest = await digestOf(`${host}/evil:v1`);
    const bbDigest = await digestOf(`${host}/evil:bb`);
    const c = new RegistryClient(host, { tlsVerify: false });
    try {
      const list = await c.getManifest('evil', `sha256-${v1Digest.slice(7)}`);
      await c.putManifest('evil', `sha256-${bbDigest.slice(7)}`, list.bytes, list.mediaType);
    } finally {
      await c.close();
    }
    const mark = logSize();
    await r.cri.pullImage(`${host}/evil:bb`);
    const log = logSince(mark);
    expect(log).not.toContain('"pulled through d4fs"');
    expect(log).toMatch(/CRI pull through d4fs failed; unpacking the layers as usual|no d4fs data/);
    expect(r.env.d4fsMounts()).toEqual([]);
    const pod = await r.runPod(`${host}/evil:bb`, sleeper);
    pods.push(pod);
    const out = await r.cri.execSync(pod.containerId, ['/bin/cat', '/etc/d4fs-release'], 30);
    expect(out.stdout.toString()).toBe('d4fs test image\n');
  }, 600_000);

  it('a registry with basic auth: the snapshotter pulls with the credentials of its config', async () => {
    const r = rig as CriRig;
    const reg = authReg as TestRegistry;
    const creds = `${AUTH.user}:${AUTH.pass}`;
    await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', '--dest-creds', creds, `oci:${v1.layout}:${v1.tag}`, `docker://${reg.host}/app:v1`]);
    await run(process.execPath, [CLI, 'publish', `docker://${reg.host}/app:v1`, '--creds', creds, '--no-progress']);
    const mark = logSize();
    await r.cri.pullImage(`${reg.host}/app:v1`, { auth: { username: AUTH.user, password: AUTH.pass } });
    expect(logSince(mark)).toContain('"pulled through d4fs"');
    const pod = await r.runPod(`${reg.host}/app:v1`, sleeper);
    pods.push(pod);
    const out = await r.cri.execSync(pod.containerId, ['/bin/ls', '/usr/sbin/nginx'], 30);
    expect(out.stdout.toString()).toBe('/usr/sbin/nginx\n');
  }, 600_000);

  it('a registry over HTTPS with its own CA', async () => {
    const r = rig as CriRig;
    const reg = tlsReg as TestRegistry;
    await r.trustRegistry(reg.host, { ca: ca.ca });
    // v2 here (v1, the same manifest, was pulled from the auth registry already)
    await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${v2.layout}:${v2.tag}`, `docker://${reg.host}/app:v2`]);
    await run(process.execPath, [CLI, 'publish', `docker://${reg.host}/app:v2`, '--no-progress'], { env: { ...process.env, NODE_EXTRA_CA_CERTS: ca.ca } });
    const mark = logSize();
    await r.cri.pullImage(`${reg.host}/app:v2`);
    expect(logSince(mark)).toContain('"pulled through d4fs"');
    const pod = await r.runPod(`${reg.host}/app:v2`, sleeper);
    pods.push(pod);
    const out = await r.cri.execSync(pod.containerId, ['/bin/ls', '/usr/sbin/nginx'], 30);
    expect(out.stdout.toString()).toBe('/usr/sbin/nginx\n');
  }, 600_000);
});
