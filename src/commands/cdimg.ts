/** `ctr-cli cdimg show|verify|unpack` (convert is in ./convert). */
import { Command } from 'commander';
import { CdimgReader } from '../format/reader';
import { Encoding, Entry, FileType, type InsertedEntry } from '../format/types';
import { storedBytesOf } from '../format/group';
import { invalidArgument } from '../errors';
import { digestFromRaw } from '../util/digest';
import { registerDelta } from './delta';
import { verifyCdimg, type VerifyResult } from '../unpack/verify';
import { action, humanBytes, parseIntOpt, printJson, say, sayErr } from './common';

const TYPE_NAMES: Record<number, string> = {
  [FileType.REG]: 'file',
  [FileType.DIR]: 'dir',
  [FileType.SYMLINK]: 'symlink',
  [FileType.HARDLINK]: 'hardlink',
  [FileType.CHAR]: 'char',
  [FileType.BLOCK]: 'block',
  [FileType.FIFO]: 'fifo',
};

function entryJson(e: Entry): Record<string, unknown> {
  const o: Record<string, unknown> = {
    path: '/' + e.path,
    type: TYPE_NAMES[e.type] ?? String(e.type),
    mode: e.mode.toString(8).padStart(4, '0'),
    uid: e.uid,
    gid: e.gid,
    mtime: `${e.mtimeSec}.${String(e.mtimeNsec).padStart(9, '0')}`,
  };
  // a delta opened alone (format version 7): the size of the parent's entry it takes its content or link target from
  const sizeRef = (e as InsertedEntry).sizeRef === true;
  if (e.type === FileType.REG) {
    if (sizeRef) o.sizeOfParentEntry = (e as InsertedEntry).parentRef;
    else o.size = e.size;
    const ref = (e as InsertedEntry).parentRef;
    // a delta opened alone (format version 4): the content of the parent's entry at that ordinal
    if (ref !== undefined && e.digest.length === 0) o.contentOfParentEntry = ref;
    else o.digest = digestFromRaw(e.digest);
  }
  // a delta opened alone (format version 6): the link target of the parent's entry whose path it takes
  if ((e as InsertedEntry).linkRef) o.linkTargetOfParentEntry = (e as InsertedEntry).pathRef;
  else if (e.type === FileType.SYMLINK || e.type === FileType.HARDLINK) o.linkTarget = e.type === FileType.HARDLINK ? '/' + e.linkTarget : e.linkTarget;
  if (e.type === FileType.CHAR || e.type === FileType.BLOCK) o.device = `${e.devMajor}:${e.devMinor}`;
  if (e.xattrs.length) o.xattrs = Object.fromEntries(e.xattrs.map((x) => [x.name, x.value.toString('base64')]));
  return o;
}

export function summarize(r: CdimgReader): Record<string, unknown> {
  const idx = r.index;
  const types: Record<string, number> = {};
  // a version 2 delta opened alone: its edit script (entries kept and dropped from the parent, the ones it inserts)
  const edit = idx.treeEdit;
  for (const e of edit?.inserted ?? idx.entries) types[TYPE_NAMES[e.type]] = (types[TYPE_NAMES[e.type]] ?? 0) + 1;
  let kept = 0;
  let dropped = 0;
  for (let k = 0; edit && k + 2 < edit.ops.length; k += 3) {
    kept += edit.ops[k];
    dropped += edit.ops[k + 1];
  }
  const enc = { same: 0, full: 0, patch: 0 };
  let contentBytes = 0;
  for (const b of idx.blobs) {
    contentBytes += b.size;
    if (b.encoding === Encoding.SAME) enc.same++;
    else if (b.encoding === Encoding.FULL) enc.full++;
    else enc.patch++;
  }
  const storedBytes = storedBytesOf(idx.blobs);
  let cfg: Record<string, unknown> = {};
  try {
    const parsed = JSON.parse(idx.image.configJson.toString('utf8'));
    cfg = parsed.config ?? {};
  } catch {
    /* config kept as bytes; shown raw below */
  }
  return {
    file: r.path,
    fileSize: r.fileSize,
    formatVersion: idx.formatVersion,
    kind: r.isDelta ? 'delta' : 'full',
    rootDigest: r.rootDigest,
    imageId: r.imageId,
    parentId: r.parentId ?? null,
    source: idx.image.sourceRef,
    platform: idx.image.platform,
    manifestDigest: idx.image.manifestDigest,
    configDigest: idx.image.configDigest,
    layers: idx.image.layers.length,
    layerBytes: idx.image.layers.reduce((n, l) => n + l.size, 0),
    entries: edit ? kept + edit.inserted.length : idx.entries.length,
    ...(edit ? { treeEdit: { kept, dropped, inserted: edit.inserted.length, byReference: edit.inserted.filter((e) => e.parentRef !== undefined).length } } : {}),
    types,
    contents: idx.blobs.length,
    encodings: enc,
    contentBytes,
    storedBytes,
    chunkSize: idx.chunkSize,
    config: {
      user: cfg.User ?? '',
      workingDir: cfg.WorkingDir ?? '',
      entrypoint: cfg.Entrypoint ?? null,
      cmd: cfg.Cmd ?? null,
      env: cfg.Env ?? [],
      labels: cfg.Labels ?? {},
    },
  };
}

/** `cdimg show`: the summary of a file (and its entries with --json). */
function registerShow(cd: Command): void {
  cd.command('show')
    .description('summary of a .cdimg (--json adds every entry)')
    .argument('[file]', 'the .cdimg file')
    .option('--cdimg <file>', 'D4C alias of the file argument')
    .option('--json', 'JSON output with all entries')
    .option('--no-entries', 'with --json: leave out the entries')
    .action(
      action(async (file: string | undefined, o: { cdimg?: string; json?: boolean; entries?: boolean }) => {
        const path = file ?? o.cdimg;
        if (!path) throw invalidArgument('name the .cdimg file to show');
        const r = await CdimgReader.open(path);
        try {
          const s = summarize(r);
          if (o.json) {
            if (o.entries !== false) {
              // a version 2 delta alone: the entries its edit script inserts (a name under a depth; their paths come from the parent's tree)
              if (r.index.treeEdit) s.insertedEntries = r.index.treeEdit.inserted.map((e) => ({ ...(e.pathRef !== undefined ? { pathOfParentEntry: e.pathRef } : { depth: e.depth, name: e.name }), ...entryJson(e) }));
              else s.entryList = r.index.entries.map(entryJson);
            }
            printJson(s);
            return;
          }
          const t = s.types as Record<string, number>;
          const enc = s.encodings as Record<string, number>;
          const cfg = s.config as Record<string, unknown>;
          say(
            [
              `${path}: ${s.kind} image, format v${s.formatVersion}, ${humanBytes(r.fileSize)}`,
              `  image id      ${s.imageId}`,
              `  root digest   ${s.rootDigest}`,
              s.parentId ? `  parent id     ${s.parentId}` : '',
              s.source ? `  source        ${s.source}` : '',
              `  platform      ${s.platform}`,
              `  manifest      ${s.manifestDigest}`,
              `  config        ${s.configDigest}`,
              `  layers        ${s.layers} (${humanBytes(s.layerBytes as number)} compressed)`,
              s.treeEdit
                ? `  entries       ${s.entries}: ${(s.treeEdit as { kept: number }).kept} kept from the parent, ${(s.treeEdit as { dropped: number }).dropped} dropped, ${(s.treeEdit as { inserted: number }).inserted} new or changed (${Object.entries(t).map(([k, v]) => `${v} ${k}`).join(', ')}${(s.treeEdit as { byReference: number }).byReference ? `; ${(s.treeEdit as { byReference: number }).byReference} files with their parent's contents, by reference` : ''})`
                : `  entries       ${s.entries}: ${Object.entries(t).map(([k, v]) => `${v} ${k}`).join(', ')}`,
              `  contents      ${s.contents} (${enc.full} full, ${enc.patch} patch, ${enc.same} same), ${humanBytes(s.contentBytes as number)} -> ${humanBytes(s.storedBytes as number)} stored`,
              `  entrypoint    ${JSON.stringify(cfg.entrypoint)}  cmd ${JSON.stringify(cfg.cmd)}`,
              `  user          ${JSON.stringify(cfg.user)}  workdir ${JSON.stringify(cfg.workingDir)}`,
              `  env           ${JSON.stringify(cfg.env)}`,
            ]
              .filter(Boolean)
              .join('\n') + '\n',
          );
        } finally {
          await r.close();
        }
      }),
    );
}

export function registerCdimg(program: Command): void {
  const cd = program.command('cdimg').description('inspect, verify, unpack, diff, merge, patch and export .cdimg files');
  registerDelta(cd);

  registerShow(cd);

  cd.command('verify')
    .description('check the root digest, the index and every blob of a .cdimg')
    .argument('[file]', 'the .cdimg file')
    .option('--cdimg <file>', 'D4C alias of the file argument')
    .option('-t, --threads <n>', 'worker threads', parseIntOpt('threads', 1, 256))
    .option('--chain <files...>', 'for a delta: the files below it, full image first (its tree is rebuilt and its image id checked)')
    .option('--json', 'JSON output')
    .action(
      action(async (file: string | undefined, o: { cdimg?: string; threads?: number; json?: boolean; chain?: string[] }) => {
        const path = file ?? o.cdimg;
        if (!path) throw invalidArgument('name the .cdimg file to verify');
        const res = await verifyCdimg(path, o.threads, o.chain ?? []);
        if (o.json) printJson(res);
        else
          say(
            `${path}: OK — index matches root digest ${res.rootDigest}; ${res.chunks} chunks (${humanBytes(res.storedBytes)}) verified, ${res.contentsVerified} contents decoded and verified` +
              (res.patchChunks ? `; ${res.patchChunks} patch chunks checked by stored digest (their base is not in this file)` : '') +
              (res.treeChecked ? '' : `; its tree is written against its parent's: name the files below it with --chain to check the tree and the image id`) +
              '\n',
          );
      }),
    );

  cd.command('unpack')
    .description('write the whole tree of a full .cdimg into a directory, with all metadata')
    .argument('[file]', 'the .cdimg file')
    .argument('[dir]', 'destination (new or empty directory)')
    .option('--cdimg <file>', 'D4C alias of the file argument')
    .option('-t, --threads <n>', 'worker threads', parseIntOpt('threads', 1, 256))
    .option('--no-devices', 'do not create device nodes (untrusted images)')
    .option('--no-setuid', 'clear setuid/setgid bits and drop file capabilities (untrusted images)')
    .option('--json', 'JSON output')
    .action(
      action(async (a1: string | undefined, a2: string | undefined, o: { cdimg?: string; threads?: number; json?: boolean; devices: boolean; setuid: boolean }) => {
        const [file, dir] = o.cdimg ? [o.cdimg, a2 ?? a1] : [a1, a2];
        if (o.cdimg && a1 && a2) throw invalidArgument('--cdimg names the file already: give only the destination directory');
        if (!file || !dir) throw invalidArgument('usage: cdimg unpack FILE DIR (or --cdimg FILE DIR)');
        const { unpackImage } = await import('../unpack/unpack');
        const r = await unpackImage(file, dir, { threads: o.threads, noDevices: !o.devices, noSetuid: !o.setuid });
        if (o.json) printJson(r);
        else {
          say(`unpacked ${file} -> ${dir}: ${r.entries} entries, ${r.files} files, ${humanBytes(r.bytes)} in ${r.seconds.toFixed(2)} s\n`);
          for (const w of r.warnings.slice(0, 20)) sayErr(`warning: ${w}\n`);
          if (r.warnings.length > 20) process.stderr.write(`warning: … and ${r.warnings.length - 20} more\n`);
        }
      }),
    );
}

export { verifyCdimg, type VerifyResult };
