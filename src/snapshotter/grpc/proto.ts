/**
 * Loading containerd's snapshots service definition from <package root>/proto.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** Full name of the service containerd's proxy snapshotter client calls. */
export const SNAPSHOTS_SERVICE = 'containerd.services.snapshots.v1.Snapshots';

/** The package root: the first directory at or above `start` holding package.json. */
export function findPackageRoot(start: string = __dirname): string {
  let dir = path.resolve(start);
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no package.json found at or above ${start}`);
    dir = up;
  }
}

/**
 * Options shared by server and client: proto field names as written
 * (snake_case), enums as their names, int64 as strings, defaults filled in.
 */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

let cached: grpc.ServiceClientConstructor | undefined;

/** The Snapshots service (definition and client constructor), loaded once. */
export function snapshotsService(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  const protoDir = path.join(findPackageRoot(), 'proto');
  const def = protoLoader.loadSync('containerd/snapshots.proto', { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  const pkg = grpc.loadPackageDefinition(def);
  let node: unknown = pkg;
  for (const part of SNAPSHOTS_SERVICE.split('.')) node = (node as Record<string, unknown>)[part];
  if (typeof node !== 'function') throw new Error(`${SNAPSHOTS_SERVICE} not found in ${protoDir}`);
  cached = node as grpc.ServiceClientConstructor;
  return cached;
}
