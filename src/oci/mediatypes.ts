/** OCI and Docker media types (facts from the OCI image spec and Docker's manifest v2 schema 2). */
export const MT = {
  OCI_INDEX: 'application/vnd.oci.image.index.v1+json',
  OCI_MANIFEST: 'application/vnd.oci.image.manifest.v1+json',
  OCI_CONFIG: 'application/vnd.oci.image.config.v1+json',
  OCI_LAYER_TAR: 'application/vnd.oci.image.layer.v1.tar',
  OCI_LAYER_GZIP: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OCI_LAYER_ZSTD: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OCI_LAYER_ND_TAR: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  OCI_LAYER_ND_GZIP: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  OCI_LAYER_ND_ZSTD: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  OCI_EMPTY: 'application/vnd.oci.empty.v1+json',
  DOCKER_LIST: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DOCKER_MANIFEST: 'application/vnd.docker.distribution.manifest.v2+json',
  DOCKER_CONFIG: 'application/vnd.docker.container.image.v1+json',
  DOCKER_LAYER_GZIP: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DOCKER_LAYER_FOREIGN_GZIP: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  DOCKER_LAYER_TAR: 'application/vnd.docker.image.rootfs.diff.tar',
} as const;

export type LayerCompression = 'none' | 'gzip' | 'zstd';

export const INDEX_TYPES: readonly string[] = [MT.OCI_INDEX, MT.DOCKER_LIST];
export const MANIFEST_TYPES: readonly string[] = [MT.OCI_MANIFEST, MT.DOCKER_MANIFEST];

/** Compression of a layer media type, or undefined when it is not a layer type we know. */
export function layerCompression(mediaType: string): LayerCompression | undefined {
  switch (mediaType) {
    case MT.OCI_LAYER_TAR:
    case MT.OCI_LAYER_ND_TAR:
    case MT.DOCKER_LAYER_TAR:
      return 'none';
    case MT.OCI_LAYER_GZIP:
    case MT.OCI_LAYER_ND_GZIP:
    case MT.DOCKER_LAYER_GZIP:
    case MT.DOCKER_LAYER_FOREIGN_GZIP:
      return 'gzip';
    case MT.OCI_LAYER_ZSTD:
    case MT.OCI_LAYER_ND_ZSTD:
      return 'zstd';
    default:
      return undefined;
  }
}

/** Accept header for manifest requests: everything we can read. */
export const MANIFEST_ACCEPT = [MT.OCI_INDEX, MT.OCI_MANIFEST, MT.DOCKER_LIST, MT.DOCKER_MANIFEST].join(', ');
