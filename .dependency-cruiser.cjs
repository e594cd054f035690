/**
 * Layering of src/ (DESIGN.md decision 13), checked by `npm run lint` (run by `make test`).
 *
 * The layers are read from ARCHITECTURE.md's table "Folders of `src/`, lower
 * layers first": one folder per row, and a folder may import only itself and
 * the folders in the rows above it. What is checked is what is written down;
 * a folder of src/ missing from the table, or a row naming no folder, stops
 * the lint. A total order of folders admits no cycle between folders, so the
 * layer rules are also the check that there is no folder-level import cycle;
 * `no-import-cycles` forbids cycles between files.
 */
const fs = require('node:fs');
const path = require('node:path');

const ARCHITECTURE = path.join(__dirname, 'ARCHITECTURE.md');
const SRC = path.join(__dirname, 'src');
const TABLE_HEADING = '## Folders of `src/`, lower layers first';

/** The folders of src/ in the order of ARCHITECTURE.md's table, lowest first. */
function layers() {
  const lines = fs.readFileSync(ARCHITECTURE, 'utf8').split('\n');
  const start = lines.findIndex((l) => l.trim() === TABLE_HEADING);
  if (start < 0) throw new Error(`${ARCHITECTURE}: no heading "${TABLE_HEADING}"`);
  const rows = [];
  let inTable = false;
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith('## ')) break;
    if (!line.startsWith('|')) {
      if (inTable) break;
      continue;
    }
    inTable = true;
    const first = line.split('|')[1].trim();
    if (first === 'folder' || /^-+$/.test(first)) continue; // header and separator rows
    const m = /^`([a-z0-9-]+)`$/.exec(first);
    if (!m) throw new Error(`${ARCHITECTURE}: layer table row must name exactly one folder as \`name\`: ${line}`);
    rows.push(m[1]);
  }
  const onDisk = fs.readdirSync(SRC, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  const problems = [
    ...onDisk.filter((f) => !rows.includes(f)).map((f) => `src/${f} is not in the table: give it a row (its place is its layer)`),
    ...rows.filter((f) => !onDisk.includes(f)).map((f) => `the table names src/${f}, which does not exist`),
    ...rows.filter((f, i) => rows.indexOf(f) !== i).map((f) => `the table names src/${f} twice`),
  ];
  if (problems.length) throw new Error(`${ARCHITECTURE}, folders of src/:\n  ${problems.join('\n  ')}`);
  return rows;
}

/**
 * Imports against the layering that are known and owned elsewhere: each is
 * exempted file by file (the rest of its folder is checked), with its reason.
 * Remove an entry when its import is gone.
 */
const PENDING = [];

const order = layers();

const layerRules = order.flatMap((folder, i) => {
  const allowed = `^src/(${order.slice(0, i + 1).join('|')})/`;
  const pending = PENDING.filter((p) => new RegExp(`^\\^src/${folder}/`).test(p.from));
  const rule = (name, from, extraTo, comment) => ({
    name,
    comment,
    severity: 'error',
    from,
    to: { path: '^src/[^/]+/', pathNot: extraTo ? [allowed, extraTo] : allowed },
  });
  const comment = `src/${folder} imports only ${i === 0 ? 'itself' : `itself and the folders above it in ARCHITECTURE.md's table (${order.slice(0, i).join(', ')})`}`;
  return [
    rule(`layer-${folder}`, pending.length ? { path: `^src/${folder}/`, pathNot: pending.map((p) => p.from) } : { path: `^src/${folder}/` }, undefined, comment),
    ...pending.map((p) => rule(`layer-${folder}-pending`, { path: p.from }, p.to, `${comment}; pending: ${p.why}`)),
  ];
});

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'snapshot-core-never-imports-fuse',
      comment: 'the snapshot core sees the filesystem only through FileSystem (snapshotter/filesystem.ts); the FUSE binding names are snapshotter/fuse-binding.ts',
      severity: 'error',
      from: { path: '^src/snapshotter/' },
      to: { path: '^src/fuse/' },
    },
    {
      name: 'library-never-imports-entry-points-or-tests',
      severity: 'error',
      from: { path: '^src/', pathNot: '\\.test\\.ts$' },
      to: { path: '^(cli|snapshotter|test|bench|scripts)/' },
    },
    {
      name: 'no-import-cycles',
      comment: 'no cycle between files, lazy require() included (dependency-cruiser sees those too)',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
  ],
  options: {
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^dist/|^node_modules/|\\.d\\.ts$)' },
  },
};
