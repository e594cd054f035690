/**
 * d4fs's client of containerd's API (content, images, leases, snapshots) and
 * the loading of d4fs images into containerd.
 */
export * from './client';
export * from './image';
export * from './load';
export { containerdServices, CONTENT_SERVICE, IMAGES_SERVICE, LEASES_SERVICE } from './proto';
