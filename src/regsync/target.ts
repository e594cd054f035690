/**
 * Registry targets ("docker://HOST[:PORT][/PREFIX]") and the names of images
 * under them.
 */
import { invalidArgument } from '../errors';
import { RegistryClient } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import { ImageSpec, parseSpec } from './imageset';

const PREFIX_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const NAME_RE = PREFIX_RE;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/** A registry and an optional repository prefix. */
export interface RegistryTarget {
  registry: string;
  prefix: string;
  opts: RegistryOptions;
}

/** Parse "docker://HOST[:PORT][/PREFIX]" (the scheme may be left out). */
export function parseTarget(s: string, opts: RegistryOptions = {}): RegistryTarget {
  const body = s.replace(/^docker:\/\//, '').replace(/\/+$/, '');
  const slash = body.indexOf('/');
  const registry = slash < 0 ? body : body.slice(0, slash);
  const prefix = slash < 0 ? '' : body.slice(slash + 1);
  if (!registry || /[@]/.test(body)) throw invalidArgument(`invalid registry target "${s}": expected docker://HOST[:PORT][/PREFIX]`);
  if (prefix && !PREFIX_RE.test(prefix)) throw invalidArgument(`invalid repository prefix "${prefix}" in "${s}"`);
  new RegistryClient(registry); // validates the host
  return { registry, prefix, opts };
}

/** Repository of `name` under the target's prefix. */
export function repoIn(t: RegistryTarget, name: string): string {
  return t.prefix ? `${t.prefix}/${name}` : name;
}

/** docker:// reference of name[:tag] (or @digest) under a target. */
export function refIn(t: RegistryTarget, name: string, tag?: string, digest?: string): string {
  return `docker://${t.registry}/${repoIn(t, name)}${tag ? ':' + tag : ''}${!tag && digest ? '@' + digest : ''}`;
}

/**
 * Old-image arguments of apply: a full reference (docker://, oci:, ...) is
 * taken as is; "NAME[:TAG]" and "NAME@DIGEST" are relative to `base` (the
 * destination, or --old-from).
 */
export function relativeSpec(text: string, base: RegistryTarget, where: string): ImageSpec {
  const t = text.trim();
  if (/^(docker:\/\/|oci:|oci-archive:|docker-archive:)/.test(t)) return parseSpec(t, where);
  const at = t.indexOf('@');
  if (at >= 0) {
    const name = t.slice(0, at);
    const digest = t.slice(at + 1);
    if (!NAME_RE.test(name)) throw invalidArgument(`${where}: invalid repository name "${name}"`);
    if (!/^sha256:[a-f0-9]{64}$/.test(digest)) throw invalidArgument(`${where}: invalid digest "${digest}"`);
    return { ref: refIn(base, name, undefined, digest), name };
  }
  const colon = t.lastIndexOf(':');
  const slash = t.lastIndexOf('/');
  const name = colon > slash ? t.slice(0, colon) : t;
  const tag = colon > slash ? t.slice(colon + 1) : 'latest';
  if (!NAME_RE.test(name)) throw invalidArgument(`${where}: invalid repository name "${name}"`);
  if (!TAG_RE.test(tag)) throw invalidArgument(`${where}: invalid tag "${tag}"`);
  return { ref: refIn(base, name, tag), name, tag };
}
