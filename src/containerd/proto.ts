/**
 * Loading the definitions of containerd's services (content, images, leases
 * and snapshots) from <package root>/proto (written for d4fs from containerd
 * 1.6's API): the one proto loader of d4fs (the containerd client, the
 * snapshotter's gRPC server, and the tests' CRI client).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoDir } from '../util/paths';

/** Full names of the containerd services d4fs calls or serves. */
export const CONTENT_SERVICE = 'containerd.services.content.v1.Content';
export const IMAGES_SERVICE = 'containerd.services.images.v1.Images';
export const LEASES_SERVICE = 'containerd.services.leases.v1.Leases';
export const SNAPSHOTS_SERVICE = 'containerd.services.snapshots.v1.Snapshots';

/**
 * Loader options: field names as written in the .proto files (snake_case),
 * enums as names, int64 as decimal strings (sizes may exceed 2^53 in
 * principle), defaults filled in so absent fields read as '' / 0 / {}.
 */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** Client constructors of the four containerd services. */
export interface ContainerdServices {
  Content: grpc.ServiceClientConstructor;
  Images: grpc.ServiceClientConstructor;
  Leases: grpc.ServiceClientConstructor;
  Snapshots: grpc.ServiceClientConstructor;
}

/** Packages loaded so far, by .proto file. */
const loaded = new Map<string, grpc.GrpcObject>();

/**
 * Service `fullName` (a dotted name) of `file` (a path under proto/, e.g.
 * "containerd/snapshots.proto"): its definition and client constructor. Each
 * file is loaded once per process.
 */
export function loadService(file: string, fullName: string): grpc.ServiceClientConstructor {
  const dir = protoDir();
  let pkg = loaded.get(file);
  if (!pkg) {
    pkg = grpc.loadPackageDefinition(protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs: [dir] }));
    loaded.set(file, pkg);
  }
  let node: unknown = pkg;
  for (const part of fullName.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  if (typeof node !== 'function') throw new Error(`${fullName} not found in ${dir}/${file}`);
  return node as grpc.ServiceClientConstructor;
}

/** The Snapshots service (definition and client constructor), loaded once. */
export function snapshotsService(): grpc.ServiceClientConstructor {
  return loadService('containerd/snapshots.proto', SNAPSHOTS_SERVICE);
}

/** The service constructors, loaded once per process. */
export function containerdServices(): ContainerdServices {
  return {
    Content: loadService('containerd/content.proto', CONTENT_SERVICE),
    Images: loadService('containerd/images.proto', IMAGES_SERVICE),
    Leases: loadService('containerd/leases.proto', LEASES_SERVICE),
    Snapshots: snapshotsService(),
  };
}
