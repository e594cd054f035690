import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { D4fsError } from '../../errors';
import { digestOf } from '../../util/digest';
import { MT } from '../mediatypes';
import { apiHostOf, checkRepository, isDigestReference, manifestMediaType, nextLink, RegistryClient } from './client';
import { kindOf } from '../../../test/helpers/errors';

const MANIFEST = Buffer.from(JSON.stringify({ schemaVersion: 2, config: {}, layers: [] }));

describe('helpers', () => {
  test('docker.io is served by registry-1.docker.io', () => {
    expect(apiHostOf('docker.io')).toBe('registry-1.docker.io');
    expect(apiHostOf('index.docker.io')).toBe('registry-1.docker.io');
    expect(apiHostOf('127.0.0.1:5000')).toBe('127.0.0.1:5000');
  });

  test('repository names and references are validated', () => {
    expect(checkRepository('library/nginx')).toBe('library/nginx');
    expect(checkRepository('a/b-c/d__e.f')).toBe('a/b-c/d__e.f');
    for (const bad of ['', '../x', 'A/b', 'a//b', 'a/', 'a?b', 'a b']) expect(() => checkRepository(bad)).toThrow(D4fsError);
    expect(isDigestReference('v1.2_3')).toBe(false);
    expect(isDigestReference(digestOf('x'))).toBe(true);
    for (const bad of ['', 'a/b', '.x', 'sha256:abc', 'md5:' + '0'.repeat(32), 'x'.repeat(129)]) {
      expect(() => isDigestReference(bad)).toThrow(D4fsError);
    }
  });

  test('Link header: the rel="next" target', () => {
    expect(nextLink('</v2/x/tags/list?n=2&last=b>; rel="next"')).toBe('/v2/x/tags/list?n=2&last=b');
    expect(nextLink('<https://r/a>; rel="prev", <https://r/b>; rel=next')).toBe('https://r/b');
    expect(nextLink('<https://r/a>; rel="prev"')).toBeUndefined();
    expect(nextLink(undefined)).toBeUndefined();
  });

  test('manifest media type from Content-Type, else from the document', () => {
    expect(manifestMediaType(`${MT.DOCKER_MANIFEST}; charset=utf-8`, MANIFEST)).toBe(MT.DOCKER_MANIFEST);
    expect(manifestMediaType('application/json', MANIFEST)).toBe(MT.OCI_MANIFEST);
    expect(manifestMediaType(undefined, Buffer.from('{"schemaVersion":2,"manifests":[]}'))).toBe(MT.OCI_INDEX);
    expect(manifestMediaType('', Buffer.from(`{"mediaType":"${MT.DOCKER_LIST}"}`))).toBe(MT.DOCKER_LIST);
    expect(() => manifestMediaType('text/plain', Buffer.from('not json'))).toThrow(D4fsError);
  });

  test('registry host is validated', () => {
    expect(() => new RegistryClient('http://x')).toThrow(D4fsError);
    expect(() => new RegistryClient('a b')).toThrow(D4fsError);
    expect(() => new RegistryClient('reg.example:5000/path')).toThrow(D4fsError);
    expect(new RegistryClient('[::1]:5000').apiHost).toBe('[::1]:5000');
  });
});

/** A registry that serves one manifest on /v2/x/manifests/v1 and counts requests. */
function handler(seen: string[]): http.RequestListener {
  return (req, res) => {
    seen.push(req.url ?? '');
    if (req.url === '/v2/') return void res.writeHead(200).end('{}');
    res.writeHead(200, { 'Content-Type': MT.OCI_MANIFEST }).end(MANIFEST);
  };
}

function listen(server: http.Server, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve) => server.listen(0, host, () => resolve((server.address() as AddressInfo).port)));
}

describe('scheme and TLS', () => {
  let dir: string;
  let tlsServer: https.Server;
  let plainServer: http.Server;
  let tlsPort: number;
  let plainPort: number;
  const tlsSeen: string[] = [];
  const plainSeen: string[] = [];

  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-tls-'));
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-subj', '/CN=localhost', '-days', '1', '-keyout', key, '-out', cert,
    ]);
    tlsServer = https.createServer({ key: await fsp.readFile(key), cert: await fsp.readFile(cert) }, handler(tlsSeen));
    plainServer = http.createServer(handler(plainSeen));
    tlsPort = await listen(tlsServer);
    plainPort = await listen(plainServer);
  });
  afterAll(async () => {
    tlsServer.closeAllConnections();
    plainServer.closeAllConnections();
    await Promise.all([new Promise((r) => tlsServer.close(r)), new Promise((r) => plainServer.close(r))]);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test('self-signed https on loopback: accepted by default and with tlsVerify=false, refused with tlsVerify=true', async () => {
    for (const opts of [{}, { tlsVerify: false }]) {
      const c = new RegistryClient(`localhost:${tlsPort}`, opts);
      expect((await c.getManifest('x', 'v1')).digest).toBe(digestOf(MANIFEST));
      await c.close();
    }
    expect(tlsSeen).toContain('/v2/x/manifests/v1');
    const strict = new RegistryClient(`127.0.0.1:${tlsPort}`, { tlsVerify: true });
    const err = await strict.getManifest('x', 'v1').catch((e: D4fsError) => e);
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe('UNAVAILABLE');
    expect((err as D4fsError).message).toContain(`cannot reach registry 127.0.0.1:${tlsPort}`);
    await strict.close();
  });

  test('plain http: loopback falls back to it, unless tlsVerify=true', async () => {
    const c = new RegistryClient(`127.0.0.1:${plainPort}`);
    expect((await c.getManifest('x', 'v1')).digest).toBe(digestOf(MANIFEST));
    expect(plainSeen).toEqual(['/v2/', '/v2/x/manifests/v1']);
    await c.close();
    const strict = new RegistryClient(`127.0.0.1:${plainPort}`, { tlsVerify: true });
    expect(await kindOf(strict.getManifest('x', 'v1'))).toBe('UNAVAILABLE');
    expect(plainSeen).toHaveLength(2);
    await strict.close();
  });
});
