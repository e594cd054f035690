// ESLint (typescript-eslint) over the TypeScript sources: `npm run lint`, run by `make test`.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/**', '.cache/**', 'demo-out/**', '**/*.js', '**/*.mjs', '**/*.cjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // Lazy require() is deliberate: a command loads only its own modules (ctr-cli's
      // start-up cost was measured per command group) and native addons load on first use.
      '@typescript-eslint/no-require-imports': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    // type-aware rules where they catch real bugs: a promise nobody awaits or handles, a promise
    // where a callback's result is ignored (event handlers, forEach); product code only (tests
    // and benches would double the lint time)
    files: ['src/**/*.ts', 'cli/**/*.ts', 'snapshotter/**/*.ts'],
    ignores: ['**/*.test.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
    },
  },
  {
    // tests mutate parsed JSON freely and match terminal escape sequences
    files: ['test/**/*.ts', 'src/**/*.test.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off', 'no-control-regex': 'off' },
  },
);
