#!/usr/bin/env node
/**
 * Thin entry point: d4fs-server is `ctr-cli serve` as its own binary
 * (src/commands/serve.ts). Logs are JSON lines on stderr; SIGTERM/SIGINT stop
 * it gracefully, SIGHUP reloads the tokens file. Under systemd, for example:
 *
 *   [Unit]
 *   Description=d4fs-server (delta image distribution)
 *   After=network-online.target
 *
 *   [Service]
 *   ExecStart=/usr/bin/node /opt/d4fs/dist/cli/d4fs-server.js --root /var/lib/d4fs-server \
 *             --listen 0.0.0.0:8081 --tokens /etc/d4fs/tokens --gc-interval 6h
 *   ExecReload=/bin/kill -HUP $MAINPID
 *   KillSignal=SIGTERM
 *   TimeoutStopSec=45
 *   Restart=on-failure
 *   StateDirectory=d4fs-server
 *   NoNewPrivileges=yes
 *   ProtectSystem=strict
 *   ReadWritePaths=/var/lib/d4fs-server
 *
 *   [Install]
 *   WantedBy=multi-user.target
 */
import { CommanderError } from 'commander';
import { buildServerProgram } from '../src/commands/serve';
import { fail, quietOnClosedPipes } from '../src/commands/common';
import { EXIT_CODES } from '../src/errors';

quietOnClosedPipes();
buildServerProgram()
  .exitOverride()
  .parseAsync(process.argv)
  .catch((e) => {
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : EXIT_CODES.INVALID_ARGUMENT);
    fail(e);
  });
