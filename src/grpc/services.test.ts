/**
 * The service definitions built from proto/containerd.json behave as
 * @grpc/proto-loader's definitions of the .proto files: same methods, paths,
 * streaming flags and names, and every message encodes and decodes the same.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { packageRoot } from '../util/paths';
import { CONTENT_SERVICE, IMAGES_SERVICE, LEASES_SERVICE, SNAPSHOTS_SERVICE, protoJsonPath, serviceConstructor } from './services';

const SERVICES = [CONTENT_SERVICE, IMAGES_SERVICE, LEASES_SERVICE, SNAPSHOTS_SERVICE];
const { protoJson, FILES } = require(path.join(packageRoot(), 'scripts', 'gen-proto-json.js')) as { protoJson: () => string; FILES: string[] };

/** proto-loader's definition of a service, from the .proto files. */
function reference(name: string): grpc.ServiceDefinition {
  const def = protoLoader.loadSync(FILES, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [path.join(packageRoot(), 'proto')] });
  return def[name] as grpc.ServiceDefinition;
}

/** Sample requests and responses: nested messages, maps, enums, int64, timestamps, repeated fields, bytes. */
const SAMPLES: Record<string, { req: object; res: object }> = {
  [`${SNAPSHOTS_SERVICE}/Prepare`]: {
    req: { snapshotter: 'd4fs', key: 'k1', parent: 'sha256:abc', labels: { 'containerd.io/snapshot.ref': 'sha256:def', a: 'b' } },
    res: { mounts: [{ type: 'overlay', source: 'overlay', target: '', options: ['lowerdir=/a:/b', 'upperdir=/u'] }] },
  },
  [`${SNAPSHOTS_SERVICE}/Stat`]: {
    req: { snapshotter: 'd4fs', key: 'k1' },
    res: { info: { name: 'k1', parent: 'p', kind: 'COMMITTED', created_at: { seconds: '1700000000', nanos: 5 }, updated_at: { seconds: '1700000001', nanos: 0 }, labels: { x: 'y' } } },
  },
  [`${SNAPSHOTS_SERVICE}/Usage`]: { req: { snapshotter: 'd4fs', key: 'k1' }, res: { size: '9007199254740993', inodes: '12' } },
  [`${CONTENT_SERVICE}/Write`]: {
    req: { action: 'COMMIT', ref: 'r', total: '5000000000', expected: 'sha256:00', offset: '4294967296', data: Buffer.from([0, 1, 2, 255]), labels: { l: 'v' } },
    res: { action: 'STAT', started_at: { seconds: '1', nanos: 2 }, updated_at: null, offset: '7', total: '8', digest: 'sha256:11' },
  },
  [`${IMAGES_SERVICE}/Create`]: {
    req: { image: { name: 'n:1', labels: { a: 'b' }, target: { media_type: 'application/vnd.oci.image.manifest.v1+json', digest: 'sha256:22', size: '123', annotations: {} } } },
    res: { image: { name: 'n:1', labels: {}, target: { media_type: 'm', digest: 'd', size: '0', annotations: { k: 'v' } } } },
  },
  [`${LEASES_SERVICE}/Create`]: { req: { id: 'lease-1', labels: { 'containerd.io/gc.expire': '2026-01-01T00:00:00Z' } }, res: { lease: { id: 'lease-1', labels: {} } } },
};

describe('containerd service definitions (proto/containerd.json)', () => {
  it('are generated from the .proto files as they are now (run scripts/gen-proto-json.js after editing one)', () => {
    expect(fs.readFileSync(protoJsonPath(), 'utf8')).toBe(protoJson());
  });

  it.each(SERVICES)('%s has the methods, paths, streaming flags and names proto-loader gives', (name) => {
    const ours = serviceConstructor(name).service;
    const ref = reference(name);
    expect(Object.keys(ours).sort()).toEqual(Object.keys(ref).sort());
    expect(Object.keys(ours).length).toBeGreaterThan(2);
    for (const [m, d] of Object.entries(ref)) {
      const o = ours[m];
      expect({ path: o.path, requestStream: o.requestStream, responseStream: o.responseStream, originalName: o.originalName }).toEqual({
        path: d.path,
        requestStream: d.requestStream,
        responseStream: d.responseStream,
        originalName: d.originalName,
      });
    }
  });

  it.each(Object.keys(SAMPLES))('%s encodes and decodes as proto-loader does', (key) => {
    const [svcName, method] = [key.slice(0, key.lastIndexOf('/')), key.slice(key.lastIndexOf('/') + 1)];
    const o = serviceConstructor(svcName).service[method];
    const r = reference(svcName)[method];
    const { req, res } = SAMPLES[key];
    // The bytes may differ only in proto3 fields holding their default value
    // (written by one, left out by the other): both mean the same message.
    const [ourReq, refReq] = [o.requestSerialize(req), r.requestSerialize(req)];
    expect(ourReq.length).toBeGreaterThan(0);
    expect(r.requestDeserialize(ourReq)).toEqual(r.requestDeserialize(refReq));
    expect(o.requestDeserialize(refReq)).toEqual(r.requestDeserialize(refReq));
    expect(o.requestDeserialize(ourReq)).toEqual(r.requestDeserialize(refReq));
    const [ourRes, refRes] = [o.responseSerialize(res), r.responseSerialize(res)];
    expect(r.responseDeserialize(ourRes)).toEqual(r.responseDeserialize(refRes));
    expect(o.responseDeserialize(refRes)).toEqual(r.responseDeserialize(refRes));
    expect(o.responseDeserialize(ourRes)).toEqual(r.responseDeserialize(refRes));
    // defaults filled in, int64 as strings, enums as names
    expect(o.responseDeserialize(Buffer.alloc(0))).toEqual(r.responseDeserialize(Buffer.alloc(0)));
  });

  it('rejects an unknown service with a clear message', () => {
    expect(() => serviceConstructor('containerd.services.nope.v1.Nope')).toThrow(/not defined in .*containerd\.json/);
  });
});
