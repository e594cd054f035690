import type { Readable } from 'node:stream';

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
}

export interface OciIndex {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export interface OciManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** The parts of the image config d4fs reads; the raw bytes are kept whole. */
export interface ImageConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  config?: {
    User?: string;
    Env?: string[];
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    Labels?: Record<string, string> | null;
    ExposedPorts?: Record<string, unknown>;
    Volumes?: Record<string, unknown>;
    StopSignal?: string;
  };
  rootfs: { type: string; diff_ids: string[] };
  history?: unknown[];
  created?: string;
}

/** Raw manifest-like document as fetched: bytes are what the digest covers. */
export interface RawDocument {
  bytes: Buffer;
  mediaType: string;
  digest: string;
}

/**
 * Where an image comes from. Implementations: OCI layout directory,
 * oci-archive, docker-archive, registry. Implementations verify nothing
 * themselves except where noted: src/oci/image.ts verifies every digest.
 */
export interface ImageSource {
  /** Human description for messages, e.g. "oci:/tmp/img:latest". */
  readonly description: string;
  /** The top-level document the reference names (index or manifest). */
  getRoot(): Promise<RawDocument>;
  /** A manifest or index by digest (children of an index). */
  getManifest(digest: string): Promise<RawDocument>;
  /** Stream the blob's stored bytes (compressed as stored). */
  openBlob(desc: Descriptor): Promise<Readable>;
  /** Release temp files, sockets. */
  close(): Promise<void>;
}
