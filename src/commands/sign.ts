/**
 * `ctr-cli keygen`, `ctr-cli sign` and `ctr-cli verify-signature`: signatures
 * over the root digest of a .cdimg or a registry patch (see src/signing).
 *
 *   ctr-cli keygen --out release.pem                 # release.pem (0600) + release.pub.pem
 *   ctr-cli sign nginx-1-2.cdimg --key release.pem   # writes nginx-1-2.cdimg.sig
 *   ctr-cli verify-signature nginx-1-2.cdimg --verify-key release.pub.pem
 */
import { promises as fsp } from 'node:fs';
import { Command, Option } from 'commander';
import { invalidArgument } from '../errors';
import { enforcePolicy, generateKeyPair, KeyAlgorithm, loadPolicy, loadSigningKey, rootOf, signaturePathOf, signFile } from '../signing';
import { action, printJson, say } from './common';

/** The policy flags of commands that take files in: --verify-key (repeatable) and --policy. */
export function addPolicyOptions(c: Command): Command {
  return c
    .option('--verify-key <pem>', 'require a signature by this public key (repeatable: any of them)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--policy <file>', 'signature policy file: {"verifyKeys": ["key.pub.pem", …]}');
}

/** The policy the flags of {@link addPolicyOptions} ask for (no keys: no policy). */
export function policyOf(o: { verifyKey?: string[]; policy?: string }) {
  return loadPolicy({ verifyKeys: o.verifyKey, policyFile: o.policy });
}

export function registerSign(program: Command): void {
  program
    .command('keygen')
    .description('make a signing key pair in PEM: OUT (private, mode 0600) and OUT with .pub.pem (public)')
    .requiredOption('--out <file>', 'private key file to write (e.g. release.pem)')
    .addOption(new Option('--algorithm <alg>', 'key type').choices(['ed25519', 'ecdsa-p256']).default('ed25519'))
    .option('--json', 'JSON output')
    .action(
      action(async (o: { out: string; algorithm: KeyAlgorithm; json?: boolean }) => {
        const pubPath = o.out.replace(/\.pem$/, '') + '.pub.pem';
        const k = generateKeyPair(o.algorithm);
        await fsp.writeFile(o.out, k.privatePem, { mode: 0o600, flag: 'wx' }).catch((e: NodeJS.ErrnoException) => {
          throw e.code === 'EEXIST' ? invalidArgument(`${o.out} exists: not overwriting a key`) : e;
        });
        await fsp.writeFile(pubPath, k.publicPem, { mode: 0o644 });
        if (o.json) printJson({ privateKey: o.out, publicKey: pubPath, algorithm: o.algorithm, keyId: k.keyId });
        else say(`wrote ${o.out} (private, keep it secret) and ${pubPath} (public)\n  algorithm  ${o.algorithm}\n  key id     ${k.keyId}\n`);
      }),
    );

  program
    .command('sign')
    .description('sign the root digest of a .cdimg or a registry patch; the signature goes to FILE.sig and travels with the file')
    .argument('[file]', 'the .cdimg or registry patch')
    .option('--cdimg <file>', 'D4C alias of the file argument')
    .requiredOption('--key <pem>', 'private key (Ed25519 or ECDSA P-256, PEM; ctr-cli keygen or openssl genpkey)')
    .option('--out <file>', 'signature file (default FILE.sig)')
    .option('--json', 'JSON output')
    .action(
      action(async (file: string | undefined, o: { cdimg?: string; key: string; out?: string; json?: boolean }) => {
        const path = file ?? o.cdimg;
        if (!path) throw invalidArgument('name the file to sign');
        const k = await loadSigningKey(o.key);
        const r = await signFile(path, k, o.out ?? signaturePathOf(path));
        if (o.json) printJson(r);
        else say(`signed ${path} (${r.kind} ${r.subject})\n  key id      ${r.keyId}\n  signatures  ${r.sigPath} (${r.signatures})\n`);
      }),
    );

  const v = program
    .command('verify-signature')
    .description('check that a file carries a valid signature by one of the given keys (exit 9 if not)')
    .argument('<file>', 'the .cdimg or registry patch')
    .option('--signature <file>', 'signature file (default FILE.sig)')
    .option('--json', 'JSON output');
  addPolicyOptions(v).action(
    action(async (file: string, o: { signature?: string; verifyKey?: string[]; policy?: string; json?: boolean }) => {
      const policy = await policyOf(o);
      if (!policy.keys.length) throw invalidArgument('name the keys to trust: --verify-key KEY.pub.pem (or --policy FILE)');
      const r = await enforcePolicy(policy, file, o.signature);
      const { kind, subject } = await rootOf(file);
      if (o.json) printJson({ file, kind, subject, keyId: r.keyId });
      else say(`${file}: signature OK (${kind} ${subject}, key ${r.keyId})\n`);
    }),
  );
}
