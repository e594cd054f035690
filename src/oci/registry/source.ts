/**
 * ImageSource over a registry: docker://HOST/REPO[:TAG|@DIGEST].
 */
import type { Readable } from 'node:stream';
import { D4fsError, notFound } from '../../errors';
import { parseDigest } from '../../util/digest';
import { formatImageRef, ImageRef } from '../ref';
import type { Descriptor, ImageSource, RawDocument } from '../types';
import { ClientTuning, RegistryClient } from './client';
import type { RegistryOptions } from './options';

/** A parsed docker:// reference (what parseRegistryRef returns). */
export type DockerRef = Extract<ImageRef, { transport: 'docker' }>;

/**
 * Reads an image from a registry. Like the other sources it verifies nothing
 * but what the client checks itself (manifests fetched by digest); callers
 * verify blobs.
 */
export class RegistrySource implements ImageSource {
  readonly description: string;
  /** The client, exposed so that callers can reuse its connections and tokens. */
  readonly client: RegistryClient;

  /**
   * @param ref parsed reference (parseRegistryRef)
   * @param opts credentials and TLS options
   * @param tuning client timeouts and chunk size
   */
  constructor(private readonly ref: DockerRef, opts: RegistryOptions = {}, tuning: ClientTuning = {}) {
    this.client = new RegistryClient(ref.registry, opts, tuning);
    this.description = formatImageRef(ref);
  }

  /** The manifest or index the reference names (its digest when it has one, else its tag, else latest). */
  async getRoot(): Promise<RawDocument> {
    return this.client.getManifest(this.ref.repository, this.ref.digest ?? this.ref.tag ?? 'latest');
  }

  /** A manifest or index by digest (verified against the digest). */
  async getManifest(digest: string): Promise<RawDocument> {
    return this.client.getManifest(this.ref.repository, parseDigest(digest, 'manifest digest'));
  }

  /**
   * The blob's stored bytes. Foreign layers (descriptors with urls) are only
   * reported as such when the registry lacks them: d4fs does not fetch urls.
   */
  async openBlob(desc: Descriptor): Promise<Readable> {
    try {
      return await this.client.openBlob(this.ref.repository, desc.digest, desc.size);
    } catch (e) {
      if (e instanceof D4fsError && e.kind === 'NOT_FOUND' && desc.urls?.length) {
        throw notFound(
          `${this.description}: blob ${desc.digest} is a foreign layer the registry does not hold ` +
            `(it lives at ${desc.urls.join(', ')}); d4fs does not download foreign layers`,
          { digest: desc.digest, urls: desc.urls },
        );
      }
      throw e;
    }
  }

  /** Close the client's connections. */
  close(): Promise<void> {
    return this.client.close();
  }
}
