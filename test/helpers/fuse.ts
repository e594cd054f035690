/** Helpers of the FUSE suites (test/fuse.test.ts, test/fuse-trust.test.ts). */
import fsp from 'node:fs/promises';
import { errorCodeOf } from './errors';

/** The code of the error reading `file` fails with ('' when it reads). */
export function readError(file: string): Promise<string> {
  return errorCodeOf(fsp.readFile(file));
}
