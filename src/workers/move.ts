/**
 * Results a task gives to be moved to the calling thread rather than copied
 * (./thread.ts transfers their ArrayBuffers, which are unusable in the task's
 * thread afterwards). Only what a task marks with {@link moveResult}: a Buffer
 * a task keeps (e.g. in a cache) must never be moved.
 */
const moved = new WeakSet<object>();

/** Marks `b`, the result of a task, to be moved rather than copied (only when it owns its whole ArrayBuffer). */
export function moveResult<T extends Uint8Array>(b: T): T {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) moved.add(b);
  return b;
}

/** True when `b` was marked by {@link moveResult}. */
export function isMoved(b: Uint8Array): boolean {
  return moved.has(b);
}
