/*
 * Deflate reconstruction records (see recon.h). Written for d4fs from
 * RFC 1951; the idea (code a deflate stream's decisions as differences from
 * a predictor's) is preflate's, the code and the model are d4fs's own.
 *
 * Record = 2-byte magic "\xd4R", version 1, the inflated size (u64 LE), then
 * one binary range-coded stream (LZMA-style adaptive bits) of events:
 *
 *   block:  final (adaptive bit), type (2 direct bits);
 *           stored: padding bits' value, LEN (16 bits);
 *   token:  "block ends here" (adaptive), then literal or match coded
 *           against the predictor (below);
 *   end of a dynamic block: "zlib's header" (adaptive bit: the header zlib
 *           builds from the block's symbol frequencies, see zlib_header),
 *           else its size in bits (13 bits) and its bits; the decoder holds
 *           the block's tokens until then, since the header comes first;
 *   after the final block, the value of the last byte's padding bits.
 *
 * The predictor: at every token start p, a hash chain over 3-byte prefixes
 * lists up to CHAIN earlier positions within 32 KiB and their match lengths
 * (capped at 258). A token is coded as
 *   - literal or match, in a context of the longest match at p (bucketed,
 *     a 3-byte match far away apart), whether p+1 has a longer one (lazy
 *     matchers wait for it) and whether the previous token was a match;
 *   - the length: "the longest" or how much shorter (or, rarely, longer);
 *   - the distance: "the nearest candidate that long" or its rank among
 *     them, or, when the chain does not list it, the distance itself.
 * A stream from a zlib-like encoder is mostly "as predicted", a few
 * hundredths of a bit per token; any stream at all is recorded exactly.
 * Record sizes measured on a tar of this repository's sources (% of the
 * gzip file): pigz -6 0.55, pigz -9 2.3, pigz -1 4.6, libdeflate -6 3.0,
 * -9 3.9, -1 8.4, -12 11.5, zopfli 10.2 (optimal parsers choose matches a
 * greedy or lazy predictor does not). Choices that paid, measured on a
 * 3 MB tar: 128 candidates instead of 48 (zlib -6: 5.9% to 1.6%), 15-bit
 * probabilities instead of 11 (1.6% to 1.2%: the cost floor of a
 * near-certain bit), block ends in the context of the previous block's
 * token count and of 32 KiB positions (pigz's blocks), zlib's header
 * rebuilt from the frequencies (gzip -6: 1.2% to 0.5%).
 *
 * Measured and not built (session 19): a predictor that follows an optimal
 * parse, the least-cost path through each block under the block's own code
 * lengths (each length the nearest distance, as zopfli's sublen), on a
 * 2.4 MB tar of d4fs's sources: the path holds 95.1% of libdeflate -12's
 * tokens and 89.0% of zopfli's (93.5% with costs re-estimated from the
 * path's own entropy, three times; 96.6% with the block's true token
 * entropy, which a decoder does not have). At 5% misses the "as on the
 * path" flag alone costs ~0.3 bit per token (~14 bits of gzip each) before
 * the misses are coded, so it would not take those streams' records (4.6-
 * 4.9% on the bench) to 2%.
 */
#include "recon.h"

#include <stdlib.h>
#include <string.h>

#include "dfutil.h"

#define WSIZE 32768
#define MAXM 258
#define LOOK (MAXM + 8)
#define HBITS 16
#define HSIZE (1 << HBITS)
#define PMASK 0xFFFF
#define CHAIN 128 /* most candidates any profile lists */
#define BUFCAP (1 << 20)
#define ROOM (BUFCAP / 4)
#define MAXEVENTS (1 << 22)
#define NBUCKET 11
#define HDRMAX 8191

static const uint16_t LBASE[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LEXT[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t DBASE[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t DEXT[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
static const uint8_t CLORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

/* ------------------------------------------------------------------------ */
/* Growable byte buffer */

typedef struct {
  uint8_t *p;
  size_t n, cap;
  int oom;
} bytes;

static int by_reserve(bytes *b, size_t more) {
  if (b->oom) return -1;
  if (b->n + more <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->n + more) cap *= 2;
  uint8_t *q = realloc(b->p, cap);
  if (!q) {
    b->oom = 1;
    return -1;
  }
  b->p = q;
  b->cap = cap;
  return 0;
}

static inline void by_put(bytes *b, uint8_t v) {
  if (b->n < b->cap || by_reserve(b, 1) == 0) b->p[b->n++] = v;
}

/* ------------------------------------------------------------------------ */
/* Binary adaptive range coder (11-bit probabilities, LZMA's scheme) */

typedef uint16_t prob;
#define PBITS 15
#define PONE (1 << PBITS)
#define PMOVE 5
#define TOP (1u << 24)

typedef struct {
  uint64_t low;
  uint32_t range;
  uint8_t cache;
  uint64_t csize;
  bytes *out;
} rcenc;

static void rce_shift(rcenc *e) {
  if ((uint32_t)e->low < 0xFF000000u || (e->low >> 32) != 0) {
    uint8_t carry = (uint8_t)(e->low >> 32);
    uint8_t t = e->cache;
    do {
      by_put(e->out, (uint8_t)(t + carry));
      t = 0xFF;
    } while (--e->csize != 0);
    e->cache = (uint8_t)(e->low >> 24);
  }
  e->csize++;
  e->low = (e->low & 0x00FFFFFFu) << 8;
}

#ifdef RECON_STATS
#include <math.h>
double rstat[16];
int rcat;
#define CAT(c) (rcat = (c))
#else
#define CAT(c) ((void)0)
#endif
static inline void rce_bit(rcenc *e, prob *p, int bit) {
#ifdef RECON_STATS
  rstat[rcat] += -log2((bit ? (PONE - *p) : *p) / (double)PONE);
#endif
  uint32_t bound = (e->range >> PBITS) * *p;
  if (!bit) {
    e->range = bound;
    *p += (PONE - *p) >> PMOVE;
  } else {
    e->low += bound;
    e->range -= bound;
    *p -= *p >> PMOVE;
  }
  while (e->range < TOP) {
    e->range <<= 8;
    rce_shift(e);
  }
}

static void rce_direct(rcenc *e, uint32_t v, int nbits) {
#ifdef RECON_STATS
  rstat[rcat] += nbits;
#endif
  for (int i = nbits - 1; i >= 0; i--) {
    e->range >>= 1;
    if ((v >> i) & 1) e->low += e->range;
    while (e->range < TOP) {
      e->range <<= 8;
      rce_shift(e);
    }
  }
}

static void rce_flush(rcenc *e) {
  for (int i = 0; i < 5; i++) rce_shift(e);
}

typedef struct {
  const uint8_t *p;
  size_t n, at;
  uint32_t range, code;
  int over; /* bytes read past the end */
} rcdec;

static inline uint8_t rcd_byte(rcdec *d) {
  if (d->at < d->n) return d->p[d->at++];
  d->over++;
  return 0;
}

static void rcd_init(rcdec *d, const uint8_t *p, size_t n) {
  d->p = p;
  d->n = n;
  d->at = 0;
  d->over = 0;
  d->range = 0xFFFFFFFFu;
  d->code = 0;
  for (int i = 0; i < 5; i++) d->code = (d->code << 8) | rcd_byte(d);
}

static inline int rcd_bit(rcdec *d, prob *p) {
  uint32_t bound = (d->range >> PBITS) * *p;
  int bit;
  if (d->code < bound) {
    d->range = bound;
    *p += (PONE - *p) >> PMOVE;
    bit = 0;
  } else {
    d->code -= bound;
    d->range -= bound;
    *p -= *p >> PMOVE;
    bit = 1;
  }
  while (d->range < TOP) {
    d->range <<= 8;
    d->code = (d->code << 8) | rcd_byte(d);
  }
  return bit;
}

static uint32_t rcd_direct(rcdec *d, int nbits) {
  uint32_t v = 0;
  for (int i = 0; i < nbits; i++) {
    d->range >>= 1;
    uint32_t b = d->code >= d->range;
    if (b) d->code -= d->range;
    v = (v << 1) | b;
    while (d->range < TOP) {
      d->range <<= 8;
      d->code = (d->code << 8) | rcd_byte(d);
    }
  }
  return v;
}

/* ------------------------------------------------------------------------ */
/* The model: adaptive probabilities of every decision */

typedef struct {
  prob is_match[NBUCKET][4][2];
  prob eob[2][2][2];
  prob final_bit;
  prob len_eq[NBUCKET];
  prob len_m1[NBUCKET];
  prob len_short[3][256];
  prob dist0[2][NBUCKET];
  prob rank[2][16];
  prob hdr_zlib;
} model;

static void model_init(model *m) {
  prob *p = (prob *)m;
  for (size_t i = 0; i < sizeof(*m) / sizeof(prob); i++) p[i] = PONE / 2;
}

/* Bit-tree of 8 bits (most significant first). */
static void enc_tree8(rcenc *e, prob *t, uint32_t v) {
  uint32_t i = 1;
  for (int b = 7; b >= 0; b--) {
    int bit = (v >> b) & 1;
    rce_bit(e, &t[i], bit);
    i = (i << 1) | (uint32_t)bit;
  }
}

static uint32_t dec_tree8(rcdec *d, prob *t) {
  uint32_t i = 1;
  for (int b = 0; b < 8; b++) i = (i << 1) | (uint32_t)rcd_bit(d, &t[i]);
  return i - 256;
}

/* Elias gamma of v + 1 with adaptive unary part. */
static void enc_gamma(rcenc *e, prob *u, uint32_t v) {
  uint32_t x = v + 1;
  int nb = 0;
  while ((x >> (nb + 1)) != 0) nb++;
  for (int i = 0; i < nb; i++) rce_bit(e, &u[i < 15 ? i : 15], 1);
  rce_bit(e, &u[nb < 15 ? nb : 15], 0);
  rce_direct(e, x - (1u << nb), nb);
}

static int dec_gamma(rcdec *d, prob *u, uint32_t *v) {
  int nb = 0;
  while (rcd_bit(d, &u[nb < 15 ? nb : 15])) {
    if (++nb > 20) return -1;
  }
  *v = (1u << nb) + rcd_direct(d, nb) - 1;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The window of uncompressed bytes and the predictor's hash chains */

/*
 * The candidates at a position: in chain order, those longer than every
 * nearer one (their distances and lengths). The nearest candidate at least
 * L long, for any L, is always one of them, which is all a match found by
 * a longest-match search ever is; a candidate is measured only when its
 * byte at the longest length so far matches (zlib's test). Measured (record
 * size): listing every candidate instead gave the same records for zlib's
 * streams and larger ones elsewhere (libdeflate -9 3.8% against 2.2%,
 * zopfli 7.9% against 6.0%, with the deep profiles), at twice the search.
 */
typedef struct {
  int n;
  int lmax;
  int far3;
  int maxlen;
  int64_t p;
  uint16_t dist[CHAIN];
  uint16_t len[CHAIN];
} cands;

typedef struct {
  uint8_t *buf;   /* BUFCAP bytes: buf[i] is the byte at base + i */
  int64_t base;   /* absolute position of buf[0] */
  int64_t avail;  /* absolute end of the bytes held */
  int eof;        /* avail is the total */
  int64_t ins;    /* positions below are in the chains */
  int64_t *head;  /* HSIZE */
  int64_t *prev;  /* PMASK + 1 */
  int64_t *head3; /* h4 == 2: the last position of each 3-byte hash (HSIZE / 2) */
  int64_t cpos;   /* position of slot[cidx], -1 for none */
  int cidx;
  cands slot[2];  /* candidates at the token's position and the next */
  int chain;      /* the profile's: candidates visited per position */
  int max_insert; /* the profile's: positions inside a longer match are not hashed (0: all are) */
  int nice;       /* the profile's: the search stops at a match this long */
  int h4;         /* the profile's: 1, the chain's depth counts 4-byte matches only, of the 3-byte-only ones the nearest is listed; 2 and 3, libdeflate's hashes (see find) */
  int zhash;      /* the profile's: chains by zlib's hash (15 bits), so that a short chain meets zlib's collisions */
} win;

/*
 * Predictor profiles, chosen per stream by the encoder (the smallest record
 * on the stream's first tokens) and named in the record:
 *   0     zlib's lazy levels (128 candidates);
 *   1-3   zlib's greedy levels 1-3 (short chains; positions inside a match
 *         longer than max_insert not hashed; the search stops at `nice`);
 *   4     a matcher looking at two candidates;
 *   5, 6, 9, 8   libdeflate's lazy and lazy2 matchers (levels 6, 7, 5,
 *         8-9): h4 == 2, its hashes (a chain of 4-byte hashes, the last
 *         position of each 3-byte hash as a match of 3), its depths and
 *         nice lengths, read off the record sizes;
 *   7, 10 deep searches (zlib -9's 4096; optimal parsers: zopfli,
 *         libdeflate -10 to -12), 10 with chains of 4-byte matches (h4 == 1);
 *   11    libdeflate's level 1: two-entry buckets of a 15-bit hash of 4
 *         bytes (h4 == 3), stopping at 32.
 * Profiles 0-3 chain positions by zlib's own hash, so that the chain's
 * limit meets the collisions zlib's does. Measured (record / gzip size, a
 * 3 MB tar unless said): pigz -1 21% with profile 0 alone, 5.0% with
 * profiles 1-3 (a tar of this repository's sources), 1.6% with zlib's hash;
 * pigz -6 0.50% to 0.25% with zlib's hash in profile 0; pigz -9 2.4% to
 * 0.19% with profile 7; libdeflate -6 3.3% to 2.5% with chains of 4-byte
 * matches, 1.45% with libdeflate's hashes (depth 20 or 50 instead of 35:
 * 3.2%, 1.8%), -5 2.0%, -7 1.3%, -9 4.6% to 1.8%, -1 5.6% to 0.46%; zopfli
 * 7.9% to 6.0% with the deep profiles.
 */
static const struct {
  int chain, max_insert, nice, h4, zhash;
} PROFILES[] = {{128, 0, MAXM, 0, 1}, {4, 4, 8, 0, 1},    {8, 5, 16, 0, 1},     {32, 6, 32, 0, 1},      {2, 0, MAXM, 0, 0},   {35, 0, 65, 2, 0},
                {100, 0, 130, 2, 0}, {4096, 0, MAXM, 0, 1}, {600, 0, MAXM, 2, 0}, {20, 0, 40, 2, 0},    {1024, 0, MAXM, 1, 0},
                {2, 0, 32, 3, 0}};
#define NPROFILES ((int)(sizeof(PROFILES) / sizeof(PROFILES[0])))

static int win_init(win *w) {
  memset(w, 0, sizeof(*w));
  w->buf = malloc(BUFCAP);
  w->head = malloc(sizeof(int64_t) * HSIZE);
  w->prev = malloc(sizeof(int64_t) * (PMASK + 1));
  if (!w->buf || !w->head || !w->prev) return -1;
  for (int i = 0; i < HSIZE; i++) w->head[i] = -1;
  for (int i = 0; i <= PMASK; i++) w->prev[i] = -1;
  w->cpos = -1;
  w->head3 = NULL;
  return 0;
}

static void win_free(win *w) {
  free(w->buf);
  free(w->head);
  free(w->prev);
  free(w->head3);
}

/* Drops the bytes before keep (never anything at or after it). */
static void win_slide(win *w, int64_t keep) {
  if (keep <= w->base) return;
  size_t drop = (size_t)(keep - w->base);
  memmove(w->buf, w->buf + drop, (size_t)(w->avail - keep));
  w->base = keep;
}

/* Where the bytes still needed start: 32 KiB before the oldest of the model position and the next position to hash. */
static inline int64_t win_keep(const win *w, int64_t p) {
  int64_t k = p < w->avail ? p : w->avail;
  if (w->ins < k) k = w->ins;
  return k - WSIZE - 8;
}

static inline uint32_t hash3(const win *w, const uint8_t *c) {
  if (w->zhash) return ((uint32_t)c[0] << 10 ^ (uint32_t)c[1] << 5 ^ c[2]) & 0x7FFF;
  return (((uint32_t)c[0] << 16 | (uint32_t)c[1] << 8 | c[2]) * 0x9E3779B1u) >> (32 - HBITS);
}

static inline const uint8_t *at(const win *w, int64_t p) {
  return w->buf + (p - w->base);
}

/* libdeflate's multiplicative hash of a 3- or 4-byte sequence (h4 == 2 profiles). */
static inline uint32_t ld_hash(uint32_t seq, int bits) {
  return (uint32_t)(seq * 0x1E35A7BDu) >> (32 - bits);
}

static void insert_upto(win *w, int64_t p) {
  for (; w->ins < p; w->ins++) {
    int64_t q = w->ins;
    if (w->h4 >= 2) {
      const uint8_t *c = at(w, q);
      if (w->h4 == 2 && q + 3 <= w->avail) w->head3[ld_hash((uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16, 15)] = q;
      if (q + 4 <= w->avail) {
        uint32_t h = ld_hash(df_load32le(c), w->h4 == 3 ? 15 : 16);
        w->prev[q & PMASK] = w->head[h];
        w->head[h] = q;
      }
      continue;
    }
    if (q + 3 > w->avail) continue;
    uint32_t h = hash3(w, at(w, q));
    w->prev[q & PMASK] = w->head[h];
    w->head[h] = q;
  }
}

/*
 * Hashes the positions below `limit` whose three bytes are held: what
 * insert_upto would do later, done early so that the window can slide past
 * long runs of stored blocks (no token, so no prediction, inserts them).
 */
static void insert_held(win *w, int64_t limit) {
  while (w->ins < limit && w->ins + 3 <= w->avail) insert_upto(w, w->ins + 1);
}

/* Longest match allowed at p: 258, or what is left at the end. Callers hold p + LOOK bytes or eof. */
static inline int maxlen_at(const win *w, int64_t p) {
  int64_t rem = w->avail - p;
  return rem < MAXM ? (int)rem : MAXM;
}

/* Lists a candidate `l` long at `dist` if it is longer than every nearer one; whether the search stops there. */
static inline int list_longer(cands *c, const win *w, int64_t dist, int l, int maxlen) {
  if (l <= c->lmax) return 0;
  c->lmax = l;
  c->dist[c->n] = (uint16_t)dist;
  c->len[c->n] = (uint16_t)l;
  c->n++;
  return l == maxlen || l >= w->nice || c->n == CHAIN;
}

/*
 * libdeflate's search: the last position of the 3-byte hash, as a match of 3, then the 4-byte hash's
 * chain (h4 == 2: its lazy matchers); or buckets of a 15-bit 4-byte hash only (h4 == 3: its level 1).
 */
static void search_ld(win *w, int64_t p, cands *c, const uint8_t *cur, int maxlen) {
  int64_t q3 = w->h4 == 3 ? -1 : w->head3[ld_hash((uint32_t)cur[0] | (uint32_t)cur[1] << 8 | (uint32_t)cur[2] << 16, 15)];
  if (q3 >= 0 && p - q3 <= WSIZE) {
    const uint8_t *m = at(w, q3);
    if (m[0] == cur[0] && m[1] == cur[1] && m[2] == cur[2]) list_longer(c, w, p - q3, 3, maxlen);
  }
  if (maxlen < 4 || c->lmax >= maxlen) return;
  int64_t q = w->head[ld_hash(df_load32le(cur), w->h4 == 3 ? 15 : 16)];
  for (int depth = 0; q >= 0 && p - q <= WSIZE && depth < w->chain; depth++, q = w->prev[q & PMASK]) {
    const uint8_t *m = at(w, q);
    if (df_load32le(m) == df_load32le(cur) && (c->lmax < 4 || m[c->lmax] == cur[c->lmax]) &&
        list_longer(c, w, p - q, 4 + df_match_len(m + 4, cur + 4, maxlen - 4), maxlen))
      return;
  }
}

/* The other profiles' search: the 3-byte hash's chain (h4 == 1: its depth counts 4-byte matches only). */
static void search_chain(win *w, int64_t p, cands *c, const uint8_t *cur, int maxlen) {
  int counted = 0, seen3 = 0;
  int64_t q = w->head[hash3(w, cur)];
  for (int visited = 0; q >= 0 && p - q <= WSIZE && (w->h4 ? visited < 4 * w->chain && counted < w->chain : visited < w->chain); visited++, q = w->prev[q & PMASK]) {
    const uint8_t *m = at(w, q);
    if (m[0] != cur[0] || m[1] != cur[1] || m[2] != cur[2]) continue;
    if (w->h4) {
      if (maxlen >= 4 && m[3] == cur[3]) counted++;
      else if (seen3) continue;
      seen3 = 1;
    }
    /* only a candidate longer than every nearer one is listed (lmax < maxlen here: the search stops at maxlen) */
    if (c->lmax >= 3 && m[c->lmax] != cur[c->lmax]) continue;
    if (list_longer(c, w, p - q, 3 + df_match_len(m + 3, cur + 3, maxlen - 3), maxlen)) return;
  }
}

static void find(win *w, int64_t p, cands *c) {
  c->n = 0;
  c->lmax = 0;
  c->far3 = 0;
  c->p = p;
  int maxlen = maxlen_at(w, p);
  c->maxlen = maxlen;
  if (maxlen < 3) return;
  if (w->h4 >= 2) search_ld(w, p, c, at(w, p), maxlen);
  else search_chain(w, p, c, at(w, p), maxlen);
  /* zlib drops a 3-byte match farther than 4 KiB, libdeflate one farther than 8 KiB */
  if (c->lmax == 3) c->far3 = c->dist[0] > 8192 ? 2 : c->dist[0] > 4096 ? 1 : 0;
}

static int bucket(const cands *c) {
  int l = c->lmax;
  if (l == 0) return 0;
  if (l == 3) return c->far3 == 0 ? 1 : c->far3 == 1 ? 2 : 10;
  if (l == 4) return 3;
  if (l <= 6) return 4;
  if (l <= 9) return 5;
  if (l <= 16) return 6;
  if (l <= 32) return 7;
  if (l < MAXM) return 8;
  return 9;
}

/* Candidates at p (*a) and p + 1 (*b), in the window's slots; the chains then hold every position up to p. */
static void predict(win *w, int64_t p, cands **a, cands **b) {
  int ia = 0;
  if (w->cpos == p) {
    ia = w->cidx;
  } else {
    insert_upto(w, p);
    find(w, p, &w->slot[0]);
  }
  int ib = ia ^ 1;
  insert_upto(w, p + 1);
  if (p + 1 <= w->avail) find(w, p + 1, &w->slot[ib]);
  else w->slot[ib].n = w->slot[ib].lmax = w->slot[ib].far3 = 0;
  w->cidx = ib;
  w->cpos = p + 1;
  *a = &w->slot[ia];
  *b = &w->slot[ib];
}


/* The next position's longest match against this one's: shorter, as long, one longer, longer still (lazy matchers wait for it). */
static inline int cmp_next(const cands *a, const cands *b) {
  return b->lmax > a->lmax + 1 ? 3 : b->lmax == a->lmax + 1 ? 2 : b->lmax == a->lmax ? 1 : 0;
}

static inline int grp(int lmax) {
  return lmax < 3 ? 0 : lmax < 16 ? 1 : 2;
}

static inline int len_sym(int L) {
  int s = 28;
  while (LBASE[s] > L) s--;
  return s;
}

static inline int dist_sym(int D) {
  int ds = 29;
  while (DBASE[ds] > D) ds--;
  return ds;
}

/* Tokens of one dynamic block a decoder holds until the block's end (its header comes first in the body). */
#define TOKCAP (1 << 22)

/* ------------------------------------------------------------------------ */
/* Encoder: inflate the body, queue its events, code them against the model */

enum { EV_BLOCK, EV_TOK, EV_EOB, EV_END };

typedef struct {
  uint8_t kind;
  uint8_t a;  /* block: final | type << 1 */
  uint16_t l; /* token: length (0 literal); block: stored pad value / dynamic header bits */
  uint32_t d; /* token: distance; stored block: LEN; end: pad value; dynamic: header start byte */
  uint64_t x; /* dynamic: header start bit */
  uint8_t npad;
} event;

typedef struct {
  const uint8_t *body;
  size_t n;
  uint64_t pos; /* bit position */
  int err;
} breader;

static inline uint32_t br_bits(breader *r, int k) {
  uint32_t v = 0;
  if (r->pos + (uint64_t)k > (uint64_t)r->n * 8) {
    r->err = 1;
    return 0;
  }
  for (int i = 0; i < k; i++, r->pos++) v |= (uint32_t)((r->body[r->pos >> 3] >> (r->pos & 7)) & 1) << i;
  return v;
}

typedef struct {
  int16_t count[16];
  int16_t sym[320];
} huff;

/* Canonical code from lengths; -1 when over-subscribed (incomplete codes are allowed). */
static int huff_build(huff *h, const uint8_t *len, int n) {
  int16_t offs[16];
  memset(h->count, 0, sizeof(h->count));
  for (int s = 0; s < n; s++) h->count[len[s]]++;
  if (h->count[0] == n) return 0;
  int left = 1;
  for (int l = 1; l < 16; l++) {
    left <<= 1;
    left -= h->count[l];
    if (left < 0) return -1;
  }
  offs[1] = 0;
  for (int l = 1; l < 15; l++) offs[l + 1] = (int16_t)(offs[l] + h->count[l]);
  for (int s = 0; s < n; s++)
    if (len[s]) h->sym[offs[len[s]]++] = (int16_t)s;
  return 0;
}

static int huff_decode(breader *r, const huff *h) {
  int code = 0, first = 0, index = 0;
  for (int l = 1; l < 16; l++) {
    code |= (int)br_bits(r, 1);
    if (r->err) return -1;
    int count = h->count[l];
    if (code - count < first) return h->sym[index + (code - first)];
    index += count;
    first += count;
    first <<= 1;
    code <<= 1;
  }
  return -1;
}

/* Reads a dynamic header: code lengths of 288 literal/lengths (nlen used) and 32 distances (ndist used). */
static int read_dyn_header(breader *r, uint8_t *llen, int *nlen, uint8_t *dlen, int *ndist) {
  uint8_t lens[320];
  uint8_t cl[19];
  int hlit = (int)br_bits(r, 5) + 257;
  int hdist = (int)br_bits(r, 5) + 1;
  int hclen = (int)br_bits(r, 4) + 4;
  if (r->err || hlit > 286 || hdist > 30) return -1;
  memset(cl, 0, sizeof(cl));
  for (int i = 0; i < hclen; i++) cl[CLORDER[i]] = (uint8_t)br_bits(r, 3);
  huff ch;
  if (r->err || huff_build(&ch, cl, 19) != 0) return -1;
  int i = 0;
  while (i < hlit + hdist) {
    int s = huff_decode(r, &ch);
    if (s < 0) return -1;
    if (s < 16) {
      lens[i++] = (uint8_t)s;
    } else {
      int rep, v = 0;
      if (s == 16) {
        if (i == 0) return -1;
        v = lens[i - 1];
        rep = 3 + (int)br_bits(r, 2);
      } else if (s == 17) {
        rep = 3 + (int)br_bits(r, 3);
      } else {
        rep = 11 + (int)br_bits(r, 7);
      }
      if (r->err || i + rep > hlit + hdist) return -1;
      while (rep--) lens[i++] = (uint8_t)v;
    }
  }
  memset(llen, 0, 288);
  memset(dlen, 0, 32);
  memcpy(llen, lens, (size_t)hlit);
  memcpy(dlen, lens + hlit, (size_t)hdist);
  *nlen = hlit;
  *ndist = hdist;
  return llen[256] ? 0 : -1;
}

static void fixed_lens(uint8_t *llen, uint8_t *dlen) {
  for (int s = 0; s < 288; s++) llen[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
  for (int s = 0; s < 32; s++) dlen[s] = 5;
}


/* ------------------------------------------------------------------------ */
/*
 * zlib's dynamic block header for given symbol frequencies, bit for bit:
 * its Huffman construction (a heap ordered by frequency, then depth; lengths
 * limited by moving leaves, as its trees.c does) and its run-length coding
 * of the code lengths. zlib and the encoders built on it (pigz, Node's
 * zlib, GNU gzip's own trees) write this header; a record then says "zlib's
 * header" in one bit instead of ~70 bytes per block (measured: half of a
 * pigz -6 record was headers).
 */

#define ZHEAP (2 * 286 + 1)

typedef struct {
  uint32_t freq[2 * 286 + 2];
  uint16_t dad[2 * 286 + 2];
  uint16_t len[2 * 286 + 2];
  uint8_t depth[2 * 286 + 2];
  int heap[ZHEAP + 1];
  int heap_len, heap_max;
} ztree;

static inline int z_smaller(const ztree *t, int n, int m) {
  return t->freq[n] < t->freq[m] || (t->freq[n] == t->freq[m] && t->depth[n] <= t->depth[m]);
}

static void z_down(ztree *t, int k) {
  int v = t->heap[k];
  int j = k << 1;
  while (j <= t->heap_len) {
    if (j < t->heap_len && z_smaller(t, t->heap[j + 1], t->heap[j])) j++;
    if (z_smaller(t, v, t->heap[j])) break;
    t->heap[k] = t->heap[j];
    k = j;
    j <<= 1;
  }
  t->heap[k] = v;
}

/* Code lengths (t->len) for t->freq[0..elems), at most max_length bits; returns the largest symbol coded. */
static int z_build(ztree *t, int elems, int max_length) {
  int max_code = -1;
  t->heap_len = 0;
  t->heap_max = ZHEAP;
  for (int n = 0; n < elems; n++) {
    if (t->freq[n] != 0) {
      t->heap[++t->heap_len] = max_code = n;
      t->depth[n] = 0;
    } else {
      t->len[n] = 0;
    }
  }
  while (t->heap_len < 2) {
    int node = t->heap[++t->heap_len] = (max_code < 2 ? ++max_code : 0);
    t->freq[node] = 1;
    t->depth[node] = 0;
  }
  for (int n = t->heap_len / 2; n >= 1; n--) z_down(t, n);
  int node = elems;
  do {
    int n = t->heap[1];
    t->heap[1] = t->heap[t->heap_len--];
    z_down(t, 1);
    int m = t->heap[1];
    t->heap[--t->heap_max] = n;
    t->heap[--t->heap_max] = m;
    t->freq[node] = t->freq[n] + t->freq[m];
    t->depth[node] = (uint8_t)((t->depth[n] >= t->depth[m] ? t->depth[n] : t->depth[m]) + 1);
    t->dad[n] = t->dad[m] = (uint16_t)node;
    t->heap[1] = node++;
    z_down(t, 1);
  } while (t->heap_len >= 2);
  t->heap[--t->heap_max] = t->heap[1];
  /* lengths from the tree, the deepest limited to max_length */
  int bl_count[16] = {0}, overflow = 0, h;
  t->len[t->heap[t->heap_max]] = 0;
  for (h = t->heap_max + 1; h < ZHEAP; h++) {
    int n = t->heap[h];
    int bits = t->len[t->dad[n]] + 1;
    if (bits > max_length) bits = max_length, overflow++;
    t->len[n] = (uint16_t)bits;
    if (n > max_code) continue;
    bl_count[bits]++;
  }
  if (overflow > 0) {
    do {
      int bits = max_length - 1;
      while (bl_count[bits] == 0) bits--;
      bl_count[bits]--;
      bl_count[bits + 1] += 2;
      bl_count[max_length]--;
      overflow -= 2;
    } while (overflow > 0);
    for (int bits = max_length; bits != 0; bits--) {
      int n = bl_count[bits];
      while (n != 0) {
        int m = t->heap[--h];
        if (m > max_code) continue;
        t->len[m] = (uint16_t)bits;
        n--;
      }
    }
  }
  return max_code;
}

/* The run-length coding of lens[0..max_code] (guard: lens[max_code + 1] is 0xffff): bl frequencies, or the symbols sent. */
typedef struct {
  uint8_t sym[320];
  uint8_t extra[320];
  int n;
} zruns;

static void z_runs(const uint16_t *lens, int max_code, zruns *r) {
  int prevlen = -1, nextlen = lens[0], count = 0, max_count = 7, min_count = 4;
  if (nextlen == 0) max_count = 138, min_count = 3;
  for (int n = 0; n <= max_code; n++) {
    int curlen = nextlen;
    nextlen = lens[n + 1];
    if (++count < max_count && curlen == nextlen) continue;
    if (count < min_count) {
      while (count--) r->sym[r->n] = (uint8_t)curlen, r->extra[r->n++] = 0;
    } else if (curlen != 0) {
      if (curlen != prevlen) {
        r->sym[r->n] = (uint8_t)curlen, r->extra[r->n++] = 0;
        count--;
      }
      r->sym[r->n] = 16, r->extra[r->n++] = (uint8_t)(count - 3);
    } else if (count <= 10) {
      r->sym[r->n] = 17, r->extra[r->n++] = (uint8_t)(count - 3);
    } else {
      r->sym[r->n] = 18, r->extra[r->n++] = (uint8_t)(count - 11);
    }
    count = 0;
    prevlen = curlen;
    if (nextlen == 0) max_count = 138, min_count = 3;
    else if (curlen == nextlen) max_count = 6, min_count = 3;
    else max_count = 7, min_count = 4;
  }
}

typedef struct {
  uint8_t bytes[HDRMAX / 8 + 4];
  int nbits;
} hdrbits;

static void hb_put(hdrbits *h, uint32_t v, int k) {
  for (int i = 0; i < k; i++, h->nbits++)
    if ((v >> i) & 1) h->bytes[h->nbits >> 3] |= (uint8_t)(1u << (h->nbits & 7));
}

static void make_codes(const uint8_t *len, uint16_t *code, int n);

/* zlib's header (after the 3 block-type bits) for a block with these frequencies (lfreq[256] = 1: the end of block). */
static void zlib_header(const uint32_t *lfreq, const uint32_t *dfreq, hdrbits *out) {
  static __thread ztree lt, dt, bt;
  memset(out, 0, sizeof(*out));
  memset(&lt, 0, sizeof(lt));
  memset(&dt, 0, sizeof(dt));
  memset(&bt, 0, sizeof(bt));
  memcpy(lt.freq, lfreq, 286 * sizeof(uint32_t));
  memcpy(dt.freq, dfreq, 30 * sizeof(uint32_t));
  int lmax = z_build(&lt, 286, 15);
  int dmax = z_build(&dt, 30, 15);
  uint16_t llens[288], dlens[32];
  memcpy(llens, lt.len, sizeof(uint16_t) * (size_t)(lmax + 1));
  memcpy(dlens, dt.len, sizeof(uint16_t) * (size_t)(dmax + 1));
  llens[lmax + 1] = 0xFFFF;
  dlens[dmax + 1] = 0xFFFF;
  zruns lr = {{0}, {0}, 0}, dr = {{0}, {0}, 0};
  z_runs(llens, lmax, &lr);
  z_runs(dlens, dmax, &dr);
  for (int i = 0; i < lr.n; i++) bt.freq[lr.sym[i]]++;
  for (int i = 0; i < dr.n; i++) bt.freq[dr.sym[i]]++;
  z_build(&bt, 19, 7);
  int max_blindex;
  for (max_blindex = 18; max_blindex >= 3; max_blindex--)
    if (bt.len[CLORDER[max_blindex]] != 0) break;
  hb_put(out, (uint32_t)(lmax + 1 - 257), 5);
  hb_put(out, (uint32_t)(dmax + 1 - 1), 5);
  hb_put(out, (uint32_t)(max_blindex + 1 - 4), 4);
  for (int r = 0; r <= max_blindex; r++) hb_put(out, bt.len[CLORDER[r]], 3);
  uint8_t bl8[19];
  uint16_t blcode[19];
  for (int i = 0; i < 19; i++) bl8[i] = (uint8_t)bt.len[i];
  make_codes(bl8, blcode, 19);
  const zruns *rs[2] = {&lr, &dr};
  for (int k = 0; k < 2; k++) {
    for (int i = 0; i < rs[k]->n; i++) {
      int sy = rs[k]->sym[i];
      hb_put(out, blcode[sy], bl8[sy]);
      if (sy == 16) hb_put(out, rs[k]->extra[i], 2);
      else if (sy == 17) hb_put(out, rs[k]->extra[i], 3);
      else if (sy == 18) hb_put(out, rs[k]->extra[i], 7);
    }
  }
}

typedef struct {
  win w;
  model m;
  rcenc rc;
  bytes stream;
  const uint8_t *body;
  size_t bodyn;
  event *q;
  size_t qhead, qn, qcap;
  int64_t p;      /* model position */
  int prev_match;
  uint32_t ntok, prev_ntok; /* tokens of this block so far, of the previous block */
  uint64_t pushed, budget;  /* events parsed; stop after budget (0: never) */
  int dyn;                  /* in a dynamic block: its header is coded at its end */
  uint64_t hstart;
  int hbits;
  uint32_t lfreq[286], dfreq[30];
  const char *fail;         /* a block the decoder could not hold */
  int scan_only;            /* rec_scan: inflate to the stream's end, code nothing */
  uint64_t consumed;        /* rec_scan: bytes of the body the stream takes */
} encoder;

static const char BUDGET[] = "budget reached";

static int q_push(encoder *e, const event *ev) {
  if (e->qhead > 0 && e->qhead == e->qn) e->qhead = e->qn = 0;
  if (e->qn == e->qcap) {
    if (e->qhead > 0) {
      memmove(e->q, e->q + e->qhead, (e->qn - e->qhead) * sizeof(event));
      e->qn -= e->qhead;
      e->qhead = 0;
    }
    if (e->qn == e->qcap) {
      size_t cap = e->qcap ? e->qcap * 2 : 4096;
      if (cap > MAXEVENTS) return -1;
      event *nq = realloc(e->q, cap * sizeof(event));
      if (!nq) return -1;
      e->q = nq;
      e->qcap = cap;
    }
  }
  e->q[e->qn++] = *ev;
  e->pushed++;
  return 0;
}

/* Codes one token at e->p against the predictor. */
static void code_token(encoder *e, int L, int D) {
  cands *a, *b;
  predict(&e->w, e->p, &a, &b);
  int bl = bucket(a);
  CAT(1);
  rce_bit(&e->rc, &e->m.is_match[bl][cmp_next(a, b)][e->prev_match], L > 0);
  if (L == 0) {
    e->p += 1;
    e->prev_match = 0;
    return;
  }
  int eq = L == a->lmax;
  CAT(2);
  rce_bit(&e->rc, &e->m.len_eq[bl], eq);
  if (!eq) {
    rce_bit(&e->rc, &e->m.len_m1[bl], L == a->lmax - 1);
    if (L != a->lmax - 1) enc_tree8(&e->rc, e->m.len_short[grp(a->lmax)], (uint32_t)(L - 3));
  }
  int rank = -1, m = 0;
  for (int i = 0; i < a->n; i++) {
    if (a->len[i] < L) continue;
    if (a->dist[i] == D) {
      rank = m;
      break;
    }
    m++;
  }
  CAT(4);
  rce_bit(&e->rc, &e->m.dist0[eq][bl], rank == 0);
  if (rank != 0) {
    enc_gamma(&e->rc, e->m.rank[eq], rank > 0 ? (uint32_t)rank : 0);
    CAT(5);
    if (rank < 0) rce_direct(&e->rc, (uint32_t)(D - 1), 15);
  }
  if (e->w.max_insert && L > e->w.max_insert && e->w.ins < e->p + L) e->w.ins = e->p + L;
  e->p += L;
  e->prev_match = 1;
}

/* Codes the queued events that the bytes inflated so far allow (all of them once the window is at its end). */
static void consume(encoder *e) {
  if (e->scan_only) {
    e->qhead = e->qn;
    e->p = e->w.avail;
    e->w.ins = e->w.avail;
    return;
  }
  while (e->qhead < e->qn) {
    const event *ev = &e->q[e->qhead];
    if (ev->kind == EV_TOK) {
      if (!e->w.eof && e->w.avail < e->p + LOOK) return;
      CAT(6);
      rce_bit(&e->rc, &e->m.eob[e->ntok == e->prev_ntok][(e->p & 0x7FFF) == 0][e->prev_match], 0);
      if (e->dyn) {
        if (ev->l == 0) {
          e->lfreq[*at(&e->w, e->p)]++;
        } else {
          e->lfreq[257 + len_sym(ev->l)]++;
          e->dfreq[dist_sym((int)ev->d)]++;
        }
      }
      code_token(e, ev->l, (int)ev->d);
      e->ntok++;
      if (e->dyn && e->ntok >= TOKCAP) e->fail = "a dynamic block of more than 4 Mi tokens";
    } else if (ev->kind == EV_EOB) {
      CAT(6);
      rce_bit(&e->rc, &e->m.eob[e->ntok == e->prev_ntok][(e->p & 0x7FFF) == 0][e->prev_match], 1);
      e->prev_ntok = e->ntok;
      e->ntok = 0;
      if (e->dyn) {
        /* the block's header: zlib's for these frequencies, or its bits */
        hdrbits z;
        zlib_header(e->lfreq, e->dfreq, &z);
        breader r = {e->body, e->bodyn, e->hstart, 0};
        int same = z.nbits == e->hbits;
        for (int i = 0; same && i < e->hbits; i++) same = br_bits(&r, 1) == (uint32_t)((z.bytes[i >> 3] >> (i & 7)) & 1);
        CAT(7);
        rce_bit(&e->rc, &e->m.hdr_zlib, same);
        if (!same) {
          rce_direct(&e->rc, (uint32_t)e->hbits, 13);
          breader h = {e->body, e->bodyn, e->hstart, 0};
          for (int left = e->hbits; left > 0; left -= 16) {
            int k = left < 16 ? left : 16;
            rce_direct(&e->rc, br_bits(&h, k), k);
          }
        }
        e->dyn = 0;
      }
    } else if (ev->kind == EV_END) {
      rce_direct(&e->rc, ev->d, ev->npad);
    } else {
      int type = ev->a >> 1;
      CAT(7);
      rce_bit(&e->rc, &e->m.final_bit, ev->a & 1);
      rce_direct(&e->rc, (uint32_t)type, 2);
      if (type == 0) {
        rce_direct(&e->rc, ev->l, ev->npad);
        rce_direct(&e->rc, ev->d, 16);
        e->p += ev->d;
      } else if (type == 2) {
        e->dyn = 1;
        e->hstart = ev->x;
        e->hbits = ev->l;
        memset(e->lfreq, 0, sizeof(e->lfreq));
        memset(e->dfreq, 0, sizeof(e->dfreq));
        e->lfreq[256] = 1;
      }
    }
    e->qhead++;
  }
}

/* Room for at least 64 KiB more inflated bytes; -1 when the window cannot make it. */
static int make_room(encoder *e) {
  win *w = &e->w;
  if (BUFCAP - (w->avail - w->base) >= 65536 + 4 * MAXM) return 0;
  consume(e);
  insert_held(w, e->p);
  win_slide(w, win_keep(w, e->p));
  return BUFCAP - (w->avail - w->base) >= 65536 + 4 * MAXM ? 0 : -1;
}

static const char *parse(encoder *e) {
  breader r = {e->body, e->bodyn, 0, 0};
  win *w = &e->w;
  uint8_t llen[288], dlen[32];
  huff lh, dh;
  event ev;
  for (;;) {
    memset(&ev, 0, sizeof(ev));
    int final = (int)br_bits(&r, 1);
    int type = (int)br_bits(&r, 2);
    if (r.err) return "the deflate stream is truncated";
    ev.kind = EV_BLOCK;
    ev.a = (uint8_t)(final | type << 1);
    if (type == 3) return "a deflate block of the reserved type 3";
    if (type == 0) {
      ev.npad = (uint8_t)((8 - (r.pos & 7)) & 7);
      ev.l = (uint16_t)br_bits(&r, ev.npad);
      uint32_t len = br_bits(&r, 16), nlen = br_bits(&r, 16);
      if (r.err) return "the deflate stream is truncated";
      if (nlen != (~len & 0xFFFFu)) return "a stored block whose length check is wrong";
      if ((r.pos >> 3) + len > e->bodyn) return "the deflate stream is truncated";
      ev.d = len;
      if (q_push(e, &ev)) return "too many deflate blocks without data";
      while (len > 0) {
        if (make_room(e)) return "out of window";
        uint32_t k = len < 4 * MAXM ? len : 4 * MAXM;
        memcpy(w->buf + (w->avail - w->base), e->body + (r.pos >> 3), k);
        w->avail += k;
        r.pos += (uint64_t)k * 8;
        len -= k;
      }
    } else {
      if (type == 2) {
        int nl, nd;
        uint64_t start = r.pos;
        if (read_dyn_header(&r, llen, &nl, dlen, &nd)) return r.err ? "the deflate stream is truncated" : "a dynamic block header that is not valid";
        if (r.pos - start > HDRMAX) return "a dynamic block header that is too long";
        ev.l = (uint16_t)(r.pos - start);
        ev.x = start;
      } else {
        fixed_lens(llen, dlen);
      }
      if (huff_build(&lh, llen, 288) || huff_build(&dh, dlen, 32)) return "a dynamic block header that is not valid";
      if (q_push(e, &ev)) return "too many deflate blocks without data";
      for (;;) {
        if (BUFCAP - (w->avail - w->base) < 65536 + 4 * MAXM && make_room(e)) return "out of window";
        if (e->qn - e->qhead >= 8192) consume(e);
        int s = huff_decode(&r, &lh);
        if (s < 0) return r.err ? "the deflate stream is truncated" : "a code that is not in the block's table";
        memset(&ev, 0, sizeof(ev));
        if (s < 256) {
          w->buf[w->avail - w->base] = (uint8_t)s;
          w->avail++;
          ev.kind = EV_TOK;
        } else if (s == 256) {
          ev.kind = EV_EOB;
          if (q_push(e, &ev)) return "out of memory";
          break;
        } else {
          s -= 257;
          if (s >= 29) return "a length code that is not valid";
          int L = LBASE[s] + (int)br_bits(&r, LEXT[s]);
          if (s == 27 && L == MAXM) return "length 258 written with code 284 (no encoder known writes it)";
          int ds = huff_decode(&r, &dh);
          if (ds < 0 || ds >= 30) return r.err ? "the deflate stream is truncated" : "a distance code that is not valid";
          int D = DBASE[ds] + (int)br_bits(&r, DEXT[ds]);
          if (r.err) return "the deflate stream is truncated";
          if (D > w->avail) return "a distance before the start of the data";
          uint8_t *dst = w->buf + (w->avail - w->base);
          for (int i = 0; i < L; i++) dst[i] = dst[i - D];
          w->avail += L;
          ev.kind = EV_TOK;
          ev.l = (uint16_t)L;
          ev.d = (uint32_t)D;
        }
        if (q_push(e, &ev)) return "out of memory";
        if (e->budget && e->pushed >= e->budget) return BUDGET;
      }
    }
    if (final) break;
  }
  memset(&ev, 0, sizeof(ev));
  ev.kind = EV_END;
  ev.npad = (uint8_t)((8 - (r.pos & 7)) & 7);
  ev.d = br_bits(&r, ev.npad);
  if (r.err) return "the deflate stream is truncated";
  e->consumed = r.pos >> 3;
  if (e->scan_only) return NULL;
  if ((r.pos >> 3) != e->bodyn) return "data after the end of the deflate stream";
  if (q_push(e, &ev)) return "out of memory";
  return NULL;
}

/*
 * One encoding of `body` with `profile`: 0 and the record (malloc'd) when the whole body was coded;
 * with a budget, 1 and the range coder's output so far in *outn once it is spent (a trial).
 */
static int encode_with(const uint8_t *body, size_t n, int profile, uint64_t budget, uint8_t **out, size_t *outn, uint64_t *usize, const char **why) {
  encoder *e = calloc(1, sizeof(*e));
  *out = NULL;
  *why = "out of memory";
  if (!e) return -1;
  int rc = -1;
  if (win_init(&e->w) == 0) {
    e->w.chain = PROFILES[profile].chain;
    e->w.max_insert = PROFILES[profile].max_insert;
    e->w.nice = PROFILES[profile].nice;
    e->w.h4 = PROFILES[profile].h4;
    e->w.zhash = PROFILES[profile].zhash;
    if (e->w.h4 == 2) {
      e->w.head3 = malloc(sizeof(int64_t) * (HSIZE / 2));
      if (!e->w.head3) e->w.h4 = 0, e->fail = "out of memory";
      else for (int i = 0; i < HSIZE / 2; i++) e->w.head3[i] = -1;
    }
    e->budget = budget;
    model_init(&e->m);
    e->rc.range = 0xFFFFFFFFu;
    e->rc.csize = 1;
    e->rc.out = &e->stream;
    e->body = body;
    e->bodyn = n;
    const char *err = parse(e);
    if (!err || err == BUDGET) {
      if (err != BUDGET) e->w.eof = 1;
      consume(e);
      if (e->fail) err = e->fail;
    }
    if (err == BUDGET) {
      consume(e);
      *outn = e->stream.n;
      rc = 1;
    } else if (err) {
      *why = err;
    } else {
      rce_flush(&e->rc);
      if (!e->stream.oom) {
        size_t total = 12 + e->stream.n;
        uint8_t *o = malloc(total);
        if (o) {
          o[0] = 0xD4;
          o[1] = 'R';
          o[2] = 1;
          o[3] = (uint8_t)profile;
          for (int i = 0; i < 8; i++) o[4 + i] = (uint8_t)((uint64_t)e->w.avail >> (8 * i));
          memcpy(o + 12, e->stream.p, e->stream.n);
          *out = o;
          *outn = total;
          *usize = (uint64_t)e->w.avail;
          *why = NULL;
          rc = 0;
        }
      }
    }
  }
  win_free(&e->w);
  free(e->stream.p);
  free(e->q);
  free(e);
  return rc;
}

/* Tokens a profile is tried on before the whole body is coded with the best one. */
#define TRIAL_EVENTS 400000

int rec_scan(const uint8_t *body, size_t n, uint64_t *consumed, uint64_t *usize, const char **why) {
  encoder *e = calloc(1, sizeof(*e));
  *why = "out of memory";
  if (!e) return -1;
  int rc = -1;
  if (win_init(&e->w) == 0) {
    e->scan_only = 1;
    e->body = body;
    e->bodyn = n;
    const char *err = parse(e);
    if (err) {
      *why = err;
    } else {
      *consumed = e->consumed;
      *usize = (uint64_t)e->w.avail;
      *why = NULL;
      rc = 0;
    }
  }
  win_free(&e->w);
  free(e->q);
  free(e);
  return rc;
}

int rec_encode(const uint8_t *body, size_t n, uint8_t **out, size_t *outn, uint64_t *usize, const char **why) {
  int best = -1;
  size_t best_size = 0;
  uint8_t *best_rec = NULL; /* the best trial's record when trials code the whole body */
  uint64_t best_usize = 0;
  for (int p = 0; p < NPROFILES; p++) {
    uint8_t *rec = NULL;
    size_t sz = 0;
    uint64_t us = 0;
    int rc = encode_with(body, n, p, TRIAL_EVENTS, &rec, &sz, &us, why);
    if (rc < 0) {
      free(best_rec);
      return -1;
    }
    if (best < 0 || sz < best_size) {
      best = p;
      best_size = sz;
      free(best_rec);
      best_rec = rec;
      best_usize = us;
    } else {
      free(rec);
    }
    /* profile 0 predicting nearly every token (under an eighth of a bit of record per event): nothing else is tried */
    if (p == 0 && sz * 8 < TRIAL_EVENTS / 8) break;
  }
  if (best_rec) {
    *out = best_rec;
    *outn = best_size;
    *usize = best_usize;
    *why = NULL;
    return 0;
  }
  return encode_with(body, n, best, 0, out, outn, usize, why) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Decoder: the record's events over the uncompressed bytes, written as deflate */

enum { S_BLOCK, S_STORED, S_TOK, S_DYN, S_END, S_DONE };

struct rec_dec {
  win w;
  model m;
  rcdec rc;
  uint8_t *rec;
  uint64_t usize;
  bytes out;
  uint64_t bb;
  int bc;
  uint64_t taken; /* bytes handed over */
  uint64_t max_out;
  int state, final, prev_match;
  uint32_t ntok, prev_ntok;
  int64_t p;
  uint32_t stored_left;
  uint8_t llen[288], dlen[32];
  uint16_t lcode[288], dcode[32];
  /* a dynamic block's tokens, held until its header is known (length, distance; a literal: 0, its byte) */
  uint16_t *tl, *td;
  uint32_t tn, tcap;
  uint32_t lfreq[286], dfreq[30];
  const char *err;
};

static inline void put_bits(rec_dec *d, uint32_t v, int k) {
  d->bb |= (uint64_t)v << d->bc;
  d->bc += k;
  while (d->bc >= 8) {
    by_put(&d->out, (uint8_t)d->bb);
    d->bb >>= 8;
    d->bc -= 8;
  }
}

static void make_codes(const uint8_t *len, uint16_t *code, int n) {
  int count[16] = {0}, next[16];
  for (int s = 0; s < n; s++) count[len[s]]++;
  count[0] = 0;
  int c = 0;
  for (int l = 1; l < 16; l++) {
    c = (c + count[l - 1]) << 1;
    next[l] = c;
  }
  for (int s = 0; s < n; s++) {
    int l = len[s];
    if (!l) continue;
    uint32_t v = (uint32_t)next[l]++, r = 0;
    for (int i = 0; i < l; i++) r |= ((v >> i) & 1) << (l - 1 - i);
    code[s] = (uint16_t)r;
  }
}

static int fail(rec_dec *d, const char *why) {
  if (!d->err) d->err = why;
  return -1;
}

static int put_sym(rec_dec *d, int lit) {
  if (!d->llen[lit]) return fail(d, "the record uses a code its block does not have");
  put_bits(d, d->lcode[lit], d->llen[lit]);
  return 0;
}

static int block_start(rec_dec *d) {
  d->final = rcd_bit(&d->rc, &d->m.final_bit);
  int type = (int)rcd_direct(&d->rc, 2);
  if (type != 2) put_bits(d, (uint32_t)(d->final | type << 1), 3);
  if (type == 0) {
    int npad = (int)((8 - (d->bc & 7)) & 7);
    put_bits(d, rcd_direct(&d->rc, npad), npad);
    uint32_t len = rcd_direct(&d->rc, 16);
    put_bits(d, len, 16);
    put_bits(d, ~len & 0xFFFFu, 16);
    d->stored_left = len;
    d->state = S_STORED;
  } else if (type == 1) {
    fixed_lens(d->llen, d->dlen);
    d->dlen[30] = d->dlen[31] = 0;
    make_codes(d->llen, d->lcode, 288);
    make_codes(d->dlen, d->dcode, 32);
    d->state = S_TOK;
  } else if (type == 2) {
    d->tn = 0;
    memset(d->lfreq, 0, sizeof(d->lfreq));
    memset(d->dfreq, 0, sizeof(d->dfreq));
    d->lfreq[256] = 1;
    d->state = S_DYN;
  } else {
    return fail(d, "the record holds a block of type 3");
  }
  return 0;
}

/* A dynamic block's end: its header (zlib's for its frequencies, or the record's bits), then its tokens. */
static int dyn_end(rec_dec *d) {
  hdrbits h;
  if (rcd_bit(&d->rc, &d->m.hdr_zlib)) {
    zlib_header(d->lfreq, d->dfreq, &h);
  } else {
    memset(&h, 0, sizeof(h));
    int hbits = (int)rcd_direct(&d->rc, 13);
    for (int at = 0; at < hbits; at += 16) {
      int k = hbits - at < 16 ? hbits - at : 16;
      hb_put(&h, rcd_direct(&d->rc, k), k);
    }
  }
  put_bits(d, (uint32_t)(d->final | 2 << 1), 3);
  for (int at = 0; at < h.nbits; at += 8) {
    int k = h.nbits - at < 8 ? h.nbits - at : 8;
    put_bits(d, h.bytes[at >> 3] & ((1u << k) - 1), k);
  }
  breader r = {h.bytes, (size_t)(h.nbits + 7) / 8, 0, 0};
  int nl, nd;
  huff hf;
  if (read_dyn_header(&r, d->llen, &nl, d->dlen, &nd) || r.pos != (uint64_t)h.nbits || huff_build(&hf, d->llen, 288) || huff_build(&hf, d->dlen, 32))
    return fail(d, "the record holds a block header that is not valid");
  make_codes(d->llen, d->lcode, 288);
  make_codes(d->dlen, d->dcode, 32);
  for (uint32_t i = 0; i < d->tn; i++) {
    int L = d->tl[i], D = d->td[i];
    if (L == 0) {
      if (put_sym(d, D)) return -1;
      continue;
    }
    int s = len_sym(L);
    if (put_sym(d, 257 + s)) return -1;
    put_bits(d, (uint32_t)(L - LBASE[s]), LEXT[s]);
    int ds = dist_sym(D);
    if (!d->dlen[ds]) return fail(d, "the record uses a code its block does not have");
    put_bits(d, d->dcode[ds], d->dlen[ds]);
    put_bits(d, (uint32_t)(D - DBASE[ds]), DEXT[ds]);
    if (d->out.oom) return fail(d, "out of memory");
  }
  d->tn = 0;
  return put_sym(d, 256);
}

/* Holds a token of a dynamic block. */
static int hold(rec_dec *d, int L, int D) {
  if (d->tn == d->tcap) {
    if (d->tcap >= TOKCAP) return fail(d, "the record holds a block of too many tokens");
    uint32_t cap = d->tcap ? d->tcap * 2 : 65536;
    uint16_t *nl = realloc(d->tl, cap * sizeof(uint16_t));
    if (nl) d->tl = nl;
    uint16_t *nd = realloc(d->td, cap * sizeof(uint16_t));
    if (nd) d->td = nd;
    if (!nl || !nd) return fail(d, "out of memory");
    d->tcap = cap;
  }
  d->tl[d->tn] = (uint16_t)L;
  d->td[d->tn++] = (uint16_t)D;
  if (L == 0) {
    d->lfreq[D]++;
  } else {
    d->lfreq[257 + len_sym(L)]++;
    d->dfreq[dist_sym(D)]++;
  }
  return 0;
}

static int token(rec_dec *d) {
  cands *a, *b;
  win *w = &d->w;
  if (d->p >= w->avail) return fail(d, "the record has more tokens than the data");
  predict(w, d->p, &a, &b);
  int bl = bucket(a);
  if (!rcd_bit(&d->rc, &d->m.is_match[bl][cmp_next(a, b)][d->prev_match])) {
    if (d->state == S_DYN ? hold(d, 0, *at(w, d->p)) : put_sym(d, *at(w, d->p))) return -1;
    d->p += 1;
    d->prev_match = 0;
    return 0;
  }
  int L;
  int eq = rcd_bit(&d->rc, &d->m.len_eq[bl]);
  if (eq) L = a->lmax;
  else if (rcd_bit(&d->rc, &d->m.len_m1[bl])) L = a->lmax - 1;
  else L = 3 + (int)dec_tree8(&d->rc, d->m.len_short[grp(a->lmax)]);
  if (L < 3 || L > maxlen_at(w, d->p)) return fail(d, "the record holds a match length that does not fit");
  int D = -1;
  if (rcd_bit(&d->rc, &d->m.dist0[eq][bl])) {
    for (int i = 0; i < a->n && D < 0; i++)
      if (a->len[i] >= L) D = a->dist[i];
  } else {
    uint32_t v;
    if (dec_gamma(&d->rc, d->m.rank[eq], &v)) return fail(d, "the record holds a rank that is not valid");
    if (v == 0) {
      D = 1 + (int)rcd_direct(&d->rc, 15);
    } else {
      uint32_t m = 0;
      for (int i = 0; i < a->n && D < 0; i++)
        if (a->len[i] >= L && m++ == v) D = a->dist[i];
    }
  }
  if (D < 1 || D > d->p) return fail(d, "the record holds a distance that does not fit");
  const uint8_t *cur = at(w, d->p);
  for (int i = 0; i < L; i++)
    if (cur[i] != cur[i - D]) return fail(d, "the record holds a match the data does not have");
  if (d->state == S_DYN) {
    if (hold(d, L, D)) return -1;
  } else {
    int s = len_sym(L);
    if (put_sym(d, 257 + s)) return -1;
    put_bits(d, (uint32_t)(L - LBASE[s]), LEXT[s]);
    int ds = dist_sym(D);
    if (!d->dlen[ds]) return fail(d, "the record uses a code its block does not have");
    put_bits(d, d->dcode[ds], d->dlen[ds]);
    put_bits(d, (uint32_t)(D - DBASE[ds]), DEXT[ds]);
  }
  if (w->max_insert && L > w->max_insert && w->ins < d->p + L) w->ins = d->p + L;
  d->p += L;
  d->prev_match = 1;
  return 0;
}

/* Writes what the bytes held allow; 0 when it needs more bytes or is done. */
static int run(rec_dec *d) {
  win *w = &d->w;
  for (;;) {
    if (d->err) return -1;
    if (d->rc.over > 8) return fail(d, "the record is truncated");
    if (d->taken + d->out.n > d->max_out) return fail(d, "the record writes more than the layer holds");
    if (d->out.oom) return fail(d, "out of memory");
    switch (d->state) {
      case S_BLOCK:
        if (block_start(d)) return -1;
        break;
      case S_STORED: {
        if (d->stored_left == 0) {
          d->state = d->final ? S_END : S_BLOCK;
          break;
        }
        int64_t have = w->avail - d->p;
        if (have <= 0) {
          if (w->eof) return fail(d, "the record's stored block runs past the data");
          return 0;
        }
        uint32_t k = have < d->stored_left ? (uint32_t)have : d->stored_left;
        if (by_reserve(&d->out, k)) return fail(d, "out of memory");
        memcpy(d->out.p + d->out.n, at(w, d->p), k);
        d->out.n += k;
        d->p += k;
        d->stored_left -= k;
        break;
      }
      case S_TOK:
      case S_DYN:
        if (!w->eof && w->avail < d->p + LOOK) return 0;
        if (rcd_bit(&d->rc, &d->m.eob[d->ntok == d->prev_ntok][(d->p & 0x7FFF) == 0][d->prev_match])) {
          if (d->state == S_DYN ? dyn_end(d) : put_sym(d, 256)) return -1;
          d->state = d->final ? S_END : S_BLOCK;
          d->prev_ntok = d->ntok;
          d->ntok = 0;
        } else if (token(d)) {
          return -1;
        } else {
          d->ntok++;
        }
        break;
      case S_END: {
        int npad = (int)((8 - (d->bc & 7)) & 7);
        put_bits(d, rcd_direct(&d->rc, npad), npad);
        d->state = S_DONE;
        break;
      }
      default:
        if (w->avail > d->p) return fail(d, "the data goes on after the record's last block");
        return 0;
    }
  }
}

rec_dec *rec_dec_new(const uint8_t *rec, size_t n, uint64_t max_out) {
  rec_dec *d = calloc(1, sizeof(*d));
  if (!d) return NULL;
  if (win_init(&d->w) || !(d->rec = malloc(n ? n : 1))) {
    rec_dec_free(d);
    return NULL;
  }
  memcpy(d->rec, rec, n);
  d->max_out = max_out;
  model_init(&d->m);
  if (n < 12 || rec[0] != 0xD4 || rec[1] != 'R') {
    d->err = "not a deflate reconstruction record";
  } else if (rec[2] != 1) {
    d->err = "a deflate reconstruction record of another version";
  } else if (rec[3] >= NPROFILES) {
    d->err = "a deflate reconstruction record of an unknown profile";
  } else {
    d->w.chain = PROFILES[rec[3]].chain;
    d->w.max_insert = PROFILES[rec[3]].max_insert;
    d->w.nice = PROFILES[rec[3]].nice;
    d->w.h4 = PROFILES[rec[3]].h4;
    d->w.zhash = PROFILES[rec[3]].zhash;
    if (d->w.h4 == 2) {
      d->w.head3 = malloc(sizeof(int64_t) * (HSIZE / 2));
      if (!d->w.head3) d->w.h4 = 0, d->err = "out of memory";
      else for (int i = 0; i < HSIZE / 2; i++) d->w.head3[i] = -1;
    }
    for (int i = 0; i < 8; i++) d->usize |= (uint64_t)rec[4 + i] << (8 * i);
    rcd_init(&d->rc, d->rec + 12, n - 12);
  }
  d->state = S_BLOCK;
  return d;
}

void rec_dec_free(rec_dec *d) {
  if (!d) return;
  win_free(&d->w);
  free(d->rec);
  free(d->out.p);
  free(d->tl);
  free(d->td);
  free(d);
}

int rec_dec_write(rec_dec *d, const uint8_t *p, size_t n) {
  win *w = &d->w;
  while (n > 0) {
    if (d->err) return -1;
    if ((uint64_t)w->avail + n > d->usize) return fail(d, "more data than the record was made for");
    if (BUFCAP - (w->avail - w->base) < ROOM) {
      if (run(d)) return -1;
      insert_held(w, d->p);
      win_slide(w, win_keep(w, d->p));
      if (BUFCAP - (w->avail - w->base) < ROOM) return fail(d, "the record stalls");
    }
    size_t room = (size_t)(BUFCAP - (w->avail - w->base));
    size_t k = n < room ? n : room;
    memcpy(w->buf + (w->avail - w->base), p, k);
    w->avail += (int64_t)k;
    p += k;
    n -= k;
    if (run(d)) return -1;
  }
  return d->err ? -1 : 0;
}

int rec_dec_finish(rec_dec *d) {
  if (d->err) return -1;
  if ((uint64_t)d->w.avail != d->usize) return fail(d, "less data than the record was made for");
  d->w.eof = 1;
  if (run(d)) return -1;
  if (d->state != S_DONE) return fail(d, "the record ends before its last block");
  return 0;
}

const uint8_t *rec_dec_take(rec_dec *d, size_t *n) {
  *n = d->out.n;
  d->taken += d->out.n;
  d->out.n = 0;
  return d->out.p;
}

const char *rec_dec_error(const rec_dec *d) {
  return d->err;
}
