/**
 * convert from a real OCI registry (Debian's docker-registry on 127.0.0.1),
 * anonymous and with htpasswd auth: the result equals converting the layout.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildDebImage } from './fixtures/debimages';
import { startRegistry, pushOciLayout, TestRegistry } from './helpers/registry';
import { convertImage } from '../src/convert/convert';
import { D4fsError } from '../src/errors';
import { packageRoot } from '../src/util/paths';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let work: string;
let open: TestRegistry;
let locked: TestRegistry;
let layoutId: string;
let ref: string;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-convert-reg-'));
  const img = await buildDebImage('nginx-v1');
  ref = img.ref;
  [open, locked] = await Promise.all([startRegistry(), startRegistry({ auth: { user: 'edge', pass: 's3cret pass' } })]);
  await pushOciLayout(img.layout, img.tag, open.host, 'd4fs/nginx:1');
  await pushOciLayout(img.layout, img.tag, locked.host, 'd4fs/nginx:1', 'edge:s3cret pass');
  layoutId = (await convertImage({ ref, output: join(work, 'layout.cdimg') })).imageId;
});
afterAll(async () => {
  await Promise.all([open?.stop(), locked?.stop()]);
  await fsp.rm(work, { recursive: true, force: true });
});

it('converts from an anonymous registry (plain HTTP on loopback) to the same image', async () => {
  const r = await convertImage({ ref: `docker://${open.host}/d4fs/nginx:1`, output: join(work, 'open.cdimg') });
  expect(r.imageId).toBe(layoutId);
});

it('converts by digest from a bare REPO:TAG style reference', async () => {
  const { stdout } = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${open.host}/d4fs/nginx:1`]);
  const { createHash } = await import('node:crypto');
  const digest = `sha256:${createHash('sha256').update(stdout).digest('hex')}`;
  const r = await convertImage({ ref: `${open.host}/d4fs/nginx@${digest}`, output: join(work, 'bydigest.cdimg') });
  expect(r.imageId).toBe(layoutId);
});

it('converts with basic auth from --creds and from a docker config.json', async () => {
  const r = await convertImage({ ref: `docker://${locked.host}/d4fs/nginx:1`, output: join(work, 'auth.cdimg'), registry: { creds: 'edge:s3cret pass' } });
  expect(r.imageId).toBe(layoutId);
  const cfg = join(work, 'config.json');
  await fsp.writeFile(cfg, JSON.stringify({ auths: { [locked.host]: { auth: Buffer.from('edge:s3cret pass').toString('base64') } } }));
  const { stdout } = await run('node', [CLI, 'convert', '--image', `docker://${locked.host}/d4fs/nginx:1`, '--output', join(work, 'auth2.cdimg'), '--authfile', cfg, '--json']);
  expect(JSON.parse(stdout).imageId).toBe(layoutId);
});

it('refuses wrong or missing credentials with a clear error and exit code 9', async () => {
  const err = await convertImage({ ref: `docker://${locked.host}/d4fs/nginx:1`, output: join(work, 'x.cdimg'), registry: { creds: 'edge:wrong' } }).catch((e) => e);
  expect(err).toBeInstanceOf(D4fsError);
  expect((err as D4fsError).kind).toBe('UNAUTHENTICATED');
  const empty = join(work, 'no-credentials');
  await fsp.mkdir(empty, { recursive: true });
  const res = await run('node', [CLI, 'convert', '--image', `docker://${locked.host}/d4fs/nginx:1`, '--output', join(work, 'y.cdimg')], { env: { ...process.env, HOME: empty, DOCKER_CONFIG: empty, XDG_RUNTIME_DIR: empty, REGISTRY_AUTH_FILE: '' } }).catch((e) => e);
  expect(res.code).toBe(9);
  expect(res.stderr).toMatch(/authentication required.*--creds/);
  expect(res.stderr).not.toMatch(/s3cret/);
  await expect(fsp.access(join(work, 'y.cdimg'))).rejects.toThrow();
});

it('reports an unknown tag as not found (exit 3)', async () => {
  const res = await run('node', [CLI, 'convert', '--image', `docker://${open.host}/d4fs/nginx:nope`, '--output', join(work, 'z.cdimg')]).catch((e) => e);
  expect(res.code).toBe(3);
});
