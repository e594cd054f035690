import { ImageRef, parseImageRef } from './ref';
import { ImageSource } from './types';
import { LayoutSource, openDockerArchive, openOciArchive } from './layout';
import { RegistryOptions } from './registry/options';

/** Open the image source a reference names (any transport). */
export async function openSource(ref: string | ImageRef, opts: RegistryOptions = {}): Promise<ImageSource> {
  const r = typeof ref === 'string' ? parseImageRef(ref) : ref;
  switch (r.transport) {
    case 'oci':
      return new LayoutSource(r.path, r.tag, `oci:${r.path}${r.tag ? ':' + r.tag : ''}`);
    case 'oci-archive':
      return openOciArchive(r.path, r.tag);
    case 'docker-archive':
      return openDockerArchive(r.path, r.name);
    case 'docker':
      // lazy on purpose: local transports do not pay for the HTTP client (no cycle: registry/ imports only ref and types)
      return new (require('./registry/source') as typeof import('./registry/source')).RegistrySource(r, opts);
  }
}
