import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

let cached: string | undefined;

/** The package root (the folder holding package.json and proto/), found from this file. */
export function packageRoot(): string {
  if (cached) return cached;
  let d = __dirname;
  for (;;) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'proto'))) return (cached = d);
    const up = dirname(d);
    if (up === d) throw new Error('d4fs: cannot find the package root (package.json + proto/) above ' + __dirname);
    d = up;
  }
}

export const protoDir = (): string => join(packageRoot(), 'proto');
