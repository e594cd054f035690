/**
 * The chain planner: which stored files take a client from what it holds to
 * the image it wants, for the fewest bytes. Shared by d4fs-server (the plans
 * it hands out) and the registry clients (which plan for themselves), so it
 * lives with the protocol both sides import.
 *
 * The graph has one node per image id plus a virtual "nothing" node. A full
 * image X is an edge nothing → X, a delta P→C an edge P → C; an edge costs the
 * file's size in bytes. Every image the client holds is a start at cost 0
 * (and so is "nothing"), and Dijkstra finds the cheapest path to the target.
 *
 * Ties are broken deterministically: fewer files first, then the smaller
 * sequence of root digests (compared as one string; paths with the same
 * number of files have keys of the same length, so appending the same file
 * keeps their order and Dijkstra stays exact under this total order). The
 * same catalogue and the same held set always give the same plan, which is
 * what lets an interrupted download resume against the same file.
 */
import type { FileInfo } from './protocol';

/** The result: files in the order they apply, and what they cost. */
export interface ChainPlan<F extends FileInfo> {
  /** The held image the chain starts from (undefined: starts with a full image). */
  from?: string;
  files: F[];
  bytes: number;
}

/** Node id of "the client holds nothing". */
const NOTHING = '';

interface Label<F> {
  cost: number;
  hops: number;
  key: string;
  files: F[];
  from?: string;
}

/** a before b in the planner's total order? */
function better<F>(a: Label<F>, b: Label<F>): boolean {
  if (a.cost !== b.cost) return a.cost < b.cost;
  if (a.hops !== b.hops) return a.hops < b.hops;
  return a.key < b.key;
}

/** Minimal binary heap of labels keyed by node. */
class Heap<F> {
  private readonly items: { node: string; label: Label<F> }[] = [];
  get size(): number {
    return this.items.length;
  }
  push(node: string, label: Label<F>): void {
    const a = this.items;
    a.push({ node, label });
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!better(a[i].label, a[p].label)) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }
  pop(): { node: string; label: Label<F> } | undefined {
    const a = this.items;
    if (a.length === 0) return undefined;
    const top = a[0];
    const last = a.pop() as { node: string; label: Label<F> };
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && better(a[l].label, a[m].label)) m = l;
        if (r < a.length && better(a[r].label, a[m].label)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}

/**
 * The cheapest chain (in bytes) of `files` from any of `held` (or from
 * nothing) to `target`; undefined when no chain exists. An empty plan means
 * the target is held already.
 */
export function planChain<F extends FileInfo>(files: readonly F[], held: Iterable<string>, target: string): ChainPlan<F> | undefined {
  const out = new Map<string, F[]>();
  for (const f of files) {
    const src = f.kind === 'full' ? NOTHING : f.parentId;
    const list = out.get(src) ?? [];
    list.push(f);
    out.set(src, list);
  }
  const best = new Map<string, Label<F>>();
  const done = new Set<string>();
  const heap = new Heap<F>();
  const offer = (node: string, label: Label<F>): void => {
    const cur = best.get(node);
    if (cur && !better(label, cur)) return;
    best.set(node, label);
    heap.push(node, label);
  };
  offer(NOTHING, { cost: 0, hops: 0, key: '', files: [] });
  for (const h of held) if (h !== NOTHING) offer(h, { cost: 0, hops: 0, key: '', files: [], from: h });
  while (heap.size > 0) {
    const { node, label } = heap.pop() as { node: string; label: Label<F> };
    if (done.has(node) || best.get(node) !== label) continue;
    done.add(node);
    if (node === target) return { from: label.from, files: label.files, bytes: label.cost };
    for (const f of out.get(node) ?? []) {
      if (done.has(f.imageId)) continue;
      offer(f.imageId, { cost: label.cost + f.size, hops: label.hops + 1, key: label.key + f.rootDigest, files: [...label.files, f], from: label.from });
    }
  }
  return undefined;
}

/**
 * Image ids from which `target` can be reached through deltas (the target
 * included): the versions a file must lead to in order to be useful for it.
 */
export function ancestorsOf(files: readonly FileInfo[], target: string): Set<string> {
  const into = new Map<string, string[]>();
  for (const f of files) {
    if (f.kind !== 'delta') continue;
    const list = into.get(f.imageId) ?? [];
    list.push(f.parentId);
    into.set(f.imageId, list);
  }
  const seen = new Set<string>([target]);
  const todo = [target];
  while (todo.length) {
    for (const p of into.get(todo.pop() as string) ?? []) {
      if (!seen.has(p)) {
        seen.add(p);
        todo.push(p);
      }
    }
  }
  return seen;
}
