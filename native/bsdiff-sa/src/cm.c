/*
 * The context-mixing coder of bsdiff's diff stream (container v2, section method 3),
 * in C: the same model, tables and integer arithmetic as src/delta/bsdiffcm.ts, decision
 * for decision, so that either side can decode what the other encoded (the tests check
 * both directions). It exists for speed: the model costs one coded decision per diff
 * byte, which the TypeScript version runs about three times slower.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const int SQUASH_POINTS[33] = {1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349, 3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095};
#include "cm.h"

static uint16_t SQUASH_T[4095];
static int16_t STRETCH[4096];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static int squash_calc(int x) {
  if (x > 2047) x = 2047;
  if (x < -2047) x = -2047;
  int w = x & 127;
  int i = (x >> 7) + 16;
  return (SQUASH_POINTS[i] * (128 - w) + SQUASH_POINTS[i + 1] * w + 64) >> 7;
}

static void fill_tables(void) {
  for (int x = -2047; x <= 2047; x++) SQUASH_T[x + 2047] = (uint16_t)squash_calc(x);
  int pi = 0;
  for (int x = -2047; x <= 2047; x++) {
    int v = squash_calc(x);
    for (int j = pi; j <= v; j++) STRETCH[j] = (int16_t)x;
    pi = v + 1;
  }
  for (int j = pi; j < 4096; j++) STRETCH[j] = 2047;
}

/* once per process: worker threads share the tables */
static void init_tables(void) { pthread_once(&tables_once, fill_tables); }

static inline int mix_out(int64_t dot) {
  int64_t x = dot / 65536; /* truncates toward zero, like Math.trunc */
  if (x > 2047) x = 2047;
  else if (x < -2047) x = -2047;
  return SQUASH_T[x + 2047];
}

static inline uint32_t hash2(uint32_t a, uint32_t b) {
  return (a * 0x9e3779b1u) ^ ((b + 0x7f4a7c15u) * 0x85ebca77u);
}

typedef struct {
  uint32_t x1, x2, x;
  /* encoder */
  uint8_t *out;
  size_t len, cap;
  /* decoder */
  const uint8_t *src;
  size_t slen, pos;
  int err;
} coder_t;

static inline void put_byte(coder_t *c, uint8_t b) {
  if (c->len == c->cap) {
    size_t ncap = c->cap ? c->cap * 2 : 4096;
    uint8_t *n = realloc(c->out, ncap);
    if (!n) { c->err = 2; return; }
    c->out = n;
    c->cap = ncap;
  }
  c->out[c->len++] = b;
}

static inline int next_byte(coder_t *c) {
  if (c->pos >= c->slen) { c->err = 1; return 0; }
  return c->src[c->pos++];
}

static inline int code_bit(coder_t *c, int enc, int bit, int p1) {
  uint32_t xmid = c->x1 + (uint32_t)(((uint64_t)(c->x2 - c->x1) * (uint64_t)p1) >> 12);
  if (!enc) bit = c->x <= xmid;
  if (bit) c->x2 = xmid;
  else c->x1 = xmid + 1;
  while (((c->x1 ^ c->x2) & 0xff000000u) == 0) {
    if (enc) put_byte(c, (uint8_t)(c->x2 >> 24));
    c->x1 <<= 8;
    c->x2 = (c->x2 << 8) | 255;
    if (!enc) c->x = (c->x << 8) | (uint32_t)next_byte(c);
  }
  return bit;
}

#define FLAG_INPUTS 5
#define LIT_INPUTS 5
#define LEARN 6
#define RATE 4
#define MAX_BITS 18
#define PAD 4

#define UPD(t, ix, y) do { if (y) t[ix] += (uint16_t)((4096 - t[ix]) >> RATE); else t[ix] -= (uint16_t)(t[ix] >> RATE); } while (0)
#define WUPD(w, ix, s, e) w[ix] = (int32_t)((uint32_t)w[ix] + (uint32_t)(((int32_t)(s) * (e)) >> 10))

/* enc: diff given, coder encodes; else decodes into out. Returns 0, or 1 (input ended early), 2 (no memory). */
static int run_model(const uint8_t *ou_raw, size_t n, const uint8_t *diff, uint8_t *out, coder_t *cd) {
  int enc = diff != NULL;
  init_tables();
  uint8_t *ou = calloc(n + 2 * PAD, 1);
  int bits = 16;
  while (bits < MAX_BITS && ((size_t)1 << bits) < n) bits++;
  uint32_t fm = (1u << bits) - 1, lm = (1u << (bits - 4)) - 1;
  uint16_t *f0 = malloc(1024 * 2), *f1 = malloc((fm + 1) * 2), *f2 = malloc(65536 * 2), *f3 = malloc((fm + 1) * 2), *f4 = malloc((fm + 1) * 2);
  uint16_t *l0 = malloc(65536 * 2), *l1 = malloc((lm + 1) * 2), *l2 = malloc((lm + 1) * 2), *l3 = malloc((lm + 1) * 2), *l4 = malloc(16 * 65536 * 2);
  int32_t fw[4 * FLAG_INPUTS], *lw = malloc(256 * LIT_INPUTS * 4);
  int rc = 0;
  if (!ou || !f0 || !f1 || !f2 || !f3 || !f4 || !l0 || !l1 || !l2 || !l3 || !l4 || !lw) { rc = 2; goto done; }
  memcpy(ou + PAD, ou_raw, n);
#define FILL(t, m) for (size_t q = 0; q < (size_t)(m); q++) t[q] = 2048
  FILL(f0, 1024); FILL(f1, fm + 1); FILL(f2, 65536); FILL(f3, fm + 1); FILL(f4, fm + 1);
  FILL(l0, 65536); FILL(l1, lm + 1); FILL(l2, lm + 1); FILL(l3, lm + 1); FILL(l4, 16 * 65536);
  for (int q = 0; q < 4 * FLAG_INPUTS; q++) fw[q] = 1 << 14;
  for (int q = 0; q < 256 * LIT_INPUTS; q++) lw[q] = 1 << 14;

  uint32_t h = 0, before = 0;
  int prev = 0, prev2 = 0;
  size_t last = 0;
  for (size_t i = 0; i < n; i++) {
    size_t j = i + PAD;
    uint32_t c = ou[j];
    uint32_t next = ou[j + 1] | (ou[j + 2] << 8) | ((uint32_t)ou[j + 3] << 16);
    uint32_t i0 = (c << 2) | (h & 3);
    uint32_t i1 = hash2(before, 1) & fm;
    uint32_t i2 = h;
    uint32_t i3 = hash2(c | ((next & 255) << 8) | ((before & 255) << 16), 3) & fm;
    uint32_t i4 = hash2(c | (next << 8), (before & 0xffff) + 5) & fm;
    int s0 = STRETCH[f0[i0]], s1 = STRETCH[f1[i1]], s2 = STRETCH[f2[i2]], s3 = STRETCH[f3[i3]], s4 = STRETCH[f4[i4]];
    int ws = (int)(h & 3) * FLAG_INPUTS;
    int p = mix_out((int64_t)fw[ws] * s0 + (int64_t)fw[ws + 1] * s1 + (int64_t)fw[ws + 2] * s2 + (int64_t)fw[ws + 3] * s3 + (int64_t)fw[ws + 4] * s4);
    int bit = code_bit(cd, enc, enc ? diff[i] != 0 : 0, p);
    if (cd->err) { rc = cd->err; goto done; }
    int err = ((bit << 12) - p) * LEARN;
    WUPD(fw, ws, s0, err); WUPD(fw, ws + 1, s1, err); WUPD(fw, ws + 2, s2, err); WUPD(fw, ws + 3, s3, err); WUPD(fw, ws + 4, s4, err);
    UPD(f0, i0, bit); UPD(f1, i1, bit); UPD(f2, i2, bit); UPD(f3, i3, bit); UPD(f4, i4, bit);
    h = ((h << 1) | (uint32_t)bit) & 0xffff;
    if (bit) {
      int value = enc ? diff[i] : 0;
      uint32_t b0 = (uint32_t)prev << 8;
      uint32_t h1 = hash2((uint32_t)(prev | (prev2 << 8)), 11);
      uint32_t h2 = hash2(c | ((before & 255) << 8), 12);
      uint32_t h3 = hash2(before, c + 13);
      size_t gap = i - last;
      uint32_t b4 = ((uint32_t)((gap < 15 ? gap : 15) << 8) | (uint32_t)prev) << 8;
      uint32_t node = 1;
      for (int b = 7; b >= 0; b--) {
        uint32_t k = node * 0x2545f491u;
        uint32_t j0 = b0 | node, j1 = (h1 + k) & lm, j2 = (h2 + k) & lm, j3 = (h3 + k) & lm, j4 = b4 | node;
        int t0 = STRETCH[l0[j0]], t1 = STRETCH[l1[j1]], t2 = STRETCH[l2[j2]], t3 = STRETCH[l3[j3]], t4 = STRETCH[l4[j4]];
        int wl = (int)node * LIT_INPUTS;
        int q = mix_out((int64_t)lw[wl] * t0 + (int64_t)lw[wl + 1] * t1 + (int64_t)lw[wl + 2] * t2 + (int64_t)lw[wl + 3] * t3 + (int64_t)lw[wl + 4] * t4);
        int y = code_bit(cd, enc, (value >> b) & 1, q);
        if (cd->err) { rc = cd->err; goto done; }
        int e = ((y << 12) - q) * LEARN;
        WUPD(lw, wl, t0, e); WUPD(lw, wl + 1, t1, e); WUPD(lw, wl + 2, t2, e); WUPD(lw, wl + 3, t3, e); WUPD(lw, wl + 4, t4, e);
        UPD(l0, j0, y); UPD(l1, j1, y); UPD(l2, j2, y); UPD(l3, j3, y); UPD(l4, j4, y);
        node = (node << 1) | (uint32_t)y;
      }
      int v = (int)(node & 255);
      if (!enc) out[i] = (uint8_t)v;
      prev2 = prev;
      prev = v;
      last = i + 1;
    }
    before = (before << 8) | c;
  }
done:
  free(ou); free(f0); free(f1); free(f2); free(f3); free(f4);
  free(l0); free(l1); free(l2); free(l3); free(l4); free(lw);
  return rc;
}

int cm_decode(const uint8_t *packed, size_t plen, const uint8_t *ou, size_t n, uint8_t *out, size_t *consumed) {
  coder_t c = {0};
  c.x2 = 0xffffffffu;
  c.src = packed;
  c.slen = plen;
  for (int i = 0; i < 4; i++) c.x = (c.x << 8) | (uint32_t)next_byte(&c);
  if (c.err) return c.err;
  memset(out, 0, n);
  int rc = run_model(ou, n, NULL, out, &c);
  *consumed = c.pos;
  return rc;
}

int cm_encode(const uint8_t *diff, const uint8_t *ou, size_t n, uint8_t **out, size_t *outlen) {
  coder_t c = {0};
  c.x2 = 0xffffffffu;
  int rc = run_model(ou, n, diff, NULL, &c);
  if (!rc) {
    put_byte(&c, (uint8_t)(c.x1 >> 24)); put_byte(&c, (uint8_t)(c.x1 >> 16)); put_byte(&c, (uint8_t)(c.x1 >> 8)); put_byte(&c, (uint8_t)c.x1);
    rc = c.err;
  }
  if (rc) { free(c.out); return rc; }
  *out = c.out;
  *outlen = c.len;
  return 0;
}
