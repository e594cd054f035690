/**
 * LLVM bitcode for tests, made by Debian's `llvm-as` (package llvm, installed by
 * scripts/install-deps.sh): a module of `n` functions on 64-bit values (with constants past
 * 2^53 and a string), and the same module with one function changed and one added.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Whether `llvm-as` runs here. */
export const hasLlvmAs = spawnSync('llvm-as', ['--version'], { stdio: 'ignore' }).status === 0;

/** The text of a module of `n` functions; `edit` changes one of them and adds one. */
export function llvmModule(n: number, edit: boolean, salt = 0): string {
  const lines = ['@big = global i64 -1152921504606846976', '@str = private constant [13 x i8] c"hello world\\0A\\00"', 'declare i32 @puts(i8*)'];
  for (let i = 0; i < n + (edit ? 1 : 0); i++) {
    const k = edit && i === Math.floor(n / 2) ? 977 + salt : 31 + i;
    lines.push(
      `define i64 @f${i}(i64 %a, i64 %b) {`,
      'entry:',
      `  %c = add i64 %a, ${k}`,
      '  %d = mul i64 %c, %b',
      '  %e = xor i64 %d, 18446744073709551557',
      `  %f = icmp ult i64 %e, ${i * 1000003}`,
      '  br i1 %f, label %yes, label %no',
      'yes:',
      `  %g = sub i64 %e, ${i}`,
      '  ret i64 %g',
      'no:',
      '  ret i64 %d',
      '}',
    );
  }
  lines.push('define i32 @main() {', '  %r = call i32 @puts(i8* getelementptr ([13 x i8], [13 x i8]* @str, i64 0, i64 0))', '  ret i32 0', '}');
  return lines.join('\n') + '\n';
}

/** `text` assembled by llvm-as in `dir` (as `name`.bc). */
export function assemble(dir: string, name: string, text: string): Buffer {
  const ll = join(dir, `${name}.ll`);
  const bc = join(dir, `${name}.bc`);
  writeFileSync(ll, text);
  const r = spawnSync('llvm-as', [ll, '-o', bc], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`llvm-as: ${r.stderr}`);
  return readFileSync(bc);
}
