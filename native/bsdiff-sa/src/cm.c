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

/*
 * Section method 4: the block model ("cmb") codes only which diff bytes are non-zero; the
 * non-zero bytes themselves go to the literals section, packed like any other section
 * (zstd), as with the split streams. Same coder, squash/stretch and update rules as
 * method 3, but structured so that most diff bytes cost nothing: one decision per 8-byte
 * block ("does this block change?", 68-81 % of esbuild's blocks do not), the per-byte
 * flag model only inside blocks that change (the last byte of a changing block whose
 * first seven bytes are zero is implied). Tables have at most 2^16 entries (L2-resident).
 * The stream is cut into independent segments of at most CMB_SEGMENT bytes (own tables,
 * own coder, zero padding at segment edges), coded on several threads.
 * src/delta/bsdiffcm.ts is the twin; both must produce identical bytes.
 */
#include <stddef.h>
#include <unistd.h>
#define CMB_SEGMENT ((size_t)2 << 20)
#define CMB_MAX_SEGMENTS 4096
#define CMB_PAD 16
#define CMB_BLK 8
#define CMB_BI 3
#define CMB_FI 5
#define CMB_FM 0xffffu
#define CMB_BM 0x7fffu

static inline uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }
/* bytes p[-1], p[-2], p[-3], p[-4] (the four old bytes before p, nearest in the low byte) */
static inline uint32_t before4(const uint8_t *p) { return (uint32_t)p[-1] | ((uint32_t)p[-2] << 8) | ((uint32_t)p[-3] << 16) | ((uint32_t)p[-4] << 24); }

typedef struct {
  uint16_t b0[65536], b1[CMB_BM + 1], b2[CMB_BM + 1];
  uint16_t f0[1024], f1[CMB_FM + 1], f2[65536], f3[CMB_FM + 1], f4[CMB_FM + 1];
  int32_t bw[4 * CMB_BI], fw[8 * CMB_FI];
} cmb_tables_t;

static void cmb_reset(cmb_tables_t *t) {
  uint16_t *p = (uint16_t *)t;
  size_t m = offsetof(cmb_tables_t, bw) / 2;
  for (size_t q = 0; q < m; q++) p[q] = 2048;
  for (int q = 0; q < 4 * CMB_BI; q++) t->bw[q] = 1 << 14;
  for (int q = 0; q < 8 * CMB_FI; q++) t->fw[q] = 1 << 14;
}

#define PF(p) __builtin_prefetch(p)

/* One segment: n diff bytes over n old bytes. enc: diff given (only zero / non-zero matters);
 * else decodes into out (zeroed): 1 where the diff byte is non-zero. */
static int run_blocks(cmb_tables_t *t, const uint8_t *ou_raw, size_t n, const uint8_t *diff, uint8_t *out, coder_t *cd) {
  int enc = diff != NULL;
  uint8_t *ou = calloc(n + 2 * CMB_PAD, 1);
  if (!ou) return 2;
  memcpy(ou + CMB_PAD, ou_raw, n);
  cmb_reset(t);
  uint16_t *b0 = t->b0, *b1 = t->b1, *b2 = t->b2;
  uint16_t *f0 = t->f0, *f1 = t->f1, *f2 = t->f2, *f3 = t->f3, *f4 = t->f4;
  int32_t *bw = t->bw, *fw = t->fw;
  uint32_t h = 0, bh = 0;
  int rc = 0;
  for (size_t s = 0; s < n; s += CMB_BLK) {
    size_t e = s + CMB_BLK < n ? s + CMB_BLK : n;
    const uint8_t *pb = ou + CMB_PAD + s;
    uint32_t lo = le32(pb), hi = le32(pb + 4);
    uint32_t k0 = (bh & 0xff) | ((uint32_t)pb[0] << 8);
    uint32_t k1 = hash2(lo, 21) & CMB_BM;
    uint32_t k2 = hash2(hi, 22) & CMB_BM;
    {
      /* the next block's hashed entries, while this one is coded */
      const uint8_t *nb = pb + CMB_BLK;
      uint32_t nlo = le32(nb), nhi = le32(nb + 4);
      PF(b1 + (hash2(nlo, 21) & CMB_BM)); PF(b2 + (hash2(nhi, 22) & CMB_BM));
    }
    int s0 = STRETCH[b0[k0]], s1 = STRETCH[b1[k1]], s2 = STRETCH[b2[k2]];
    int ws = (int)(bh & 3) * CMB_BI;
    int p = mix_out((int64_t)bw[ws] * s0 + (int64_t)bw[ws + 1] * s1 + (int64_t)bw[ws + 2] * s2);
    int any = 0;
    if (enc) for (size_t i = s; i < e; i++) any |= diff[i];
    int B = code_bit(cd, enc, any != 0, p);
    if (cd->err) { rc = cd->err; goto done; }
    int err = ((B << 12) - p) * LEARN;
    WUPD(bw, ws, s0, err); WUPD(bw, ws + 1, s1, err); WUPD(bw, ws + 2, s2, err);
    UPD(b0, k0, B); UPD(b1, k1, B); UPD(b2, k2, B);
    bh = ((bh << 1) | (uint32_t)B) & 0xffff;
    if (!B) { h = (h << (e - s)) & 0xffff; continue; }
    uint32_t I1[CMB_BLK], I3[CMB_BLK], I4[CMB_BLK];
    for (size_t i = s; i < e; i++) {
      const uint8_t *q = ou + CMB_PAD + i;
      uint32_t c = q[0], before = before4(q);
      uint32_t next = q[1] | ((uint32_t)q[2] << 8) | ((uint32_t)q[3] << 16);
      size_t k = i - s;
      I1[k] = hash2(before, 1) & CMB_FM;
      I3[k] = hash2(c | ((next & 255) << 8) | ((before & 255) << 16), 3) & CMB_FM;
      I4[k] = hash2(c | (next << 8), (before & 0xffff) + 5) & CMB_FM;
      PF(f1 + I1[k]); PF(f3 + I3[k]); PF(f4 + I4[k]);
    }
    int seen = 0;
    for (size_t i = s; i < e; i++) {
      const uint8_t *q = ou + CMB_PAD + i;
      uint32_t c = q[0];
      size_t k = i - s;
      int bit;
      if (i == e - 1 && !seen) {
        bit = 1; /* a changing block has a non-zero byte */
      } else {
        uint32_t i0 = (c << 2) | (h & 3), i1 = I1[k], i2 = h, i3 = I3[k], i4 = I4[k];
        int t0 = STRETCH[f0[i0]], t1 = STRETCH[f1[i1]], t2 = STRETCH[f2[i2]], t3 = STRETCH[f3[i3]], t4 = STRETCH[f4[i4]];
        int wf = (int)((h & 3) | ((uint32_t)seen << 2)) * CMB_FI;
        int pf = mix_out((int64_t)fw[wf] * t0 + (int64_t)fw[wf + 1] * t1 + (int64_t)fw[wf + 2] * t2 + (int64_t)fw[wf + 3] * t3 + (int64_t)fw[wf + 4] * t4);
        bit = code_bit(cd, enc, enc ? diff[i] != 0 : 0, pf);
        if (cd->err) { rc = cd->err; goto done; }
        int ef = ((bit << 12) - pf) * LEARN;
        WUPD(fw, wf, t0, ef); WUPD(fw, wf + 1, t1, ef); WUPD(fw, wf + 2, t2, ef); WUPD(fw, wf + 3, t3, ef); WUPD(fw, wf + 4, t4, ef);
        UPD(f0, i0, bit); UPD(f1, i1, bit); UPD(f2, i2, bit); UPD(f3, i3, bit); UPD(f4, i4, bit);
      }
      h = ((h << 1) | (uint32_t)bit) & 0xffff;
      if (!bit) continue;
      seen = 1;
      if (!enc) out[i] = 1;
    }
  }
done:
  free(ou);
  return rc;
}

size_t cmb_segments(size_t n) { return (n + CMB_SEGMENT - 1) / CMB_SEGMENT; }
static size_t cmb_seglen(size_t n) {
  size_t k = cmb_segments(n);
  return k ? ((n + k - 1) / k + 7) & ~(size_t)7 : 0;
}

typedef struct {
  const uint8_t *diff, *ou, *packed;
  uint8_t *out;
  size_t n, plen, outlen;
  uint8_t *enc_out;
  int rc;
} cmb_job_t;

typedef struct {
  cmb_job_t *jobs;
  size_t count;
  size_t next; /* guarded by mu */
  pthread_mutex_t mu;
} cmb_queue_t;

static void cmb_one(cmb_job_t *j, cmb_tables_t *t) {
  coder_t c = {0};
  c.x2 = 0xffffffffu;
  if (j->diff) {
    j->rc = run_blocks(t, j->ou, j->n, j->diff, NULL, &c);
    if (!j->rc) {
      put_byte(&c, (uint8_t)(c.x1 >> 24)); put_byte(&c, (uint8_t)(c.x1 >> 16)); put_byte(&c, (uint8_t)(c.x1 >> 8)); put_byte(&c, (uint8_t)c.x1);
      j->rc = c.err;
    }
    if (j->rc) free(c.out);
    else { j->enc_out = c.out; j->outlen = c.len; }
    return;
  }
  c.src = j->packed;
  c.slen = j->plen;
  for (int i = 0; i < 4; i++) c.x = (c.x << 8) | (uint32_t)next_byte(&c);
  if (c.err) { j->rc = 1; return; }
  j->rc = run_blocks(t, j->ou, j->n, NULL, j->out, &c);
  if (!j->rc && c.pos != j->plen) j->rc = 1; /* must consume its bytes exactly */
}

static void *cmb_worker(void *arg) {
  cmb_queue_t *q = arg;
  cmb_tables_t *t = malloc(sizeof *t);
  for (;;) {
    pthread_mutex_lock(&q->mu);
    size_t i = q->next++;
    pthread_mutex_unlock(&q->mu);
    if (i >= q->count) break;
    if (!t) q->jobs[i].rc = 2;
    else cmb_one(&q->jobs[i], t);
  }
  free(t);
  return NULL;
}

static void cmb_run(cmb_job_t *jobs, size_t count, int threads) {
  if (!count) return;
  init_tables();
  cmb_queue_t q = {jobs, count, 0, PTHREAD_MUTEX_INITIALIZER};
  if (threads <= 0) {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    threads = c > 0 ? (int)c : 1;
  }
  if (threads > 8) threads = 8;
  if ((size_t)threads > count) threads = (int)count;
  pthread_t tid[8];
  int started = 0;
  for (int i = 1; i < threads; i++) {
    if (pthread_create(&tid[started], NULL, cmb_worker, &q) != 0) break;
    started++;
  }
  cmb_worker(&q);
  for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
  pthread_mutex_destroy(&q.mu);
}

static inline void put_le32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24); }

int cmb_encode(const uint8_t *diff, const uint8_t *ou, size_t n, int threads, uint8_t **out, size_t *outlen) {
  size_t k = cmb_segments(n), L = cmb_seglen(n);
  cmb_job_t *jobs = calloc(k ? k : 1, sizeof *jobs);
  if (!jobs) return 2;
  for (size_t s = 0; s < k; s++) {
    size_t a = s * L, b = a + L < n ? a + L : n;
    jobs[s].diff = diff + a; jobs[s].ou = ou + a; jobs[s].n = b - a;
  }
  cmb_run(jobs, k, threads);
  int rc = 0;
  size_t total = 4 + 4 * k;
  for (size_t s = 0; s < k; s++) {
    if (jobs[s].rc && !rc) rc = jobs[s].rc;
    total += jobs[s].outlen;
  }
  uint8_t *buf = rc ? NULL : malloc(total);
  if (!rc && !buf) rc = 2;
  if (!rc) {
    put_le32(buf, (uint32_t)k);
    size_t pos = 4 + 4 * k;
    for (size_t s = 0; s < k; s++) {
      put_le32(buf + 4 + 4 * s, (uint32_t)jobs[s].outlen);
      memcpy(buf + pos, jobs[s].enc_out, jobs[s].outlen);
      pos += jobs[s].outlen;
    }
    *out = buf;
    *outlen = total;
  }
  for (size_t s = 0; s < k; s++) free(jobs[s].enc_out);
  free(jobs);
  return rc;
}

int cmb_decode(const uint8_t *packed, size_t plen, const uint8_t *ou, size_t n, const uint8_t *lits, size_t nlits, uint8_t *out, int threads) {
  size_t k = cmb_segments(n), L = cmb_seglen(n);
  if (plen < 4 || le32(packed) != k || k > CMB_MAX_SEGMENTS || plen < 4 + 4 * k) return 1;
  memset(out, 0, n);
  cmb_job_t *jobs = calloc(k ? k : 1, sizeof *jobs);
  if (!jobs) return 2;
  size_t pos = 4 + 4 * k;
  for (size_t s = 0; s < k; s++) {
    size_t len = le32(packed + 4 + 4 * s);
    if (len > plen - pos) { free(jobs); return 1; }
    size_t a = s * L, b = a + L < n ? a + L : n;
    jobs[s].packed = packed + pos; jobs[s].plen = len; jobs[s].ou = ou + a; jobs[s].n = b - a; jobs[s].out = out + a;
    pos += len;
  }
  if (pos != plen) { free(jobs); return 1; }
  cmb_run(jobs, k, threads);
  int rc = 0;
  for (size_t s = 0; s < k; s++) if (jobs[s].rc == 2 || (jobs[s].rc && !rc)) rc = jobs[s].rc;
  free(jobs);
  if (rc) return rc;
  /* the non-zero bytes, in order: exactly one per flagged position, none of them zero */
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    if (!out[i]) {
      /* most of the stream is unchanged: skip zero words */
      while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, out + i, 8);
        if (w) break;
        i += 8;
      }
      if (i >= n || !out[i]) continue;
    }
    if (j == nlits || !lits[j]) return 1;
    out[i] = lits[j++];
  }
  return j == nlits ? 0 : 1;
}
