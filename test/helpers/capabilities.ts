/**
 * What a suite needs from the machine, checked explicitly: root, /dev/fuse,
 * containerd, a registry binary. A suite whose needs are not met is skipped,
 * and says so loudly, naming what the machine lacks:
 *
 *     describeIfCapable('test/load.fuse.test.ts', ['root', 'fuse', 'containerd'])('…', () => { … });
 */
import fs from 'node:fs';
import path from 'node:path';
import { REGISTRY_BIN } from './registry';

export type Capability = 'root' | 'fuse' | 'containerd' | 'registry';

/** Whether an executable `name` is on $PATH. */
function onPath(name: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => {
    try {
      fs.accessSync(path.join(dir || '.', name), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** What of a capability this machine lacks, and why (undefined: it has it). */
const CHECKS: Record<Capability, () => string | undefined> = {
  root: () => (process.getuid?.() === 0 ? undefined : `root (running as uid ${process.getuid?.() ?? '?'})`),
  fuse: () => {
    try {
      fs.accessSync('/dev/fuse', fs.constants.R_OK | fs.constants.W_OK);
      return undefined;
    } catch (e) {
      return `a usable /dev/fuse (${(e as NodeJS.ErrnoException).code ?? String(e)})`;
    }
  },
  containerd: () => {
    const missing = ['containerd', 'ctr', 'runc'].filter((b) => !onPath(b));
    return missing.length ? `${missing.join(', ')} on PATH` : undefined;
  },
  registry: () => (fs.existsSync(REGISTRY_BIN) ? undefined : `${REGISTRY_BIN} (Debian package docker-registry)`),
};

/** What the machine lacks of `needs`, one line each (empty: everything is there). */
export function lacking(needs: readonly Capability[]): string[] {
  return needs.map((n) => CHECKS[n]()).filter((r): r is string => r !== undefined);
}

/**
 * `describe` when the machine has every one of `needs`; otherwise
 * `describe.skip`, after a warning naming `suite` and what is missing.
 */
export function describeIfCapable(suite: string, needs: readonly Capability[]): jest.Describe {
  const missing = lacking(needs);
  if (missing.length === 0) return describe;
  console.warn(`\n\n  !!! ${suite} is SKIPPED: it needs ${needs.join(', ')}; this machine lacks ${missing.join('; ')} !!!\n\n`);
  return describe.skip;
}
