/** Asserting d4fs errors in tests. */
import { D4fsError } from '../../src/errors';

/** The code of the (Node) error `p` rejects with ('' when it resolves). */
export async function errorCodeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return '';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

/** The kind of the D4fsError `p` rejects with ('resolved' when it resolves). */
export async function kindOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof D4fsError ? e.kind : `non-D4fsError: ${String(e)}`;
  }
  return 'resolved';
}

/** `p` rejects with a D4fsError of `kind` whose message matches `re`. */
export async function expectError(p: Promise<unknown>, kind: string, re: RegExp): Promise<void> {
  const err = await p.then(() => undefined, (e) => e);
  expect(err).toBeInstanceOf(D4fsError);
  expect((err as D4fsError).kind).toBe(kind);
  expect((err as Error).message).toMatch(re);
}

/** The kind of the D4fsError `f` throws ('returned' when it returns, 'non-D4fsError: …' for other errors). */
export function kindThrown(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof D4fsError ? e.kind : `non-D4fsError: ${String(e)}`;
  }
  return 'returned';
}
