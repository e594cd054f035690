/**
 * The snapshotter's signature policy (issue 11, signed deltas): with
 * --verify-key, a d4fs image is mounted only when every file of its chain
 * carries a signature by a trusted key; otherwise nothing is mounted.
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxImage } from './helpers/containerd';
import { startD4fsEnv, D4fsEnv } from './helpers/d4fs-env';
import { EXIT_CODES } from '../src/errors';
import { generateKeyPair } from '../src/signing';

let env: D4fsEnv | undefined;
let work: string;
const at = (n: string) => path.join(work, n);

beforeAll(async () => {
  work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-sigsnap-'));
  await buildBusyboxImage(at('bb'), 'v1');
  for (const name of ['trusted', 'other']) {
    const k = generateKeyPair('ed25519');
    await fsp.writeFile(at(`${name}.pem`), k.privatePem, { mode: 0o600 });
    await fsp.writeFile(at(`${name}.pub.pem`), k.publicPem);
  }
  env = await startD4fsEnv({ snapshotterArgs: ['--verify-key', at('trusted.pub.pem')] });
}, 600_000);

afterAll(async () => {
  await env?.stop();
  await fsp.rm(work, { recursive: true, force: true });
});

describe('snapshotter --verify-key', () => {
  it('mounts signed images only', async () => {
    if (!env) throw new Error('no environment');
    const e = env;
    expect((await e.cliOk(['convert', '--image', `oci:${at('bb')}:v1`, '--output', at('bb.cdimg'), '--no-progress'])).length).toBeGreaterThan(0);
    await fsp.copyFile(at('bb.cdimg'), at('bb-unsigned.cdimg'));

    // unsigned: stored (load itself has no policy here), but the snapshotter refuses to mount it
    const r = await e.cli(['load', '--image', 'bb:unsigned', '--cdimg', at('bb-unsigned.cdimg')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/not signed/);
    expect(r.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(e.d4fsMounts()).toEqual([]);

    // signed by another key: refused too
    await e.cliOk(['sign', at('bb-unsigned.cdimg'), '--key', at('other.pem')]);
    const r2 = await e.cli(['load', '--image', 'bb:other', '--cdimg', at('bb-unsigned.cdimg')]);
    expect(r2.stderr).toMatch(/does not trust/);
    expect(r2.stderr).not.toMatch(/\[d4fs:/);
    expect(r2.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(e.d4fsMounts()).toEqual([]);

    // signed by the trusted key: mounted and runs
    await e.cliOk(['sign', at('bb-unsigned.cdimg'), '--key', at('trusted.pem')]);
    await e.cliOk(['load', '--image', 'bb:signed', '--cdimg', at('bb-unsigned.cdimg')]);
    const out = await e.ctrOk(['run', '--rm', '--snapshotter', 'd4fs', 'bb:signed', 'sig1', '/bin/cat', '/etc/d4fs-release']);
    expect(out).toContain('d4fs test image');
  }, 600_000);
});
