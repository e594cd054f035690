import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { D4fsError } from '../../errors';
import {
  authFileCandidates,
  authKeyMatches,
  Authenticator,
  isLoopbackHost,
  parseChallenges,
  parseCredsFlag,
  resolveCredentials,
  TokenHttp,
} from './auth';
import { kindOf } from '../../../test/helpers/errors';

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('parseChallenges', () => {
  test('bearer with quoted parameters', () => {
    expect(parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"')).toEqual([
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' },
      },
    ]);
  });
  test('several challenges, bare values, escapes, odd spacing and case', () => {
    expect(parseChallenges('Basic realm="a \\"b\\"" , BEARER Realm = http://x/t, error=insufficient_scope')).toEqual([
      { scheme: 'basic', params: { realm: 'a "b"' } },
      { scheme: 'bearer', params: { realm: 'http://x/t', error: 'insufficient_scope' } },
    ]);
  });
  test('array headers and garbage', () => {
    expect(parseChallenges(['Basic realm="r"', 'Bearer realm="s"']).map((c) => c.scheme)).toEqual(['basic', 'bearer']);
    expect(parseChallenges(undefined)).toEqual([]);
    expect(parseChallenges('  ')).toEqual([]);
  });
});

describe('credentials', () => {
  test('--creds splits at the first colon', () => {
    expect(parseCredsFlag('u:p:q')).toEqual({ kind: 'basic', username: 'u', password: 'p:q' });
    expect(() => parseCredsFlag('nocolon')).toThrow(D4fsError);
    expect(() => parseCredsFlag(':p')).toThrow(D4fsError);
  });

  test('auth-file keys match with or without scheme and path; docker.io matches index.docker.io/v1/', () => {
    expect(authKeyMatches('127.0.0.1:5000', '127.0.0.1:5000')).toBe(true);
    expect(authKeyMatches('https://127.0.0.1:5000', '127.0.0.1:5000')).toBe(true);
    expect(authKeyMatches('http://127.0.0.1:5000/v2/', '127.0.0.1:5000')).toBe(true);
    expect(authKeyMatches('127.0.0.1:5001', '127.0.0.1:5000')).toBe(false);
    expect(authKeyMatches('https://index.docker.io/v1/', 'docker.io')).toBe(true);
    expect(authKeyMatches('docker.io', 'docker.io')).toBe(true);
    expect(authKeyMatches('quay.io', 'docker.io')).toBe(false);
  });

  test('loopback hosts', () => {
    for (const h of ['localhost', '127.0.0.1', '127.1.2.3', '::1', '[::1]']) expect(isLoopbackHost(h)).toBe(true);
    for (const h of ['10.0.0.1', 'example.com', '127.example.com', 'localhost.example.com']) expect(isLoopbackHost(h)).toBe(false);
  });

  describe('files', () => {
    let dir: string;
    let env: NodeJS.ProcessEnv;
    const write = async (rel: string, auths: unknown): Promise<string> => {
      const f = path.join(dir, rel);
      await fsp.mkdir(path.dirname(f), { recursive: true });
      await fsp.writeFile(f, typeof auths === 'string' ? auths : JSON.stringify({ auths }));
      return f;
    };
    beforeEach(async () => {
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-auth-'));
      env = { HOME: path.join(dir, 'home'), DOCKER_CONFIG: path.join(dir, 'dc'), XDG_RUNTIME_DIR: path.join(dir, 'run') };
    });
    afterEach(() => fsp.rm(dir, { recursive: true, force: true }));

    test('search order: authFile, $REGISTRY_AUTH_FILE, $DOCKER_CONFIG, ~/.docker, $XDG_RUNTIME_DIR', async () => {
      const explicit = path.join(dir, 'explicit.json');
      env.REGISTRY_AUTH_FILE = path.join(dir, 'raf.json');
      expect(authFileCandidates({ authFile: explicit }, env)).toEqual([
        explicit,
        env.REGISTRY_AUTH_FILE,
        path.join(dir, 'dc', 'config.json'),
        path.join(dir, 'home', '.docker', 'config.json'),
        path.join(dir, 'run', 'containers', 'auth.json'),
      ]);
      await write('run/containers/auth.json', { 'reg.test': { auth: b64('xdg:1') } });
      expect(await resolveCredentials('reg.test', {}, env)).toEqual({ kind: 'basic', username: 'xdg', password: '1' });
      await write('home/.docker/config.json', { 'reg.test': { auth: b64('home:2') } });
      expect(await resolveCredentials('reg.test', {}, env)).toMatchObject({ username: 'home' });
      await write('dc/config.json', { 'https://reg.test': { auth: b64('dc:3') } });
      expect(await resolveCredentials('reg.test', {}, env)).toMatchObject({ username: 'dc' });
      await write('raf.json', { 'reg.test': { username: 'raf', password: '4' } });
      expect(await resolveCredentials('reg.test', {}, env)).toMatchObject({ username: 'raf' });
      await write('explicit.json', { 'reg.test': { auth: b64('explicit:5:6') } });
      expect(await resolveCredentials('reg.test', { authFile: explicit }, env)).toEqual({ kind: 'basic', username: 'explicit', password: '5:6' });
      expect(await resolveCredentials('reg.test', { authFile: explicit, creds: 'flag:7' }, env)).toMatchObject({ username: 'flag' });
      expect(await resolveCredentials('other.test', { authFile: explicit }, env)).toBeUndefined();
    });

    test('a file without an entry for the registry falls through to the next', async () => {
      const explicit = await write('explicit.json', { 'other.test': { auth: b64('o:p') }, 'reg.test': {} });
      await write('home/.docker/config.json', { 'reg.test': { auth: b64('home:2') } });
      expect(await resolveCredentials('reg.test', { authFile: explicit }, env)).toMatchObject({ username: 'home' });
    });

    test('identity and registry tokens', async () => {
      const f = await write('a.json', {
        'https://index.docker.io/v1/': { identitytoken: 'refresh', auth: b64('u:') },
        'reg.test': { registrytoken: 'bearer-token' },
      });
      expect(await resolveCredentials('docker.io', { authFile: f }, env)).toEqual({ kind: 'identityToken', token: 'refresh', username: 'u' });
      expect(await resolveCredentials('reg.test', { authFile: f }, env)).toEqual({ kind: 'registryToken', token: 'bearer-token' });
      expect(await resolveCredentials('reg.test', { registryToken: 't' }, env)).toEqual({ kind: 'registryToken', token: 't' });
    });

    test('bad input is INVALID_ARGUMENT without echoing secrets', async () => {
      expect(await kindOf(resolveCredentials('reg.test', { authFile: path.join(dir, 'missing.json') }, env))).toBe('INVALID_ARGUMENT');
      const broken = await write('broken.json', '{"auths": {"reg.test": {"auth": "c2VjcmV0"');
      expect(await kindOf(resolveCredentials('reg.test', { authFile: broken }, env))).toBe('INVALID_ARGUMENT');
      const noColon = await write('nocolon.json', { 'reg.test': { auth: b64('secretvalue') } });
      try {
        await resolveCredentials('reg.test', { authFile: noColon }, env);
        throw new Error('expected a failure');
      } catch (e) {
        expect((e as D4fsError).kind).toBe('INVALID_ARGUMENT');
        expect((e as Error).message).not.toContain('secretvalue');
      }
      expect(await kindOf(resolveCredentials('reg.test', { creds: 'a:b', registryToken: 't' }, env))).toBe('INVALID_ARGUMENT');
      expect(await resolveCredentials('reg.test', {}, env)).toBeUndefined(); // nothing anywhere
    });
  });
});

describe('Authenticator', () => {
  const emptyEnv: NodeJS.ProcessEnv = { HOME: '/nonexistent-d4fs-home' };
  const tokenServer = (answer: (url: URL) => { status: number; body: unknown }) => {
    const calls: Array<{ url: URL; headers: Record<string, string> }> = [];
    const http: TokenHttp = async (url, init) => {
      calls.push({ url, headers: init.headers });
      const a = answer(url);
      return { status: a.status, body: Buffer.from(JSON.stringify(a.body)) };
    };
    return { calls, http };
  };

  test('anonymous until challenged; Basic answers with the credentials', async () => {
    const { http } = tokenServer(() => ({ status: 500, body: {} }));
    const a = new Authenticator('reg.test', { creds: 'u:p' }, http, emptyEnv);
    expect(await a.authorization(['repository:x:pull'], 'x')).toBeUndefined();
    expect(await a.challenged('Basic realm="r"', ['repository:x:pull'])).toBe(true);
    expect(await a.authorization(['repository:x:pull'], 'x')).toBe(`Basic ${b64('u:p')}`);
    const anon = new Authenticator('reg.test', {}, http, emptyEnv);
    expect(await anon.challenged('Basic realm="r"', [])).toBe(false);
    expect((await anon.failure('x')).message).toContain('authentication required for x');
  });

  test('Bearer: scopes of the request and the challenge, token cached until challenged again', async () => {
    let n = 0;
    const { calls, http } = tokenServer(() => ({ status: 200, body: { token: `t${++n}` } }));
    const a = new Authenticator('reg.test', { creds: 'u:p' }, http, emptyEnv);
    a.learn('Bearer realm="https://auth.test/token?x=1",service="svc",scope="repository:other:pull"');
    expect(await a.authorization(['repository:x:pull,push'], 'x')).toBe('Bearer t1');
    expect(await a.authorization(['repository:x:pull,push'], 'x')).toBe('Bearer t1');
    expect(calls).toHaveLength(1);
    const u = calls[0].url;
    expect(u.origin + u.pathname).toBe('https://auth.test/token');
    expect(u.searchParams.get('x')).toBe('1');
    expect(u.searchParams.get('service')).toBe('svc');
    expect(u.searchParams.getAll('scope')).toEqual(['repository:other:pull', 'repository:x:pull,push']);
    expect(calls[0].headers.Authorization).toBe(`Basic ${b64('u:p')}`);
    expect(await a.challenged('Bearer realm="https://auth.test/token",service="svc",scope="repository:other:pull"', ['repository:x:pull,push'])).toBe(true);
    expect(await a.authorization(['repository:x:pull,push'], 'x')).toBe('Bearer t2');
  });

  test('concurrent requests share one token fetch', async () => {
    const { calls, http } = tokenServer(() => ({ status: 200, body: { access_token: 'shared', expires_in: 10 } }));
    const a = new Authenticator('reg.test', {}, http, emptyEnv);
    a.learn('Bearer realm="https://auth.test/token",service="svc"');
    const all = await Promise.all([1, 2, 3].map(() => a.authorization(['repository:x:pull'], 'x')));
    expect(all).toEqual(['Bearer shared', 'Bearer shared', 'Bearer shared']);
    expect(calls).toHaveLength(1);
    expect(calls[0].headers.Authorization).toBeUndefined(); // anonymous token
  });

  test('token server refusals and nonsense', async () => {
    const refuse = tokenServer(() => ({ status: 401, body: {} }));
    const a = new Authenticator('reg.test', { creds: 'u:p' }, refuse.http, emptyEnv);
    a.learn('Bearer realm="https://auth.test/token"');
    expect(await kindOf(a.authorization([], 'x'))).toBe('UNAUTHENTICATED');
    const empty = tokenServer(() => ({ status: 200, body: { nothing: true } }));
    const b = new Authenticator('reg.test', {}, empty.http, emptyEnv);
    b.learn('Bearer realm="https://auth.test/token"');
    expect(await kindOf(b.authorization([], 'x'))).toBe('UNAVAILABLE');
    const c = new Authenticator('reg.test', {}, empty.http, emptyEnv);
    c.learn('Bearer service="no realm"');
    expect(await kindOf(c.authorization([], 'x'))).toBe('UNAVAILABLE');
  });

  test('credentials are not sent to a plain-http token server on another machine', async () => {
    const { calls, http } = tokenServer(() => ({ status: 200, body: { token: 't' } }));
    const a = new Authenticator('reg.test', { creds: 'u:p' }, http, emptyEnv);
    a.learn('Bearer realm="http://auth.test/token"');
    expect(await kindOf(a.authorization([], 'x'))).toBe('UNAVAILABLE');
    expect(calls).toHaveLength(0);
    const insecure = new Authenticator('reg.test', { creds: 'u:p', tlsVerify: false }, http, emptyEnv);
    insecure.learn('Bearer realm="http://auth.test/token"');
    expect(await insecure.authorization([], 'x')).toBe('Bearer t');
  });

  test('a registry token is sent as is and never retried', async () => {
    const { calls, http } = tokenServer(() => ({ status: 200, body: { token: 'other' } }));
    const a = new Authenticator('reg.test', { registryToken: 'given' }, http, emptyEnv);
    a.learn('Bearer realm="https://auth.test/token"');
    expect(await a.authorization([], 'x')).toBe('Bearer given');
    expect(await a.challenged('Bearer realm="https://auth.test/token"', [])).toBe(false);
    expect(calls).toHaveLength(0);
  });
});
