/**
 * Loading the definitions of containerd's content, images and leases services
 * from <package root>/proto (written for d4fs from containerd 1.6's API). The
 * snapshots service comes from the snapshotter's loader, which reads the same
 * tree.
 */
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { findPackageRoot, snapshotsService } from '../snapshotter/grpc/proto';

/** Full names of the containerd services this client calls. */
export const CONTENT_SERVICE = 'containerd.services.content.v1.Content';
export const IMAGES_SERVICE = 'containerd.services.images.v1.Images';
export const LEASES_SERVICE = 'containerd.services.leases.v1.Leases';

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

let cached: ContainerdServices | undefined;

/** Looks up `fullName` (a dotted service name) in a loaded package tree. */
function lookup(pkg: grpc.GrpcObject, fullName: string, protoDir: string): grpc.ServiceClientConstructor {
  let node: unknown = pkg;
  for (const part of fullName.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  if (typeof node !== 'function') throw new Error(`${fullName} not found in ${protoDir}`);
  return node as grpc.ServiceClientConstructor;
}

/** The service constructors, loaded once per process. */
export function containerdServices(): ContainerdServices {
  if (cached) return cached;
  const protoDir = path.join(findPackageRoot(__dirname), 'proto');
  const def = protoLoader.loadSync(['containerd/content.proto', 'containerd/images.proto', 'containerd/leases.proto'], {
    ...LOADER_OPTIONS,
    includeDirs: [protoDir],
  });
  const pkg = grpc.loadPackageDefinition(def);
  cached = {
    Content: lookup(pkg, CONTENT_SERVICE, protoDir),
    Images: lookup(pkg, IMAGES_SERVICE, protoDir),
    Leases: lookup(pkg, LEASES_SERVICE, protoDir),
    Snapshots: snapshotsService(),
  };
  return cached;
}
