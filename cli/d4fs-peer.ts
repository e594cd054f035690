#!/usr/bin/env node
/**
 * Thin entry point: d4fs-peer is `ctr-cli peer` as its own binary
 * (src/commands/peer.ts). Logs are JSON lines on stderr; SIGTERM/SIGINT
 * remove the hosts.toml files it wrote, then stop it. Under systemd:
 *
 *   [Service]
 *   ExecStart=/usr/bin/node /opt/d4fs/dist/cli/d4fs-peer.js --tracker http://d4fs.example:8081 \
 *             --token-file /etc/d4fs/token --mirror docker.io --hosts-dir /etc/containerd/certs.d
 *   KillSignal=SIGTERM
 *   Restart=on-failure
 *   StateDirectory=d4fs-peer
 */
import { CommanderError } from 'commander';
import { buildPeerProgram } from '../src/commands/peer';
import { fail, quietOnClosedPipes } from '../src/commands/common';
import { EXIT_CODES } from '../src/errors';

quietOnClosedPipes();
buildPeerProgram()
  .exitOverride()
  .parseAsync(process.argv)
  .catch((e) => {
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : EXIT_CODES.INVALID_ARGUMENT);
    fail(e);
  });
