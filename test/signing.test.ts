/**
 * Signed deltas (issue 11, "beyond"): keygen, sign, verify with d4fs and with
 * plain openssl; policies on load and registry apply refuse unsigned, wrongly
 * signed and foreign-signed files before anything is stored.
 */
import { convertAppImage } from './fixtures/appimage';
import { CliResult, runCli } from './helpers/cli';
import { promises as fsp, existsSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { diffImages } from '../src/delta/diff';
import { WorkerPool } from '../src/workers/pool';
import { EXIT_CODES } from '../src/errors';
import { loadVerifyKey, signaturePayload, parseSignatureFile } from '../src/signing';
import { LocalStore } from '../src/store/store';

const run = promisify(execFile);

let work: string;
let pool: WorkerPool;
const at = (n: string) => join(work, n);

const cli = (...args: string[]): Promise<CliResult> => runCli(args);

const image = (name: string, text: string): Promise<string> => convertAppImage(work, name, text, pool);

let v1: string;
let v2: string;
let delta: string;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-signing-'));
  pool = new WorkerPool(2);
  v1 = await image('v1', 'version one\n');
  v2 = await image('v2', 'version two\n');
  delta = at('v1-v2.cdimg');
  await diffImages({ oldPath: v1, newPath: v2, out: delta, pool });
  for (const alg of ['ed25519', 'ecdsa-p256']) {
    const r = await cli('keygen', '--out', at(`${alg}.pem`), '--algorithm', alg);
    expect(r.code).toBe(0);
  }
  expect((await cli('keygen', '--out', at('other.pem'))).code).toBe(0);
});
afterAll(async () => {
  await pool.close();
  await fsp.rm(work, { recursive: true, force: true });
});

describe('keys and signatures', () => {
  it('keygen writes a private key only we can read and its public half; refuses to overwrite', async () => {
    expect(statSync(at('ed25519.pem')).mode & 0o777).toBe(0o600);
    expect(readFileSync(at('ed25519.pub.pem'), 'utf8')).toMatch(/BEGIN PUBLIC KEY/);
    expect((await cli('keygen', '--out', at('ed25519.pem'))).code).toBe(EXIT_CODES.INVALID_ARGUMENT);
  });

  it.each(['ed25519', 'ecdsa-p256'])('%s: sign, verify with ctr-cli and with plain openssl pkeyutl', async (alg) => {
    const f = at(`s-${alg}.cdimg`);
    await fsp.copyFile(v1, f);
    const s = await cli('sign', f, '--key', at(`${alg}.pem`));
    expect(s.code).toBe(0);
    expect((await cli('verify-signature', f, '--verify-key', at(`${alg}.pub.pem`))).code).toBe(0);
    // openssl: the payload line and the raw signature
    const sig = parseSignatureFile(readFileSync(`${f}.sig`), 'sig');
    await fsp.writeFile(at('payload'), signaturePayload(sig.kind, sig.subject));
    await fsp.writeFile(at('sig.bin'), Buffer.from(sig.signatures[0].signature, 'base64'));
    const o = await run('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', at(`${alg}.pub.pem`), '-rawin', '-in', at('payload'), '-sigfile', at('sig.bin')]);
    expect(o.stdout).toMatch(/Signature Verified Successfully/);
    // and openssl refuses a flipped signature
    const bad = Buffer.from(sig.signatures[0].signature, 'base64');
    bad[bad.length - 5] ^= 1;
    await fsp.writeFile(at('sig.bin'), bad);
    await expect(run('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', at(`${alg}.pub.pem`), '-rawin', '-in', at('payload'), '-sigfile', at('sig.bin')])).rejects.toBeTruthy();
  });

  it('signs with a key made by openssl', async () => {
    await run('openssl', ['genpkey', '-algorithm', 'ED25519', '-out', at('ossl.pem')]);
    await run('openssl', ['pkey', '-in', at('ossl.pem'), '-pubout', '-out', at('ossl.pub.pem')]);
    const f = at('ossl.cdimg');
    await fsp.copyFile(v1, f);
    expect((await cli('sign', f, '--key', at('ossl.pem'))).code).toBe(0);
    expect((await cli('verify-signature', f, '--verify-key', at('ossl.pub.pem'))).code).toBe(0);
  });

  it('refuses (exit 9): unsigned, a flipped signature, a signature over another file, an unknown key', async () => {
    const f = at('r.cdimg');
    await fsp.copyFile(v1, f);
    const unsigned = await cli('verify-signature', f, '--verify-key', at('ed25519.pub.pem'));
    expect(unsigned.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(unsigned.stderr).toMatch(/is not signed/);

    expect((await cli('sign', f, '--key', at('ed25519.pem'))).code).toBe(0);
    const good = readFileSync(`${f}.sig`, 'utf8');
    const j = JSON.parse(good);
    const b = Buffer.from(j.signatures[0].signature, 'base64');
    b[3] ^= 0x80;
    j.signatures[0].signature = b.toString('base64');
    await fsp.writeFile(`${f}.sig`, JSON.stringify(j));
    const flipped = await cli('verify-signature', f, '--verify-key', at('ed25519.pub.pem'));
    expect(flipped.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(flipped.stderr).toMatch(/does not verify/);

    // v2's signature file put beside v1
    const g = at('g.cdimg');
    await fsp.copyFile(v2, g);
    expect((await cli('sign', g, '--key', at('ed25519.pem'))).code).toBe(0);
    await fsp.copyFile(`${g}.sig`, `${f}.sig`);
    const other = await cli('verify-signature', f, '--verify-key', at('ed25519.pub.pem'));
    expect(other.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(other.stderr).toMatch(/for another file/);

    await fsp.writeFile(`${f}.sig`, good);
    const unknown = await cli('verify-signature', f, '--verify-key', at('other.pub.pem'));
    expect(unknown.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(unknown.stderr).toMatch(/keys this policy does not trust/);
    // any of several keys
    expect((await cli('verify-signature', f, '--verify-key', at('other.pub.pem'), '--verify-key', at('ed25519.pub.pem'))).code).toBe(0);
  });
});

describe('policies where files come in', () => {
  it('load: unsigned or foreign-signed files are refused and nothing is stored; a signed chain loads', async () => {
    const store = at('store');
    const a = at('load-v1.cdimg');
    const d = at('load-v1-v2.cdimg');
    await fsp.copyFile(v1, a);
    await fsp.copyFile(delta, d);
    const base = ['load', '--no-containerd', '--store', store, '--verify-key', at('ecdsa-p256.pub.pem')];
    const r1 = await cli(...base, '--image', 'app:1', '--cdimg', a);
    expect(r1.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    const s0 = await LocalStore.open(store);
    expect(s0.files()).toEqual([]);
    s0.close();

    expect((await cli('sign', a, '--key', at('other.pem'))).code).toBe(0);
    expect((await cli(...base, '--image', 'app:1', '--cdimg', a)).code).toBe(EXIT_CODES.UNAUTHENTICATED);

    expect((await cli('sign', a, '--key', at('ecdsa-p256.pem'))).code).toBe(0); // both signatures now
    expect((await cli(...base, '--image', 'app:1', '--cdimg', a)).code).toBe(0);
    expect((await cli(...base, '--image', 'app:2', '--cdimg', d)).code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect((await cli('sign', d, '--key', at('ecdsa-p256.pem'))).code).toBe(0);
    const ok = await cli(...base, '--image', 'app:2', '--cdimg', d, '--json');
    expect(ok.code).toBe(0);
    const s = await LocalStore.open(store);
    try {
      expect(s.files()).toHaveLength(2);
      // signatures are kept beside the stored files
      for (const f of s.files()) expect(existsSync(`${f.path}.sig`)).toBe(true);
      const id = JSON.parse(ok.stdout).imageId as string;
      await s.checkChainSignatures(id, { keys: [await loadVerifyKey(at('ecdsa-p256.pub.pem'))] });
      await expect(s.checkChainSignatures(id, { keys: [await loadVerifyKey(at('ed25519.pub.pem'))] })).rejects.toThrow(/does not trust/);
    } finally {
      s.close();
    }
    // a policy file works like --verify-key
    await fsp.writeFile(at('policy.json'), JSON.stringify({ verifyKeys: ['other.pub.pem'] }));
    const e = at('load-e.cdimg');
    await fsp.copyFile(v2, e);
    expect((await cli('load', '--no-containerd', '--store', at('store2'), '--policy', at('policy.json'), '--image', 'x:1', '--cdimg', e)).code).toBe(EXIT_CODES.UNAUTHENTICATED);
  });

  it('registry apply: an unsigned patch is refused before any registry is contacted', async () => {
    const p = at('fake.patch');
    // a registry patch header is enough for the signature check, which comes first
    const h = Buffer.alloc(72);
    Buffer.from('D4FSRGP\n', 'latin1').copy(h, 0);
    await fsp.writeFile(p, h);
    const r = await cli('registry', 'apply', p, '--to', 'docker://127.0.0.1:1/x', '--verify-key', at('ed25519.pub.pem'));
    expect(r.code).toBe(EXIT_CODES.UNAUTHENTICATED);
    expect(r.stderr).toMatch(/is not signed/);
  });
});
