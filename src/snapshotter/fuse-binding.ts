/**
 * The names of the FUSE bindings the FUSE manager can serve with: the shared
 * contract between the snapshotter's configuration (`fuse_binding`, passed
 * on as the manager's `--fuse-binding`) and src/fuse/binding.ts, which
 * implements them. It lives here, below src/fuse, so that the snapshot core
 * never imports FUSE internals (ARCHITECTURE.md, folders of src/).
 */
import { invalidArgument } from '../errors';

export type FuseBindingName = 'fuse3' | 'fuse-native';
export const FUSE_BINDINGS: readonly FuseBindingName[] = ['fuse3', 'fuse-native'];

/** Parses a binding name (from a flag, a config file or the environment). */
export function parseBinding(v: string, what = 'FUSE binding'): FuseBindingName {
  if ((FUSE_BINDINGS as readonly string[]).includes(v)) return v as FuseBindingName;
  throw invalidArgument(`${what} must be one of ${FUSE_BINDINGS.join(', ')}, got ${JSON.stringify(v)}`);
}
