/**
 * Text from untrusted sources (paths, references, labels in an image) shown
 * to a person: control characters are escaped so that an image cannot move
 * the cursor, retitle the terminal or hide text. JSON output is left exact.
 */

// C0 controls, DEL, C1 controls, and the bidirectional overrides that can
// reorder what a reader sees (CVE-2021-42574 "trojan source").
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

const escapeOne = (c: string): string => {
  const n = c.charCodeAt(0);
  if (c === '\n') return '\\n';
  if (c === '\t') return '\\t';
  if (c === '\r') return '\\r';
  return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
};

/** One line of untrusted text, safe to print: every control character escaped (newlines too). */
export function forTerminal(s: string): string {
  return s.replace(UNSAFE, escapeOne);
}

/** Several lines of human output: each line escaped, the line breaks kept. */
export function linesForTerminal(s: string): string {
  return s.split('\n').map(forTerminal).join('\n');
}
