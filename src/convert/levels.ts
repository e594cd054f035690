/** The --level presets (zstd levels of full frames), in a module of their own so that commands can name them without loading the converter. */
export const LEVELS = { fast: 1, default: 3, best: 19 } as const;
export type LevelName = keyof typeof LEVELS;
