/**
 * Go's gzip writers for tests (issue 16): test/fixtures/go/gzipper.go built
 * once per source version with Debian's Go (golang-go, GOPATH mode against
 * golang-github-klauspost-compress-dev and -pgzip-dev, which
 * scripts/install-deps.sh installs). A machine without Go fails the tests
 * that need it, saying what to install: nothing is skipped.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export type GoGzipEngine = 'stdlib' | 'klauspost' | 'pgzip';

const SOURCE = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'go', 'gzipper.go');
let built: string | undefined;

/** The gzipper binary, built when missing. */
export function gzipperBinary(): string {
  if (built) return built;
  const src = fs.readFileSync(SOURCE);
  const dir = path.join(os.tmpdir(), `d4fs-gzipper-${createHash('sha256').update(src).digest('hex').slice(0, 16)}`);
  const bin = path.join(dir, 'gzipper');
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(SOURCE, path.join(dir, 'gzipper.go'));
    try {
      execFileSync('go', ['build', '-o', `${bin}.tmp`, 'gzipper.go'], {
        cwd: dir,
        env: { ...process.env, GO111MODULE: 'off', GOPATH: '/usr/share/gocode', GOCACHE: path.join(dir, 'cache'), GOFLAGS: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (e) {
      const err = e as { stderr?: Buffer; message: string };
      throw new Error(
        `cannot build test/fixtures/go/gzipper.go (needs the Debian packages golang-go, golang-github-klauspost-compress-dev and golang-github-klauspost-pgzip-dev: scripts/install-deps.sh): ${err.stderr?.toString() || err.message}`,
      );
    }
    fs.renameSync(`${bin}.tmp`, bin);
  }
  built = bin;
  return bin;
}

/** `input` gzipped by Go's `engine` at `level` (a header name and fixed mtime when `name` is given; pgzip's block size when `pgzipBlock` is). */
export function goGzip(engine: GoGzipEngine, level: number, input: Buffer, name?: string, pgzipBlock?: number): Buffer {
  const args = [engine, String(level)];
  if (name !== undefined) args.push(name);
  const env = { ...process.env, PGZIP_BLOCK: pgzipBlock ? String(pgzipBlock) : '' };
  return execFileSync(gzipperBinary(), args, { input, maxBuffer: 1 << 30, env });
}
