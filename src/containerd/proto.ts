/**
 * The containerd services this client calls: content, images, leases and
 * snapshots (definitions in src/grpc/services.ts).
 */
import type * as grpc from '@grpc/grpc-js';
import { CONTENT_SERVICE, IMAGES_SERVICE, LEASES_SERVICE, SNAPSHOTS_SERVICE, serviceConstructor } from '../grpc/services';

export { CONTENT_SERVICE, IMAGES_SERVICE, LEASES_SERVICE };

/** Client constructors of the four containerd services. */
export interface ContainerdServices {
  Content: grpc.ServiceClientConstructor;
  Images: grpc.ServiceClientConstructor;
  Leases: grpc.ServiceClientConstructor;
  Snapshots: grpc.ServiceClientConstructor;
}

/** The service constructors, built once per process. */
export function containerdServices(): ContainerdServices {
  return {
    Content: serviceConstructor(CONTENT_SERVICE),
    Images: serviceConstructor(IMAGES_SERVICE),
    Leases: serviceConstructor(LEASES_SERVICE),
    Snapshots: serviceConstructor(SNAPSHOTS_SERVICE),
  };
}
