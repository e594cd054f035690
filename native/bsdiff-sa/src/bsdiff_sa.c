/*
 * bsdiff-sa: a bsdiff-style delta encoder for d4fs, as a Node-API addon.
 *
 * Written for d4fs from the published description of Colin Percival's bsdiff
 * ("Naive differences of executable code", 2003): sort the suffixes of the old
 * data, walk the new data looking up the longest match of every position, and
 * only switch to a new alignment when it beats the current one by a margin; each
 * switch emits "add x bytes of (new - old), copy y new bytes, seek the old
 * position by z". The suffix array comes from libdivsufsort (int32 indices, so
 * inputs must be < 2 GiB; d4fs chunks large files long before that).
 *
 * The addon only returns the three uncompressed BSDIFF40 streams; d4fs compresses
 * and packs them. It never exits the process: allocation failures, oversized
 * inputs and a passed deadline are reported as JavaScript exceptions, and all
 * memory is released before returning.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <divsufsort.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <stdatomic.h>
#include "cm.h"
#include "bitcode.h"

#define MAX_INPUT ((size_t)0x7fffffff - 1)

/* ------------------------------------------------------------------ */
/* growable byte buffer for the control stream                          */
/* ------------------------------------------------------------------ */

typedef struct {
  uint8_t *p;
  size_t len, cap;
} bytes_t;

static int bytes_reserve(bytes_t *b, size_t more) {
  if (b->len + more <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  uint8_t *q = realloc(b->p, cap);
  if (!q) return -1;
  b->p = q;
  b->cap = cap;
  return 0;
}

/* BSDIFF40's integer: 63-bit magnitude, sign in the top bit, little-endian. */
static void put_offt(uint8_t *dst, int64_t v) {
  uint64_t m = v < 0 ? (uint64_t)(-v) : (uint64_t)v;
  for (int i = 0; i < 8; i++) {
    dst[i] = (uint8_t)(m & 0xff);
    m >>= 8;
  }
  if (v < 0) dst[7] |= 0x80;
}

/* ------------------------------------------------------------------ */
/* deadline                                                             */
/* ------------------------------------------------------------------ */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------ */
/* longest match by binary search over the suffix array                 */
/* ------------------------------------------------------------------ */

static inline size_t common_prefix(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
  size_t n = alen < blen ? alen : blen, i = 0;
  while (i + 8 <= n) {
    uint64_t x, y;
    memcpy(&x, a + i, 8);
    memcpy(&y, b + i, 8);
    if (x != y) return i + (size_t)(__builtin_ctzll(x ^ y) >> 3);
    i += 8;
  }
  while (i < n && a[i] == b[i]) i++;
  return i;
}

/* Equal bytes at the end of a[-n..0) and b[-n..0), counted backwards from a_end and b_end. */
static inline size_t common_suffix(const uint8_t *a_end, const uint8_t *b_end, size_t n) {
  size_t i = 0;
  while (i + 8 <= n) {
    uint64_t x, y;
    memcpy(&x, a_end - i - 8, 8);
    memcpy(&y, b_end - i - 8, 8);
    if (x != y) return i + (size_t)(__builtin_clzll(x ^ y) >> 3); /* little-endian: the last byte is the top one */
    i += 8;
  }
  while (i < n && a_end[-1 - (ptrdiff_t)i] == b_end[-1 - (ptrdiff_t)i]) i++;
  return i;
}

/* How many positions i of [from, to) have nw[i] == old[i + off] (positions outside old count as different). */
static int64_t count_equal(const uint8_t *old, int64_t olen, const uint8_t *nw, int64_t from, int64_t to, int64_t off) {
  if (from < -off) from = -off;
  if (to > olen - off) to = olen - off;
  int64_t n = 0;
  for (int64_t i = from; i < to;) {
    int64_t l = (int64_t)common_prefix(old + i + off, (size_t)(to - i), nw + i, (size_t)(to - i));
    n += l;
    i += l + 1; /* past the run and the byte that differs (or the end) */
  }
  return n;
}

/*
 * Longest prefix of key[0..klen) that occurs in old, and where. Keeps the
 * common prefix of key with the suffixes at both ends of the search interval
 * (the prefix shared by everything between them is at least the smaller one),
 * so comparisons start past it; this keeps long repeated matches from costing
 * O(match length) per step.
 */
/*
 * Where the suffixes starting with each 2-byte prefix lie in the suffix array
 * ([first, end) per prefix; suffixes of one byte belong to none). A lookup whose
 * prefix occurs starts its binary search inside that range: the longest match
 * shares at least those two bytes, and the range is contiguous because the array
 * is sorted. Saves the first ~16 steps, the ones that miss the cache most.
 */
typedef struct {
  uint32_t first[65536];
  uint32_t end[65536];
} buckets_t;

static void fill_buckets(buckets_t *b, const uint8_t *old, size_t oldlen, const saidx_t *sa) {
  memset(b, 0, sizeof *b);
  for (size_t i = 0; i < oldlen; i++) {
    size_t s = (size_t)sa[i];
    if (s + 1 >= oldlen) continue;
    unsigned k = ((unsigned)old[s] << 8) | old[s + 1];
    if (b->end[k] == 0) b->first[k] = (uint32_t)i;
    b->end[k] = (uint32_t)i + 1;
  }
}

static size_t longest_match(const uint8_t *old, size_t oldlen, const saidx_t *sa, const buckets_t *bk, const uint8_t *key, size_t klen, size_t *where) {
  if (oldlen == 0 || klen == 0) {
    *where = 0;
    return 0;
  }
  size_t lo = 0, hi = oldlen - 1;
  if (bk && klen >= 2) {
    unsigned k = ((unsigned)key[0] << 8) | key[1];
    if (bk->end[k] != 0) {
      lo = bk->first[k];
      hi = bk->end[k] - 1;
    }
  }
  size_t llo = common_prefix(old + sa[lo], oldlen - (size_t)sa[lo], key, klen);
  size_t lhi = common_prefix(old + sa[hi], oldlen - (size_t)sa[hi], key, klen);
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    size_t skip = llo < lhi ? llo : lhi;
    size_t s = (size_t)sa[mid];
    size_t rest = oldlen - s;
    if (skip > rest) skip = rest; /* cannot happen for a correct suffix array; keeps reads in bounds regardless */
    size_t l = skip + common_prefix(old + s + skip, rest - skip, key + skip, klen - skip);
    /* suffix < key? then key lies in the upper half */
    int less;
    if (l == klen) less = 0;          /* key is a prefix of the suffix: suffix >= key */
    else if (l == rest) less = 1;     /* suffix is a proper prefix of key */
    else less = old[s + l] < key[l];
    if (less) {
      lo = mid;
      llo = l;
    } else {
      hi = mid;
      lhi = l;
    }
  }
  if (llo >= lhi) {
    *where = (size_t)sa[lo];
    return llo;
  }
  *where = (size_t)sa[hi];
  return lhi;
}

/* ------------------------------------------------------------------ */
/* longest match by hash chains (the `hash` matcher)                    */
/* ------------------------------------------------------------------ */

/*
 * The suffix sort costs ~45 ms per MiB of base here (libdivsufsort, one core),
 * and on text that differs from its base in a few places the scan after it is
 * a few percent of that: a 9 MB JavaScript file of a patch release (typescript
 * 5.4.4 -> 5.4.5) took 434 ms to sort and 20 ms to scan. The scan only needs a
 * long match where the current alignment stops matching, not always the
 * longest: chains of the base's positions by their first HMIN bytes, walked
 * at most HDEPTH deep (newest first), plus the position the current alignment
 * points at, find it in linear time. Matches shorter than HMIN are not found;
 * bsdiff only takes a new alignment that beats the current one by `gain`
 * (8) bytes anyway. On the 20 largest changed files of a node_modules update
 * (60 MB of JavaScript, TypeScript declarations and JSON; issue 18's bench)
 * the packed patches were 14.2 KB against the suffix array's 13.5 KB, in
 * 1.0 s against 3.0 s including the packing. Keys of 8 bytes gave 15.8 KB,
 * 24-deep chains 14.3 KB, 64-deep 14.0 KB for +10 % time, and indexing every
 * 4th position (a quarter of the memory) 16.2 KB (src/delta/CODECS.md).
 */
#define HMIN 16
#define HDEPTH 32
#define HBACK 4096

typedef struct {
  int32_t *head;  /* newest position of each hash, -1: none */
  int32_t *chain; /* the position before it with the same hash, -1: none */
  unsigned bits;
} hidx_t;

static inline uint32_t hkey(const uint8_t *p, unsigned bits) {
  uint64_t v, w;
  memcpy(&v, p, 8);
  memcpy(&w, p + 8, 8);
  v ^= w * 0xC2B2AE3D27D4EB4Full;
  return (uint32_t)((v * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

static int hidx_build(hidx_t *h, const uint8_t *old, size_t oldlen) {
  unsigned bits = 12;
  while (bits < 22 && ((size_t)1 << bits) < oldlen) bits++;
  h->bits = bits;
  h->head = malloc(sizeof(int32_t) << bits);
  h->chain = malloc(sizeof(int32_t) * (oldlen ? oldlen : 1));
  if (!h->head || !h->chain) return -1;
  memset(h->head, 0xff, sizeof(int32_t) << bits);
  /* the head slot of a position PF ahead is prefetched: the table is larger than the caches, and
     each insert otherwise waits for a miss (8 MiB of base: ~80 -> ~60 ms) */
  enum { PF = 16 };
  size_t n = oldlen >= HMIN ? oldlen - HMIN + 1 : 0;
  uint32_t ring[PF];
  for (size_t p = 0; p < n && p < PF; p++) {
    ring[p] = hkey(old + p, bits);
    __builtin_prefetch(&h->head[ring[p]], 1);
  }
  for (size_t p = 0; p < n; p++) {
    uint32_t k = ring[p % PF];
    if (p + PF < n) {
      uint32_t a = hkey(old + p + PF, bits);
      ring[p % PF] = a;
      __builtin_prefetch(&h->head[a], 1);
    }
    h->chain[p] = h->head[k];
    h->head[k] = (int32_t)p;
  }
  return 0;
}

/* the length of the match of key at old[c..] */
static inline size_t match_at(const uint8_t *old, size_t oldlen, size_t c, const uint8_t *key, size_t klen) {
  return common_prefix(old + c, oldlen - c, key, klen);
}

/*
 * A long match of key[0..klen) in old: the longest of the position `hint`
 * points at (the current alignment; ignored when outside old) and the chain of
 * key's first HMIN bytes. A candidate is compared only when it agrees with key
 * at the length to beat (zlib's test), so a deep chain costs a byte per entry.
 */
static size_t hash_match(const uint8_t *old, size_t oldlen, const hidx_t *h, const uint8_t *key, size_t klen, int64_t hint, size_t *where) {
  size_t best = 0, at = 0;
  if (hint >= 0 && (size_t)hint < oldlen) {
    best = match_at(old, oldlen, (size_t)hint, key, klen);
    at = (size_t)hint;
  }
  if (klen >= HMIN) {
    int32_t c = h->head[hkey(key, h->bits)];
    for (int d = 0; c >= 0 && d < HDEPTH && best < klen; d++, c = h->chain[c]) {
      size_t cp = (size_t)c;
      if ((int64_t)cp == hint || cp + best >= oldlen || old[cp + best] != key[best]) continue;
      size_t l = match_at(old, oldlen, cp, key, klen);
      if (l > best) {
        best = l;
        at = cp;
      }
    }
  }
  *where = at;
  return best;
}

/* ------------------------------------------------------------------ */
/* the scan                                                             */
/* ------------------------------------------------------------------ */

typedef struct {
  bytes_t ctrl;
  uint8_t *diff;
  uint8_t *extra;
  size_t dlen, elen;
  double searches;
} streams_t;

enum { OK = 0, E_NOMEM = 1, E_DEADLINE = 2, E_STOPPED = 3 };

static int emit(streams_t *st, int64_t x, int64_t y, int64_t z) {
  if (bytes_reserve(&st->ctrl, 24)) return E_NOMEM;
  put_offt(st->ctrl.p + st->ctrl.len, x);
  put_offt(st->ctrl.p + st->ctrl.len + 8, y);
  put_offt(st->ctrl.p + st->ctrl.len + 16, z);
  st->ctrl.len += 24;
  return OK;
}

/*
 * Splitting the scan over threads without changing its output.
 *
 * The scan is greedy and sequential: where it emits depends on the alignment it
 * carries. Between two steps of its outer loop, though, its whole state is six
 * integers (state_t); from equal states it emits the same triples. So the new data
 * is cut into parts; part 0 scans from the start as the sequential scan does, every
 * other part starts at its boundary with a made-up alignment and records its state
 * after each emission (a checkpoint). When a part, running on past the next
 * boundary, reaches a state the next part recorded (same position, same
 * alignment), it stops there: the rest of the output is the next part's from that
 * checkpoint on. On related inputs the states meet a few triples past the boundary;
 * if they never meet, the part just scans to the end itself (slower, never wrong).
 * The result is byte for byte the sequential scan's, whatever the number of parts.
 */
typedef struct {
  int64_t scan, len, pos, lastscan, lastpos, lastoffset;
} state_t;

typedef struct {
  state_t s;
  size_t ctrl, dlen, elen; /* how much the part had written when it was in state s */
} ckpt_t;

typedef struct {
  const uint8_t *old, *nw;
  int64_t olen, nlen;
  const saidx_t *sa;
  const buckets_t *bk;
  const hidx_t *hx; /* the hash matcher's index (then sa and bk are NULL) */
  int64_t gain;
  double deadline;
  atomic_int stop; /* a part failed: the others give up */
} scan_ctx_t;

typedef struct part part_t;
struct part {
  scan_ctx_t *ctx;
  int64_t start;
  part_t *next; /* the part after this one; NULL for the last */
  int record;   /* keep checkpoints (every part but the first) */
  streams_t st;
  /* guarded by mu: checkpoints, finished, join, join_at */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ckpt_t *ck;
  size_t nck, ckcap;
  int finished;
  part_t *join;   /* this part's output ends where it reached checkpoint join_at of part join */
  size_t join_at;
  int rc;
  pthread_t tid;
  int started;
};

static int same_state(const state_t *a, const state_t *b) {
  return a->scan == b->scan && a->len == b->len && a->pos == b->pos && a->lastscan == b->lastscan && a->lastpos == b->lastpos &&
         a->lastoffset == b->lastoffset;
}

static int record(part_t *p, const state_t *s) {
  pthread_mutex_lock(&p->mu);
  if (p->nck == p->ckcap) {
    size_t cap = p->ckcap ? p->ckcap * 2 : 256;
    ckpt_t *q = realloc(p->ck, cap * sizeof *q);
    if (!q) {
      pthread_mutex_unlock(&p->mu);
      return E_NOMEM;
    }
    p->ck = q;
    p->ckcap = cap;
  }
  p->ck[p->nck++] = (ckpt_t){*s, p->st.ctrl.len, p->st.dlen, p->st.elen};
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return OK;
}

/*
 * Did the scan of `me`, now in state s, reach a state a later part recorded? Waits
 * while that part has not got as far yet. `*tgt`/`*ti` remember where to look next;
 * *tgt becomes NULL when no later part can be met any more.
 */
static int try_join(part_t *me, const state_t *s, part_t **tgt, size_t *ti) {
  part_t *t = *tgt;
  if (!t || s->scan < t->start) return 0;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (*ti < t->nck && t->ck[*ti].s.scan < s->scan) (*ti)++;
    if (*ti < t->nck) {
      int hit = same_state(&t->ck[*ti].s, s);
      pthread_mutex_unlock(&t->mu);
      if (hit) {
        me->join = t;
        me->join_at = *ti;
      }
      *tgt = t;
      return hit;
    }
    if (!t->finished) {
      if (atomic_load(&me->ctx->stop)) break;
      pthread_cond_wait(&t->cv, &t->mu);
      continue;
    }
    /* t is done and never got this far itself: it went on as a later part; look there */
    part_t *n = t->join;
    pthread_mutex_unlock(&t->mu);
    t = n;
    *ti = 0;
    if (!t) break;
    pthread_mutex_lock(&t->mu);
  }
  if (t) pthread_mutex_unlock(&t->mu);
  *tgt = NULL;
  return 0;
}

static int scan_part(part_t *me) {
  scan_ctx_t *c = me->ctx;
  const uint8_t *old = c->old, *nw = c->nw;
  const int64_t olen = c->olen, nlen = c->nlen, gain = c->gain;
  streams_t *st = &me->st;
  part_t *tgt = me->next;
  size_t ti = 0;
  /* signed arithmetic throughout: positions < 2^31 */
  int64_t scan = me->start, len = 0, pos = 0;
  int64_t lastscan = me->start, lastpos = me->start < olen ? me->start : olen, lastoffset = lastpos - lastscan;
  unsigned tick = 0;

  while (scan < nlen) {
    int64_t oldscore = 0;
    int64_t scsc;
    scan += len;
    for (scsc = scan; scan < nlen; scan++) {
      if ((++tick & 1023) == 0) {
        if (c->deadline > 0 && now_ms() > c->deadline) return E_DEADLINE;
        if (atomic_load(&c->stop)) return E_STOPPED;
      }
      size_t w = 0;
      st->searches++;
      len = c->hx ? (int64_t)hash_match(old, (size_t)olen, c->hx, nw + scan, (size_t)(nlen - scan), scan + lastoffset, &w)
                  : (int64_t)longest_match(old, (size_t)olen, c->sa, c->bk, nw + scan, (size_t)(nlen - scan), &w);
      pos = (int64_t)w;
      /* bytes of [scsc, scan+len) that the current alignment already gets right (a word at a time;
         this and the two extensions below give the byte loops' results: same patches) */
      if (scsc < scan + len) {
        oldscore += count_equal(old, olen, nw, scsc, scan + len, lastoffset);
        scsc = scan + len;
      }
      if ((len == oldscore && len != 0) || len > oldscore + gain) break;
      int64_t o = scan + lastoffset;
      if (o >= 0 && o < olen && old[o] == nw[scan]) oldscore--;
    }

    if (len != oldscore || scan == nlen) {
      /* how far to extend the previous match forwards (at least half the bytes equal) */
      int64_t lenf = 0;
      {
        /* byte by byte: after each byte, the length with the best score (2 x equal - length) so far.
           Along a run of equal bytes the score only grows, so a run is taken at once and its end
           decides: the same lenf as the byte loop */
        int64_t s = 0, best = 0, lim = scan - lastscan;
        if (olen - lastpos < lim) lim = olen - lastpos;
        for (int64_t i = 0; i < lim;) {
          int64_t l = (int64_t)common_prefix(old + lastpos + i, (size_t)(lim - i), nw + lastscan + i, (size_t)(lim - i));
          if (l > 0) {
            s += l;
            i += l;
            if (s * 2 - i > best * 2 - lenf) {
              best = s;
              lenf = i;
            }
            if (i >= lim) break;
          }
          i++; /* a byte that differs */
          if (s * 2 - i > best * 2 - lenf) {
            best = s;
            lenf = i;
          }
        }
      }
      /* and the new match backwards */
      int64_t lenb = 0;
      if (scan < nlen) {
        /* the same, backwards from the new match (i: bytes before it) */
        int64_t s = 0, best = 0, lim = scan - lastscan;
        if (pos < lim) lim = pos;
        /* the hash matcher may settle for a short match where a longer one exists (periodic data:
           the newest positions of a key are near the base's end), and the backward extension then
           reaches back to the previous match every time: quadratic ("abab..." with one byte
           inserted: 0.4 s at 512 KiB, past any deadline at 8 MiB). It looks back HBACK bytes at most. */
        if (c->hx && lim > HBACK) lim = HBACK;
        for (int64_t i = 1; i <= lim;) {
          int64_t l = (int64_t)common_suffix(old + pos - i + 1, nw + scan - i + 1, (size_t)(lim - i + 1));
          if (l > 0) {
            s += l;
            i += l;
            if (s * 2 - (i - 1) > best * 2 - lenb) {
              best = s;
              lenb = i - 1;
            }
            if (i > lim) break;
          }
          if (s * 2 - i > best * 2 - lenb) { /* byte i differs */
            best = s;
            lenb = i;
          }
          i++;
        }
      }
      /* they overlap: split where the forward one stops paying */
      if (lastscan + lenf > scan - lenb) {
        int64_t overlap = (lastscan + lenf) - (scan - lenb);
        int64_t s = 0, best = 0, cut = 0;
        for (int64_t i = 0; i < overlap; i++) {
          if (nw[lastscan + lenf - overlap + i] == old[lastpos + lenf - overlap + i]) s++;
          if (nw[scan - lenb + i] == old[pos - lenb + i]) s--;
          if (s > best) {
            best = s;
            cut = i + 1;
          }
        }
        lenf += cut - overlap;
        lenb -= cut;
      }
      for (int64_t i = 0; i < lenf; i++) st->diff[st->dlen++] = (uint8_t)(nw[lastscan + i] - old[lastpos + i]);
      int64_t ext = (scan - lenb) - (lastscan + lenf);
      if (ext > 0) {
        memcpy(st->extra + st->elen, nw + lastscan + lenf, (size_t)ext);
        st->elen += (size_t)ext;
      }
      int r = emit(st, lenf, ext, (pos - lenb) - (lastpos + lenf));
      if (r) return r;
      lastscan = scan - lenb;
      lastpos = pos - lenb;
      lastoffset = pos - scan;
      state_t s = {scan, len, pos, lastscan, lastpos, lastoffset};
      if (me->record && (r = record(me, &s))) return r;
      if (try_join(me, &s, &tgt, &ti)) return OK;
    }
  }
  return OK;
}

static void part_done(part_t *p, int rc) {
  p->rc = rc;
  if (rc != OK) atomic_store(&p->ctx->stop, 1);
  pthread_mutex_lock(&p->mu);
  p->finished = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static void *part_main(void *arg) {
  part_t *p = arg;
  part_done(p, scan_part(p));
  return NULL;
}

static int append(streams_t *dst, const streams_t *src, const ckpt_t *from) {
  size_t nc = src->ctrl.len - from->ctrl, nd = src->dlen - from->dlen, ne = src->elen - from->elen;
  if (bytes_reserve(&dst->ctrl, nc)) return E_NOMEM;
  memcpy(dst->ctrl.p + dst->ctrl.len, src->ctrl.p + from->ctrl, nc);
  dst->ctrl.len += nc;
  memcpy(dst->diff + dst->dlen, src->diff + from->dlen, nd);
  dst->dlen += nd;
  memcpy(dst->extra + dst->elen, src->extra + from->elen, ne);
  dst->elen += ne;
  return OK;
}

/* Parts shorter than this are not worth a thread. */
#define MIN_PART ((int64_t)256 * 1024)
#define MAX_PARTS 16

/*
 * The whole scan into `out` (diff and extra of newlen bytes each), in up to
 * `threads` parts scanned at the same time. Same output for any thread count.
 */
static int scan_all(scan_ctx_t *c, int threads, streams_t *out) {
  int n = threads < 1 ? 1 : threads > MAX_PARTS ? MAX_PARTS : threads;
  while (n > 1 && c->nlen / n < MIN_PART) n--;
  part_t parts[MAX_PARTS];
  memset(parts, 0, sizeof parts);
  int rc = OK;
  for (int i = 0; i < n; i++) {
    part_t *p = &parts[i];
    p->ctx = c;
    p->start = c->nlen * i / n;
    p->next = i + 1 < n ? &parts[i + 1] : NULL;
    p->record = i > 0;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (i == 0) {
      p->st.diff = out->diff;
      p->st.extra = out->extra;
    } else {
      size_t cap = (size_t)(c->nlen - p->start);
      p->st.diff = malloc(cap ? cap : 1);
      p->st.extra = malloc(cap ? cap : 1);
      if (!p->st.diff || !p->st.extra) rc = E_NOMEM;
    }
  }
  /* later parts first, each on its own thread; part 0 on this one */
  for (int i = 1; i < n && rc == OK; i++) {
    if (pthread_create(&parts[i].tid, NULL, part_main, &parts[i]) == 0) parts[i].started = 1;
    else part_done(&parts[i], OK); /* no thread: the part before scans on through (finished, no checkpoints) */
  }
  if (rc != OK) atomic_store(&c->stop, 1);
  else part_done(&parts[0], scan_part(&parts[0]));
  for (int i = 1; i < n; i++)
    if (parts[i].started) pthread_join(parts[i].tid, NULL);
  for (int i = 0; i < n && rc == OK; i++)
    if (parts[i].rc != OK && parts[i].rc != E_STOPPED) rc = parts[i].rc;
  if (rc == OK && parts[0].rc != OK) rc = E_DEADLINE; /* stopped without a reason of its own: cannot happen */
  /* part 0's output, then each joined part's from the checkpoint where the one before met it */
  *out = parts[0].st;
  for (int i = 1; i < n; i++) out->searches += parts[i].st.searches;
  for (part_t *p = &parts[0]; rc == OK && p->join; p = p->join) rc = append(out, &p->join->st, &p->join->ck[p->join_at]);
  if (rc != OK) {
    free(out->ctrl.p);
    out->ctrl.p = NULL;
  }
  for (int i = 0; i < n; i++) {
    if (i > 0) {
      free(parts[i].st.diff);
      free(parts[i].st.extra);
      free(parts[i].st.ctrl.p);
    }
    free(parts[i].ck);
    pthread_mutex_destroy(&parts[i].mu);
    pthread_cond_destroy(&parts[i].cv);
  }
  return rc;
}

/* ------------------------------------------------------------------ */
/* Node-API glue                                                        */
/* ------------------------------------------------------------------ */

static napi_value throw_code(napi_env env, const char *code, const char *msg) {
  napi_throw_error(env, code, msg);
  return NULL;
}

/* the data and element count of a typed array of `want` type; -1 for anything else */
static int get_typed(napi_env env, napi_value v, napi_typedarray_type want, const void **p, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return -1;
  napi_typedarray_type type;
  size_t n, off;
  void *data;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &n, &data, &ab, &off) != napi_ok) return -1;
  if (type != want) return -1;
  *p = n ? (const void *)data : (const void *)"";
  *len = n;
  return 0;
}

static int get_bytes(napi_env env, napi_value v, const uint8_t **p, size_t *len) {
  return get_typed(env, v, napi_uint8_array, (const void **)p, len);
}

static int get_f64(napi_env env, napi_value v, const double **p, size_t *len) {
  return get_typed(env, v, napi_float64_array, (const void **)p, len);
}

static int get_number_prop(napi_env env, napi_value obj, const char *name, double *out) {
  bool has;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) return 0;
  napi_value v;
  napi_valuetype t;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) return -1;
  if (napi_typeof(env, v, &t) != napi_ok) return -1;
  if (t == napi_undefined) return 0;
  if (t != napi_number) return -1;
  if (napi_get_value_double(env, v, out) != napi_ok) return -1;
  return 1;
}

static napi_value make_buffer(napi_env env, const uint8_t *p, size_t n) {
  napi_value out;
  void *dst;
  if (napi_create_buffer_copy(env, n, n ? (const void *)p : (const void *)"", &dst, &out) != napi_ok) return NULL;
  return out;
}

/* timings for benchmarks: { sortMs, scanMs, searches } */
static napi_status set_stats(napi_env env, napi_value result, double sort_ms, double scan_ms, double searches) {
  napi_value o, a, b, c;
  napi_status s;
  if ((s = napi_create_object(env, &o)) != napi_ok) return s;
  if ((s = napi_create_double(env, sort_ms, &a)) != napi_ok) return s;
  if ((s = napi_create_double(env, scan_ms, &b)) != napi_ok) return s;
  if ((s = napi_create_double(env, searches, &c)) != napi_ok) return s;
  if ((s = napi_set_named_property(env, o, "sortMs", a)) != napi_ok) return s;
  if ((s = napi_set_named_property(env, o, "scanMs", b)) != napi_ok) return s;
  if ((s = napi_set_named_property(env, o, "searches", c)) != napi_ok) return s;
  return napi_set_named_property(env, result, "stats", o);
}

static napi_value js_diff(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2) return throw_code(env, "EINVAL", "bsdiff-sa: diff(old, new[, opts]) needs two Uint8Arrays");
  const uint8_t *old, *nw;
  size_t oldlen, newlen;
  if (get_bytes(env, argv[0], &old, &oldlen) || get_bytes(env, argv[1], &nw, &newlen)) {
    return throw_code(env, "EINVAL", "bsdiff-sa: old and new must be Uint8Arrays (Buffers)");
  }
  if (oldlen > MAX_INPUT || newlen > MAX_INPUT) return throw_code(env, "E2BIG", "bsdiff-sa: inputs must be smaller than 2 GiB");

  double deadline_ms = 0, gain = 8, threads = 1, matcher = 0;
  if (argc >= 3) {
    napi_valuetype t;
    if (napi_typeof(env, argv[2], &t) != napi_ok) return NULL;
    if (t == napi_object) {
      if (get_number_prop(env, argv[2], "deadlineMs", &deadline_ms) < 0 || !(deadline_ms >= 0 && deadline_ms < 1e12)) {
        return throw_code(env, "EINVAL", "bsdiff-sa: deadlineMs must be a number >= 0");
      }
      if (get_number_prop(env, argv[2], "minGain", &gain) < 0 || !(gain >= 1 && gain <= 1024)) {
        return throw_code(env, "EINVAL", "bsdiff-sa: minGain must be a number in [1, 1024]");
      }
      if (get_number_prop(env, argv[2], "threads", &threads) < 0 || !(threads >= 1 && threads <= 64)) {
        return throw_code(env, "EINVAL", "bsdiff-sa: threads must be a number in [1, 64]");
      }
      if (get_number_prop(env, argv[2], "matcher", &matcher) < 0 || !(matcher == 0 || matcher == 1)) {
        return throw_code(env, "EINVAL", "bsdiff-sa: matcher must be 0 (suffix array) or 1 (hash chains)");
      }
    } else if (t != napi_undefined) {
      return throw_code(env, "EINVAL", "bsdiff-sa: options must be an object");
    }
  }
  double deadline = deadline_ms > 0 ? now_ms() + deadline_ms : 0;

  streams_t st;
  memset(&st, 0, sizeof st);
  saidx_t *sa = NULL;
  hidx_t hx = {NULL, NULL, 0};
  int rc = OK;
  if (matcher == 0) sa = malloc((oldlen ? oldlen : 1) * sizeof(saidx_t));
  st.diff = malloc(newlen ? newlen : 1);
  st.extra = malloc(newlen ? newlen : 1);
  if ((matcher == 0 && !sa) || !st.diff || !st.extra) rc = E_NOMEM;
  double t0 = now_ms();
  if (rc == OK && matcher == 1 && hidx_build(&hx, old, oldlen) != 0) rc = E_NOMEM;
  if (rc == OK && matcher == 0 && oldlen > 0 && divsufsort(old, sa, (saidx_t)oldlen) != 0) rc = E_NOMEM;
  double t1 = now_ms();
  if (rc == OK && deadline > 0 && now_ms() > deadline) rc = E_DEADLINE;
  /* 2-byte buckets pay off only when the array is much larger than the table */
  buckets_t *bk = NULL;
  if (rc == OK && matcher == 0 && oldlen >= (1u << 20)) {
    bk = malloc(sizeof *bk);
    if (!bk) rc = E_NOMEM;
    else fill_buckets(bk, old, oldlen, sa);
  }
  if (rc == OK) {
    scan_ctx_t ctx = {old, nw, (int64_t)oldlen, (int64_t)newlen, sa, bk, matcher == 1 ? &hx : NULL, (int64_t)gain, deadline, 0};
    rc = scan_all(&ctx, (int)threads, &st);
  }
  free(bk);
  double t2 = now_ms();
  free(sa);
  free(hx.head);
  free(hx.chain);

  napi_value result = NULL;
  if (rc == OK) {
    napi_value c = make_buffer(env, st.ctrl.p, st.ctrl.len);
    napi_value d = c ? make_buffer(env, st.diff, st.dlen) : NULL;
    napi_value e = d ? make_buffer(env, st.extra, st.elen) : NULL;
    if (e && napi_create_object(env, &result) == napi_ok) {
      if (napi_set_named_property(env, result, "ctrl", c) != napi_ok || napi_set_named_property(env, result, "diff", d) != napi_ok ||
          napi_set_named_property(env, result, "extra", e) != napi_ok || set_stats(env, result, t1 - t0, t2 - t1, st.searches) != napi_ok) {
        result = NULL;
      }
    } else {
      result = NULL;
    }
    if (!result) {
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (!pending) napi_throw_error(env, "ENOMEM", "bsdiff-sa: could not allocate the result");
    }
  }
  free(st.ctrl.p);
  free(st.diff);
  free(st.extra);
  if (rc == E_NOMEM) return throw_code(env, "ENOMEM", "bsdiff-sa: out of memory");
  if (rc == E_DEADLINE) return throw_code(env, "ETIMEDOUT", "bsdiff-sa: deadline exceeded");
  return result;
}


/* cmEncode(diff, oldUnder) -> Buffer */
static napi_value js_cm_encode(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return throw_code(env, "EINVAL", "cmEncode(diff, oldUnder) needs two Uint8Arrays");
  const uint8_t *diff, *ou;
  size_t n, on;
  if (get_bytes(env, argv[0], &diff, &n) || get_bytes(env, argv[1], &ou, &on)) return throw_code(env, "EINVAL", "cmEncode: arguments must be Uint8Arrays");
  if (n != on) return throw_code(env, "EINVAL", "cmEncode: diff and old bytes differ in length");
  uint8_t *out = NULL;
  size_t len = 0;
  int rc = cm_encode(diff, ou, n, &out, &len);
  if (rc) return throw_code(env, "ENOMEM", "cmEncode: out of memory");
  napi_value buf = make_buffer(env, out, len);
  free(out);
  return buf;
}

/* cmDecode(packed, oldUnder) -> { diff: Buffer, consumed: number } */
static napi_value js_cm_decode(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return throw_code(env, "EINVAL", "cmDecode(packed, oldUnder) needs two Uint8Arrays");
  const uint8_t *packed, *ou;
  size_t plen, n;
  if (get_bytes(env, argv[0], &packed, &plen) || get_bytes(env, argv[1], &ou, &n)) return throw_code(env, "EINVAL", "cmDecode: arguments must be Uint8Arrays");
  void *data;
  napi_value buf;
  if (napi_create_buffer(env, n ? n : 1, &data, &buf) != napi_ok) return throw_code(env, "ENOMEM", "cmDecode: out of memory");
  size_t used = 0;
  int rc = cm_decode(packed, plen, ou, n, (uint8_t *)data, &used);
  if (rc == 1) return throw_code(env, "ECORRUPT", "bsdiff: coded diff stream ends early");
  if (rc) return throw_code(env, "ENOMEM", "cmDecode: out of memory");
  if (n == 0) {
    napi_value empty;
    if (napi_create_buffer(env, 0, &data, &empty) != napi_ok) return NULL;
    buf = empty;
  }
  napi_value result, consumed;
  if (napi_create_object(env, &result) != napi_ok || napi_create_double(env, (double)used, &consumed) != napi_ok) return NULL;
  if (napi_set_named_property(env, result, "diff", buf) != napi_ok || napi_set_named_property(env, result, "consumed", consumed) != napi_ok) return NULL;
  return result;
}

/* optional argument `at`: threads (<= 0 or absent: one per processor, at most 8) */
static int get_threads(napi_env env, size_t argc, napi_value *argv, size_t at) {
  int32_t t = 0;
  if (argc > at) {
    napi_valuetype ty;
    if (napi_typeof(env, argv[at], &ty) == napi_ok && ty == napi_number) napi_get_value_int32(env, argv[at], &t);
  }
  return t;
}

/* cmbEncode(diff, oldUnder[, threads]) -> Buffer (section method 4) */
static napi_value js_cmb_encode(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return throw_code(env, "EINVAL", "cmbEncode(diff, oldUnder) needs two Uint8Arrays");
  const uint8_t *diff, *ou;
  size_t n, on;
  if (get_bytes(env, argv[0], &diff, &n) || get_bytes(env, argv[1], &ou, &on)) return throw_code(env, "EINVAL", "cmbEncode: arguments must be Uint8Arrays");
  if (n != on) return throw_code(env, "EINVAL", "cmbEncode: diff and old bytes differ in length");
  uint8_t *out = NULL;
  size_t len = 0;
  int rc = cmb_encode(diff, ou, n, get_threads(env, argc, argv, 2), &out, &len);
  if (rc) return throw_code(env, "ENOMEM", "cmbEncode: out of memory");
  napi_value buf = make_buffer(env, out, len);
  free(out);
  return buf;
}

/* cmbDecode(packed, oldUnder, literals[, threads]) -> Buffer of oldUnder.length diff bytes; ECORRUPT on damage */
static napi_value js_cmb_decode(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) return throw_code(env, "EINVAL", "cmbDecode(packed, oldUnder, literals) needs three Uint8Arrays");
  const uint8_t *packed, *ou, *lits;
  size_t plen, n, nlits;
  if (get_bytes(env, argv[0], &packed, &plen) || get_bytes(env, argv[1], &ou, &n) || get_bytes(env, argv[2], &lits, &nlits)) return throw_code(env, "EINVAL", "cmbDecode: arguments must be Uint8Arrays");
  void *data;
  napi_value buf;
  if (napi_create_buffer(env, n ? n : 1, &data, &buf) != napi_ok) return throw_code(env, "ENOMEM", "cmbDecode: out of memory");
  int rc = cmb_decode(packed, plen, ou, n, lits, nlits, (uint8_t *)data, get_threads(env, argc, argv, 3));
  if (rc == 1) return throw_code(env, "ECORRUPT", "bsdiff: damaged coded diff stream (method 4)");
  if (rc) return throw_code(env, "ENOMEM", "cmbDecode: out of memory");
  if (n == 0 && napi_create_buffer(env, 0, &data, &buf) != napi_ok) return NULL;
  return buf;
}

/* o[k] += b[k] (mod 256) for k < n, eight bytes at a time (SWAR: the low seven bits of
 * each byte add without carrying into the next byte; the top bits are xor-ed in) */
static void add_bytes(uint8_t *o, const uint8_t *b, size_t n) {
  const uint64_t lo7 = 0x7f7f7f7f7f7f7f7fULL, hi1 = 0x8080808080808080ULL;
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    uint64_t a, c;
    memcpy(&a, o + k, 8);
    memcpy(&c, b + k, 8);
    uint64_t r = ((a & lo7) + (c & lo7)) ^ ((a ^ c) & hi1);
    memcpy(o + k, &r, 8);
  }
  for (; k < n; k++) o[k] = (uint8_t)(o[k] + b[k]);
}

/*
 * bsApply(diff, extra, xs, ys, zs, base, size) -> Buffer of `size` bytes: bspatch's loop
 * (for each triple: x bytes of diff plus the base bytes under them, base bytes outside
 * the base counting as zero; then y bytes of extra; then seek the base by z). The caller
 * has checked that the x add up to diff's length, the y to extra's, and x + y to size;
 * they are checked again here (ECORRUPT), as is every seek (|position| < 2^52).
 */
static napi_value js_bs_apply(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 7) return throw_code(env, "EINVAL", "bsApply(diff, extra, xs, ys, zs, base, size) needs seven arguments");
  const uint8_t *diff, *extra, *base;
  const double *xs, *ys, *zs;
  size_t nd, ne, nb, nx, ny, nz;
  if (get_bytes(env, argv[0], &diff, &nd) || get_bytes(env, argv[1], &extra, &ne) || get_bytes(env, argv[5], &base, &nb)) return throw_code(env, "EINVAL", "bsApply: diff, extra and base must be Uint8Arrays");
  if (get_f64(env, argv[2], &xs, &nx) || get_f64(env, argv[3], &ys, &ny) || get_f64(env, argv[4], &zs, &nz) || nx != ny || nx != nz) return throw_code(env, "EINVAL", "bsApply: xs, ys and zs must be Float64Arrays of one length");
  double sized;
  if (napi_get_value_double(env, argv[6], &sized) != napi_ok || !(sized >= 0) || sized > 281474976710655.0 || sized != (double)(size_t)sized) return throw_code(env, "EINVAL", "bsApply: size must be a non-negative integer");
  size_t size = (size_t)sized;
  void *data;
  napi_value buf;
  if (napi_create_buffer(env, size ? size : 1, &data, &buf) != napi_ok) return throw_code(env, "ENOMEM", "bsApply: out of memory");
  uint8_t *out = data;
  size_t np = 0, dp = 0, ep = 0;
  int64_t op = 0;
  const int64_t lim = (int64_t)1 << 52, blen = (int64_t)nb;
  for (size_t t = 0; t < nx; t++) {
    double xd = xs[t], yd = ys[t], zd = zs[t];
    if (!(xd >= 0 && yd >= 0) || xd > (double)lim || yd > (double)lim || !(zd > -4.6e18 && zd < 4.6e18)) return throw_code(env, "ECORRUPT", "bsdiff: control triple out of range");
    size_t x = (size_t)xd, y = (size_t)yd;
    if (x > nd - dp || x > size - np) return throw_code(env, "ECORRUPT", "bsdiff: add section outside the diff stream");
    memcpy(out + np, diff + dp, x);
    /* [lo, hi): where the base has bytes under this add section */
    int64_t lo = op < 0 ? (-op < (int64_t)x ? -op : (int64_t)x) : 0;
    int64_t hi = blen - op < (int64_t)x ? blen - op : (int64_t)x;
    if (hi > lo) add_bytes(out + np + lo, base + op + lo, (size_t)(hi - lo));
    np += x; dp += x; op += (int64_t)x;
    if (y > ne - ep || y > size - np) return throw_code(env, "ECORRUPT", "bsdiff: copy section outside the extra stream");
    memcpy(out + np, extra + ep, y);
    np += y; ep += y;
    op += (int64_t)zd;
    if (op > lim || op < -lim) return throw_code(env, "ECORRUPT", "bsdiff: seek out of range");
  }
  if (np != size || dp != nd || ep != ne) return throw_code(env, "ECORRUPT", "bsdiff: control stream does not cover the output");
  if (size == 0 && napi_create_buffer(env, 0, &data, &buf) != napi_ok) return NULL;
  return buf;
}

/*
 * bcExpand(file) -> Buffer | null, bcRebuild(form, maxBytes) -> Buffer | null: LLVM bitcode's
 * expanded form (bitcode.c); null when the TypeScript walk must decide.
 */
static napi_value js_bc_result(napi_env env, int rc, uint8_t *p, size_t n) {
  napi_value out;
  if (rc != 0) {
    free(p);
    if (napi_get_null(env, &out) != napi_ok) return NULL;
    return out;
  }
  out = make_buffer(env, p, n);
  free(p);
  if (!out) return throw_code(env, "ENOMEM", "llvm bitcode: out of memory");
  return out;
}

static napi_value js_bc_expand(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  const uint8_t *b;
  size_t n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || get_bytes(env, argv[0], &b, &n)) return throw_code(env, "EINVAL", "bcExpand(file) needs a Uint8Array");
  uint8_t *out;
  size_t outn;
  int rc = bc_expand(b, n, &out, &outn);
  return js_bc_result(env, rc, out, outn);
}

static napi_value js_bc_rebuild(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  const uint8_t *f;
  size_t n;
  double maxd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || get_bytes(env, argv[0], &f, &n) || napi_get_value_double(env, argv[1], &maxd) != napi_ok)
    return throw_code(env, "EINVAL", "bcRebuild(form, maxBytes) needs a Uint8Array and a number");
  uint8_t *out = NULL;
  /* a size this walk does not take (over 4 GiB, not an integer): the TypeScript walk's to decide */
  if (!(maxd >= 0) || maxd > 4294967296.0 || maxd != (double)(size_t)maxd) return js_bc_result(env, 1, out, 0);
  size_t outn;
  int rc = bc_rebuild(f, n, (size_t)maxd, &out, &outn);
  return js_bc_result(env, rc, out, outn);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn, ver;
  if (napi_create_function(env, "diff", NAPI_AUTO_LENGTH, js_diff, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "diff", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "cmEncode", NAPI_AUTO_LENGTH, js_cm_encode, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "cmEncode", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "cmDecode", NAPI_AUTO_LENGTH, js_cm_decode, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "cmDecode", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "cmbEncode", NAPI_AUTO_LENGTH, js_cmb_encode, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "cmbEncode", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "cmbDecode", NAPI_AUTO_LENGTH, js_cmb_decode, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "cmbDecode", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "bsApply", NAPI_AUTO_LENGTH, js_bs_apply, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "bsApply", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "bcExpand", NAPI_AUTO_LENGTH, js_bc_expand, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "bcExpand", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "bcRebuild", NAPI_AUTO_LENGTH, js_bc_rebuild, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "bcRebuild", fn) != napi_ok) return NULL;
  char v[96];
  snprintf(v, sizeof v, "bsdiff-sa 0.1.0, libdivsufsort %s", divsufsort_version());
  if (napi_create_string_utf8(env, v, NAPI_AUTO_LENGTH, &ver) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "version", ver) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE_INIT() { return init(env, exports); }
