/** Processes of this machine. */
import { spawnSync } from 'node:child_process';

/** Whether a process with this pid exists (EPERM: it exists but is someone else's). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A program's exit status (null: killed by a signal) and what it wrote on its standard output. */
export interface ProgramOutput {
  status: number | null;
  stdout: Buffer;
}

type PipeThrough = (file: string, args: string[], input: Uint8Array, maxOut: number) => { status: number; stdout: Buffer };
let pipeFn: PipeThrough | null | undefined;

/** The d4fs-deflate addon's pipeThrough (native/deflate/src/pipe.c), or null when the addon is not built. */
function pipeThrough(): PipeThrough | null {
  if (pipeFn === undefined) {
    try {
      pipeFn = (require('d4fs-deflate') as { pipeThrough: PipeThrough }).pipeThrough;
    } catch {
      pipeFn = null;
    }
  }
  return pipeFn;
}

/**
 * Runs `file` (looked up in PATH) with `args`, `input` on its standard input, synchronously (for
 * worker threads: GNU gzip on each .gz file of an image); null when it cannot be run, or writes
 * more than `maxOut` bytes. Started by posix_spawn (the d4fs-deflate addon) rather than Node's
 * spawnSync, which forks: a fork's cost grows with this process's memory, 1.7 ms per gzip run
 * from a small process and 55 ms from one holding 1 GiB here, against 0.8 ms by posix_spawn from
 * either (postgresql-15's 217 changed man pages took 5.1 s of a thread in `cdimg diff`, 2.2 after).
 * spawnSync when the addon is not built.
 */
export function runProgramSync(file: string, args: string[], input: Buffer, maxOut: number): ProgramOutput | null {
  const fast = pipeThrough();
  if (fast) {
    try {
      return fast(file, args, input, maxOut);
    } catch {
      return null;
    }
  }
  const r = spawnSync(file, args, { input, maxBuffer: maxOut, stdio: ['pipe', 'pipe', 'ignore'] });
  return r.error || !r.stdout ? null : { status: r.status, stdout: r.stdout };
}
