/** Small statistics shared by the benchmarks. */

/** The middle value of `xs` (the upper of the two middle ones for an even count). */
export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** One line of a benchmark's table of targets (snapshotter, scale). */
export interface TargetRow {
  /** What is measured. */
  measurement: string;
  /** d4fs's number, formatted. */
  d4fs: string;
  /** The baseline's number, formatted ('' when there is none). */
  baseline: string;
  /** d4fs ÷ baseline as the target states it (time or throughput); null without a baseline. */
  ratio: number | null;
  /** The target, e.g. "≤ 1.3×" ('' for information only). */
  target: string;
  /** Whether the target is met; null for information only. */
  met: boolean | null;
  /** How it was measured, caveats. */
  note: string;
}

/** Print `rows` as a markdown table under `title` and a `targets` line (the same output for every target table). */
export function printTargetTable(title: string, targets: string, rows: TargetRow[]): void {
  const lines = [
    title,
    targets,
    '',
    '| measurement | d4fs | baseline | ratio | target | met | notes |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${r.measurement} | ${r.d4fs} | ${r.baseline || '-'} | ${r.ratio === null ? '-' : `${r.ratio.toFixed(2)}×`} | ${r.target || '-'} | ${r.met === null ? '-' : r.met ? 'ok' : 'MISS'} | ${r.note} |`,
    ),
  ];
  process.stdout.write(lines.join('\n') + '\n\n');
}
