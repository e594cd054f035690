/**
 * The --level presets of `convert` (zstd levels of the full frames of a whole
 * image), in a module of their own so that commands can name them without
 * loading the converter. Not the table of the delta codecs with the same
 * preset names (LEVELS of src/delta/codecs/types.ts: 3 / 12 / 19 for diff,
 * merge and regsync, measured in src/delta/CODECS.md): the two map the same
 * words to different levels on purpose.
 */
export const LEVELS = { fast: 1, default: 3, best: 19 } as const;
export type LevelName = keyof typeof LEVELS;
