/**
 * `ctr-cli push --cdimg FILE --image NAME:TAG --server URL` (d4fs-server) or
 * `ctr-cli push --cdimg FILE --to docker://REGISTRY/REPO:TAG` (an OCI
 * registry as the store). FILE.sig (or --signature) goes with the file.
 */
import { Command } from 'commander';
import { invalidArgument } from '../errors';
import { parseTokenText, readTokenFile } from '../distribution/client';
import { pushToServer } from '../distribution/push';
import { action, addRegistryOptions, humanBytes, printJson, registryOptionsOf, say, sayErr } from './common';

/** The token: --token, else --token-file (a bare token or a "rw|ro TOKEN [name]" line), else $D4FS_TOKEN. */
export async function tokenOf(o: Record<string, unknown>): Promise<string | undefined> {
  if (o.token) return String(o.token);
  if (o.tokenFile) return readTokenFile(String(o.tokenFile));
  return process.env.D4FS_TOKEN ? parseTokenText(process.env.D4FS_TOKEN, '$D4FS_TOKEN') : undefined;
}

/** Options for talking to d4fs-server, shared by push and pull. */
export function addServerClientOptions(c: Command): Command {
  return c
    .option('--server <url>', 'd4fs-server base URL, e.g. http://127.0.0.1:8081')
    .option('--token <token>', 'bearer token for d4fs-server (default: $D4FS_TOKEN; prefer --token-file)')
    .option('--token-file <file>', 'read the token from this file (a bare token, or the line `ctr-cli serve token` prints)')
    .option('--insecure-http', 'send the token over plain http:// to a host that is not loopback (otherwise refused)')
    .option('--tls-ca <file>', 'PEM CA certificate to trust for an https:// server');
}

/** "signed: 1 signature sent, 2 held" / "unsigned". */
function signedText(sent: number, held: number): string {
  if (!sent && !held) return 'unsigned (no FILE.sig: ctr-cli sign FILE --key KEY.pem)';
  return `signatures: ${sent} sent, ${held} held for the file`;
}

export function registerPush(program: Command): void {
  const c = program
    .command('push')
    .description('push a .cdimg (full image or delta) to d4fs-server, or to an OCI registry as an artifact')
    .requiredOption('--cdimg <file>', 'the .cdimg to push')
    .option('--image <name:tag>', 'with --server: the name and tag to set')
    .option('--to <docker://registry/repo:tag>', 'push to an OCI registry instead of a d4fs-server')
    .option('--signature <file>', "the file's signatures to send with it (default: FILE.sig beside it, when there is one)")
    .option('--json', 'print the result as JSON');
  addRegistryOptions(addServerClientOptions(c))
    .addHelpText(
      'after',
      '\nExamples:\n  ctr-cli push --cdimg libssl-1.cdimg --image libssl:1 --server http://127.0.0.1:8081 --token-file ~/.d4fs-token\n' +
        '  ctr-cli push --cdimg libssl-1-2.cdimg --image libssl:2 --server http://127.0.0.1:8081\n' +
        '  ctr-cli push --cdimg libssl-1-2.cdimg --to docker://registry.example:5000/d4fs/libssl:2\n',
    )
    .action(
      action(async (o: Record<string, unknown>) => {
        if (!!o.to === !!o.server) throw invalidArgument('give either --server URL (with --image NAME:TAG) or --to docker://REGISTRY/REPO:TAG');
        if (o.to) {
          if (o.image) throw invalidArgument('--image goes with --server; with --to the tag is in the reference');
          // the registry client loads only for registry pushes
          const { pushToRegistry } = require('../distribution/registry') as typeof import('../distribution/registry');
          const r = await pushToRegistry({ file: o.cdimg as string, to: o.to as string, signature: o.signature as string | undefined, registry: registryOptionsOf(o as never) });
          if (o.json) return printJson(r);
          say(
            `pushed ${o.cdimg} (${r.kind}, ${humanBytes(r.size)}${r.uploaded ? '' : ', already there'}) -> ${r.registry}/${r.repository}:${r.tag}\n` +
              `  image ${r.imageId}${r.parentId ? `\n  from  ${r.parentId}` : ''}\n  artifact ${r.contentTag} (${r.manifestDigest}); index lists ${r.indexed} files\n` +
              `  ${signedText(r.signaturesSent, r.signatures)}\n`,
          );
          for (const w of r.warnings) sayErr(`ctr-cli: warning: ${w}\n`);
          return;
        }
        if (!o.image) throw invalidArgument('--image NAME:TAG is required with --server');
        const r = await pushToServer({
          file: o.cdimg as string,
          image: o.image as string,
          server: o.server as string,
          signature: o.signature as string | undefined,
          token: await tokenOf(o),
          insecureHttp: !!o.insecureHttp,
          caFile: o.tlsCa as string | undefined,
          tlsVerify: o.tlsVerify as boolean | undefined,
        });
        if (o.json) return printJson(r);
        say(
          `pushed ${o.cdimg} (${r.kind}, ${humanBytes(r.size)}${r.uploaded ? '' : ', already on the server'}) -> ${r.repository}:${r.tag}\n` +
            `  image ${r.imageId}${r.parentId ? `\n  from  ${r.parentId}` : ''}\n  ${signedText(r.signaturesSent, r.signatures)}\n  ${r.seconds.toFixed(2)} s\n`,
        );
      }),
    );
}
