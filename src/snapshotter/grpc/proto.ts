/**
 * containerd's snapshots service definition (see src/grpc/services.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { SNAPSHOTS_SERVICE, serviceConstructor } from '../../grpc/services';

/** Full name of the service containerd's proxy snapshotter client calls. */
export { SNAPSHOTS_SERVICE };

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

/** The Snapshots service (definition and client constructor), loaded once. */
export function snapshotsService(): grpc.ServiceClientConstructor {
  return serviceConstructor(SNAPSHOTS_SERVICE);
}
