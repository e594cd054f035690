/**
 * The native addon of the codecs, `bsdiff-sa` (native/bsdiff-sa: libdivsufsort and a
 * bsdiff-style scan, the context-mixing coders of the bsdiff container, bspatch's loop),
 * loaded here and nowhere else, on first use. Its shape is declared once, in
 * native/bsdiff-sa/index.d.ts. Every user has a TypeScript fallback (or bsdiff-node for
 * the encoder) for a machine where the addon was not built; the same bytes either way.
 */
import type * as BsdiffSaAddon from 'bsdiff-sa';

export type BsdiffSa = typeof BsdiffSaAddon;

let state: BsdiffSa | null | undefined;
let loadError = '';

/** The addon, or null when it cannot be loaded here (not built on this machine). */
export function bsdiffSa(): BsdiffSa | null {
  if (state === undefined) {
    try {
      state = require('bsdiff-sa') as BsdiffSa;
    } catch (e) {
      state = null;
      loadError = e instanceof Error ? e.message : String(e);
    }
  }
  return state;
}

/** Why {@link bsdiffSa} is null ('' when it loaded). */
export function bsdiffSaLoadError(): string {
  bsdiffSa();
  return loadError;
}

/**
 * The addon when it has every one of these functions, else null (an addon built from
 * an older source lacks the later ones; their callers then use the TypeScript twins).
 */
export function bsdiffSaWith(...names: (keyof BsdiffSa)[]): BsdiffSa | null {
  const m = bsdiffSa();
  return m && names.every((n) => typeof m[n] === 'function') ? m : null;
}
