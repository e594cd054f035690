/** Layering of src/ (DESIGN.md decision 13, ARCHITECTURE.md): checked by `make test` (npm run depcheck). */
module.exports = {
  forbidden: [
    {
      name: 'lowest-layers-stay-low',
      comment: 'errors, util, signing and tar import only each other (in this order) and Node or npm modules',
      severity: 'error',
      from: { path: '^src/(errors|util|signing|tar)/' },
      to: { path: '^src/', pathNot: '^src/(errors|util|signing|tar)/' },
    },
    {
      name: 'errors-import-nothing-of-ours',
      severity: 'error',
      from: { path: '^src/errors/' },
      to: { path: '^src/', pathNot: '^src/errors/' },
    },
    {
      name: 'library-never-imports-entry-points-or-tests',
      severity: 'error',
      from: { path: '^src/', pathNot: '\\.test\\.ts$' },
      to: { path: '^(cli|snapshotter|test|bench|scripts)/' },
    },
    {
      name: 'no-import-cycles',
      comment: 'no cycle between files; the three left inside src/fuse (binding <-> fuse3/filesystem, manager <-> protocol) are issue 15',
      severity: 'error',
      from: { pathNot: '^src/fuse/' },
      to: { circular: true },
    },
  ],
  options: {
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^dist/|^node_modules/|\\.d\\.ts$)' },
  },
};
