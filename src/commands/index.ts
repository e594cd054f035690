import { Command, CommanderError } from 'commander';
import { EXIT_CODES } from '../errors';

type Registrar = (program: Command) => void;

/**
 * Command groups, loaded on demand: a command loads only its own modules
 * (convert does not pay for gRPC, SQLite or the HTTP server at start-up).
 * Keys are the top-level command names each group defines.
 */
const GROUPS: { names: string[]; load: () => Registrar }[] = [
  { names: ['convert'], load: () => (require('./convert') as typeof import('./convert')).registerConvert },
  { names: ['cdimg'], load: () => (require('./cdimg') as typeof import('./cdimg')).registerCdimg },
  { names: ['registry'], load: () => (require('./registry') as typeof import('./registry')).registerRegistry },
  { names: ['serve'], load: () => (require('./serve') as typeof import('./serve')).registerServe },
  { names: ['push'], load: () => (require('./push') as typeof import('./push')).registerPush },
  { names: ['pull'], load: () => (require('./pull') as typeof import('./pull')).registerPull },
  { names: ['publish'], load: () => (require('./publish') as typeof import('./publish')).registerPublish },
  { names: ['keygen', 'sign', 'verify-signature'], load: () => (require('./sign') as typeof import('./sign')).registerSign },
  { names: ['peer', 'tracker'], load: () => (require('./peer') as typeof import('./peer')).registerPeer },
  { names: ['load', 'images', 'rmi'], load: () => (require('./load') as typeof import('./load')).registerLoad },
];

export const VERSION = '0.1.0';

/** The ctr-cli program; cli/ctr-cli.ts only runs it. With `argv`, only the invoked command group is loaded. */
export function buildProgram(argv?: string[]): Command {
  const program = new Command('ctr-cli')
    .description('d4fs: delta container images — convert, diff, merge, distribute, and run straight from deltas')
    .version(VERSION)
    .option('--debug', 'print stack traces on errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  const first = argv?.slice(2).find((a) => !a.startsWith('-'));
  const group = first ? GROUPS.find((g) => g.names.includes(first)) : undefined;
  for (const g of group ? [group] : GROUPS) g.load()(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram(argv);
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
