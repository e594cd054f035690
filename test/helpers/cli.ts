/** Running the compiled ctr-cli as a user does, for tests that assert exit codes and messages. */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../../src/util/paths';

const run = promisify(execFile);

/** dist/cli/ctr-cli.js */
export const CTR_CLI_JS = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** ctr-cli ARGS: exit code, stdout and stderr (a non-zero exit is a result, not a rejection). */
export async function runCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  try {
    const r = await run(process.execPath, [CTR_CLI_JS, ...args], { maxBuffer: 64 << 20, cwd: opts.cwd, env: opts.env ?? process.env });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: typeof x.code === 'number' ? x.code : -1, stdout: x.stdout, stderr: x.stderr };
  }
}
