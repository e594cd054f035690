/**
 * A tiny pause image for containerd's CRI plugin (`sandbox_image`): one
 * statically linked C program, /pause, that sleeps in pause(2), reaps
 * children that get re-parented to it and exits 0 on SIGINT or SIGTERM.
 * Compiled with `gcc -static` (Debian's libc6-dev carries the static libc),
 * packed with GNU tar and umoci, pushed to a registry with skopeo.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../src/util/paths';
import { mustRun } from './containerd';
import { pushOciLayout } from './registry';

const PAUSE_C = `#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
  struct sigaction q = {0}, r = {0};
  q.sa_handler = quit;
  r.sa_handler = reap;
  r.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGINT, &q, NULL);
  sigaction(SIGTERM, &q, NULL);
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
  return 0;
}
`;

/** Repository and tag the pause image is pushed under by default. */
export const PAUSE_REPO_TAG = 'd4fs/pause:1';

/** Compiles the pause program into `out` (static, stripped). */
export async function compilePause(out: string): Promise<void> {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-pause-'));
  try {
    const src = path.join(work, 'pause.c');
    await fsp.writeFile(src, PAUSE_C);
    await mustRun('gcc', ['-static', '-Os', '-s', '-o', out, src]);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/**
 * Builds an OCI layout at `layout` (created) with tag `tag`: one layer
 * holding /pause (mode 0755, owned by root), entrypoint ["/pause"].
 */
export async function buildPauseImage(layout: string, tag = '1'): Promise<void> {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-pause-'));
  try {
    const rootfs = path.join(work, 'rootfs');
    await fsp.mkdir(rootfs);
    await compilePause(path.join(rootfs, 'pause'));
    await fsp.chmod(path.join(rootfs, 'pause'), 0o755);
    const tar = path.join(work, 'layer.tar');
    await mustRun('tar', ['--create', `--file=${tar}`, `--directory=${rootfs}`, '--numeric-owner', '--owner=0', '--group=0', '--sort=name', '.']);
    await mustRun('umoci', ['init', '--layout', layout]);
    await mustRun('umoci', ['new', '--image', `${layout}:${tag}`]);
    await mustRun('umoci', ['raw', 'add-layer', '--image', `${layout}:${tag}`, tar]);
    await mustRun('umoci', ['config', '--image', `${layout}:${tag}`, '--config.entrypoint', '/pause', '--config.user', '65535:65535']);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** The pause image's OCI layout, built once per checkout (and version of PAUSE_C) under <package root>/.cache. */
async function cachedPauseLayout(): Promise<string> {
  const version = crypto.createHash('sha256').update(PAUSE_C).digest('hex').slice(0, 12);
  const layout = path.join(packageRoot(), '.cache', 'cri-test', `pause-oci-${version}`);
  if (fs.existsSync(path.join(layout, 'index.json'))) return layout;
  await fsp.mkdir(path.dirname(layout), { recursive: true });
  // build next to it and rename, so that a concurrent or interrupted build never leaves half a layout
  const tmp = await fsp.mkdtemp(`${layout}.tmp-`);
  try {
    await buildPauseImage(path.join(tmp, 'oci'), '1');
    await fsp.rename(path.join(tmp, 'oci'), layout).catch((e: NodeJS.ErrnoException) => {
      if (!fs.existsSync(path.join(layout, 'index.json'))) throw e; // someone else won the race
    });
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
  return layout;
}

/**
 * Pushes the pause image to the registry at `registryHost` (plain http) as
 * `repoTag` and returns its reference, e.g. "127.0.0.1:5000/d4fs/pause:1".
 */
export async function pushPauseImage(registryHost: string, repoTag = PAUSE_REPO_TAG, creds?: string): Promise<string> {
  const layout = await cachedPauseLayout();
  await pushOciLayout(layout, '1', registryHost, repoTag, creds);
  return `${registryHost}/${repoTag}`;
}
