/**
 * containerd's filter language, as used by the List RPC (`ctr snapshots ls`
 * filters, and containerd's metadata layer looking up remote snapshots with
 * `labels."containerd.io/snapshot.ref"==<chainID>,parent=="<name>"`).
 *
 * Grammar (containerd's filters package):
 *
 *     selectors := selector ("," selector)*
 *     selector  := fieldpath (operator value)?
 *     fieldpath := field ("." field)*
 *     field     := quoted | [A-Za-z0-9_]+
 *     operator  := "==" | "!=" | "~="
 *     value     := quoted | [^\s,]+
 *     quoted    := "..." (Go string syntax); for ~= also /.../ and |...|
 *
 * All selectors of one filter string must match (AND); a list of filter
 * strings matches when any of them matches (OR); no filters match everything.
 * A selector without operator tests that the field is present.
 */
import { invalidArgument } from '../errors';

/** Looks up a field path on the object being filtered: [value, present]. */
export type FieldAdaptor = (fieldpath: readonly string[]) => [string, boolean];

/** A parsed filter. */
export interface Filter {
  match(adaptor: FieldAdaptor): boolean;
}

type Operator = 'present' | '==' | '!=' | '~=';

interface Selector {
  fieldpath: string[];
  operator: Operator;
  value: string;
}

// Token kinds. Anything else the scanner returns is a single unexpected rune.
const EOF = -1;
const QUOTED = -2;
const VALUE = -3;
const FIELD = -4;
const SEPARATOR = -5;
const OPERATOR = -6;
const ILLEGAL = -7;

const isFieldRune = (r: number): boolean =>
  r === 0x5f /* _ */ || (r >= 0x41 && r <= 0x5a) || (r >= 0x61 && r <= 0x7a) || (r >= 0x30 && r <= 0x39);
const isOperatorRune = (r: number): boolean => r === 0x3d /* = */ || r === 0x21 /* ! */ || r === 0x7e; /* ~ */
const isQuoteRune = (r: number): boolean => r === 0x2f /* / */ || r === 0x7c /* | */ || r === 0x22; /* " */
const isSeparatorRune = (r: number): boolean => r === 0x2c /* , */ || r === 0x2e; /* . */
const isSpace = (r: number): boolean => r >= 0 && /\s/u.test(String.fromCodePoint(r));
const isValueRune = (r: number): boolean => r >= 0 && r !== 0x2c && !isSpace(r) && !/\p{Cc}/u.test(String.fromCodePoint(r));

/** Tokenizer with one rune of lookahead, modelled on containerd's scanner. */
class Scanner {
  /** Start of the current rune. */
  pos = 0;
  /** Just past the current rune. */
  ppos = 0;
  /** True after an operator: the next bare word is a value, not a field. */
  private value = false;
  err = '';

  constructor(readonly input: string) {}

  next(): number {
    if (this.ppos >= this.input.length) {
      this.pos = this.input.length;
      return EOF;
    }
    this.pos = this.ppos;
    const r = this.input.codePointAt(this.ppos)!;
    this.ppos += r > 0xffff ? 2 : 1;
    if (r === 0) {
      this.error('unexpected null');
      return ILLEGAL;
    }
    return r;
  }

  peek(): number {
    const { pos, ppos } = this;
    const r = this.next();
    this.pos = pos;
    this.ppos = ppos;
    return r;
  }

  scan(): [number, number, string] {
    let ch = this.next();
    let pos = this.pos;
    for (;;) {
      if (ch === EOF) return [pos, EOF, ''];
      if (ch === ILLEGAL) return [pos, ILLEGAL, ''];
      if (isQuoteRune(ch)) {
        const ok = this.scanQuoted(ch);
        return [pos, ok ? QUOTED : ILLEGAL, this.input.slice(pos, this.ppos)];
      }
      if (isSeparatorRune(ch)) {
        this.value = false;
        return [pos, SEPARATOR, this.input.slice(pos, this.ppos)];
      }
      if (isOperatorRune(ch)) {
        while (isOperatorRune(this.peek())) this.next();
        this.value = true;
        return [pos, OPERATOR, this.input.slice(pos, this.ppos)];
      }
      if (isSpace(ch)) {
        ch = this.next();
        pos = this.pos;
        continue;
      }
      if (this.value) {
        while (isValueRune(this.peek())) this.next();
        this.value = false;
        return [pos, VALUE, this.input.slice(pos, this.ppos)];
      }
      if (isFieldRune(ch)) {
        while (isFieldRune(this.peek())) this.next();
        return [pos, FIELD, this.input.slice(pos, this.ppos)];
      }
      return [this.pos, ch, ''];
    }
  }

  private scanQuoted(quote: number): boolean {
    let ch = this.next();
    let legal = true;
    while (ch !== quote) {
      if (ch === 0x0a || ch < 0) {
        this.error('quoted literal not terminated');
        return false;
      }
      if (ch === 0x5c /* \ */) {
        ch = this.next();
        if (ch === quote || 'abfnrtv\\'.includes(String.fromCodePoint(Math.max(ch, 0)))) {
          ch = this.next();
        } else if (ch >= 0x30 && ch <= 0x37) {
          ch = this.skipDigits(ch, 8, 3);
        } else if (ch === 0x78 /* x */ || ch === 0x75 /* u */ || ch === 0x55 /* U */) {
          const n = ch === 0x78 ? 2 : ch === 0x75 ? 4 : 8;
          ch = this.skipDigits(this.next(), 16, n);
        } else {
          this.error('illegal escape sequence');
          legal = false;
          if (ch < 0) return false;
          ch = this.next();
        }
        if (this.err) legal = false;
      } else {
        ch = this.next();
      }
    }
    return legal;
  }

  private skipDigits(ch: number, base: number, n: number): number {
    while (n > 0 && digitValue(ch) < base) {
      ch = this.next();
      n--;
    }
    if (n > 0) this.error('illegal numeric escape sequence');
    return ch;
  }

  private error(msg: string): void {
    if (!this.err) this.err = msg;
  }
}

function digitValue(ch: number): number {
  if (ch >= 0x30 && ch <= 0x39) return ch - 0x30;
  if (ch >= 0x61 && ch <= 0x66) return ch - 0x61 + 10;
  if (ch >= 0x41 && ch <= 0x46) return ch - 0x41 + 10;
  return 16;
}

/** Go-style unquoting of "...", /.../ or |...| literals. */
export function unquote(s: string): string {
  const quote = s[0];
  if (s.length < 2 || s[s.length - 1] !== quote) throw new Error('quote syntax error');
  let body = s.slice(1, -1);
  let out = '';
  while (body.length > 0) {
    const c = body[0];
    if (c === quote) throw new Error('quote syntax error');
    if (c !== '\\') {
      const cp = body.codePointAt(0)!;
      const w = cp > 0xffff ? 2 : 1;
      out += body.slice(0, w);
      body = body.slice(w);
      continue;
    }
    if (body.length < 2) throw new Error('quote syntax error');
    const e = body[1];
    body = body.slice(2);
    const simple: Record<string, string> = { a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\' };
    if (e in simple) {
      out += simple[e];
    } else if (e === 'x' || e === 'u' || e === 'U') {
      const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
      const hex = body.slice(0, n);
      if (hex.length < n || !/^[0-9a-fA-F]+$/.test(hex)) throw new Error('quote syntax error');
      const v = parseInt(hex, 16);
      if (v > 0x10ffff) throw new Error('quote syntax error');
      out += String.fromCodePoint(v);
      body = body.slice(n);
    } else if (e >= '0' && e <= '7') {
      const oct = e + body.slice(0, 2);
      if (!/^[0-7]{3}$/.test(oct)) throw new Error('quote syntax error');
      const v = parseInt(oct, 8);
      if (v > 255) throw new Error('quote syntax error');
      out += String.fromCharCode(v);
      body = body.slice(2);
    } else if (e === "'" || e === '"' || e === '|' || e === '/') {
      if (e !== quote) throw new Error('quote syntax error');
      out += e;
    } else {
      throw new Error('quote syntax error');
    }
  }
  return out;
}

class Parser {
  private readonly s: Scanner;

  constructor(private readonly input: string) {
    this.s = new Scanner(input);
  }

  parse(): Selector[] {
    const selectors = [this.selector()];
    for (;;) {
      const r = this.s.peek();
      if (r === 0x2c /* , */) {
        const [pos, tok] = this.s.scan();
        if (tok !== SEPARATOR) throw this.err(pos, 'expected a separator');
        selectors.push(this.selector());
      } else if (r === EOF) {
        return selectors;
      } else {
        throw this.err(this.s.ppos, `unexpected input: ${r >= 0 ? String.fromCodePoint(r) : 'illegal'}`);
      }
    }
  }

  private selector(): Selector {
    const fieldpath = this.fieldpath();
    const r = this.s.peek();
    if (r === 0x2c || r === EOF) return { fieldpath, operator: 'present', value: '' };
    const operator = this.operator();
    const value = this.value(operator === '~=');
    return { fieldpath, operator, value };
  }

  private fieldpath(): string[] {
    const fields = [this.field()];
    while (this.s.peek() === 0x2e /* . */) {
      const [pos, tok] = this.s.scan();
      if (tok !== SEPARATOR) throw this.err(pos, 'expected a field separator (`.`)');
      fields.push(this.field());
    }
    return fields;
  }

  private field(): string {
    const [pos, tok, text] = this.s.scan();
    if (tok === FIELD) return text;
    if (tok === QUOTED) return this.unquote(pos, text, false);
    if (tok === ILLEGAL) throw this.err(pos, this.s.err);
    throw this.err(pos, 'expected field or quoted');
  }

  private operator(): Operator {
    const [pos, tok, text] = this.s.scan();
    if (tok === OPERATOR) {
      if (text === '==' || text === '!=' || text === '~=') return text;
      throw this.err(pos, `unsupported operator "${text}"`);
    }
    if (tok === ILLEGAL) throw this.err(pos, this.s.err);
    throw this.err(pos, 'expected an operator ("=="|"!="|"~=")');
  }

  private value(allowAltQuotes: boolean): string {
    const [pos, tok, text] = this.s.scan();
    if (tok === VALUE || tok === FIELD) return text;
    if (tok === QUOTED) return this.unquote(pos, text, allowAltQuotes);
    if (tok === ILLEGAL) throw this.err(pos, this.s.err);
    if (tok === EOF) throw this.err(pos, 'unexpected end of input, expected a value');
    throw this.err(pos, 'expected value or quoted');
  }

  private unquote(pos: number, text: string, allowAlts: boolean): string {
    if (!allowAlts && text[0] !== '"' && text[0] !== "'") throw this.err(pos, 'invalid quote encountered');
    try {
      return unquote(text);
    } catch (e) {
      throw this.err(pos, `unquoting failed: ${(e as Error).message}`);
    }
  }

  private err(pos: number, msg: string): Error {
    const where = pos < this.input.length ? `[${this.input.slice(0, pos)} >|${this.input[pos]}|< ${this.input.slice(pos + 1)}]` : `[${this.input}]`;
    return invalidArgument(`filters: parse error: ${where}: ${msg}`, { filter: this.input });
  }
}

function matchSelector(sel: Selector, adaptor: FieldAdaptor): boolean {
  const [value, present] = adaptor(sel.fieldpath);
  switch (sel.operator) {
    case 'present':
      return present;
    case '==':
      return present && value === sel.value;
    case '!=':
      return value !== sel.value;
    case '~=': {
      let re: RegExp;
      try {
        re = new RegExp(sel.value, 'u');
      } catch {
        return false;
      }
      return re.test(value);
    }
  }
}

/** A filter that matches everything. */
export const ALWAYS: Filter = { match: () => true };

/** Parses one filter string (selectors joined by ','): all must match. Throws INVALID_ARGUMENT. */
export function parseFilter(input: string): Filter {
  if (input === '') return ALWAYS;
  const selectors = new Parser(input).parse();
  for (const s of selectors) {
    if (s.operator === '~=') {
      try {
        new RegExp(s.value, 'u');
      } catch (e) {
        throw invalidArgument(`filters: invalid regular expression ${JSON.stringify(s.value)}: ${(e as Error).message}`);
      }
    }
  }
  return { match: (a) => selectors.every((s) => matchSelector(s, a)) };
}

/** Parses a list of filter strings: the result matches when any matches; an empty list matches all. */
export function parseFilters(inputs: readonly string[]): Filter {
  if (inputs.length === 0) return ALWAYS;
  const filters = inputs.map(parseFilter);
  return { match: (a) => filters.some((f) => f.match(a)) };
}
