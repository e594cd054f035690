/*
 * LLVM bitcode as a byte-aligned stream of its values, and back: the fast path of
 * src/delta/bitcode.ts (its module comment says what the expanded form is). It exists for
 * speed: the TypeScript walk expands ~31 MB/s and rebuilds ~42 MB/s here, a third of the CPU
 * of postgresql-15's `cdimg diff` was it (CODECS.md, "LLVM bitcode").
 *
 * The TypeScript walk is the reference: these functions give its bytes or nothing. They
 * return 0 with the form (the file) when the input is of the ordinary kind, 1 ("defer") for
 * anything else: not bitcode this walk reads, a value past 2^53 where the walk steers by it or
 * past 2^64 anywhere, a damaged form, a file larger than allowed. The caller then runs the
 * TypeScript walk, which decides (and names the error). Every success here is a success there
 * with the same bytes; the tests compare the two on real bitcode and on damaged input.
 */
#include "bitcode.h"

#include <stdlib.h>
#include <string.h>

#define MAGIC 0x4243c0deu
#define WRAPPER_MAGIC 0x0b17c0deu
#define FORM_VERSION 1
#define MAX_DEPTH 64
#define MAX_ABBREV_OPS 1024
#define MAXSAFE 9007199254740991ull /* 2^53 - 1: the largest value the walk steers by */

enum { END_BLOCK = 0, ENTER_SUBBLOCK = 1, DEFINE_ABBREV = 2, UNABBREV_RECORD = 3 };
enum { FIXED = 1, VBR = 2, ARRAY = 3, CHAR6 = 4, BLOB = 5 };
#define BLOCKINFO_BLOCK 0
#define SETBID 1

typedef struct {
  uint8_t has_lit, enc, width;
  uint64_t lit;
} op_t;

typedef struct {
  size_t first, n; /* ops[first .. first + n) */
} abbrev_t;

typedef struct {
  int64_t id;
  size_t *ab; /* abbreviation numbers */
  size_t n, cap;
} info_t;

typedef struct {
  int rebuild; /* 0: bits -> values, 1: values -> bits */
  /* expanding: the file's bits [pos, endbits), the stream starting at startbits */
  const uint8_t *b;
  size_t blen;
  uint64_t pos, endbits, startbits;
  /* rebuilding: the form's bytes [fp, fn) */
  const uint8_t *f;
  size_t fp, fn;
  /* the output: values (expanding) or bits (rebuilding) */
  uint8_t *o;
  size_t on, ocap, omax;
  uint64_t acc;
  int accbits;
  uint64_t wbase; /* rebuilding: bit position of the stream's start */
  /* abbreviations */
  op_t *ops;
  size_t nops, capops;
  abbrev_t *abs;
  size_t nabs, capabs;
  info_t *info;
  size_t ninfo, capinfo;
  int defer;
} walker;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

/* ---- expanding: the bit reader and the value sink ---- */

static inline uint64_t rd(walker *t, int n) {
  if (t->defer) return 0;
  if ((uint64_t)n > t->endbits - t->pos) {
    t->defer = 1;
    return 0;
  }
  if (n == 0) return 0;
  uint64_t v = 0;
  int got = 0;
  while (got < n) {
    size_t i = (size_t)(t->pos >> 3);
    int off = (int)(t->pos & 7);
    uint64_t word;
    if (i + 8 <= t->blen) {
      memcpy(&word, t->b + i, 8); /* little-endian machines (x86-64, aarch64) */
    } else {
      word = 0;
      for (size_t k = 0; k < 8 && i + k < t->blen; k++) word |= (uint64_t)t->b[i + k] << (8 * k);
    }
    word >>= off;
    int take = 64 - off;
    if (take > 56) take = 56;
    if (take > n - got) take = n - got;
    v |= (word & ((1ull << take) - 1)) << got;
    got += take;
    t->pos += (uint64_t)take;
  }
  return v;
}

static inline void put_byte(walker *t, uint8_t x) {
  if (t->on == t->ocap) {
    if (t->on >= t->omax || grow((void **)&t->o, &t->ocap, t->on + 1, 1)) {
      t->defer = 1;
      return;
    }
  }
  t->o[t->on++] = x;
}

static inline void put_leb(walker *t, uint64_t x) {
  if (t->on + 10 > t->ocap) {
    /* the slow path, byte by byte with its checks */
    while (x >= 128) {
      put_byte(t, (uint8_t)(x & 127) | 128);
      x >>= 7;
    }
    put_byte(t, (uint8_t)x);
    return;
  }
  uint8_t *o = t->o + t->on;
  while (x >= 128) {
    *o++ = (uint8_t)(x & 127) | 128;
    x >>= 7;
  }
  *o++ = (uint8_t)x;
  t->on = (size_t)(o - t->o);
}

/* a VBR field of n-bit chunks; 0 past 64 bits (deferred) */
static uint64_t rd_vbr(walker *t, int n) {
  uint64_t hi = 1ull << (n - 1), v = 0;
  int shift = 0;
  for (;;) {
    uint64_t c = rd(t, n);
    if (t->defer) return 0;
    uint64_t payload = c & (hi - 1);
    if (shift >= 64 || (shift > 0 && (payload >> (64 - shift)) != 0)) {
      t->defer = 1;
      return 0;
    }
    v |= payload << shift;
    if (c < hi) return v;
    shift += n - 1;
  }
}

/* ---- rebuilding: the value source and the bit writer ---- */

static uint64_t src_v(walker *t) {
  uint64_t v = 0;
  int shift = 0;
  for (;;) {
    if (t->defer) return 0;
    if (t->fp >= t->fn || shift >= 64) {
      t->defer = 1;
      return 0;
    }
    uint8_t c = t->f[t->fp++];
    uint64_t p = c & 127;
    if (shift > 0 && (p >> (64 - shift)) != 0) {
      t->defer = 1;
      return 0;
    }
    v |= p << shift;
    if (c < 128) return v;
    shift += 7;
  }
}

static inline void wr(walker *t, int n, uint64_t v) {
  if (t->defer) return;
  if (n < 64 && (v >> n) != 0) {
    t->defer = 1;
    return;
  }
  while (n > 0) {
    int take = 32 - t->accbits;
    if (take > n) take = n;
    t->acc |= (v & ((1ull << take) - 1)) << t->accbits;
    t->accbits += take;
    v = take < 64 ? v >> take : 0;
    n -= take;
    while (t->accbits >= 8) {
      if (t->on >= t->omax + 8) {
        t->defer = 1;
        return;
      }
      t->o[t->on++] = (uint8_t)t->acc;
      t->acc >>= 8;
      t->accbits -= 8;
    }
  }
}

static inline uint64_t wpos(const walker *t) {
  return (uint64_t)t->on * 8 + (uint64_t)t->accbits;
}

static void wr_vbr(walker *t, int n, uint64_t v) {
  uint64_t hi = 1ull << (n - 1);
  while (v >= hi) {
    wr(t, n, (v & (hi - 1)) | hi);
    v >>= n - 1;
  }
  wr(t, n, v);
}

/* ---- the two sides of one walk (src/delta/bitcode.ts: Expander, Rebuilder) ---- */

/* a field that steers the walk: at most 32 bits */
static uint64_t x_fixed(walker *t, int n) {
  if (t->rebuild) {
    uint64_t v = src_v(t);
    wr(t, n, v);
    return v;
  }
  uint64_t v = rd(t, n);
  put_leb(t, v);
  return v;
}

/* a VBR field that steers the walk: below 2^53 */
static uint64_t x_vbr(walker *t, int n) {
  uint64_t v = t->rebuild ? src_v(t) : rd_vbr(t, n);
  if (v > MAXSAFE) t->defer = 1;
  if (t->defer) return 0;
  if (t->rebuild) wr_vbr(t, n, v);
  else put_leb(t, v);
  return v;
}

static uint64_t x_operand(walker *t, const op_t *op) {
  uint64_t v;
  if (t->rebuild) {
    v = src_v(t);
    if (op->enc == FIXED) wr(t, op->width, v);
    else if (op->enc == VBR) wr_vbr(t, op->width, v);
    else wr(t, 6, v);
  } else {
    v = op->enc == FIXED ? rd(t, op->width) : op->enc == VBR ? rd_vbr(t, op->width) : rd(t, 6);
    put_leb(t, v);
  }
  return v;
}

static void x_align(walker *t) {
  if (t->rebuild) {
    uint64_t r = (wpos(t) - t->wbase) % 32;
    if (r) wr(t, (int)(32 - r), 0);
  } else {
    uint64_t r = (t->pos - t->startbits) % 32;
    if (r && rd(t, (int)(32 - r)) != 0) t->defer = 1;
  }
}

static size_t x_enter(walker *t) {
  if (t->rebuild) {
    size_t at = t->on;
    wr(t, 32, 0);
    return at;
  }
  rd(t, 32);
  return 0;
}

static void x_exit(walker *t, size_t at) {
  if (!t->rebuild || t->defer) return;
  uint64_t len = (t->on - at - 4) / 4;
  if (len > 0xffffffffu) {
    t->defer = 1;
    return;
  }
  for (int k = 0; k < 4; k++) t->o[at + k] = (uint8_t)(len >> (8 * k));
}

static void x_blob(walker *t, uint64_t n) {
  if (t->rebuild) {
    x_align(t);
    if (t->defer || n > t->fn - t->fp) {
      t->defer = 1;
      return;
    }
    for (uint64_t k = 0; k < n && !t->defer; k++) wr(t, 8, t->f[t->fp + k]);
    t->fp += n;
    x_align(t);
    return;
  }
  if (n > (t->endbits - t->pos) / 8) {
    t->defer = 1;
    return;
  }
  x_align(t);
  for (uint64_t k = 0; k < n && !t->defer; k++) put_byte(t, (uint8_t)rd(t, 8));
  x_align(t);
}

static int x_at_end(const walker *t) {
  return t->rebuild ? t->fp >= t->fn : t->pos >= t->endbits;
}

/* ---- the walk (the bitstream's structure) ---- */

static info_t *info_of(walker *t, int64_t id, int make) {
  for (size_t i = 0; i < t->ninfo; i++)
    if (t->info[i].id == id) return &t->info[i];
  if (!make) return NULL;
  if (grow((void **)&t->info, &t->capinfo, t->ninfo + 1, sizeof(info_t))) return NULL;
  info_t *x = &t->info[t->ninfo++];
  memset(x, 0, sizeof(*x));
  x->id = id;
  return x;
}

static int check_abbrev(const walker *t, const abbrev_t *a) {
  for (size_t i = 0; i < a->n; i++) {
    const op_t *o = &t->ops[a->first + i];
    if (o->enc == ARRAY) {
      if (i != a->n - 2) return -1;
      int e = t->ops[a->first + i + 1].enc;
      if (!(e == 0 || e == FIXED || e == VBR || e == CHAR6)) return -1;
    }
    if (o->enc == BLOB && i != a->n - 1) return -1;
  }
  return 0;
}

static void block(walker *t, int width, int64_t id, int depth) {
  if (depth > MAX_DEPTH) {
    t->defer = 1;
    return;
  }
  info_t *inf = info_of(t, id, 0);
  size_t info_len = inf ? inf->n : 0;
  size_t *mine = NULL, nmine = 0, capmine = 0;
  int64_t info_for = -1;
  while (!t->defer) {
    if (depth == 0 && x_at_end(t)) break;
    uint64_t code = x_fixed(t, width);
    if (t->defer) break;
    if (code == END_BLOCK) {
      if (depth == 0) t->defer = 1;
      else x_align(t);
      break;
    }
    if (code == ENTER_SUBBLOCK) {
      uint64_t sub = x_vbr(t, 8);
      uint64_t sw = x_vbr(t, 4);
      if (t->defer || sw < 2 || sw > 32) {
        t->defer = 1;
        break;
      }
      x_align(t);
      size_t at = x_enter(t);
      if (t->defer) break;
      block(t, (int)sw, (int64_t)sub, depth + 1);
      x_exit(t, at);
      /* the sub-block may have grown the lists: find this block's again */
      inf = info_of(t, id, 0);
      continue;
    }
    if (code == DEFINE_ABBREV) {
      uint64_t n = x_vbr(t, 5);
      if (t->defer || n > MAX_ABBREV_OPS || grow((void **)&t->ops, &t->capops, t->nops + n, sizeof(op_t)) || grow((void **)&t->abs, &t->capabs, t->nabs + 1, sizeof(abbrev_t))) {
        t->defer = 1;
        break;
      }
      abbrev_t a = {t->nops, 0};
      for (uint64_t i = 0; i < n && !t->defer; i++) {
        op_t o = {0, 0, 0, 0};
        if (x_fixed(t, 1) == 1) {
          o.has_lit = 1;
          o.lit = x_vbr(t, 8);
        } else {
          uint64_t enc = x_fixed(t, 3);
          if (enc < FIXED || enc > BLOB) t->defer = 1;
          uint64_t w = enc == FIXED || enc == VBR ? x_vbr(t, 5) : 0;
          if ((enc == FIXED && w > 64) || (enc == VBR && (w < 2 || w > 32))) t->defer = 1;
          o.enc = (uint8_t)enc;
          o.width = (uint8_t)w;
          /* as LLVM reads it, a fixed field of 0 bits is the literal 0 */
          if (enc == FIXED && w == 0) o.has_lit = 1;
        }
        t->ops[t->nops++] = o;
        a.n++;
      }
      if (t->defer || check_abbrev(t, &a)) {
        t->defer = 1;
        break;
      }
      size_t num = t->nabs;
      t->abs[t->nabs++] = a;
      if (id == BLOCKINFO_BLOCK) {
        info_t *x = info_for < 0 ? NULL : info_of(t, info_for, 1);
        if (!x || grow((void **)&x->ab, &x->cap, x->n + 1, sizeof(size_t))) {
          t->defer = 1;
          break;
        }
        x->ab[x->n++] = num;
        inf = info_of(t, id, 0);
      } else {
        if (grow((void **)&mine, &capmine, nmine + 1, sizeof(size_t))) {
          t->defer = 1;
          break;
        }
        mine[nmine++] = num;
      }
      continue;
    }
    /* a record: its code and first operand matter in BLOCKINFO (SETBID) */
    int64_t rc = -1, first = -1;
    if (code == UNABBREV_RECORD) {
      rc = (int64_t)x_vbr(t, 6);
      uint64_t n = x_vbr(t, 6);
      static const op_t vbr6 = {0, VBR, 6, 0};
      for (uint64_t i = 0; i < n && !t->defer; i++) {
        uint64_t x = x_operand(t, &vbr6);
        if (i == 0) first = x <= MAXSAFE ? (int64_t)x : -1;
      }
    } else {
      uint64_t k = code - 4;
      const abbrev_t *a = NULL;
      if (k < info_len) a = &t->abs[inf->ab[k]];
      else if (k - info_len < nmine) a = &t->abs[mine[k - info_len]];
      if (!a) {
        t->defer = 1;
        break;
      }
      size_t fields = 0;
      for (size_t i = 0; i < a->n && !t->defer; i++, fields++) {
        const op_t *o = &t->ops[a->first + i];
        if (o->enc == ARRAY && !o->has_lit) {
          uint64_t n = x_vbr(t, 6);
          const op_t *el = &t->ops[a->first + ++i];
          if (!el->has_lit)
            for (uint64_t j = 0; j < n && !t->defer; j++) x_operand(t, el);
        } else if (o->enc == BLOB && !o->has_lit) {
          x_blob(t, x_vbr(t, 6));
        } else {
          uint64_t x = o->has_lit ? o->lit : x_operand(t, o);
          int64_t v = x <= MAXSAFE ? (int64_t)x : -1;
          if (fields == 0) rc = v;
          else if (fields == 1) first = v;
        }
      }
    }
    if (id == BLOCKINFO_BLOCK && rc == SETBID) info_for = first;
  }
  free(mine);
}

static void walker_free(walker *t) {
  free(t->ops);
  free(t->abs);
  for (size_t i = 0; i < t->ninfo; i++) free(t->info[i].ab);
  free(t->info);
}

static inline uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int bc_expand(const uint8_t *b, size_t n, uint8_t **out, size_t *outn) {
  *out = NULL;
  *outn = 0;
  size_t start, end;
  if (n >= 8 && be32(b) == MAGIC) {
    start = 4;
    end = n;
  } else if (n >= 28 && le32(b) == WRAPPER_MAGIC) {
    uint64_t off = le32(b + 8), size = le32(b + 12);
    if (off < 20 || size < 4 || off + size > n || be32(b + off) != MAGIC) return 1;
    start = (size_t)off + 4;
    end = (size_t)(off + size);
  } else {
    return 1;
  }
  walker t;
  memset(&t, 0, sizeof(t));
  t.b = b;
  t.blen = n;
  t.pos = (uint64_t)start * 8;
  t.startbits = t.pos;
  t.endbits = (uint64_t)end * 8;
  /* a value takes at most 10 bytes of form for at least 2 bits of file; blobs, prefix, suffix as they are */
  t.omax = 10 * n + 64;
  t.ocap = n + n / 8 + 64;
  t.o = malloc(t.ocap);
  if (!t.o) return 1;
  put_leb(&t, FORM_VERSION);
  put_leb(&t, start);
  for (size_t i = 0; i < start; i++) put_byte(&t, b[i]);
  put_leb(&t, n - end);
  for (size_t i = end; i < n; i++) put_byte(&t, b[i]);
  block(&t, 2, -1, 0);
  walker_free(&t);
  if (t.defer) {
    free(t.o);
    return 1;
  }
  *out = t.o;
  *outn = t.on;
  return 0;
}

int bc_rebuild(const uint8_t *form, size_t n, size_t max, uint8_t **out, size_t *outn) {
  *out = NULL;
  *outn = 0;
  walker t;
  memset(&t, 0, sizeof(t));
  t.rebuild = 1;
  t.f = form;
  t.fn = n;
  t.omax = max;
  t.o = malloc(max + 16);
  if (!t.o) return 1;
  uint64_t ver = src_v(&t);
  uint64_t plen = src_v(&t);
  if (t.defer || ver != FORM_VERSION || plen > max || plen > t.fn - t.fp || plen < 4) {
    free(t.o);
    return 1;
  }
  const uint8_t *prefix = form + t.fp;
  t.fp += plen;
  uint64_t slen = src_v(&t);
  if (t.defer || slen > max || slen > t.fn - t.fp) {
    free(t.o);
    return 1;
  }
  const uint8_t *suffix = form + t.fp;
  t.fp += slen;
  memcpy(t.o, prefix, plen);
  t.on = plen;
  t.wbase = wpos(&t);
  block(&t, 2, -1, 0);
  walker_free(&t);
  if (t.defer || t.accbits != 0 || t.on + slen > max) {
    free(t.o);
    return 1;
  }
  memcpy(t.o + t.on, suffix, slen);
  t.on += slen;
  *out = t.o;
  *outn = t.on;
  return 0;
}
