/*
 * kpflate: the deflate encoder of klauspost/compress's flate package
 * (version 1.15.12, the one Debian 12 packages), at every level (-2 to 9;
 * 5 is its default: levels 1-6 are its fast matchers, 7-9 its lazy one), and
 * pgzip's block scheme on top of it (see kpflate.h).
 *
 * Written from the encoder's behaviour, as goflate.c: klauspost's encoder
 * differs from Go's in every part that shows in the output: one fast
 * matcher per level over a 64 KiB window with history (levels 1-6), dynamic blocks that
 * span several windows while their Huffman tables can be reused (chosen by
 * an entropy estimate in float32), literal-only blocks with their own reuse
 * rule, and an empty fixed block to end the stream.
 */
#include "kpflate.h"
#include "dfutil.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#define MAX_STORE_BLOCK_SIZE 65535
#define MAX_MATCH_OFFSET (1 << 15)
#define MAX_MATCH_LENGTH 258
#define BASE_MATCH_LENGTH 3
#define BASE_MATCH_OFFSET 1
#define LITERAL_COUNT 286
#define OFFSET_CODE_COUNT 30
#define END_BLOCK_MARKER 256
#define LENGTH_CODES_START 257
#define CODEGEN_CODE_COUNT 19
#define BAD_CODE 255
#define MAX_PREDEFINED_TOKENS 250
#define LENGTH_SHIFT 22
#define OFFSET_MASK ((1u << LENGTH_SHIFT) - 1)
#define MATCH_TYPE (1u << 30)
#define MATCH_OFFSET_ONLY_MASK 0xffffu

#define TABLE_BITS 15
#define TABLE_SIZE (1 << TABLE_BITS)
#define ALLOC_HISTORY (MAX_STORE_BLOCK_SIZE * 5)
#define BUFFER_RESET ((int32_t)((1u << 31) - ALLOC_HISTORY - MAX_STORE_BLOCK_SIZE - 1))
#define PRIME4BYTES 2654435761u
#define PRIME7BYTES 58295818150454627ull
#define TAIL_SIZE 16384

static uint8_t LENGTH_CODES[256];
static uint8_t OFFSET_CODES[256];
static const uint8_t LENGTH_EXTRA_BITS[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint8_t LENGTH_BASE[32] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 255};
static const int8_t OFFSET_EXTRA_BITS[32] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14};
static const uint32_t OFFSET_BASE[32] = {0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x0006, 0x0008, 0x000c, 0x0010, 0x0018, 0x0020,
                                         0x0030, 0x0040, 0x0060, 0x0080, 0x00c0, 0x0100, 0x0180, 0x0200, 0x0300, 0x0400, 0x0600,
                                         0x0800, 0x0c00, 0x1000, 0x1800, 0x2000, 0x3000, 0x4000, 0x6000, 0x8000, 0xc000};
static const uint32_t CODEGEN_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

/* A code: its length in the low 8 bits, the (bit-reversed) code above. */
typedef uint32_t hcode;
#define HLEN(h) ((uint8_t)(h))
#define HCODE64(h) ((uint64_t)((h) >> 8))

static hcode FIXED_LIT[512];
static hcode FIXED_OFF[32];
static hcode HUFF_OFFSET[32];
static int ready;

static uint16_t reverse_bits(uint16_t number, unsigned bit_length) {
  uint16_t v = (uint16_t)(number << ((16 - bit_length) & 15)), r = 0;
  for (int i = 0; i < 16; i++) r = (uint16_t)((r << 1) | ((v >> i) & 1));
  return r;
}

static hcode newhcode(uint16_t code, uint8_t len) { return (hcode)len | ((hcode)code << 8); }

static void init_tables(void) {
  if (ready) return;
  int code = 0;
  for (int c = 0; c < 28; c++) {
    int n = 1 << LENGTH_EXTRA_BITS[c];
    for (int i = 0; i < n && code < 256; i++) LENGTH_CODES[code++] = (uint8_t)c;
  }
  LENGTH_CODES[255] = 28;
  for (int c = 0; c < 16; c++)
    for (uint32_t o = OFFSET_BASE[c]; o < OFFSET_BASE[c + 1] && o < 256; o++) OFFSET_CODES[o] = (uint8_t)c;
  for (int ch = 0; ch < LITERAL_COUNT; ch++) {
    uint16_t bits;
    uint8_t size;
    if (ch < 144) {
      bits = (uint16_t)(ch + 48);
      size = 8;
    } else if (ch < 256) {
      bits = (uint16_t)(ch + 400 - 144);
      size = 9;
    } else if (ch < 280) {
      bits = (uint16_t)(ch - 256);
      size = 7;
    } else {
      bits = (uint16_t)(ch + 192 - 280);
      size = 8;
    }
    FIXED_LIT[ch] = newhcode(reverse_bits(bits, size), size);
  }
  for (int ch = 0; ch < OFFSET_CODE_COUNT; ch++) FIXED_OFF[ch] = newhcode(reverse_bits((uint16_t)ch, 5), 5);
  HUFF_OFFSET[0] = newhcode(0, 1);
  ready = 1;
}

static uint32_t offset_code(uint32_t off) {
  if (off < 256) return OFFSET_CODES[off];
  return OFFSET_CODES[(uint8_t)(off >> 7)] + 14u;
}

/* ------------------------------------------------------------------------ */
/* Huffman codes                                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
  uint16_t literal;
  int32_t freq;
} lnode;

static int by_freq(const void *a, const void *b) {
  const lnode *x = a, *y = b;
  if (x->freq != y->freq) return x->freq < y->freq ? -1 : 1;
  return (int)x->literal - (int)y->literal;
}

static int by_literal(const void *a, const void *b) { return (int)((const lnode *)a)->literal - (int)((const lnode *)b)->literal; }

typedef struct {
  int32_t level, last_freq, next_char_freq, next_pair_freq, needed;
} level_info;

static void bit_counts(lnode *list, int32_t n, int32_t max_bits, int32_t *bit_count) {
  list[n].literal = UINT16_MAX;
  list[n].freq = INT32_MAX;
  if (max_bits > n - 1) max_bits = n - 1;
  level_info levels[17];
  int32_t leaf[17][17];
  memset(levels, 0, sizeof(levels));
  memset(leaf, 0, sizeof(leaf));
  for (int32_t level = 1; level <= max_bits; level++) {
    levels[level].level = level;
    levels[level].last_freq = list[1].freq;
    levels[level].next_char_freq = list[2].freq;
    levels[level].next_pair_freq = list[0].freq + list[1].freq;
    leaf[level][level] = 2;
    if (level == 1) levels[level].next_pair_freq = INT32_MAX;
  }
  levels[max_bits].needed = 2 * n - 4;
  int32_t level = max_bits;
  while (level < 16) {
    level_info *l = &levels[level];
    if (l->next_pair_freq == INT32_MAX && l->next_char_freq == INT32_MAX) {
      l->needed = 0;
      levels[level + 1].next_pair_freq = INT32_MAX;
      level++;
      continue;
    }
    int32_t prev_freq = l->last_freq;
    if (l->next_char_freq < l->next_pair_freq) {
      int32_t nn = leaf[level][level] + 1;
      l->last_freq = l->next_char_freq;
      leaf[level][level] = nn;
      l->next_char_freq = list[nn].literal < UINT16_MAX ? list[nn].freq : INT32_MAX;
    } else {
      l->last_freq = l->next_pair_freq;
      int32_t save = leaf[level][level];
      memcpy(leaf[level], leaf[level - 1], sizeof(leaf[level]));
      leaf[level][level] = save;
      levels[l->level - 1].needed = 2;
    }
    if (--l->needed == 0) {
      if (l->level == max_bits) break;
      levels[l->level + 1].next_pair_freq = prev_freq + l->last_freq;
      level++;
    } else {
      while (levels[level - 1].needed > 0) level--;
    }
  }
  int bits = 1;
  for (int32_t lv = max_bits; lv > 0; lv--) bit_count[bits++] = leaf[max_bits][lv] - leaf[max_bits][lv - 1];
  for (; bits < 17; bits++) bit_count[bits] = 0;
  bit_count[0] = 0;
}

/* klauspost's huffmanEncoder.generate over freq[0..n). */
static void generate(hcode *codes, const uint16_t *freq, int n, int32_t max_bits) {
  lnode list[LITERAL_COUNT + 2];
  int count = 0;
  for (int i = 0; i < n; i++) {
    if (freq[i] != 0) {
      list[count].literal = (uint16_t)i;
      list[count].freq = freq[i];
      count++;
    } else {
      codes[i] = 0;
    }
  }
  if (count <= 2) {
    for (int i = 0; i < count; i++) codes[list[i].literal] = newhcode((uint16_t)i, 1);
    return;
  }
  qsort(list, (size_t)count, sizeof(lnode), by_freq);
  int32_t bit_count[17];
  bit_counts(list, count, max_bits, bit_count);
  uint16_t code = 0;
  int len = count;
  for (int nb = 0; nb < 17; nb++) {
    code = (uint16_t)(code << 1);
    int32_t bits = bit_count[nb];
    if (nb == 0 || bits == 0) continue;
    lnode *chunk = list + len - bits;
    qsort(chunk, (size_t)bits, sizeof(lnode), by_literal);
    for (int32_t i = 0; i < bits; i++) {
      codes[chunk[i].literal] = newhcode(reverse_bits(code, (unsigned)nb), (uint8_t)nb);
      code++;
    }
    len -= bits;
  }
}

static long bit_length(const hcode *codes, const uint16_t *freq, int n) {
  long total = 0;
  for (int i = 0; i < n; i++)
    if (freq[i] != 0) total += (long)freq[i] * HLEN(codes[i]);
  return total;
}

static long can_reuse_bits(const hcode *codes, const uint16_t *freq, int n) {
  long total = 0;
  for (int i = 0; i < n; i++) {
    if (freq[i] != 0) {
      if (codes[i] == 0) return INT32_MAX;
      total += (long)freq[i] * HLEN(codes[i]);
    }
  }
  return total;
}

/* ------------------------------------------------------------------------ */
/* Tokens                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct {
  uint16_t extra_hist[32]; /* codes 256.. */
  uint16_t off_hist[32];
  uint16_t lit_hist[256];
  int n_filled;
  uint16_t n;
  uint32_t tokens[MAX_STORE_BLOCK_SIZE + 1];
} tokens_t;

static void tokens_reset(tokens_t *t) {
  if (t->n == 0) return;
  t->n = 0;
  t->n_filled = 0;
  memset(t->lit_hist, 0, sizeof(t->lit_hist));
  memset(t->extra_hist, 0, sizeof(t->extra_hist));
  memset(t->off_hist, 0, sizeof(t->off_hist));
}

static void add_literal(tokens_t *t, uint8_t lit) {
  t->tokens[t->n] = lit;
  t->lit_hist[lit]++;
  t->n++;
}

static void add_match_long(tokens_t *t, int32_t xlength, uint32_t xoffset) {
  uint32_t oc = offset_code(xoffset);
  xoffset |= oc << 16;
  while (xlength > 0) {
    int32_t xl = xlength;
    if (xl > 258) xl = xl > 258 + BASE_MATCH_LENGTH ? 258 : 258 - BASE_MATCH_LENGTH;
    xlength -= xl;
    xl -= BASE_MATCH_LENGTH;
    t->extra_hist[LENGTH_CODES[(uint8_t)xl] + 1]++;
    t->off_hist[oc & 31]++;
    t->tokens[t->n] = MATCH_TYPE | (uint32_t)xl << LENGTH_SHIFT | xoffset;
    t->n++;
  }
}

static void add_eob(tokens_t *t) {
  t->tokens[t->n] = END_BLOCK_MARKER;
  t->extra_hist[0]++;
  t->n++;
}

/* klauspost's mFastLog2, in float32 as Go computes it. */
static float fast_log2(float val) {
  union {
    float f;
    int32_t i;
    uint32_t u;
  } c;
  c.f = val;
  int32_t ux = c.i;
  float log2 = (float)(((ux >> 23) & 255) - 128);
  ux &= -0x7f800001;
  ux += 127 << 23;
  c.i = ux;
  float uval = c.f;
  float a = -0.34484843f * uval;
  a = a + 2.02466578f;
  a = a * uval;
  a = a - 0.67487759f;
  log2 += a;
  return log2;
}

static float at_least_one(float v) {
  if (v < 1) return 1;
  if (v > 15) return 15;
  return v;
}

static int estimated_bits(const tokens_t *t) {
  float shannon = 0;
  int bits = 0, n_matches = 0;
  int total = (int)t->n + t->n_filled;
  if (total > 0) {
    float inv_total = 1.0f / (float)total;
    for (int i = 0; i < 256; i++) {
      uint16_t v = t->lit_hist[i];
      if (v > 0) {
        float n = (float)v;
        float x = n * inv_total;
        shannon += at_least_one(-fast_log2(x)) * n;
      }
    }
    shannon += 15;
    for (int i = 0; i < LITERAL_COUNT - 256 - 1; i++) {
      uint16_t v = t->extra_hist[1 + i];
      if (v > 0) {
        float n = (float)v;
        float x = n * inv_total;
        shannon += at_least_one(-fast_log2(x)) * n;
        bits += LENGTH_EXTRA_BITS[i & 31] * (int)v;
        n_matches += v;
      }
    }
  }
  if (n_matches > 0) {
    float inv_total = 1.0f / (float)n_matches;
    for (int i = 0; i < OFFSET_CODE_COUNT; i++) {
      uint16_t v = t->off_hist[i];
      if (v > 0) {
        float n = (float)v;
        float x = n * inv_total;
        shannon += at_least_one(-fast_log2(x)) * n;
        bits += OFFSET_EXTRA_BITS[i & 31] * (int)v;
      }
    }
  }
  return (int)shannon + bits;
}

/* ------------------------------------------------------------------------ */
/* The bit writer (klauspost's huffmanBitWriter)                             */
/* ------------------------------------------------------------------------ */

struct kp {
  int level;
  int oom;
  uint8_t *out;
  size_t out_len, out_cap;
  uint64_t bits;
  unsigned nbits;
  int last_huffman;
  int last_header;
  unsigned log_new_table_penalty;
  hcode enc_a[512], enc_b[512]; /* literal and temporary literal encodings (swapped) */
  hcode *lit_enc, *tmp_lit_enc;
  hcode off_enc[32];
  hcode cg_enc[32];
  uint16_t literal_freq[LENGTH_CODES_START + 32];
  uint16_t offset_freq[32];
  uint16_t codegen_freq[CODEGEN_CODE_COUNT];
  uint8_t codegen[LITERAL_COUNT + OFFSET_CODE_COUNT + 1];

  /* compressor */
  uint8_t window[2 * 32768];
  int window_size; /* 64 KiB - 1; 32 KiB for Huffman only; 64 KiB for the lazy levels */
  int window_end;
  int sync;
  tokens_t tokens;

  /* the fast levels' matcher state (tables sized for the largest level's) */
  uint8_t *hist;
  int32_t hist_len;
  int32_t cur;
  int32_t table[1 << 17];
  int32_t bt_single[TABLE_SIZE];                 /* level 4's long table */
  int32_t btable_cur[1 << 16], btable_prev[1 << 16]; /* levels 5-6's long table; level 3's table */

  /* levels 7-9 (deflateLazy) */
  int good, lazy, nice, chain;
  uint32_t *hash_head, *hash_prev;
  int lz_index, lz_length, lz_offset, lz_max_insert, lz_chain_head, lz_hash_offset;
  int block_start, byte_available;
  uint16_t ii;
  hcode est[256]; /* level 9: code lengths of the bytes ahead, for a match's gain */

  /* pgzip: up to pg_threads blocks are collected (pg_buf, pg_full whole ones, then pg_len bytes of the next) and compressed at once, one worker encoder each */
  int pg_block;
  uint8_t *pg_buf;
  int pg_len;
  int pg_full;
  int pg_threads;
  kp **pg_workers;
  uint8_t pg_tail[TAIL_SIZE];
  int pg_tail_len;
};

static void put_bytes(kp *e, const uint8_t *p, size_t n) {
  if (e->oom) return;
  if (e->out_len + n > e->out_cap) {
    size_t cap = e->out_cap ? e->out_cap : 65536;
    while (cap < e->out_len + n) cap *= 2;
    uint8_t *b = realloc(e->out, cap);
    if (!b) {
      e->oom = 1;
      return;
    }
    e->out = b;
    e->out_cap = cap;
  }
  memcpy(e->out + e->out_len, p, n);
  e->out_len += n;
}

/* Room for `n` more output bytes (0 when out of memory: e->oom is set). */
static int reserve(kp *e, size_t n) {
  if (e->out_cap - e->out_len >= n) return 1;
  if (e->oom) return 0;
  size_t cap = e->out_cap ? e->out_cap : 65536;
  while (cap < e->out_len + n) cap *= 2;
  uint8_t *b = realloc(e->out, cap);
  if (!b) {
    e->oom = 1;
    return 0;
  }
  e->out = b;
  e->out_cap = cap;
  return 1;
}

/* The whole bytes of the bit buffer out (stored as one 8-byte word: bytes past them are overwritten later). */
static void emit_full_bytes(kp *e) {
  unsigned k = e->nbits >> 3; /* at most 7: nbits < 64 */
  if (k == 0) return;
  if (reserve(e, 8)) {
    df_store64le(e->out + e->out_len, e->bits);
    e->out_len += k;
  }
  e->bits >>= 8 * k;
  e->nbits -= 8 * k;
}

static void write_bits(kp *e, uint64_t b, unsigned nb) {
  e->bits |= b << (e->nbits & 63);
  e->nbits += nb;
  if (e->nbits >= 48) emit_full_bytes(e);
}

static void write_code(kp *e, hcode c) { write_bits(e, HCODE64(c), HLEN(c)); }

static void bw_flush(kp *e) {
  if (e->last_header > 0) {
    write_code(e, e->lit_enc[END_BLOCK_MARKER]);
    e->last_header = 0;
  }
  emit_full_bytes(e);
  if (e->nbits) {
    uint8_t b = (uint8_t)e->bits;
    put_bytes(e, &b, 1);
  }
  e->bits = 0;
  e->nbits = 0;
}

static void write_bytes(kp *e, const uint8_t *p, size_t n) {
  emit_full_bytes(e); /* on a byte boundary (after a stored header) */
  put_bytes(e, p, n);
}

static void write_fixed_header(kp *e, int eof) {
  if (e->last_header > 0) {
    write_code(e, e->lit_enc[END_BLOCK_MARKER]);
    e->last_header = 0;
  }
  write_bits(e, eof ? 3 : 2, 3);
}

static void write_stored_header(kp *e, int length, int eof) {
  if (e->last_header > 0) {
    write_code(e, e->lit_enc[END_BLOCK_MARKER]);
    e->last_header = 0;
  }
  if (length == 0 && eof) {
    write_fixed_header(e, eof);
    write_bits(e, 0, 7);
    bw_flush(e);
    return;
  }
  write_bits(e, eof ? 1 : 0, 3);
  bw_flush(e);
  write_bits(e, (uint32_t)length, 16);
  write_bits(e, (uint16_t)~(uint16_t)length, 16);
}

static void generate_codegen(kp *e, int num_literals, int num_offsets, const hcode *lit, const hcode *off) {
  memset(e->codegen_freq, 0, sizeof(e->codegen_freq));
  uint8_t *codegen = e->codegen;
  for (int i = 0; i < num_literals; i++) codegen[i] = HLEN(lit[i]);
  for (int i = 0; i < num_offsets; i++) codegen[num_literals + i] = HLEN(off[i]);
  codegen[num_literals + num_offsets] = BAD_CODE;
  uint8_t size = codegen[0];
  int count = 1, out = 0;
  for (int in = 1; size != BAD_CODE; in++) {
    uint8_t next = codegen[in];
    if (next == size) {
      count++;
      continue;
    }
    if (size != 0) {
      codegen[out++] = size;
      e->codegen_freq[size]++;
      count--;
      while (count >= 3) {
        int n = count < 6 ? count : 6;
        codegen[out++] = 16;
        codegen[out++] = (uint8_t)(n - 3);
        e->codegen_freq[16]++;
        count -= n;
      }
    } else {
      while (count >= 11) {
        int n = count < 138 ? count : 138;
        codegen[out++] = 18;
        codegen[out++] = (uint8_t)(n - 11);
        e->codegen_freq[18]++;
        count -= n;
      }
      if (count >= 3) {
        codegen[out++] = 17;
        codegen[out++] = (uint8_t)(count - 3);
        e->codegen_freq[17]++;
        count = 0;
      }
    }
    count--;
    for (; count >= 0; count--) {
      codegen[out++] = size;
      e->codegen_freq[size]++;
    }
    size = next;
    count = 1;
  }
  codegen[out] = BAD_CODE;
}

static int num_codegens(kp *e) {
  int n = CODEGEN_CODE_COUNT;
  while (n > 4 && e->codegen_freq[CODEGEN_ORDER[n - 1]] == 0) n--;
  return n;
}

static long header_size(kp *e, int *ncg) {
  int n = num_codegens(e);
  if (ncg) *ncg = n;
  return 3 + 5 + 5 + 4 + (3 * n) + bit_length(e->cg_enc, e->codegen_freq, CODEGEN_CODE_COUNT) + (long)e->codegen_freq[16] * 2 +
         (long)e->codegen_freq[17] * 3 + (long)e->codegen_freq[18] * 7;
}

static long dynamic_reuse_size(kp *e) {
  return bit_length(e->lit_enc, e->literal_freq, LENGTH_CODES_START + 32) + bit_length(e->off_enc, e->offset_freq, 32);
}

static long dynamic_size(kp *e, long extra_bits, int *ncg) {
  return header_size(e, ncg) + bit_length(e->lit_enc, e->literal_freq, LENGTH_CODES_START + 32) + bit_length(e->off_enc, e->offset_freq, 32) + extra_bits;
}

static long extra_bit_size(kp *e) {
  long total = 0;
  for (int i = 0; i < LITERAL_COUNT - 257; i++) total += (long)e->literal_freq[257 + i] * LENGTH_EXTRA_BITS[i & 31];
  for (int i = 0; i < OFFSET_CODE_COUNT; i++) total += (long)e->offset_freq[i] * OFFSET_EXTRA_BITS[i & 31];
  return total;
}

static long fixed_size(kp *e, long extra_bits) {
  return 3 + bit_length(FIXED_LIT, e->literal_freq, LENGTH_CODES_START + 32) + bit_length(FIXED_OFF, e->offset_freq, 32) + extra_bits;
}

static int stored_size(const uint8_t *in, int n, long *size) {
  if (!in || n > MAX_STORE_BLOCK_SIZE) return 0;
  *size = (long)(n + 5) * 8;
  return 1;
}

static void write_dynamic_header(kp *e, int num_literals, int num_offsets, int ncg, int eof) {
  write_bits(e, eof ? 5 : 4, 3);
  write_bits(e, (uint32_t)(num_literals - 257), 5);
  write_bits(e, (uint32_t)(num_offsets - 1), 5);
  write_bits(e, (uint32_t)(ncg - 4), 4);
  for (int i = 0; i < ncg; i++) write_bits(e, HLEN(e->cg_enc[CODEGEN_ORDER[i]]), 3);
  for (int i = 0;;) {
    uint32_t cw = e->codegen[i++];
    if (cw == BAD_CODE) break;
    write_code(e, e->cg_enc[cw]);
    if (cw == 16) write_bits(e, e->codegen[i++], 2);
    else if (cw == 17) write_bits(e, e->codegen[i++], 3);
    else if (cw == 18) write_bits(e, e->codegen[i++], 7);
  }
}

static int can_reuse(kp *e, const tokens_t *t) {
  for (int i = 0; i < OFFSET_CODE_COUNT; i++)
    if (t->off_hist[i] != 0 && e->off_enc[i] == 0) return 0;
  for (int i = 0; i < LITERAL_COUNT - 256; i++)
    if (t->extra_hist[i] != 0 && e->lit_enc[256 + i] == 0) return 0;
  for (int i = 0; i < 256; i++)
    if (t->lit_hist[i] != 0 && e->lit_enc[i] == 0) return 0;
  return 1;
}

static void index_tokens(kp *e, const tokens_t *t, int filled, int *num_literals, int *num_offsets) {
  memcpy(e->literal_freq, t->lit_hist, sizeof(t->lit_hist));
  memcpy(e->literal_freq + 256, t->extra_hist, sizeof(t->extra_hist));
  memcpy(e->offset_freq, t->off_hist, sizeof(t->off_hist));
  *num_literals = 0;
  *num_offsets = 0;
  if (t->n == 0) return;
  if (filled) {
    *num_literals = LITERAL_COUNT;
    *num_offsets = OFFSET_CODE_COUNT;
    return;
  }
  int nl = LENGTH_CODES_START + 32;
  while (e->literal_freq[nl - 1] == 0) nl--;
  int no = 32;
  while (no > 0 && e->offset_freq[no - 1] == 0) no--;
  if (no == 0) {
    e->offset_freq[0] = 1;
    no = 1;
  }
  *num_literals = nl;
  *num_offsets = no;
}

static void generate_lit_off(kp *e) {
  generate(e->lit_enc, e->literal_freq, LITERAL_COUNT, 15);
  generate(e->off_enc, e->offset_freq, OFFSET_CODE_COUNT, 15);
}

static void write_tokens(kp *e, const uint32_t *tokens, int n, const hcode *le, const hcode *oe) {
  if (n == 0) return;
  int defer_eob = 0;
  if (tokens[n - 1] == END_BLOCK_MARKER) {
    n--;
    defer_eob = 1;
  }
  /*
   * The same bits as writing each code and extra bits in turn; only when
   * whole bytes leave the bit buffer differs (after every token, from
   * locals), which changes no byte: at most 7 bits stay, so a token (at
   * most 48 bits) always fits.
   */
  if (reserve(e, (size_t)n * 7 + 16)) {
    uint64_t bits = e->bits;
    unsigned nbits = e->nbits;
    uint8_t *out = e->out + e->out_len;
    df_store64le(out, bits);
    out += nbits >> 3;
    bits >>= nbits & ~7u; /* nbits < 48 on entry */
    nbits &= 7;
    for (int i = 0; i < n; i++) {
      uint32_t t = tokens[i];
      if (t < 256) {
        bits |= HCODE64(le[t]) << nbits;
        nbits += HLEN(le[t]);
      } else {
        uint8_t length = (uint8_t)(t >> LENGTH_SHIFT);
        uint8_t lc = LENGTH_CODES[length] & 31;
        hcode c = le[LENGTH_CODES_START + lc];
        bits |= HCODE64(c) << nbits;
        nbits += HLEN(c);
        if (lc >= 8) {
          bits |= (uint64_t)(uint32_t)(length - LENGTH_BASE[lc]) << nbits;
          nbits += LENGTH_EXTRA_BITS[lc];
        }
        uint32_t offset = t & OFFSET_MASK;
        uint32_t oc = (offset >> 16) & 31;
        c = oe[oc];
        bits |= HCODE64(c) << nbits;
        nbits += HLEN(c);
        if (oc >= 4) {
          bits |= (uint64_t)((offset - OFFSET_BASE[oc]) & MATCH_OFFSET_ONLY_MASK) << nbits;
          nbits += (unsigned)OFFSET_EXTRA_BITS[oc];
        }
      }
      df_store64le(out, bits);
      out += nbits >> 3;
      bits >>= nbits & ~7u;
      nbits &= 7;
    }
    e->out_len = (size_t)(out - e->out);
    e->bits = bits;
    e->nbits = nbits;
    if (defer_eob) write_code(e, le[END_BLOCK_MARKER]);
    return;
  }
  for (int i = 0; i < n; i++) {
    uint32_t t = tokens[i];
    if (t < 256) {
      write_code(e, le[t]);
      continue;
    }
    uint8_t length = (uint8_t)(t >> LENGTH_SHIFT);
    uint8_t lc = LENGTH_CODES[length] & 31;
    write_code(e, le[LENGTH_CODES_START + lc]);
    if (lc >= 8) write_bits(e, (uint32_t)(length - LENGTH_BASE[lc]), LENGTH_EXTRA_BITS[lc]);
    uint32_t offset = t & OFFSET_MASK;
    uint32_t oc = (offset >> 16) & 31;
    write_code(e, oe[oc]);
    if (oc >= 4) write_bits(e, (offset - OFFSET_BASE[oc]) & MATCH_OFFSET_ONLY_MASK, (unsigned)OFFSET_EXTRA_BITS[oc]);
  }
  if (defer_eob) write_code(e, le[END_BLOCK_MARKER]);
}

static void write_block_dynamic(kp *e, tokens_t *tokens, int eof, const uint8_t *input, int input_len, int sync) {
  sync = sync || eof;
  if (sync) add_eob(tokens);
  if ((e->last_huffman || eof) && e->last_header > 0) {
    write_code(e, e->lit_enc[END_BLOCK_MARKER]);
    e->last_header = 0;
    e->last_huffman = 0;
  }
  if (e->last_header > 0 && !can_reuse(e, tokens)) {
    write_code(e, e->lit_enc[END_BLOCK_MARKER]);
    e->last_header = 0;
  }
  int num_literals, num_offsets;
  index_tokens(e, tokens, !sync, &num_literals, &num_offsets);
  long extra_bits = 0, ssize = 0;
  int storable = stored_size(input, input_len, &ssize);
  if (storable || e->last_header > 0) extra_bits = extra_bit_size(e);
  long size = 0;
  if (e->last_header > 0) {
    long new_size = e->last_header + estimated_bits(tokens);
    new_size += HLEN(e->lit_enc[END_BLOCK_MARKER]) + (new_size >> e->log_new_table_penalty);
    long reuse_size = dynamic_reuse_size(e) + extra_bits;
    if (new_size < reuse_size) {
      write_code(e, e->lit_enc[END_BLOCK_MARKER]);
      size = new_size;
      e->last_header = 0;
    } else {
      size = reuse_size;
    }
    if (tokens->n < MAX_PREDEFINED_TOKENS) {
      long pre = fixed_size(e, extra_bits) + 7;
      if (pre < size) {
        if (storable && ssize <= size) {
          write_stored_header(e, input_len, eof);
          write_bytes(e, input, (size_t)input_len);
          return;
        }
        write_fixed_header(e, eof);
        if (!sync) add_eob(tokens);
        write_tokens(e, tokens->tokens, tokens->n, FIXED_LIT, FIXED_OFF);
        return;
      }
    }
    if (storable && ssize <= size) {
      write_stored_header(e, input_len, eof);
      write_bytes(e, input, (size_t)input_len);
      return;
    }
  }
  if (e->last_header == 0) {
    e->literal_freq[END_BLOCK_MARKER] = 1;
    generate_lit_off(e);
    generate_codegen(e, num_literals, num_offsets, e->lit_enc, e->off_enc);
    generate(e->cg_enc, e->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int ncg;
    size = dynamic_size(e, extra_bits, &ncg);
    if (tokens->n < MAX_PREDEFINED_TOKENS) {
      long pre = fixed_size(e, extra_bits);
      if (pre <= size) {
        if (storable && ssize <= pre) {
          write_stored_header(e, input_len, eof);
          write_bytes(e, input, (size_t)input_len);
          return;
        }
        write_fixed_header(e, eof);
        if (!sync) add_eob(tokens);
        write_tokens(e, tokens->tokens, tokens->n, FIXED_LIT, FIXED_OFF);
        return;
      }
    }
    if (storable && ssize <= size) {
      write_stored_header(e, input_len, eof);
      write_bytes(e, input, (size_t)input_len);
      return;
    }
    write_dynamic_header(e, num_literals, num_offsets, ncg, eof);
    if (!sync) e->last_header = (int)header_size(e, NULL);
    e->last_huffman = 0;
  }
  if (sync) e->last_header = 0;
  write_tokens(e, tokens->tokens, tokens->n, e->lit_enc, e->off_enc);
}

static void write_block_huff(kp *e, int eof, const uint8_t *input, int input_len, int sync) {
  memset(e->literal_freq, 0, sizeof(e->literal_freq));
  if (!e->last_huffman) memset(e->offset_freq, 0, sizeof(e->offset_freq));
  const int num_literals = END_BLOCK_MARKER + 1;
  const int num_offsets = 1;
  const long guess_header_size_bits = 70 * 8;
  for (int i = 0; i < input_len; i++) e->literal_freq[input[i]]++;
  long ssize = 0;
  int storable = stored_size(input, input_len, &ssize);
  if (storable && input_len > 1024) {
    double abs = 0, avg = (double)input_len / 256, max = (double)(input_len * 2);
    for (int i = 0; i < 256; i++) {
      double diff = (double)e->literal_freq[i] - avg;
      abs += diff * diff;
      if (abs > max) break;
    }
    if (abs < max) {
      write_stored_header(e, input_len, eof);
      write_bytes(e, input, (size_t)input_len);
      return;
    }
  }
  e->literal_freq[END_BLOCK_MARKER] = 1;
  generate(e->tmp_lit_enc, e->literal_freq, num_literals, 15);
  long est = can_reuse_bits(e->tmp_lit_enc, e->literal_freq, num_literals);
  if (est < INT32_MAX) {
    est += e->last_header;
    if (e->last_header == 0) est += guess_header_size_bits;
    est += est >> e->log_new_table_penalty;
  }
  if (storable && ssize <= est) {
    write_stored_header(e, input_len, eof);
    write_bytes(e, input, (size_t)input_len);
    return;
  }
  if (e->last_header > 0) {
    long reuse = can_reuse_bits(e->lit_enc, e->literal_freq, 256);
    if (est < reuse) {
      write_code(e, e->lit_enc[END_BLOCK_MARKER]);
      e->last_header = 0;
    }
  }
  if (e->last_header == 0) {
    hcode *t = e->lit_enc;
    e->lit_enc = e->tmp_lit_enc;
    e->tmp_lit_enc = t;
    generate_codegen(e, num_literals, num_offsets, e->lit_enc, HUFF_OFFSET);
    generate(e->cg_enc, e->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int ncg = num_codegens(e);
    write_dynamic_header(e, num_literals, num_offsets, ncg, eof);
    e->last_huffman = 1;
    e->last_header = (int)header_size(e, NULL);
  }
  for (int i = 0; i < input_len; i++) write_code(e, e->lit_enc[input[i]]);
  if (eof || sync) {
    write_code(e, e->lit_enc[END_BLOCK_MARKER]);
    e->last_header = 0;
    e->last_huffman = 0;
  }
}

static void bw_reset(kp *e) {
  e->bits = 0;
  e->nbits = 0;
  e->last_header = 0;
  e->last_huffman = 0;
}

/* ------------------------------------------------------------------------ */
/* Level 5                                                                   */
/* ------------------------------------------------------------------------ */

static inline uint32_t load3232(const uint8_t *b, int32_t i) { return df_load32le(b + i); }

static inline uint64_t load6432(const uint8_t *b, int32_t i) { return df_load64le(b + i); }

static uint32_t hash4(uint64_t u) { return ((uint32_t)u * PRIME4BYTES) >> (32 - TABLE_BITS); }

static uint32_t hash7(uint64_t u) { return (uint32_t)(((u << 8) * PRIME7BYTES) >> ((64 - TABLE_BITS) & 63)); }

static int32_t match_len(const uint8_t *a, const uint8_t *b, int32_t max) { return df_match_len(a, b, max); }

/* matchlen: up to 254 bytes from s (src has hist_len bytes). */
static int32_t mlen(kp *e, int32_t s, int32_t t) {
  int32_t s1 = s + MAX_MATCH_LENGTH - 4;
  if (s1 > e->hist_len) s1 = e->hist_len;
  return match_len(e->hist + s, e->hist + t, s1 - s);
}

static int32_t mlen_long(kp *e, int32_t s, int32_t t) { return match_len(e->hist + s, e->hist + t, e->hist_len - s); }

static int32_t add_block(kp *e, const uint8_t *src, int32_t n) {
  if (e->hist_len + n > ALLOC_HISTORY) {
    int32_t offset = e->hist_len - MAX_MATCH_OFFSET;
    memmove(e->hist, e->hist + offset, MAX_MATCH_OFFSET);
    e->cur += offset;
    e->hist_len = MAX_MATCH_OFFSET;
  }
  int32_t s = e->hist_len;
  if (n > 0) memcpy(e->hist + e->hist_len, src, (size_t)n);
  e->hist_len += n;
  return s;
}

static void fast_reset(kp *e) {
  if (e->cur <= BUFFER_RESET) e->cur += MAX_MATCH_OFFSET + e->hist_len;
  e->hist_len = 0;
}

/*
 * The encoders' `for e.cur >= bufferReset` preamble: offsets rebased (or
 * the tables cleared when there is no history) before cur overflows.
 * `n` entries of the table; `prev`: the level has the two-entry long table.
 */
static void shift_single(int32_t *t, int n, int32_t min_off, int32_t cur) {
  for (int i = 0; i < n; i++) t[i] = t[i] <= min_off ? 0 : t[i] - cur + MAX_MATCH_OFFSET;
}

static void shift_offsets(kp *e, int n, int prev) {
  int single = e->level == 4;
  int nprev = e->level == 3 ? 1 << 16 : TABLE_SIZE;
  while (e->cur >= BUFFER_RESET) {
    if (e->hist_len == 0) {
      memset(e->table, 0, sizeof(int32_t) * (size_t)n);
      if (single) memset(e->bt_single, 0, sizeof(e->bt_single));
      if (prev) {
        memset(e->btable_cur, 0, sizeof(e->btable_cur));
        memset(e->btable_prev, 0, sizeof(e->btable_prev));
      }
      e->cur = MAX_MATCH_OFFSET;
      break;
    }
    int32_t min_off = e->cur + e->hist_len - MAX_MATCH_OFFSET;
    shift_single(e->table, n, min_off, e->cur);
    if (single) shift_single(e->bt_single, TABLE_SIZE, min_off, e->cur);
    if (prev) {
      for (int i = 0; i < nprev; i++) {
        int32_t c = e->btable_cur[i], p = e->btable_prev[i];
        if (c <= min_off) {
          c = 0;
          p = 0;
        } else {
          c = c - e->cur + MAX_MATCH_OFFSET;
          p = p <= min_off ? 0 : p - e->cur + MAX_MATCH_OFFSET;
        }
        e->btable_cur[i] = c;
        e->btable_prev[i] = p;
      }
    }
    e->cur = MAX_MATCH_OFFSET;
  }
}

static uint32_t hash5(uint64_t u, unsigned bits) { return (uint32_t)(((u << (64 - 40)) * 889523592379ull) >> (64 - bits)); }

static void emit_range(tokens_t *dst, const uint8_t *src, int32_t from, int32_t to) {
  for (int32_t i = from; i < to; i++) add_literal(dst, src[i]);
}

/* Level 1: one table of 5-byte hashes, two probes per step. */
static void l1_encode(kp *e, tokens_t *dst, const uint8_t *in, int32_t in_len) {
  const int32_t input_margin = 12 - 1;
  const int32_t min_non_literal = 1 + 1 + input_margin;
  shift_offsets(e, TABLE_SIZE, 0);
  int32_t s = add_block(e, in, in_len);
  if (in_len < min_non_literal) {
    dst->n = (uint16_t)in_len;
    return;
  }
  const uint8_t *src = e->hist;
  int32_t next_emit = s;
  int32_t s_limit = e->hist_len - input_margin;
  uint64_t cv = load6432(src, s);
  for (;;) {
    int32_t next_s = s;
    int32_t cand;
    for (;;) {
      uint32_t next_hash = hash5(cv, TABLE_BITS);
      cand = e->table[next_hash];
      next_s = s + 2 + ((s - next_emit) >> 5);
      if (next_s > s_limit) goto remainder;
      uint64_t now = load6432(src, next_s);
      e->table[next_hash] = s + e->cur;
      next_hash = hash5(now, TABLE_BITS);
      int32_t offset = s - (cand - e->cur);
      if (offset < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, cand - e->cur)) {
        e->table[next_hash] = next_s + e->cur;
        break;
      }
      cv = now;
      s = next_s;
      next_s++;
      cand = e->table[next_hash];
      now >>= 8;
      e->table[next_hash] = s + e->cur;
      offset = s - (cand - e->cur);
      if (offset < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, cand - e->cur)) {
        e->table[next_hash] = next_s + e->cur;
        break;
      }
      cv = now;
      s = next_s;
    }
    for (;;) {
      int32_t t = cand - e->cur;
      int32_t l = 4 + mlen_long(e, s + 4, t + 4);
      while (t > 0 && s > next_emit && src[t - 1] == src[s - 1]) {
        s--;
        t--;
        l++;
      }
      emit_range(dst, src, next_emit, s);
      add_match_long(dst, l, (uint32_t)(s - t - BASE_MATCH_OFFSET));
      s += l;
      next_emit = s;
      if (next_s >= s) s = next_s + 1;
      if (s >= s_limit) {
        if (s + l + 8 < e->hist_len) e->table[hash5(load6432(src, s), TABLE_BITS)] = s + e->cur;
        goto remainder;
      }
      uint64_t x = load6432(src, s - 2);
      int32_t o = e->cur + s - 2;
      e->table[hash5(x, TABLE_BITS)] = o;
      x >>= 16;
      uint32_t curr = hash5(x, TABLE_BITS);
      cand = e->table[curr];
      e->table[curr] = o + 2;
      int32_t offset = s - (cand - e->cur);
      if (offset > MAX_MATCH_OFFSET || (uint32_t)x != load3232(src, cand - e->cur)) {
        cv = x >> 8;
        s++;
        break;
      }
    }
  }
remainder:
  if (next_emit < e->hist_len) {
    if (dst->n == 0) return;
    emit_range(dst, src, next_emit, e->hist_len);
  }
}

/* Level 2: level 1 with a table of 2^17 entries and more positions indexed after a match. */
static void l2_encode(kp *e, tokens_t *dst, const uint8_t *in, int32_t in_len) {
  const int32_t input_margin = 12 - 1;
  const int32_t min_non_literal = 1 + 1 + input_margin;
  const unsigned bits = 17;
  shift_offsets(e, 1 << 17, 0);
  int32_t s = add_block(e, in, in_len);
  if (in_len < min_non_literal) {
    dst->n = (uint16_t)in_len;
    return;
  }
  const uint8_t *src = e->hist;
  int32_t next_emit = s;
  int32_t s_limit = e->hist_len - input_margin;
  uint64_t cv = load6432(src, s);
  for (;;) {
    int32_t next_s = s;
    int32_t cand;
    for (;;) {
      uint32_t next_hash = hash5(cv, bits);
      s = next_s;
      next_s = s + 2 + ((s - next_emit) >> 5);
      if (next_s > s_limit) goto remainder;
      cand = e->table[next_hash];
      uint64_t now = load6432(src, next_s);
      e->table[next_hash] = s + e->cur;
      next_hash = hash5(now, bits);
      int32_t offset = s - (cand - e->cur);
      if (offset < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, cand - e->cur)) {
        e->table[next_hash] = next_s + e->cur;
        break;
      }
      cv = now;
      s = next_s;
      next_s++;
      cand = e->table[next_hash];
      now >>= 8;
      e->table[next_hash] = s + e->cur;
      offset = s - (cand - e->cur);
      if (offset < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, cand - e->cur)) break;
      cv = now;
    }
    for (;;) {
      int32_t t = cand - e->cur;
      int32_t l = mlen_long(e, s + 4, t + 4) + 4;
      while (t > 0 && s > next_emit && src[t - 1] == src[s - 1]) {
        s--;
        t--;
        l++;
      }
      emit_range(dst, src, next_emit, s);
      add_match_long(dst, l, (uint32_t)(s - t - BASE_MATCH_OFFSET));
      s += l;
      next_emit = s;
      if (next_s >= s) s = next_s + 1;
      if (s >= s_limit) {
        if (s + l + 8 < e->hist_len) e->table[hash5(load6432(src, s), bits)] = s + e->cur;
        goto remainder;
      }
      for (int32_t i = s - l + 2; i < s - 5; i += 7) {
        uint64_t x = load6432(src, i);
        e->table[hash5(x, bits)] = e->cur + i;
        x >>= 16;
        e->table[hash5(x, bits)] = e->cur + i + 2;
        x >>= 16;
        e->table[hash5(x, bits)] = e->cur + i + 4;
      }
      uint64_t x = load6432(src, s - 2);
      int32_t o = e->cur + s - 2;
      e->table[hash5(x, bits)] = o;
      e->table[hash5(x >> 8, bits)] = o + 1;
      uint32_t curr = hash5(x >> 16, bits);
      cand = e->table[curr];
      e->table[curr] = o + 2;
      int32_t offset = s - (cand - e->cur);
      if (offset > MAX_MATCH_OFFSET || (uint32_t)(x >> 16) != load3232(src, cand - e->cur)) {
        cv = x >> 24;
        s++;
        break;
      }
    }
  }
remainder:
  if (next_emit < e->hist_len) {
    if (dst->n == 0) return;
    emit_range(dst, src, next_emit, e->hist_len);
  }
}

static void bt_push(kp *e, uint32_t h, int32_t off) {
  e->btable_prev[h] = e->btable_cur[h];
  e->btable_cur[h] = off;
}

static void l5_encode(kp *e, tokens_t *dst, const uint8_t *in, int32_t in_len) {
  const int32_t input_margin = 12 - 1;
  const int32_t min_non_literal = 1 + 1 + input_margin;
  shift_offsets(e, TABLE_SIZE, 1);
  int32_t s = add_block(e, in, in_len);
  if (in_len < min_non_literal) {
    dst->n = (uint16_t)in_len;
    return;
  }
  const uint8_t *src = e->hist;
  int32_t next_emit = s;
  int32_t s_limit = e->hist_len - input_margin;
  uint64_t cv = load6432(src, s);
  for (;;) {
    int32_t next_s = s;
    int32_t l = 0, t = 0;
    for (;;) {
      uint32_t next_hash_s = hash4(cv);
      uint32_t next_hash_l = hash7(cv);
      s = next_s;
      next_s = s + 1 + ((s - next_emit) >> 6);
      if (next_s > s_limit) goto remainder;
      int32_t s_cand = e->table[next_hash_s];
      int32_t l_cur = e->btable_cur[next_hash_l], l_prev = e->btable_prev[next_hash_l];
      uint64_t next = load6432(src, next_s);
      int32_t entry = s + e->cur;
      e->table[next_hash_s] = entry;
      bt_push(e, next_hash_l, entry);
      next_hash_s = hash4(next);
      next_hash_l = hash7(next);
      t = l_cur - e->cur;
      if (s - t < MAX_MATCH_OFFSET) {
        if ((uint32_t)cv == load3232(src, l_cur - e->cur)) {
          e->table[next_hash_s] = next_s + e->cur;
          bt_push(e, next_hash_l, next_s + e->cur);
          int32_t t2 = l_prev - e->cur;
          if (s - t2 < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, l_prev - e->cur)) {
            l = mlen(e, s + 4, t + 4) + 4;
            int32_t ml1 = mlen(e, s + 4, t2 + 4) + 4;
            if (ml1 > l) {
              t = t2;
              l = ml1;
              break;
            }
          }
          break;
        }
        t = l_prev - e->cur;
        if (s - t < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, l_prev - e->cur)) {
          e->table[next_hash_s] = next_s + e->cur;
          bt_push(e, next_hash_l, next_s + e->cur);
          break;
        }
      }
      t = s_cand - e->cur;
      if (s - t < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, s_cand - e->cur)) {
        l = mlen(e, s + 4, t + 4) + 4;
        int32_t lc_cur = e->btable_cur[next_hash_l], lc_prev = e->btable_prev[next_hash_l];
        e->table[next_hash_s] = next_s + e->cur;
        bt_push(e, next_hash_l, next_s + e->cur);
        int32_t t2 = lc_cur - e->cur;
        if (next_s - t2 < MAX_MATCH_OFFSET) {
          if (load3232(src, lc_cur - e->cur) == (uint32_t)next) {
            int32_t ml = mlen(e, next_s + 4, t2 + 4) + 4;
            if (ml > l) {
              t = t2;
              s = next_s;
              l = ml;
              break;
            }
          }
          t2 = lc_prev - e->cur;
          if (next_s - t2 < MAX_MATCH_OFFSET && load3232(src, lc_prev - e->cur) == (uint32_t)next) {
            int32_t ml = mlen(e, next_s + 4, t2 + 4) + 4;
            if (ml > l) {
              t = t2;
              s = next_s;
              l = ml;
              break;
            }
          }
        }
        break;
      }
      cv = next;
    }
    if (l == 0) l = mlen_long(e, s + 4, t + 4) + 4;
    else if (l == MAX_MATCH_LENGTH) l += mlen_long(e, s + l, t + l);
    {
      int32_t s_at = s + l;
      if (l < 30 && s_at < s_limit) {
        const int32_t skip_beginning = 2;
        int32_t e_long = e->btable_cur[hash7(load6432(src, s_at))];
        int32_t t2 = e_long - e->cur - l + skip_beginning;
        int32_t s2 = s + skip_beginning;
        int32_t off = s2 - t2;
        if (t2 >= 0 && off < MAX_MATCH_OFFSET && off > 0) {
          int32_t l2 = mlen_long(e, s2, t2);
          if (l2 > l) {
            t = t2;
            l = l2;
            s = s2;
          }
        }
      }
    }
    while (t > 0 && s > next_emit && src[t - 1] == src[s - 1]) {
      s--;
      t--;
      l++;
    }
    for (int32_t i = next_emit; i < s; i++) add_literal(dst, src[i]);
    add_match_long(dst, l, (uint32_t)(s - t - BASE_MATCH_OFFSET));
    s += l;
    next_emit = s;
    if (next_s >= s) s = next_s + 1;
    if (s >= s_limit) goto remainder;
    {
      int32_t i = s - l + 1;
      if (i < s - 1) {
        uint64_t c = load6432(src, i);
        int32_t tt = i + e->cur;
        e->table[hash4(c)] = tt;
        bt_push(e, hash7(c), tt);
        c >>= 8;
        tt++;
        bt_push(e, hash7(c), tt);
        c >>= 8;
        tt++;
        e->table[hash4(c)] = tt;
        i += 4;
        for (; i < s - 1; i += 3) {
          uint64_t c2 = load6432(src, i);
          int32_t t1 = i + e->cur;
          bt_push(e, hash7(c2), t1);
          e->table[hash4(c2 >> 8)] = t1 + 1;
        }
      }
    }
    {
      uint64_t x = load6432(src, s - 1);
      int32_t o = e->cur + s - 1;
      e->table[hash4(x)] = o;
      bt_push(e, hash7(x), o);
      cv = x >> 8;
    }
  }
remainder:
  if (next_emit < e->hist_len) {
    if (dst->n == 0) return;
    for (int32_t i = next_emit; i < e->hist_len; i++) add_literal(dst, src[i]);
  }
}

static void prev_push(kp *e, uint32_t h, int32_t off) {
  e->btable_prev[h] = e->btable_cur[h];
  e->btable_cur[h] = off;
}

/* Level 3: one table of 2^16 two-entry buckets of 5-byte hashes. */
static void l3_encode(kp *e, tokens_t *dst, const uint8_t *in, int32_t in_len) {
  const int32_t input_margin = 12 - 1;
  const int32_t min_non_literal = 1 + 1 + input_margin;
  const unsigned bits = 16;
  shift_offsets(e, 0, 1);
  int32_t s = add_block(e, in, in_len);
  if (in_len < min_non_literal) {
    dst->n = (uint16_t)in_len;
    return;
  }
  const uint8_t *src = e->hist;
  int32_t next_emit = s;
  int32_t s_limit = e->hist_len - input_margin;
  uint64_t cv = load6432(src, s);
  for (;;) {
    int32_t next_s = s;
    int32_t cand;
    for (;;) {
      uint32_t next_hash = hash5(cv, bits);
      s = next_s;
      next_s = s + 1 + ((s - next_emit) >> 7);
      if (next_s > s_limit) goto remainder;
      int32_t c_cur = e->btable_cur[next_hash], c_prev = e->btable_prev[next_hash];
      uint64_t now = load6432(src, next_s);
      int32_t min_offset = e->cur + s - (MAX_MATCH_OFFSET - 4);
      e->btable_prev[next_hash] = c_cur;
      e->btable_cur[next_hash] = s + e->cur;
      cand = c_cur;
      if (cand < min_offset) {
        cv = now;
        continue;
      }
      if ((uint32_t)cv == load3232(src, cand - e->cur)) {
        if (c_prev < min_offset || (uint32_t)cv != load3232(src, c_prev - e->cur)) break;
        int32_t offset = s - (cand - e->cur);
        int32_t o2 = s - (c_prev - e->cur);
        int32_t l1 = mlen_long(e, s + 4, s - offset + 4), l2 = mlen_long(e, s + 4, s - o2 + 4);
        if (l2 > l1) cand = c_prev;
        break;
      } else {
        cand = c_prev;
        if (cand > min_offset && (uint32_t)cv == load3232(src, cand - e->cur)) break;
      }
      cv = now;
    }
    for (;;) {
      int32_t t = cand - e->cur;
      int32_t l = mlen_long(e, s + 4, t + 4) + 4;
      while (t > 0 && s > next_emit && src[t - 1] == src[s - 1]) {
        s--;
        t--;
        l++;
      }
      emit_range(dst, src, next_emit, s);
      add_match_long(dst, l, (uint32_t)(s - t - BASE_MATCH_OFFSET));
      s += l;
      next_emit = s;
      if (next_s >= s) s = next_s + 1;
      if (s >= s_limit) {
        t += l;
        if (t + 8 < e->hist_len && t > 0) prev_push(e, hash5(load6432(src, t), bits), e->cur + t);
        goto remainder;
      }
      for (int32_t i = s - l + 2; i < s - 5; i += 6) prev_push(e, hash5(load6432(src, i), bits), e->cur + i);
      uint64_t x = load6432(src, s - 2);
      prev_push(e, hash5(x, bits), e->cur + s - 2);
      x >>= 8;
      prev_push(e, hash5(x, bits), e->cur + s - 1);
      x >>= 8;
      uint32_t curr = hash5(x, bits);
      int32_t c_cur = e->btable_cur[curr], c_prev = e->btable_prev[curr];
      cv = x;
      e->btable_prev[curr] = c_cur;
      e->btable_cur[curr] = s + e->cur;
      cand = c_cur;
      int32_t min_offset = e->cur + s - (MAX_MATCH_OFFSET - 4);
      if (cand > min_offset) {
        if ((uint32_t)cv == load3232(src, cand - e->cur)) continue;
        cand = c_prev;
        if (cand > min_offset && (uint32_t)cv == load3232(src, cand - e->cur)) continue;
      }
      cv = x >> 8;
      s++;
      break;
    }
  }
remainder:
  if (next_emit < e->hist_len) {
    if (dst->n == 0) return;
    emit_range(dst, src, next_emit, e->hist_len);
  }
}

/* Level 4: a table of 4-byte hashes and one of 7-byte hashes, one entry each. */
static void l4_encode(kp *e, tokens_t *dst, const uint8_t *in, int32_t in_len) {
  const int32_t input_margin = 12 - 1;
  const int32_t min_non_literal = 1 + 1 + input_margin;
  shift_offsets(e, TABLE_SIZE, 0);
  int32_t s = add_block(e, in, in_len);
  if (in_len < min_non_literal) {
    dst->n = (uint16_t)in_len;
    return;
  }
  const uint8_t *src = e->hist;
  int32_t next_emit = s;
  int32_t s_limit = e->hist_len - input_margin;
  uint64_t cv = load6432(src, s);
  int32_t *bt = e->bt_single;
  for (;;) {
    int32_t next_s = s;
    int32_t t;
    for (;;) {
      uint32_t next_hash_s = hash4(cv);
      uint32_t next_hash_l = hash7(cv);
      s = next_s;
      next_s = s + 1 + ((s - next_emit) >> 6);
      if (next_s > s_limit) goto remainder;
      int32_t s_cand = e->table[next_hash_s];
      int32_t l_cand = bt[next_hash_l];
      uint64_t next = load6432(src, next_s);
      int32_t entry = s + e->cur;
      e->table[next_hash_s] = entry;
      bt[next_hash_l] = entry;
      t = l_cand - e->cur;
      if (s - t < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, l_cand - e->cur)) break;
      t = s_cand - e->cur;
      if (s - t < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, s_cand - e->cur)) {
        l_cand = bt[hash7(next)];
        int32_t l_off = next_s - (l_cand - e->cur);
        if (l_off < MAX_MATCH_OFFSET && load3232(src, l_cand - e->cur) == (uint32_t)next) {
          int32_t l1 = mlen_long(e, s + 4, t + 4), l2 = mlen_long(e, next_s + 4, next_s - l_off + 4);
          if (l2 > l1) {
            s = next_s;
            t = l_cand - e->cur;
          }
        }
        break;
      }
      cv = next;
    }
    int32_t l = mlen_long(e, s + 4, t + 4) + 4;
    while (t > 0 && s > next_emit && src[t - 1] == src[s - 1]) {
      s--;
      t--;
      l++;
    }
    emit_range(dst, src, next_emit, s);
    add_match_long(dst, l, (uint32_t)(s - t - BASE_MATCH_OFFSET));
    s += l;
    next_emit = s;
    if (next_s >= s) s = next_s + 1;
    if (s >= s_limit) {
      if (s + 8 < e->hist_len) {
        uint64_t c = load6432(src, s);
        e->table[hash4(c)] = s + e->cur;
        bt[hash7(c)] = s + e->cur;
      }
      goto remainder;
    }
    for (int32_t i = next_s; i < s - 1; i += 3) {
      uint64_t c = load6432(src, i);
      int32_t t1 = i + e->cur;
      bt[hash7(c)] = t1;
      bt[hash7(c >> 8)] = t1 + 1;
      e->table[hash4(c >> 8)] = t1 + 1;
    }
    uint64_t x = load6432(src, s - 1);
    int32_t o = e->cur + s - 1;
    e->table[hash4(x)] = o;
    bt[hash7(x)] = o;
    cv = x >> 8;
  }
remainder:
  if (next_emit < e->hist_len) {
    if (dst->n == 0) return;
    emit_range(dst, src, next_emit, e->hist_len);
  }
}

/* Level 6: level 5 with a repeat offset, the long table's both entries tried after a match, and denser indexing. */
static void l6_encode(kp *e, tokens_t *dst, const uint8_t *in, int32_t in_len) {
  const int32_t input_margin = 12 - 1;
  const int32_t min_non_literal = 1 + 1 + input_margin;
  shift_offsets(e, TABLE_SIZE, 1);
  int32_t s = add_block(e, in, in_len);
  if (in_len < min_non_literal) {
    dst->n = (uint16_t)in_len;
    return;
  }
  const uint8_t *src = e->hist;
  int32_t next_emit = s;
  int32_t s_limit = e->hist_len - input_margin;
  uint64_t cv = load6432(src, s);
  int32_t repeat = 1;
  for (;;) {
    int32_t next_s = s;
    int32_t l = 0, t = 0;
    for (;;) {
      uint32_t next_hash_s = hash4(cv);
      uint32_t next_hash_l = hash7(cv);
      s = next_s;
      next_s = s + 1 + ((s - next_emit) >> 7);
      if (next_s > s_limit) goto remainder;
      int32_t s_cand = e->table[next_hash_s];
      int32_t l_cur = e->btable_cur[next_hash_l], l_prev = e->btable_prev[next_hash_l];
      uint64_t next = load6432(src, next_s);
      int32_t entry = s + e->cur;
      e->table[next_hash_s] = entry;
      bt_push(e, next_hash_l, entry);
      next_hash_s = hash4(next);
      next_hash_l = hash7(next);
      t = l_cur - e->cur;
      if (s - t < MAX_MATCH_OFFSET) {
        if ((uint32_t)cv == load3232(src, l_cur - e->cur)) {
          e->table[next_hash_s] = next_s + e->cur;
          bt_push(e, next_hash_l, next_s + e->cur);
          int32_t t2 = l_prev - e->cur;
          if (s - t2 < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, l_prev - e->cur)) {
            l = mlen(e, s + 4, t + 4) + 4;
            int32_t ml1 = mlen(e, s + 4, t2 + 4) + 4;
            if (ml1 > l) {
              t = t2;
              l = ml1;
              break;
            }
          }
          break;
        }
        t = l_prev - e->cur;
        if (s - t < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, l_prev - e->cur)) {
          e->table[next_hash_s] = next_s + e->cur;
          bt_push(e, next_hash_l, next_s + e->cur);
          break;
        }
      }
      t = s_cand - e->cur;
      if (s - t < MAX_MATCH_OFFSET && (uint32_t)cv == load3232(src, s_cand - e->cur)) {
        l = mlen(e, s + 4, t + 4) + 4;
        int32_t lc_cur = e->btable_cur[next_hash_l], lc_prev = e->btable_prev[next_hash_l];
        e->table[next_hash_s] = next_s + e->cur;
        bt_push(e, next_hash_l, next_s + e->cur);
        int32_t t2 = s - repeat + 1;
        if (load3232(src, t2) == (uint32_t)(cv >> 8)) {
          int32_t ml = mlen(e, s + 4 + 1, t2 + 4) + 4;
          if (ml > l) {
            t = t2;
            l = ml;
            s += 1;
            break;
          }
        }
        t2 = lc_cur - e->cur;
        if (next_s - t2 < MAX_MATCH_OFFSET) {
          if (load3232(src, lc_cur - e->cur) == (uint32_t)next) {
            int32_t ml = mlen(e, next_s + 4, t2 + 4) + 4;
            if (ml > l) {
              t = t2;
              s = next_s;
              l = ml;
            }
          }
          t2 = lc_prev - e->cur;
          if (next_s - t2 < MAX_MATCH_OFFSET && load3232(src, lc_prev - e->cur) == (uint32_t)next) {
            int32_t ml = mlen(e, next_s + 4, t2 + 4) + 4;
            if (ml > l) {
              t = t2;
              s = next_s;
              l = ml;
              break;
            }
          }
        }
        break;
      }
      cv = next;
    }
    if (l == 0) l = mlen_long(e, s + 4, t + 4) + 4;
    else if (l == MAX_MATCH_LENGTH) l += mlen_long(e, s + l, t + l);
    {
      int32_t s_at = s + l;
      if (s_at < s_limit) {
        const int32_t skip_beginning = 2;
        uint32_t h = hash7(load6432(src, s_at));
        int32_t t2 = e->btable_cur[h] - e->cur - l + skip_beginning;
        int32_t s2 = s + skip_beginning;
        int32_t off = s2 - t2;
        if (off < MAX_MATCH_OFFSET) {
          if (off > 0 && t2 >= 0) {
            int32_t l2 = mlen_long(e, s2, t2);
            if (l2 > l) {
              t = t2;
              l = l2;
              s = s2;
            }
          }
          t2 = e->btable_prev[h] - e->cur - l + skip_beginning;
          off = s2 - t2;
          if (off > 0 && off < MAX_MATCH_OFFSET && t2 >= 0) {
            int32_t l2 = mlen_long(e, s2, t2);
            if (l2 > l) {
              t = t2;
              l = l2;
              s = s2;
            }
          }
        }
      }
    }
    while (t > 0 && s > next_emit && src[t - 1] == src[s - 1]) {
      s--;
      t--;
      l++;
    }
    emit_range(dst, src, next_emit, s);
    add_match_long(dst, l, (uint32_t)(s - t - BASE_MATCH_OFFSET));
    repeat = s - t;
    s += l;
    next_emit = s;
    if (next_s >= s) s = next_s + 1;
    if (s >= s_limit) {
      for (int32_t i = next_s + 1; i < e->hist_len - 8; i += 2) {
        uint64_t c = load6432(src, i);
        e->table[hash4(c)] = i + e->cur;
        bt_push(e, hash7(c), i + e->cur);
      }
      goto remainder;
    }
    for (int32_t i = next_s + 1; i < s - 1; i += 2) {
      uint64_t c = load6432(src, i);
      int32_t t1 = i + e->cur;
      uint32_t h1 = hash7(c), h2 = hash7(c >> 8);
      e->table[hash4(c)] = t1;
      bt_push(e, h1, t1);
      bt_push(e, h2, t1 + 1);
    }
    cv = load6432(src, s);
  }
remainder:
  if (next_emit < e->hist_len) {
    if (dst->n == 0) return;
    emit_range(dst, src, next_emit, e->hist_len);
  }
}

/* ------------------------------------------------------------------------ */
/* Levels 7-9: klauspost's deflateLazy                                       */
/* ------------------------------------------------------------------------ */

#define LZ_WINDOW 32768
#define LZ_MASK (LZ_WINDOW - 1)
#define LZ_HASH_BITS 17
#define LZ_HASH_MASK ((1u << LZ_HASH_BITS) - 1)
#define LZ_MAX_HASH_OFFSET (1 << 28)
#define LZ_MIN_MATCH 4
#define LZ_MAX_TOKENS (1 << 15)

static uint32_t lz_hash4(const uint8_t *b) { return (load3232(b, 0) * PRIME4BYTES) >> (32 - LZ_HASH_BITS); }

static int lz_fill(kp *e, const uint8_t *b, size_t n) {
  if (e->lz_index >= 2 * LZ_WINDOW - (LZ_MIN_MATCH + MAX_MATCH_LENGTH)) {
    memcpy(e->window, e->window + LZ_WINDOW, LZ_WINDOW);
    e->lz_index -= LZ_WINDOW;
    e->window_end -= LZ_WINDOW;
    if (e->block_start >= LZ_WINDOW) e->block_start -= LZ_WINDOW;
    else e->block_start = INT_MAX;
    e->lz_hash_offset += LZ_WINDOW;
    if (e->lz_hash_offset > LZ_MAX_HASH_OFFSET) {
      int delta = e->lz_hash_offset - 1;
      e->lz_hash_offset -= delta;
      e->lz_chain_head -= delta;
      for (int i = 0; i < LZ_WINDOW; i++) e->hash_prev[i] = (int)e->hash_prev[i] > delta ? (uint32_t)((int)e->hash_prev[i] - delta) : 0;
      for (int i = 0; i < (1 << LZ_HASH_BITS); i++) e->hash_head[i] = (int)e->hash_head[i] > delta ? (uint32_t)((int)e->hash_head[i] - delta) : 0;
    }
  }
  size_t room = (size_t)(2 * LZ_WINDOW - e->window_end);
  if (n > room) n = room;
  memcpy(e->window + e->window_end, b, n);
  e->window_end += (int)n;
  return (int)n;
}

static void lz_write_block(kp *e, int index, int eof) {
  if (index > 0 || eof) {
    const uint8_t *win = NULL;
    int len = 0;
    if (e->block_start <= index) {
      win = e->window + e->block_start;
      len = index - e->block_start;
    }
    e->block_start = index;
    write_block_dynamic(e, &e->tokens, eof, win, len, e->sync);
  }
}

static int lz_find_match(kp *e, int pos, int prev_head, int lookahead, int *out_len, int *out_off) {
  int min_match_look = MAX_MATCH_LENGTH;
  if (lookahead < min_match_look) min_match_look = lookahead;
  const uint8_t *win = e->window;
  int win_len = pos + min_match_look;
  int nice = win_len - pos;
  if (e->nice < nice) nice = e->nice;
  int tries = e->chain;
  int length = LZ_MIN_MATCH - 1;
  uint8_t w_end = win[pos + length];
  const uint8_t *w_pos = win + pos;
  int min_index = pos - LZ_WINDOW;
  if (min_index < 0) min_index = 0;
  int offset = 0, ok = 0;
  if (e->chain < 100) {
    for (long i = prev_head; tries > 0; tries--) {
      if (w_end == win[i + length]) {
        int n = match_len(win + i, w_pos, min_match_look);
        if (n > length) {
          length = n;
          offset = pos - (int)i;
          ok = 1;
          if (n >= nice) break;
          w_end = win[pos + n];
        }
      }
      if (i <= min_index) break;
      i = (long)e->hash_prev[i & LZ_MASK] - e->lz_hash_offset;
      if (i < min_index) break;
    }
  } else {
    const int base_cost = 6;
    int c_gain = 0;
    for (long i = prev_head; tries > 0; tries--) {
      if (w_end == win[i + length]) {
        int n = match_len(win + i, w_pos, min_match_look);
        if (n > length) {
          int raw = 0;
          for (int k = 0; k < n; k++) raw += HLEN(e->est[w_pos[k]]);
          int new_gain = raw - OFFSET_EXTRA_BITS[offset_code((uint32_t)(pos - (int)i))] - base_cost - LENGTH_EXTRA_BITS[LENGTH_CODES[(n - 3) & 255]];
          if (new_gain > c_gain) {
            length = n;
            offset = pos - (int)i;
            c_gain = new_gain;
            ok = 1;
            if (n >= nice) break;
            w_end = win[pos + n];
          }
        }
      }
      if (i <= min_index) break;
      i = (long)e->hash_prev[i & LZ_MASK] - e->lz_hash_offset;
      if (i < min_index) break;
    }
  }
  *out_len = length;
  *out_off = offset;
  return ok;
}

static void lz_add_literal_flush(kp *e, int index) {
  if (e->tokens.n == LZ_MAX_TOKENS) {
    lz_write_block(e, index, 0);
    tokens_reset(&e->tokens);
  }
}

static void deflate_lazy(kp *e) {
  if (e->window_end - e->lz_index < LZ_MIN_MATCH + MAX_MATCH_LENGTH && !e->sync) return;
  if (e->window_end != e->lz_index && e->chain > 100) {
    uint16_t tmp[256];
    memset(tmp, 0, sizeof(tmp));
    for (int i = e->lz_index; i < e->window_end; i++) tmp[e->window[i]]++;
    generate(e->est, tmp, 256, 15);
  }
  e->lz_max_insert = e->window_end - (LZ_MIN_MATCH - 1);
  for (;;) {
    int lookahead = e->window_end - e->lz_index;
    if (lookahead < LZ_MIN_MATCH + MAX_MATCH_LENGTH) {
      if (!e->sync) return;
      if (lookahead == 0) {
        if (e->byte_available) {
          add_literal(&e->tokens, e->window[e->lz_index - 1]);
          e->byte_available = 0;
        }
        if (e->tokens.n > 0) {
          lz_write_block(e, e->lz_index, 0);
          tokens_reset(&e->tokens);
        }
        return;
      }
    }
    if (e->lz_index < e->lz_max_insert) {
      uint32_t h = lz_hash4(e->window + e->lz_index);
      uint32_t ch = e->hash_head[h];
      e->lz_chain_head = (int)ch;
      e->hash_prev[e->lz_index & LZ_MASK] = ch;
      e->hash_head[h] = (uint32_t)(e->lz_index + e->lz_hash_offset);
    }
    int prev_length = e->lz_length;
    int prev_offset = e->lz_offset;
    e->lz_length = LZ_MIN_MATCH - 1;
    e->lz_offset = 0;
    int min_index = e->lz_index - LZ_WINDOW;
    if (min_index < 0) min_index = 0;
    if (e->lz_chain_head - e->lz_hash_offset >= min_index && lookahead > prev_length && prev_length < e->lazy) {
      int nl, no;
      if (lz_find_match(e, e->lz_index, e->lz_chain_head - e->lz_hash_offset, lookahead, &nl, &no)) {
        e->lz_length = nl;
        e->lz_offset = no;
      }
    }
    if (prev_length >= LZ_MIN_MATCH && e->lz_length <= prev_length) {
      const int check_off = 2;
      int prev_index = e->lz_index - 1;
      if (prev_index + prev_length + check_off < e->lz_max_insert) {
        int end = lookahead;
        if (lookahead > MAX_MATCH_LENGTH) end = MAX_MATCH_LENGTH;
        end += prev_index;
        int idx = prev_index + prev_length - (4 - check_off);
        uint32_t h = lz_hash4(e->window + idx);
        int ch2 = (int)e->hash_head[h] - e->lz_hash_offset - prev_length + (4 - check_off);
        if (ch2 > min_index) {
          int length = match_len(e->window + prev_index, e->window + ch2, end - prev_index);
          if (length > prev_length) {
            prev_length = length;
            prev_offset = prev_index - ch2;
          }
        }
      }
      add_match_long(&e->tokens, prev_length, (uint32_t)(prev_offset - 1));
      int new_index = e->lz_index + prev_length - 1;
      int end = new_index;
      if (end > e->lz_max_insert) end = e->lz_max_insert;
      end += LZ_MIN_MATCH - 1;
      int start = e->lz_index + 1;
      if (start > e->lz_max_insert) start = e->lz_max_insert;
      for (int di = start; di + LZ_MIN_MATCH <= end; di++) {
        uint32_t h = lz_hash4(e->window + di) & LZ_HASH_MASK;
        e->hash_prev[di & LZ_MASK] = e->hash_head[h];
        e->hash_head[h] = (uint32_t)(di + e->lz_hash_offset);
      }
      e->lz_index = new_index;
      e->byte_available = 0;
      e->lz_length = LZ_MIN_MATCH - 1;
      if (e->tokens.n == LZ_MAX_TOKENS) {
        lz_write_block(e, e->lz_index, 0);
        tokens_reset(&e->tokens);
      }
      e->ii = 0;
    } else {
      if (e->lz_length >= LZ_MIN_MATCH) e->ii = 0;
      if (e->byte_available) {
        e->ii++;
        add_literal(&e->tokens, e->window[e->lz_index - 1]);
        lz_add_literal_flush(e, e->lz_index);
        e->lz_index++;
        int n = (int)e->ii - e->chain;
        if (n > 0) {
          n = 1 + (n >> 6);
          for (int j = 0; j < n; j++) {
            if (e->lz_index >= e->window_end - 1) break;
            add_literal(&e->tokens, e->window[e->lz_index - 1]);
            lz_add_literal_flush(e, e->lz_index);
            if (e->lz_index < e->lz_max_insert) {
              uint32_t h = lz_hash4(e->window + e->lz_index);
              uint32_t ch = e->hash_head[h];
              e->lz_chain_head = (int)ch;
              e->hash_prev[e->lz_index & LZ_MASK] = ch;
              e->hash_head[h] = (uint32_t)(e->lz_index + e->lz_hash_offset);
            }
            e->lz_index++;
          }
          add_literal(&e->tokens, e->window[e->lz_index - 1]);
          e->byte_available = 0;
          lz_add_literal_flush(e, e->lz_index);
        }
      } else {
        e->lz_index++;
        e->byte_available = 1;
      }
    }
  }
}

/* klauspost's reset and fillWindow for the lazy levels. */
static void lz_reset_dict(kp *e, const uint8_t *dict, int n) {
  memset(e->hash_head, 0, sizeof(uint32_t) << LZ_HASH_BITS);
  memset(e->hash_prev, 0, sizeof(uint32_t) * LZ_WINDOW);
  e->lz_chain_head = -1;
  e->lz_hash_offset = 1;
  e->lz_index = 0;
  e->window_end = 0;
  e->block_start = 0;
  e->byte_available = 0;
  tokens_reset(&e->tokens);
  e->lz_length = LZ_MIN_MATCH - 1;
  e->lz_offset = 0;
  e->ii = 0;
  e->lz_max_insert = 0;
  if (n <= 0) return;
  if (n > LZ_WINDOW) {
    dict += n - LZ_WINDOW;
    n = LZ_WINDOW;
  }
  memcpy(e->window, dict, (size_t)n);
  int loops = (n + 256 - LZ_MIN_MATCH) / 256;
  for (int j = 0; j < loops; j++) {
    int start = j * 256;
    int end = start + 256 + LZ_MIN_MATCH - 1;
    if (end > n) end = n;
    for (int di = start; di + LZ_MIN_MATCH <= end; di++) {
      uint32_t h = lz_hash4(e->window + di) & LZ_HASH_MASK;
      e->hash_prev[di & LZ_MASK] = e->hash_head[h];
      e->hash_head[h] = (uint32_t)(di + e->lz_hash_offset);
    }
  }
  e->window_end += n;
  e->lz_index = n;
}

static void fast_encode(kp *e, tokens_t *dst, const uint8_t *in, int32_t n) {
  switch (e->level) {
    case 1: l1_encode(e, dst, in, n); break;
    case 2: l2_encode(e, dst, in, n); break;
    case 3: l3_encode(e, dst, in, n); break;
    case 4: l4_encode(e, dst, in, n); break;
    case 6: l6_encode(e, dst, in, n); break;
    default: l5_encode(e, dst, in, n); break;
  }
}

/* ------------------------------------------------------------------------ */
/* The compressor (levels 1-6 path: storeFast)                               */
/* ------------------------------------------------------------------------ */

static void write_stored_block(kp *e, const uint8_t *buf, int n) {
  write_stored_header(e, n, 0);
  write_bytes(e, buf, (size_t)n);
}

static void store_fast(kp *e) {
  if (e->window_end < MAX_STORE_BLOCK_SIZE) {
    if (!e->sync) return;
    if (e->window_end < 128) {
      if (e->window_end == 0) return;
      if (e->window_end <= 32) write_stored_block(e, e->window, e->window_end);
      else write_block_huff(e, 0, e->window, e->window_end, 1);
      tokens_reset(&e->tokens);
      e->window_end = 0;
      fast_reset(e);
      return;
    }
  }
  fast_encode(e, &e->tokens, e->window, e->window_end);
  if (e->tokens.n == 0) write_stored_block(e, e->window, e->window_end);
  else if ((int)e->tokens.n > e->window_end - (e->window_end >> 4)) write_block_huff(e, 0, e->window, e->window_end, e->sync);
  else write_block_dynamic(e, &e->tokens, 0, e->window, e->window_end, e->sync);
  tokens_reset(&e->tokens);
  e->window_end = 0;
}

/* Level 0: stored blocks. */
static void store(kp *e) {
  if (e->window_end > 0 && (e->window_end == MAX_STORE_BLOCK_SIZE || e->sync)) {
    write_stored_block(e, e->window, e->window_end);
    e->window_end = 0;
  }
}

/* Level -2: literal-only blocks of 32 KiB windows. */
static void store_huff(kp *e) {
  if ((e->window_end < e->window_size && !e->sync) || e->window_end == 0) return;
  write_block_huff(e, 0, e->window, e->window_end, e->sync);
  e->window_end = 0;
}

static void step(kp *e) {
  if (e->level >= 7) deflate_lazy(e);
  else if (e->level >= 1) store_fast(e);
  else if (e->level == 0) store(e);
  else store_huff(e);
}

static void c_write(kp *e, const uint8_t *b, size_t n) {
  while (n > 0) {
    if (e->window_end == e->window_size || e->sync) step(e);
    size_t k;
    if (e->level >= 7) {
      k = (size_t)lz_fill(e, b, n);
    } else {
      size_t room = (size_t)(e->window_size - e->window_end);
      k = n < room ? n : room;
      memcpy(e->window + e->window_end, b, k);
      e->window_end += (int)k;
    }
    b += k;
    n -= k;
  }
}

static void c_sync_flush(kp *e) {
  e->sync = 1;
  step(e);
  write_stored_header(e, 0, 0);
  bw_flush(e);
  e->sync = 0;
}

static void c_close(kp *e) {
  e->sync = 1;
  step(e);
  write_stored_header(e, 0, 1);
  bw_flush(e);
  bw_reset(e);
}

/* Reset with a dictionary (klauspost's Writer.ResetDict for the fast levels). */
static void c_reset_dict(kp *e, const uint8_t *dict, int n) {
  bw_reset(e);
  e->sync = 0;
  if (e->level <= 0) {
    e->window_end = 0; /* no matcher, no dictionary */
    return;
  }
  if (e->level >= 7) {
    lz_reset_dict(e, dict, n);
    return;
  }
  fast_reset(e);
  e->window_end = 0;
  tokens_reset(&e->tokens);
  if (n > MAX_MATCH_OFFSET) {
    dict += n - MAX_MATCH_OFFSET;
    n = MAX_MATCH_OFFSET;
  }
  fast_encode(e, &e->tokens, dict, n);
  tokens_reset(&e->tokens);
}

/* ------------------------------------------------------------------------ */
/* API                                                                       */
/* ------------------------------------------------------------------------ */

/* Most blocks compressed at once, and the most bytes they may hold together. */
#define PG_MAX_THREADS 16
#define PG_MAX_BATCH_BYTES (64 << 20)

/* Threads for pgzip's blocks when the caller leaves it to us: the processors online. */
static int pg_auto_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > PG_MAX_THREADS ? PG_MAX_THREADS : (int)n;
}

kp *kp_new(int level, int pgzip_block, int threads) {
  if (level == -1) level = 5;
  if (level < -2 || level > 9 || pgzip_block < 0 || (pgzip_block > 0 && pgzip_block <= TAIL_SIZE) || pgzip_block > (64 << 20)) return NULL;
  if (threads < 0 || threads > PG_MAX_THREADS) return NULL;
  init_tables();
  kp *e = calloc(1, sizeof(*e));
  if (!e) return NULL;
  e->level = level;
  e->log_new_table_penalty = level == -2 ? 10 : level >= 7 ? 8 : 7;
  e->window_size = level == -2 ? 32 << 10 : level >= 7 ? 2 * LZ_WINDOW : MAX_STORE_BLOCK_SIZE;
  e->pg_block = pgzip_block;
  if (pgzip_block) {
    /* the blocks are compressed by worker encoders (one stream each); this one only collects them and their output */
    int t = threads ? threads : pg_auto_threads();
    if (t > PG_MAX_BATCH_BYTES / pgzip_block) t = PG_MAX_BATCH_BYTES / pgzip_block;
    if (t < 1) t = 1;
    e->pg_threads = t;
    e->pg_buf = malloc((size_t)pgzip_block * (size_t)t);
    e->pg_workers = calloc((size_t)t, sizeof(kp *));
    if (!e->pg_buf || !e->pg_workers) {
      kp_free(e);
      return NULL;
    }
    return e;
  }
  if (level >= 7) {
    static const int P[3][4] = {{8, 12, 16, 24}, {16, 30, 40, 64}, {32, 258, 258, 1024}};
    e->good = P[level - 7][0];
    e->lazy = P[level - 7][1];
    e->nice = P[level - 7][2];
    e->chain = P[level - 7][3];
    e->hash_head = calloc((size_t)1 << LZ_HASH_BITS, sizeof(uint32_t));
    e->hash_prev = calloc(LZ_WINDOW, sizeof(uint32_t));
    if (!e->hash_head || !e->hash_prev) {
      kp_free(e);
      return NULL;
    }
  }
  e->lit_enc = e->enc_a;
  e->tmp_lit_enc = e->enc_b;
  e->cur = MAX_STORE_BLOCK_SIZE;
  e->hist = malloc(ALLOC_HISTORY);
  if (!e->hist) {
    kp_free(e);
    return NULL;
  }
  c_reset_dict(e, NULL, 0); /* klauspost's NewWriter: no dictionary */
  return e;
}

void kp_free(kp *e) {
  if (!e) return;
  if (e->pg_workers)
    for (int i = 0; i < e->pg_threads; i++) kp_free(e->pg_workers[i]);
  free(e->pg_workers);
  free(e->out);
  free(e->hist);
  free(e->pg_buf);
  free(e->hash_head);
  free(e->hash_prev);
  free(e);
}

/*
 * One of pgzip's blocks (its compressBlock): a fresh stream with the previous
 * block's last 16 KiB of input as dictionary, ended by a sync flush, closed
 * after the last block. klauspost's Reset gives an encoder that writes what a
 * new one does (pgzip takes its encoders from a pool in any order), so each
 * block's output depends on its input and dictionary only: the blocks of a
 * batch are compressed at once, each by its own worker encoder.
 */
typedef struct {
  kp *w;
  const uint8_t *dict, *in;
  int dict_len, len, closed;
} pg_job;

static void *pg_run(void *arg) {
  pg_job *j = arg;
  c_reset_dict(j->w, j->dict_len ? j->dict : NULL, j->dict_len);
  c_write(j->w, j->in, (size_t)j->len);
  c_sync_flush(j->w);
  if (j->closed) c_close(j->w);
  return NULL;
}

/* Compresses the collected blocks (pg_full whole ones, and the pg_len bytes after them when `closed`, the last block), in order. */
static void pg_batch(kp *e, int closed) {
  int n = e->pg_full + (closed ? 1 : 0);
  pg_job jobs[PG_MAX_THREADS + 1];
  pthread_t tids[PG_MAX_THREADS + 1];
  int started[PG_MAX_THREADS + 1];
  for (int i = 0; i < n; i++) {
    if (!e->pg_workers[i]) e->pg_workers[i] = kp_new(e->level, 0, 1);
    if (!e->pg_workers[i]) {
      e->oom = 1;
      return;
    }
    int len = i < e->pg_full ? e->pg_block : e->pg_len;
    const uint8_t *in = e->pg_buf + (size_t)i * (size_t)e->pg_block;
    /* the previous block's tail (pgzip's: none when that block had no more than 16 KiB) */
    const uint8_t *dict = i == 0 ? e->pg_tail : in - TAIL_SIZE;
    int dict_len = i == 0 ? e->pg_tail_len : TAIL_SIZE;
    jobs[i] = (pg_job){e->pg_workers[i], dict, in, dict_len, len, closed && i == n - 1};
  }
  for (int i = 1; i < n; i++) started[i] = pthread_create(&tids[i], NULL, pg_run, &jobs[i]) == 0;
  if (n > 0) pg_run(&jobs[0]);
  for (int i = 1; i < n; i++) {
    if (started[i]) pthread_join(tids[i], NULL);
    else pg_run(&jobs[i]); /* no thread to be had: here, in order */
  }
  for (int i = 0; i < n; i++) {
    kp *w = jobs[i].w;
    if (w->oom) e->oom = 1;
    put_bytes(e, w->out, w->out_len);
    w->out_len = 0;
  }
  /* the next batch's first dictionary: the last block's tail */
  int last_len = n == 0 ? 0 : jobs[n - 1].len;
  if (last_len > TAIL_SIZE) {
    memcpy(e->pg_tail, jobs[n - 1].in + last_len - TAIL_SIZE, TAIL_SIZE);
    e->pg_tail_len = TAIL_SIZE;
  } else {
    e->pg_tail_len = 0;
  }
  e->pg_full = 0;
  e->pg_len = 0;
}

int kp_write(kp *e, const uint8_t *p, size_t n) {
  if (!e->pg_block) {
    c_write(e, p, n);
    return e->oom ? -1 : 0;
  }
  while (n > 0) {
    size_t room = (size_t)(e->pg_block - e->pg_len);
    size_t k = n < room ? n : room;
    memcpy(e->pg_buf + (size_t)e->pg_full * (size_t)e->pg_block + e->pg_len, p, k);
    e->pg_len += (int)k;
    p += k;
    n -= k;
    if (e->pg_len == e->pg_block) {
      e->pg_full++;
      e->pg_len = 0;
      if (e->pg_full == e->pg_threads) pg_batch(e, 0);
    }
  }
  return e->oom ? -1 : 0;
}

int kp_close(kp *e) {
  if (e->pg_block) pg_batch(e, 1);
  else c_close(e);
  return e->oom ? -1 : 0;
}

const uint8_t *kp_take(kp *e, size_t *len) {
  *len = e->out_len;
  e->out_len = 0;
  return e->out;
}
