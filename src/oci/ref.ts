import { existsSync, statSync } from 'node:fs';
import { invalidArgument } from '../errors';
import { SHA256_RE } from '../util/digest';

/** An image reference in skopeo's transport syntax. */
export type ImageRef =
  | { transport: 'oci'; path: string; tag?: string }
  | { transport: 'oci-archive'; path: string; tag?: string }
  | { transport: 'docker-archive'; path: string; name?: string }
  | { transport: 'docker'; registry: string; repository: string; tag?: string; digest?: string };

export const DEFAULT_REGISTRY = 'docker.io';
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const REPO_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;

/** Split "path[:tag]" where the tag has no '/' and is a valid tag. */
function splitPathTag(s: string): { path: string; tag?: string } {
  const i = s.lastIndexOf(':');
  if (i > 0) {
    const tag = s.slice(i + 1);
    if (!tag.includes('/') && TAG_RE.test(tag)) return { path: s.slice(0, i), tag };
  }
  return { path: s };
}

export function parseRegistryRef(s: string): Extract<ImageRef, { transport: 'docker' }> {
  let rest = s.replace(/^\/\//, '');
  if (!rest) throw invalidArgument(`empty registry reference`);
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!SHA256_RE.test(digest)) throw invalidArgument(`invalid digest in reference "${s}": expected sha256:<64 hex>`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw invalidArgument(`invalid tag "${tag}" in reference "${s}"`);
  }
  const parts = rest.split('/');
  let registry = DEFAULT_REGISTRY;
  if (parts.length > 1 && (parts[0].includes('.') || parts[0].includes(':') || parts[0] === 'localhost')) {
    registry = parts.shift() as string;
  }
  if (registry === DEFAULT_REGISTRY && parts.length === 1) parts.unshift('library');
  for (const p of parts) {
    if (!REPO_COMPONENT_RE.test(p)) throw invalidArgument(`invalid repository name component "${p}" in reference "${s}"`);
  }
  if (!tag && !digest) tag = 'latest';
  return { transport: 'docker', registry, repository: parts.join('/'), tag, digest };
}

/**
 * Parse oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG],
 * docker://HOST[:PORT]/REPO[:TAG|@DIGEST], or a bare REPO[:TAG] (registry).
 */
export function parseImageRef(s: string): ImageRef {
  if (typeof s !== 'string' || s.length === 0) throw invalidArgument('image reference is empty');
  if (s.startsWith('oci:')) {
    const { path, tag } = splitPathTag(s.slice(4));
    if (!path) throw invalidArgument(`missing directory in "${s}"`);
    return { transport: 'oci', path, tag };
  }
  if (s.startsWith('oci-archive:')) {
    const { path, tag } = splitPathTag(s.slice(12));
    if (!path) throw invalidArgument(`missing file in "${s}"`);
    return { transport: 'oci-archive', path, tag };
  }
  if (s.startsWith('docker-archive:')) {
    const body = s.slice(15);
    // FILE or FILE:NAME:TAG (NAME may itself hold a registry host with a port)
    const m = /^([^:]+):(.+:[^:/]+)$/.exec(body);
    if (m) return { transport: 'docker-archive', path: m[1], name: m[2] };
    if (!body) throw invalidArgument(`missing file in "${s}"`);
    return { transport: 'docker-archive', path: body };
  }
  if (s.startsWith('docker://')) return parseRegistryRef(s.slice(9));
  if (/^[a-z-]+:\/\//.test(s) || /^(dir|containers-storage|docker-daemon):/.test(s)) {
    throw invalidArgument(`unsupported transport in "${s}": use oci:, oci-archive:, docker-archive: or docker://`);
  }
  checkNotALocalPath(s);
  return parseRegistryRef(s);
}

/**
 * A bare reference is a registry's (REPO:TAG = docker.io/REPO:TAG), but a user
 * who types a path means a local image: never contact a registry for
 * something that looks like, or names, a local path; say what to type.
 */
function checkNotALocalPath(s: string): void {
  const looksLikePath = /^(\.{1,2}\/|\/|~\/)/.test(s) || s === '.' || s === '..';
  let exists = false;
  try {
    // the path itself, or its first directory (a file not written yet: `--to out/plain`)
    exists = existsSync(s) || (s.includes('/') && existsSync(s.split('/')[0]) && statSync(s.split('/')[0]).isDirectory());
  } catch {
    /* not a path */
  }
  // a file that is not there (a mistyped list or archive name) is not a repository either
  const fileName = /\.(txt|list|lst|json|ya?ml|tar|tgz|gz|cdimg|patch)(:[^/]*)?$/i.test(s) && !s.includes('@');
  if (!looksLikePath && !exists && fileName) {
    throw invalidArgument(`"${s}" looks like a file name, and there is no such file (a registry image is docker://HOST/REPO:TAG)`);
  }
  if (!looksLikePath && !exists) return;
  let hint = `oci:${s}`;
  try {
    if (exists && statSync(s).isFile()) hint = `oci-archive:${s} or docker-archive:${s}`;
  } catch {
    /* keep the directory hint */
  }
  throw invalidArgument(`"${s}" looks like a local path, not a registry reference: did you mean ${hint}? (a registry image is docker://HOST/REPO:TAG)`);
}

export function formatImageRef(r: ImageRef): string {
  switch (r.transport) {
    case 'oci':
    case 'oci-archive':
      return `${r.transport}:${r.path}${r.tag ? ':' + r.tag : ''}`;
    case 'docker-archive':
      return `docker-archive:${r.path}${r.name ? ':' + r.name : ''}`;
    case 'docker':
      return `docker://${r.registry}/${r.repository}${r.tag ? ':' + r.tag : ''}${r.digest ? '@' + r.digest : ''}`;
  }
}
