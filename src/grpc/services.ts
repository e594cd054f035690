/**
 * containerd's gRPC services (content, images, leases, snapshots) as
 * grpc-js service definitions and client constructors, for both the
 * snapshotter's server and the clients of containerd.
 *
 * The definitions come from proto/containerd.json, which
 * scripts/gen-proto-json.js derives from the .proto files in
 * proto/containerd (written for d4fs from containerd 1.6's API), and are
 * built with protobufjs's light build. Messages look exactly as
 * @grpc/proto-loader would present them with {@link MESSAGE_OPTIONS}: field
 * names as written (snake_case), enums as names, int64 as decimal strings,
 * defaults filled in. Parsing the .proto text and building proto-loader's
 * reflection descriptors cost every short-lived command ~50 ms of CPU before
 * it could send a request; this costs a few. services.test.ts checks that
 * the JSON matches the .proto files and that every method encodes and
 * decodes as proto-loader's definition of it does.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type * as protobuf from 'protobufjs';
import { packageRoot } from '../util/paths';

/** How messages are turned into plain objects (proto-loader's options of the same names). */
export const MESSAGE_OPTIONS: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, oneofs: true };

export const CONTENT_SERVICE = 'containerd.services.content.v1.Content';
export const IMAGES_SERVICE = 'containerd.services.images.v1.Images';
export const LEASES_SERVICE = 'containerd.services.leases.v1.Leases';
export const SNAPSHOTS_SERVICE = 'containerd.services.snapshots.v1.Snapshots';

/** The JSON the definitions are built from. */
export function protoJsonPath(): string {
  return path.join(packageRoot(), 'proto', 'containerd.json');
}

let root: protobuf.Root | undefined;
const constructors = new Map<string, grpc.ServiceClientConstructor>();

/** grpc-js's definition of one method: serializers over protobufjs's generated coders. */
function methodDefinition(service: string, m: protobuf.Method): grpc.MethodDefinition<object, object> {
  m.resolve();
  const req = m.resolvedRequestType!;
  const res = m.resolvedResponseType!;
  const serialize = (t: protobuf.Type) => (o: object): Buffer => {
    if (Array.isArray(o)) throw new Error(`Failed to serialize message: expected object with ${t.name} structure, got array instead`);
    return Buffer.from(t.encode(t.fromObject(o as Record<string, unknown>)).finish());
  };
  const deserialize = (t: protobuf.Type) => (b: Buffer): object => t.toObject(t.decode(b), MESSAGE_OPTIONS);
  return {
    path: `/${service}/${m.name}`,
    requestStream: !!m.requestStream,
    responseStream: !!m.responseStream,
    requestSerialize: serialize(req),
    requestDeserialize: deserialize(req),
    responseSerialize: serialize(res),
    responseDeserialize: deserialize(res),
    originalName: m.name.charAt(0).toLowerCase() + m.name.slice(1),
  };
}

/** The client constructor of a service (its `.service` is the definition a server adds). */
export function serviceConstructor(fullName: string): grpc.ServiceClientConstructor {
  const known = constructors.get(fullName);
  if (known) return known;
  if (!root) {
    const pb = require('protobufjs/light') as typeof protobuf;
    root = pb.Root.fromJSON(JSON.parse(fs.readFileSync(protoJsonPath(), 'utf8')) as protobuf.INamespace);
  }
  let svc: protobuf.Service;
  try {
    svc = root.lookupService(fullName);
  } catch {
    throw new Error(`${fullName} is not defined in ${protoJsonPath()}`);
  }
  const def: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const m of svc.methodsArray) def[m.name] = methodDefinition(fullName, m);
  const ctor = grpc.makeGenericClientConstructor(def as grpc.ServiceDefinition, fullName);
  constructors.set(fullName, ctor);
  return ctor;
}
