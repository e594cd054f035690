import { hostile } from '../errors';

export const MAX_PATH_BYTES = 4096;
export const MAX_NAME_BYTES = 255;

/**
 * Check one name of a path (what checkTreePath checks of each component):
 * for readers that build paths from names (format version 2's columns).
 */
export function checkTreeName(name: string): void {
  if (name === '' || name === '.') throw hostile(`an entry with the name "${name}" (paths must be normalized)`);
  if (name === '..') throw hostile('an entry named "..": refusing to write outside the image root');
  if (name.includes('/')) throw hostile(`an entry name "${name.slice(0, 80)}" holds a slash`);
  if (name.length > MAX_NAME_BYTES / 3 && Buffer.byteLength(name) > MAX_NAME_BYTES) throw hostile(`path component longer than ${MAX_NAME_BYTES} bytes ("${name.slice(0, 80)}…")`);
}

/** Largest device numbers Linux represents (kdev_t: 12 bits of major, 20 of minor). */
export const MAX_DEV_MAJOR = 0xfff;
export const MAX_DEV_MINOR = 0xfffff;

/** A device entry's numbers, checked (HOSTILE when out of range). */
export function checkDeviceNumbers(path: string, major: number, minor: number): void {
  if (!Number.isInteger(major) || !Number.isInteger(minor) || major < 0 || minor < 0 || major > MAX_DEV_MAJOR || minor > MAX_DEV_MINOR) {
    throw hostile(`device "${path}" has out-of-range numbers ${major}:${minor} (Linux allows up to ${MAX_DEV_MAJOR}:${MAX_DEV_MINOR})`);
  }
}

/** A symlink target, checked: not empty, no NUL, not longer than PATH_MAX. */
export function checkLinkTarget(path: string, target: string): void {
  if (!target) throw hostile(`symlink "${path}" has an empty target`);
  if (target.includes('\0')) throw hostile(`symlink "${path}" has a target containing a NUL byte`);
  if (Buffer.byteLength(target) > MAX_PATH_BYTES) throw hostile(`symlink "${path}" has a target longer than ${MAX_PATH_BYTES} bytes`);
}

/** Check a normalized tree path ("" is the root; "a/b" otherwise). Throws HOSTILE. */
export function checkTreePath(p: string): void {
  if (p === '') return;
  if (p.includes('\0')) throw hostile(`path contains a NUL byte`);
  if (Buffer.byteLength(p) > MAX_PATH_BYTES) throw hostile(`path longer than ${MAX_PATH_BYTES} bytes: "${p.slice(0, 80)}…"`);
  if (p.startsWith('/')) throw hostile(`absolute path "${p}" is not allowed`);
  for (const c of p.split('/')) {
    if (c === '' || c === '.') throw hostile(`path "${p}" is not normalized`);
    if (c === '..') throw hostile(`path "${p}" contains "..": refusing to write outside the image root`);
    if (Buffer.byteLength(c) > MAX_NAME_BYTES) throw hostile(`path component longer than ${MAX_NAME_BYTES} bytes in "${p.slice(0, 80)}…"`);
  }
}

/**
 * Normalize a path from a tar header: drop leading "./", trailing "/" and
 * repeated slashes; "." and "./" are the root. Absolute paths and ".." are hostile.
 */
export function normalizeTarPath(name: string): string {
  if (name.startsWith('/')) throw hostile(`tar entry with absolute path "${name.slice(0, 200)}" is not allowed`);
  const parts: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') throw hostile(`tar entry "${name.slice(0, 200)}" contains "..": refusing to write outside the image root`);
    parts.push(c);
  }
  const p = parts.join('/');
  checkTreePath(p);
  return p;
}

export function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

export function baseName(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}
