import { Command, CommanderError } from 'commander';
import { registerCdimg, registerConvert } from './cdimg';
import { registerRegistry } from './registry';
import { registerLoad } from './load';
import { EXIT_CODES } from '../errors';
import { registerServe } from './serve';
import { registerPush } from './push';
import { registerPull } from './pull';

export const VERSION = '0.1.0';

/** The ctr-cli program; cli/ctr-cli.ts only runs it. */
export function buildProgram(): Command {
  const program = new Command('ctr-cli')
    .description('d4fs: delta container images — convert, diff, merge, distribute, and run straight from deltas')
    .version(VERSION)
    .option('--debug', 'print stack traces on errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerConvert(program);
  registerCdimg(program);
  registerRegistry(program);
  registerServe(program);
  registerPush(program);
  registerPull(program);
  registerLoad(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version exit 0; usage errors exit with INVALID_ARGUMENT's code
      process.exit(e.exitCode === 0 ? 0 : EXIT_CODES.INVALID_ARGUMENT);
    }
    throw e;
  }
}
