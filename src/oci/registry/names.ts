/** What a registry names and answers, checked: hosts, repository names, references, Link headers, manifest media types. */
import { corrupt, invalidArgument } from '../../errors';
import { parseDigest } from '../../util/digest';
import { MT } from '../mediatypes';

/** A registry host, "host[:port]". */
export const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;
/** A repository name ("library/nginx"). */
export const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const GENERIC_TYPES = new Set(['', 'application/json', 'text/plain', 'application/octet-stream']);

/** Host actually contacted for a registry name: docker.io is served by registry-1.docker.io. */
export function apiHostOf(registry: string): string {
  const r = registry.toLowerCase();
  return r === 'docker.io' || r === 'index.docker.io' ? 'registry-1.docker.io' : registry;
}

/** Validate a repository name ("library/nginx"); it ends up in URL paths. */
export function checkRepository(repo: string): string {
  if (typeof repo !== 'string' || repo.length > 255 || !REPO_RE.test(repo)) {
    throw invalidArgument(`invalid repository name ${JSON.stringify(String(repo).slice(0, 100))}`);
  }
  return repo;
}

/** Validate a tag or digest reference; returns true when it is a digest. */
export function isDigestReference(reference: string): boolean {
  if (typeof reference === 'string' && reference.includes(':')) {
    parseDigest(reference, 'manifest digest');
    return true;
  }
  if (typeof reference !== 'string' || !TAG_RE.test(reference)) {
    throw invalidArgument(`invalid tag ${JSON.stringify(String(reference).slice(0, 100))}`);
  }
  return false;
}

/** The "next" target of an RFC 8288 Link header, if any. */
export function nextLink(header: string | undefined): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>\s*;(.*)$/.exec(part);
    if (m && /(?:^|;)\s*rel\s*=\s*"?(?:[^";]*\s)?next(?:\s[^";]*)?"?\s*(?:;|$)/i.test(m[2])) return m[1];
  }
  return undefined;
}

/** The fields that tell an index from a manifest. */
interface ManifestShape {
  mediaType?: unknown;
  manifests?: unknown;
  config?: unknown;
  layers?: unknown;
}

/** Media type of a fetched manifest: the Content-Type, or what the document says when that is generic. */
export function manifestMediaType(contentType: string | undefined, bytes: Buffer): string {
  const ct = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (!GENERIC_TYPES.has(ct)) return ct;
  let doc: ManifestShape | null;
  try {
    doc = JSON.parse(bytes.toString('utf8')) as ManifestShape | null;
  } catch {
    throw corrupt('registry returned a manifest that is not JSON');
  }
  if (typeof doc?.mediaType === 'string' && doc.mediaType) return doc.mediaType;
  if (Array.isArray(doc?.manifests)) return MT.OCI_INDEX;
  if (doc?.config && Array.isArray(doc?.layers)) return MT.OCI_MANIFEST;
  throw corrupt('registry returned a manifest without a media type');
}
