/*
 * goflate: Go's compress/flate encoder, reproduced (see goflate.h).
 *
 * The structure follows the encoder being reproduced, since every decision
 * shows in the output: an LZ77 pass (hash chains with Go's per-level
 * good/lazy/nice/chain limits and its skip-hashing of levels 2-3, or, at
 * level 1, the snappy-like single-table matcher working on 64 KiB blocks),
 * blocks cut at 16384 tokens, and per block the cheapest of stored, fixed
 * and dynamic Huffman coding by Go's size estimates, with Go's
 * length-limited Huffman code construction. Only the output bytes have to
 * agree, not the buffering: bits are appended straight to one growing
 * buffer.
 */
#include "goflate.h"
#include "dfutil.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Constants                                                                 */
/* ------------------------------------------------------------------------ */

#define LOG_WINDOW 15
#define WINDOW_SIZE (1 << LOG_WINDOW)
#define WINDOW_MASK (WINDOW_SIZE - 1)
#define BASE_MATCH_LENGTH 3
#define MIN_MATCH_LENGTH 4
#define MAX_MATCH_LENGTH 258
#define BASE_MATCH_OFFSET 1
#define MAX_MATCH_OFFSET (1 << 15)
#define MAX_FLATE_BLOCK_TOKENS (1 << 14)
#define MAX_STORE_BLOCK_SIZE 65535
#define HASH_BITS 17
#define HASH_SIZE (1 << HASH_BITS)
#define HASH_MASK (HASH_SIZE - 1)
#define MAX_HASH_OFFSET (1 << 24)
#define SKIP_NEVER INT_MAX
#define HASHMUL 0x1e35a7bdu

#define MAX_NUM_LIT 286
#define OFFSET_CODE_COUNT 30
#define END_BLOCK_MARKER 256
#define LENGTH_CODES_START 257
#define CODEGEN_CODE_COUNT 19
#define BAD_CODE 255

/* level 1 (deflatefast) */
#define TABLE_BITS 14
#define TABLE_SIZE (1 << TABLE_BITS)
#define TABLE_MASK (TABLE_SIZE - 1)
#define TABLE_SHIFT (32 - TABLE_BITS)
#define BUFFER_RESET (INT32_MAX - MAX_STORE_BLOCK_SIZE * 2)
#define INPUT_MARGIN (16 - 1)
#define MIN_NON_LITERAL_BLOCK_SIZE (1 + 1 + INPUT_MARGIN)

/* Tokens: literal (type 0) or match (type 1: length-3 << 22 | offset-1). */
#define LENGTH_SHIFT 22
#define OFFSET_MASK ((1u << LENGTH_SHIFT) - 1)
#define MATCH_TYPE (1u << 30)
#define LITERAL_TOKEN(l) ((uint32_t)(l))
#define MATCH_TOKEN(xl, xo) (MATCH_TYPE + ((uint32_t)(xl) << LENGTH_SHIFT) + (uint32_t)(xo))
#define TOKEN_LENGTH(t) (((t) - MATCH_TYPE) >> LENGTH_SHIFT)
#define TOKEN_OFFSET(t) ((t) & OFFSET_MASK)

static const struct {
  int good, lazy, nice, chain, fast_skip;
} LEVELS[10] = {
    {0, 0, 0, 0, 0},       {0, 0, 0, 0, 0},        {4, 0, 16, 8, 5},         {4, 0, 32, 32, 6},
    {4, 4, 16, 16, SKIP_NEVER}, {8, 16, 32, 32, SKIP_NEVER}, {8, 16, 128, 128, SKIP_NEVER},
    {8, 32, 128, 256, SKIP_NEVER}, {32, 128, 258, 1024, SKIP_NEVER}, {32, 258, 258, 4096, SKIP_NEVER},
};

static uint8_t LENGTH_CODES[256];
static uint8_t OFFSET_CODES[256];
static const int8_t LENGTH_EXTRA_BITS[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint32_t LENGTH_BASE[29] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 255};
static const int8_t OFFSET_EXTRA_BITS[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
static const uint32_t OFFSET_BASE[30] = {0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x0006, 0x0008, 0x000c, 0x0010, 0x0018,
                                         0x0020, 0x0030, 0x0040, 0x0060, 0x0080, 0x00c0, 0x0100, 0x0180, 0x0200, 0x0300,
                                         0x0400, 0x0600, 0x0800, 0x0c00, 0x1000, 0x1800, 0x2000, 0x3000, 0x4000, 0x6000};
static const uint32_t CODEGEN_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

typedef struct {
  uint16_t code, len;
} hcode;

static hcode FIXED_LIT[MAX_NUM_LIT];
static hcode FIXED_OFF[OFFSET_CODE_COUNT];
static hcode HUFF_OFFSET[OFFSET_CODE_COUNT];
static int tables_ready;

static uint16_t reverse_bits(uint16_t number, unsigned bit_length) {
  uint16_t v = (uint16_t)(number << (16 - bit_length)), r = 0;
  for (int i = 0; i < 16; i++) r = (uint16_t)((r << 1) | ((v >> i) & 1));
  return r;
}

static void init_tables(void) {
  if (tables_ready) return;
  /* length codes: lengths 0..255 (length-3) to codes 0..28, as RFC 1951 */
  int code = 0;
  for (int c = 0; c < 28; c++) {
    int n = 1 << LENGTH_EXTRA_BITS[c];
    for (int i = 0; i < n && code < 256; i++) LENGTH_CODES[code++] = (uint8_t)c;
  }
  LENGTH_CODES[255] = 28;
  /* offset codes of offsets 0..255 (offset-1); larger ones shift (see offset_code) */
  for (int c = 0; c < 16; c++) {
    uint32_t end = c + 1 < 30 ? OFFSET_BASE[c + 1] : 0x8000;
    for (uint32_t o = OFFSET_BASE[c]; o < end && o < 256; o++) OFFSET_CODES[o] = (uint8_t)c;
  }
  for (int ch = 0; ch < MAX_NUM_LIT; ch++) {
    uint16_t bits, size;
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
    FIXED_LIT[ch].code = reverse_bits(bits, size);
    FIXED_LIT[ch].len = size;
  }
  for (int ch = 0; ch < OFFSET_CODE_COUNT; ch++) {
    FIXED_OFF[ch].code = reverse_bits((uint16_t)ch, 5);
    FIXED_OFF[ch].len = 5;
  }
  /* Go's huffOffset: an offset code of one symbol (code 0, length 1) */
  memset(HUFF_OFFSET, 0, sizeof(HUFF_OFFSET));
  HUFF_OFFSET[0].code = 0;
  HUFF_OFFSET[0].len = 1;
  tables_ready = 1;
}

static uint32_t offset_code(uint32_t off) {
  if (off < 256) return OFFSET_CODES[off];
  if ((off >> 7) < 256) return OFFSET_CODES[off >> 7] + 14u;
  return OFFSET_CODES[off >> 14] + 28u;
}

/* ------------------------------------------------------------------------ */
/* Huffman codes (Go's huffmanEncoder)                                        */
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

static int by_literal(const void *a, const void *b) {
  return (int)((const lnode *)a)->literal - (int)((const lnode *)b)->literal;
}

typedef struct {
  int32_t level, last_freq, next_char_freq, next_pair_freq, needed;
} level_info;

/* Bits per code length 1..maxBits for the sorted `list` of n nodes (Go's bitCounts); list has room for n+1. */
static void bit_counts(lnode *list, int32_t n, int32_t max_bits, int32_t *bit_count) {
  list[n].literal = UINT16_MAX;
  list[n].freq = INT32_MAX;
  if (max_bits > n - 1) max_bits = n - 1;
  /* one spare level: the top level's successor is written, never read */
  level_info levels[17];
  int32_t leaf_counts[17][17];
  memset(levels, 0, sizeof(levels));
  memset(leaf_counts, 0, sizeof(leaf_counts));
  for (int32_t level = 1; level <= max_bits; level++) {
    levels[level].level = level;
    levels[level].last_freq = list[1].freq;
    levels[level].next_char_freq = list[2].freq;
    levels[level].next_pair_freq = list[0].freq + list[1].freq;
    leaf_counts[level][level] = 2;
    if (level == 1) levels[level].next_pair_freq = INT32_MAX;
  }
  levels[max_bits].needed = 2 * n - 4;
  int32_t level = max_bits;
  for (;;) {
    level_info *l = &levels[level];
    if (l->next_pair_freq == INT32_MAX && l->next_char_freq == INT32_MAX) {
      l->needed = 0;
      levels[level + 1].next_pair_freq = INT32_MAX;
      level++;
      continue;
    }
    int32_t prev_freq = l->last_freq;
    if (l->next_char_freq < l->next_pair_freq) {
      int32_t nn = leaf_counts[level][level] + 1;
      l->last_freq = l->next_char_freq;
      leaf_counts[level][level] = nn;
      l->next_char_freq = list[nn].freq;
    } else {
      l->last_freq = l->next_pair_freq;
      memcpy(leaf_counts[level], leaf_counts[level - 1], sizeof(int32_t) * (size_t)level);
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
  for (int32_t lv = max_bits; lv > 0; lv--) {
    bit_count[bits] = leaf_counts[max_bits][lv] - leaf_counts[max_bits][lv - 1];
    bits++;
  }
  for (; bits < 17; bits++) bit_count[bits] = 0;
  bit_count[0] = 0;
}

/* Go's huffmanEncoder.generate: codes for `freq` (n symbols), at most max_bits long. */
static void generate(hcode *codes, const int32_t *freq, int n, int32_t max_bits) {
  lnode list[MAX_NUM_LIT + 1];
  int count = 0;
  for (int i = 0; i < n; i++) {
    if (freq[i] != 0) {
      list[count].literal = (uint16_t)i;
      list[count].freq = freq[i];
      count++;
    } else {
      codes[i].len = 0;
    }
  }
  if (count <= 2) {
    for (int i = 0; i < count; i++) {
      codes[list[i].literal].code = (uint16_t)i;
      codes[list[i].literal].len = 1;
    }
    return;
  }
  qsort(list, (size_t)count, sizeof(lnode), by_freq);
  int32_t bit_count[17];
  bit_counts(list, count, max_bits, bit_count);
  /* assignEncodingAndSize */
  uint16_t code = 0;
  int len = count;
  for (int nb = 0; nb < 17; nb++) {
    code = (uint16_t)(code << 1);
    int32_t bits = bit_count[nb];
    if (nb == 0 || bits == 0) continue;
    lnode *chunk = list + len - bits;
    qsort(chunk, (size_t)bits, sizeof(lnode), by_literal);
    for (int32_t i = 0; i < bits; i++) {
      codes[chunk[i].literal].code = reverse_bits(code, (unsigned)nb);
      codes[chunk[i].literal].len = (uint16_t)nb;
      code++;
    }
    len -= bits;
  }
}

static long bit_length(const hcode *codes, const int32_t *freq, int n) {
  long total = 0;
  for (int i = 0; i < n; i++)
    if (freq[i] != 0) total += (long)freq[i] * codes[i].len;
  return total;
}

/* ------------------------------------------------------------------------ */
/* The encoder                                                               */
/* ------------------------------------------------------------------------ */

typedef struct {
  uint32_t val;
  int32_t offset;
} table_entry;

struct gf {
  int level;
  int good, lazy, nice, chain, fast_skip;
  int sync;
  int oom;

  /* output and bit writer */
  uint8_t *out;
  size_t out_len, out_cap;
  uint64_t bits;
  unsigned nbits;

  int32_t lit_freq[MAX_NUM_LIT];
  int32_t off_freq[OFFSET_CODE_COUNT];
  int32_t cg_freq[CODEGEN_CODE_COUNT];
  uint8_t codegen[MAX_NUM_LIT + OFFSET_CODE_COUNT + 1];
  hcode lit_enc[MAX_NUM_LIT];
  hcode off_enc[OFFSET_CODE_COUNT];
  hcode cg_enc[CODEGEN_CODE_COUNT];

  /* window and tokens */
  uint8_t *window;
  int window_len; /* allocated */
  int window_end;
  int index;
  int block_start;
  int byte_available;
  uint32_t *tokens;
  int ntokens;

  /* levels 2-9 */
  int length, offset, max_insert_index, chain_head, hash_offset;
  uint32_t *hash_head;
  /*
   * Go's hashPrev, as distances: the position before `p` in p's chain is
   * p - hash_prev[p & WINDOW_MASK] (Go stores it absolute, index +
   * hashOffset). A distance over 0xffff is stored as 0xffff: such a
   * position is more than a window behind any search that reaches p, so
   * the walk stops there as Go's does (i < minIndex), and a position
   * before the window (Go's i < 0) keeps its exact, negative value. Half
   * the memory of Go's, and nothing to rebase when hashOffset is.
   */
  uint16_t *hash_prev;

  /* level 1 */
  table_entry *table;
  uint8_t *prev;
  int32_t prev_len;
  int32_t cur;
};

static void put_bytes(gf *e, const uint8_t *p, size_t n) {
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
static int reserve(gf *e, size_t n) {
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

static void write_bits(gf *e, uint64_t b, unsigned nb) {
  e->bits |= b << e->nbits;
  e->nbits += nb;
  if (e->nbits >= 48) {
    /* Go's writeBits: the low 6 bytes out (stored as 8, of which the last 2 are overwritten later) */
    if (reserve(e, 8)) {
      df_store64le(e->out + e->out_len, e->bits);
      e->out_len += 6;
    }
    e->bits >>= 48;
    e->nbits -= 48;
  }
}

static void write_code(gf *e, hcode c) { write_bits(e, c.code, c.len); }

/* Go's huffmanBitWriter.flush: the pending bits, padded to a byte. */
static void bw_flush(gf *e) {
  while (e->nbits != 0) {
    uint8_t b = (uint8_t)e->bits;
    put_bytes(e, &b, 1);
    e->bits >>= 8;
    e->nbits = e->nbits > 8 ? e->nbits - 8 : 0;
  }
  e->bits = 0;
}

static void write_bytes(gf *e, const uint8_t *p, size_t n) {
  /* only called on a byte boundary (after a stored header) */
  while (e->nbits != 0) {
    uint8_t b = (uint8_t)e->bits;
    put_bytes(e, &b, 1);
    e->bits >>= 8;
    e->nbits -= 8;
  }
  put_bytes(e, p, n);
}

static void write_stored_header(gf *e, int length, int eof) {
  write_bits(e, eof ? 1 : 0, 3);
  bw_flush(e);
  write_bits(e, (uint32_t)length, 16);
  write_bits(e, (uint16_t)~(uint16_t)length, 16);
}

static void write_fixed_header(gf *e, int eof) { write_bits(e, eof ? 3 : 2, 3); }

static void generate_codegen(gf *e, int num_literals, int num_offsets, const hcode *lit, const hcode *off) {
  memset(e->cg_freq, 0, sizeof(e->cg_freq));
  uint8_t *codegen = e->codegen;
  for (int i = 0; i < num_literals; i++) codegen[i] = (uint8_t)lit[i].len;
  for (int i = 0; i < num_offsets; i++) codegen[num_literals + i] = (uint8_t)off[i].len;
  codegen[num_literals + num_offsets] = BAD_CODE;
  uint8_t size = codegen[0];
  int count = 1;
  int out = 0;
  for (int in = 1; size != BAD_CODE; in++) {
    uint8_t next = codegen[in];
    if (next == size) {
      count++;
      continue;
    }
    if (size != 0) {
      codegen[out++] = size;
      e->cg_freq[size]++;
      count--;
      while (count >= 3) {
        int n = count < 6 ? count : 6;
        codegen[out++] = 16;
        codegen[out++] = (uint8_t)(n - 3);
        e->cg_freq[16]++;
        count -= n;
      }
    } else {
      while (count >= 11) {
        int n = count < 138 ? count : 138;
        codegen[out++] = 18;
        codegen[out++] = (uint8_t)(n - 11);
        e->cg_freq[18]++;
        count -= n;
      }
      if (count >= 3) {
        codegen[out++] = 17;
        codegen[out++] = (uint8_t)(count - 3);
        e->cg_freq[17]++;
        count = 0;
      }
    }
    count--;
    for (; count >= 0; count--) {
      codegen[out++] = size;
      e->cg_freq[size]++;
    }
    size = next;
    count = 1;
  }
  codegen[out] = BAD_CODE;
}

static long dynamic_size(gf *e, const hcode *lit, const hcode *off, long extra_bits, int *num_codegens) {
  int n = CODEGEN_CODE_COUNT;
  while (n > 4 && e->cg_freq[CODEGEN_ORDER[n - 1]] == 0) n--;
  long header = 3 + 5 + 5 + 4 + (3 * n) + bit_length(e->cg_enc, e->cg_freq, CODEGEN_CODE_COUNT) + (long)e->cg_freq[16] * 2 +
                (long)e->cg_freq[17] * 3 + (long)e->cg_freq[18] * 7;
  *num_codegens = n;
  return header + bit_length(lit, e->lit_freq, MAX_NUM_LIT) + bit_length(off, e->off_freq, OFFSET_CODE_COUNT) + extra_bits;
}

static long fixed_size(gf *e, long extra_bits) {
  return 3 + bit_length(FIXED_LIT, e->lit_freq, MAX_NUM_LIT) + bit_length(FIXED_OFF, e->off_freq, OFFSET_CODE_COUNT) + extra_bits;
}

/* Go's storedSize: bits of a stored block of `n` bytes, when `in` is known and fits one. */
static int stored_size(const uint8_t *in, int n, long *size) {
  if (!in || n > MAX_STORE_BLOCK_SIZE) return 0;
  *size = (long)(n + 5) * 8;
  return 1;
}

static void write_dynamic_header(gf *e, int num_literals, int num_offsets, int num_codegens, int eof) {
  write_bits(e, eof ? 5 : 4, 3);
  write_bits(e, (uint32_t)(num_literals - 257), 5);
  write_bits(e, (uint32_t)(num_offsets - 1), 5);
  write_bits(e, (uint32_t)(num_codegens - 4), 4);
  for (int i = 0; i < num_codegens; i++) write_bits(e, e->cg_enc[CODEGEN_ORDER[i]].len, 3);
  for (int i = 0;;) {
    int cw = e->codegen[i++];
    if (cw == BAD_CODE) break;
    write_code(e, e->cg_enc[cw]);
    if (cw == 16) write_bits(e, e->codegen[i++], 2);
    else if (cw == 17) write_bits(e, e->codegen[i++], 3);
    else if (cw == 18) write_bits(e, e->codegen[i++], 7);
  }
}

/* Go's indexTokens: frequencies and the block's own codes. */
static void index_tokens(gf *e, const uint32_t *tokens, int n, int *num_literals, int *num_offsets) {
  memset(e->lit_freq, 0, sizeof(e->lit_freq));
  memset(e->off_freq, 0, sizeof(e->off_freq));
  for (int i = 0; i < n; i++) {
    uint32_t t = tokens[i];
    if (t < MATCH_TYPE) {
      e->lit_freq[t]++;
      continue;
    }
    e->lit_freq[LENGTH_CODES_START + LENGTH_CODES[TOKEN_LENGTH(t)]]++;
    e->off_freq[offset_code(TOKEN_OFFSET(t))]++;
  }
  int nl = MAX_NUM_LIT;
  while (e->lit_freq[nl - 1] == 0) nl--;
  int no = OFFSET_CODE_COUNT;
  while (no > 0 && e->off_freq[no - 1] == 0) no--;
  if (no == 0) {
    e->off_freq[0] = 1;
    no = 1;
  }
  generate(e->lit_enc, e->lit_freq, MAX_NUM_LIT, 15);
  generate(e->off_enc, e->off_freq, OFFSET_CODE_COUNT, 15);
  *num_literals = nl;
  *num_offsets = no;
}

/*
 * Go's writeTokens. The bit stream is what writing each code and extra bits
 * in turn gives; only when whole bytes leave the bit buffer differs (after
 * every token here, not 6 at a time), which changes no byte: the buffer is
 * kept in locals and at most 7 bits stay in it, so a token (at most 48
 * bits) always fits.
 */
static void write_tokens(gf *e, const uint32_t *tokens, int n, const hcode *le, const hcode *oe) {
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
      if (t < MATCH_TYPE) {
        bits |= (uint64_t)le[t].code << nbits;
        nbits += le[t].len;
      } else {
        uint32_t length = TOKEN_LENGTH(t);
        uint32_t lc = LENGTH_CODES[length];
        hcode c = le[lc + LENGTH_CODES_START];
        bits |= (uint64_t)c.code << nbits;
        nbits += c.len;
        bits |= (uint64_t)(length - LENGTH_BASE[lc]) << nbits;
        nbits += (unsigned)LENGTH_EXTRA_BITS[lc];
        uint32_t offset = TOKEN_OFFSET(t);
        uint32_t oc = offset_code(offset);
        c = oe[oc];
        bits |= (uint64_t)c.code << nbits;
        nbits += c.len;
        bits |= (uint64_t)(offset - OFFSET_BASE[oc]) << nbits;
        nbits += (unsigned)OFFSET_EXTRA_BITS[oc];
      }
      df_store64le(out, bits);
      out += nbits >> 3;
      bits >>= nbits & ~7u;
      nbits &= 7;
    }
    e->out_len = (size_t)(out - e->out);
    e->bits = bits;
    e->nbits = nbits;
    return;
  }
  for (int i = 0; i < n; i++) {
    uint32_t t = tokens[i];
    if (t < MATCH_TYPE) {
      write_code(e, le[t]);
      continue;
    }
    uint32_t length = TOKEN_LENGTH(t);
    uint32_t lc = LENGTH_CODES[length];
    write_code(e, le[lc + LENGTH_CODES_START]);
    if (LENGTH_EXTRA_BITS[lc] > 0) write_bits(e, length - LENGTH_BASE[lc], (unsigned)LENGTH_EXTRA_BITS[lc]);
    uint32_t offset = TOKEN_OFFSET(t);
    uint32_t oc = offset_code(offset);
    write_code(e, oe[oc]);
    if (OFFSET_EXTRA_BITS[oc] > 0) write_bits(e, offset - OFFSET_BASE[oc], (unsigned)OFFSET_EXTRA_BITS[oc]);
  }
}

/* Go's writeBlock: `tokens` has room for one more (the end of block). */
static void write_block(gf *e, uint32_t *tokens, int n, int eof, const uint8_t *input, int input_len) {
  tokens[n++] = END_BLOCK_MARKER;
  int num_literals, num_offsets;
  index_tokens(e, tokens, n, &num_literals, &num_offsets);
  long extra_bits = 0;
  long ssize = 0;
  int storable = stored_size(input, input_len, &ssize);
  if (storable) {
    for (int lc = LENGTH_CODES_START + 8; lc < num_literals; lc++) extra_bits += (long)e->lit_freq[lc] * LENGTH_EXTRA_BITS[lc - LENGTH_CODES_START];
    for (int oc = 4; oc < num_offsets; oc++) extra_bits += (long)e->off_freq[oc] * OFFSET_EXTRA_BITS[oc];
  }
  const hcode *lit = FIXED_LIT, *off = FIXED_OFF;
  long size = fixed_size(e, extra_bits);
  int num_codegens;
  generate_codegen(e, num_literals, num_offsets, e->lit_enc, e->off_enc);
  generate(e->cg_enc, e->cg_freq, CODEGEN_CODE_COUNT, 7);
  long dsize = dynamic_size(e, e->lit_enc, e->off_enc, extra_bits, &num_codegens);
  if (dsize < size) {
    size = dsize;
    lit = e->lit_enc;
    off = e->off_enc;
  }
  if (storable && ssize < size) {
    write_stored_header(e, input_len, eof);
    write_bytes(e, input, (size_t)input_len);
    return;
  }
  if (lit == FIXED_LIT) write_fixed_header(e, eof);
  else write_dynamic_header(e, num_literals, num_offsets, num_codegens, eof);
  write_tokens(e, tokens, n, lit, off);
}

/* Go's writeBlockDynamic (level 1). */
static void write_block_dynamic(gf *e, uint32_t *tokens, int n, int eof, const uint8_t *input, int input_len) {
  tokens[n++] = END_BLOCK_MARKER;
  int num_literals, num_offsets, num_codegens;
  index_tokens(e, tokens, n, &num_literals, &num_offsets);
  generate_codegen(e, num_literals, num_offsets, e->lit_enc, e->off_enc);
  generate(e->cg_enc, e->cg_freq, CODEGEN_CODE_COUNT, 7);
  long size = dynamic_size(e, e->lit_enc, e->off_enc, 0, &num_codegens);
  long ssize;
  if (stored_size(input, input_len, &ssize) && ssize < size + (size >> 4)) {
    write_stored_header(e, input_len, eof);
    write_bytes(e, input, (size_t)input_len);
    return;
  }
  write_dynamic_header(e, num_literals, num_offsets, num_codegens, eof);
  write_tokens(e, tokens, n, e->lit_enc, e->off_enc);
}

/* Go's writeBlockHuff: literals only. */
static void write_block_huff(gf *e, int eof, const uint8_t *input, int input_len) {
  memset(e->lit_freq, 0, sizeof(e->lit_freq));
  for (int i = 0; i < input_len; i++) e->lit_freq[input[i]]++;
  e->lit_freq[END_BLOCK_MARKER] = 1;
  const int num_literals = END_BLOCK_MARKER + 1;
  e->off_freq[0] = 1;
  generate(e->lit_enc, e->lit_freq, MAX_NUM_LIT, 15);
  int num_codegens;
  generate_codegen(e, num_literals, 1, e->lit_enc, HUFF_OFFSET);
  generate(e->cg_enc, e->cg_freq, CODEGEN_CODE_COUNT, 7);
  long size = dynamic_size(e, e->lit_enc, HUFF_OFFSET, 0, &num_codegens);
  long ssize;
  if (stored_size(input, input_len, &ssize) && ssize < size + (size >> 4)) {
    write_stored_header(e, input_len, eof);
    write_bytes(e, input, (size_t)input_len);
    return;
  }
  write_dynamic_header(e, num_literals, 1, num_codegens, eof);
  for (int i = 0; i < input_len; i++) write_code(e, e->lit_enc[input[i]]);
  write_code(e, e->lit_enc[END_BLOCK_MARKER]);
}

/* ------------------------------------------------------------------------ */
/* Levels 2-9: hash chains with lazy matching                                */
/* ------------------------------------------------------------------------ */

static uint32_t hash4(const uint8_t *b) {
  return ((uint32_t)b[3] | (uint32_t)b[2] << 8 | (uint32_t)b[1] << 16 | (uint32_t)b[0] << 24) * HASHMUL >> (32 - HASH_BITS);
}

/* What hash_prev holds for position `index` whose chain continues at `head` (a hash_head value: position + hash_offset). */
static inline uint16_t prev_distance(const gf *e, int index, int head) {
  long d = (long)index - ((long)head - e->hash_offset); /* > 0: head is an earlier position, or none (before the window) */
  return d > 0xffff ? 0xffff : (uint16_t)d;
}

static int fill_deflate(gf *e, const uint8_t *b, size_t n) {
  if (e->index >= 2 * WINDOW_SIZE - (MIN_MATCH_LENGTH + MAX_MATCH_LENGTH)) {
    memmove(e->window, e->window + WINDOW_SIZE, WINDOW_SIZE);
    e->index -= WINDOW_SIZE;
    e->window_end -= WINDOW_SIZE;
    if (e->block_start >= WINDOW_SIZE) e->block_start -= WINDOW_SIZE;
    else e->block_start = INT_MAX;
    e->hash_offset += WINDOW_SIZE;
    if (e->hash_offset > MAX_HASH_OFFSET) {
      int delta = e->hash_offset - 1;
      e->hash_offset -= delta;
      e->chain_head -= delta;
      for (int i = 0; i < HASH_SIZE; i++) e->hash_head[i] = (int)e->hash_head[i] > delta ? (uint32_t)((int)e->hash_head[i] - delta) : 0;
    }
  }
  size_t room = (size_t)(e->window_len - e->window_end);
  if (n > room) n = room;
  memcpy(e->window + e->window_end, b, n);
  e->window_end += (int)n;
  return (int)n;
}

static void write_block_at(gf *e, int index) {
  if (index > 0) {
    const uint8_t *win = NULL;
    int len = 0;
    if (e->block_start <= index) {
      win = e->window + e->block_start;
      len = index - e->block_start;
    }
    e->block_start = index;
    write_block(e, e->tokens, e->ntokens, 0, win, len);
  }
}

static int match_len(const uint8_t *a, const uint8_t *b, int max) { return df_match_len(a, b, max); }

static int find_match(gf *e, int pos, int prev_head, int prev_length, int lookahead, int *out_len, int *out_off) {
  int min_match_look = MAX_MATCH_LENGTH;
  if (lookahead < min_match_look) min_match_look = lookahead;
  const uint8_t *win = e->window;
  int win_len = pos + min_match_look;
  int nice = win_len - pos;
  if (e->nice < nice) nice = e->nice;
  int tries = e->chain;
  int length = prev_length;
  int offset = 0, ok = 0;
  if (length >= e->good) tries >>= 2;
  uint8_t w_end = win[pos + length];
  const uint8_t *w_pos = win + pos;
  int min_index = pos - WINDOW_SIZE;
  for (long i = prev_head; tries > 0; tries--) {
    if (w_end == win[i + length]) {
      int n = match_len(win + i, w_pos, min_match_look);
      if (n > length && (n > MIN_MATCH_LENGTH || pos - i <= 4096)) {
        length = n;
        offset = pos - (int)i;
        ok = 1;
        if (n >= nice) break;
        w_end = win[pos + n];
      }
    }
    if (i == min_index) break;
    i -= (long)e->hash_prev[i & WINDOW_MASK];
    if (i < min_index || i < 0) break;
  }
  *out_len = length;
  *out_off = offset;
  return ok;
}

static void deflate_step(gf *e) {
  if (e->window_end - e->index < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH && !e->sync) return;
  e->max_insert_index = e->window_end - (MIN_MATCH_LENGTH - 1);
  for (;;) {
    int lookahead = e->window_end - e->index;
    if (lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH) {
      if (!e->sync) break;
      if (lookahead == 0) {
        if (e->byte_available) {
          e->tokens[e->ntokens++] = LITERAL_TOKEN(e->window[e->index - 1]);
          e->byte_available = 0;
        }
        if (e->ntokens > 0) {
          write_block_at(e, e->index);
          e->ntokens = 0;
        }
        break;
      }
    }
    if (e->index < e->max_insert_index) {
      uint32_t h = hash4(e->window + e->index);
      uint32_t *hh = &e->hash_head[h & HASH_MASK];
      e->chain_head = (int)*hh;
      e->hash_prev[e->index & WINDOW_MASK] = prev_distance(e, e->index, e->chain_head);
      *hh = (uint32_t)(e->index + e->hash_offset);
    }
    int prev_length = e->length;
    int prev_offset = e->offset;
    e->length = MIN_MATCH_LENGTH - 1;
    e->offset = 0;
    int min_index = e->index - WINDOW_SIZE;
    if (min_index < 0) min_index = 0;
    if (e->chain_head - e->hash_offset >= min_index &&
        ((e->fast_skip != SKIP_NEVER && lookahead > MIN_MATCH_LENGTH - 1) ||
         (e->fast_skip == SKIP_NEVER && lookahead > prev_length && prev_length < e->lazy))) {
      int nl, no;
      if (find_match(e, e->index, e->chain_head - e->hash_offset, MIN_MATCH_LENGTH - 1, lookahead, &nl, &no)) {
        e->length = nl;
        e->offset = no;
      }
    }
    if ((e->fast_skip != SKIP_NEVER && e->length >= MIN_MATCH_LENGTH) ||
        (e->fast_skip == SKIP_NEVER && prev_length >= MIN_MATCH_LENGTH && e->length <= prev_length)) {
      if (e->fast_skip != SKIP_NEVER)
        e->tokens[e->ntokens++] = MATCH_TOKEN(e->length - BASE_MATCH_LENGTH, e->offset - BASE_MATCH_OFFSET);
      else
        e->tokens[e->ntokens++] = MATCH_TOKEN(prev_length - BASE_MATCH_LENGTH, prev_offset - BASE_MATCH_OFFSET);
      if (e->length <= e->fast_skip) {
        int new_index = e->fast_skip != SKIP_NEVER ? e->index + e->length : e->index + prev_length - 1;
        int index = e->index;
        for (index++; index < new_index; index++) {
          if (index < e->max_insert_index) {
            uint32_t h = hash4(e->window + index);
            uint32_t *hh = &e->hash_head[h & HASH_MASK];
            e->hash_prev[index & WINDOW_MASK] = prev_distance(e, index, (int)*hh);
            *hh = (uint32_t)(index + e->hash_offset);
          }
        }
        e->index = index;
        if (e->fast_skip == SKIP_NEVER) {
          e->byte_available = 0;
          e->length = MIN_MATCH_LENGTH - 1;
        }
      } else {
        e->index += e->length;
      }
      if (e->ntokens == MAX_FLATE_BLOCK_TOKENS) {
        write_block_at(e, e->index);
        e->ntokens = 0;
      }
    } else {
      if (e->fast_skip != SKIP_NEVER || e->byte_available) {
        int i = e->fast_skip != SKIP_NEVER ? e->index : e->index - 1;
        e->tokens[e->ntokens++] = LITERAL_TOKEN(e->window[i]);
        if (e->ntokens == MAX_FLATE_BLOCK_TOKENS) {
          write_block_at(e, i + 1);
          e->ntokens = 0;
        }
      }
      e->index++;
      if (e->fast_skip == SKIP_NEVER) e->byte_available = 1;
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Level 1: Go's deflatefast                                                 */
/* ------------------------------------------------------------------------ */

static inline uint32_t load32(const uint8_t *b, int32_t i) { return df_load32le(b + i); }

static inline uint64_t load64(const uint8_t *b, int32_t i) { return df_load64le(b + i); }

static uint32_t fhash(uint32_t u) { return (u * HASHMUL) >> TABLE_SHIFT; }

static void fast_shift_offsets(gf *e) {
  if (e->prev_len == 0) {
    memset(e->table, 0, sizeof(table_entry) * TABLE_SIZE);
    e->cur = MAX_MATCH_OFFSET + 1;
    return;
  }
  for (int i = 0; i < TABLE_SIZE; i++) {
    int32_t v = e->table[i].offset - e->cur + MAX_MATCH_OFFSET + 1;
    if (v < 0) v = 0;
    e->table[i].offset = v;
  }
  e->cur = MAX_MATCH_OFFSET + 1;
}

static void fast_reset(gf *e) {
  e->prev_len = 0;
  e->cur += MAX_MATCH_OFFSET;
  if (e->cur >= BUFFER_RESET) fast_shift_offsets(e);
}

static int32_t fast_match_len(gf *e, int32_t s, int32_t t, const uint8_t *src, int32_t src_len) {
  int32_t s1 = s + MAX_MATCH_LENGTH - 4;
  if (s1 > src_len) s1 = src_len;
  if (t >= 0) return df_match_len(src + s, src + t, s1 - s);
  int32_t tp = e->prev_len + t;
  if (tp < 0) return 0;
  int32_t alen = s1 - s;
  int32_t blen = e->prev_len - tp;
  if (blen > alen) blen = alen;
  if (blen > 0) {
    int32_t k = df_match_len(src + s, e->prev + tp, blen);
    if (k < blen) return k;
  }
  int32_t n = blen;
  if (s + n == s1) return n;
  int32_t rest = s1 - (s + n);
  if (rest <= 0) return rest + n;
  return df_match_len(src + s + n, src, rest) + n;
}

static void emit_literals(gf *e, const uint8_t *lit, int32_t n) {
  for (int32_t i = 0; i < n; i++) e->tokens[e->ntokens++] = LITERAL_TOKEN(lit[i]);
}

static void fast_encode(gf *e, const uint8_t *src, int32_t src_len) {
  e->ntokens = 0;
  if (e->cur >= BUFFER_RESET) fast_shift_offsets(e);
  if (src_len < MIN_NON_LITERAL_BLOCK_SIZE) {
    e->cur += MAX_STORE_BLOCK_SIZE;
    e->prev_len = 0;
    emit_literals(e, src, src_len);
    return;
  }
  int32_t s_limit = src_len - INPUT_MARGIN;
  int32_t next_emit = 0, s = 0;
  uint32_t cv = load32(src, s);
  uint32_t next_hash = fhash(cv);
  for (;;) {
    int32_t skip = 32;
    int32_t next_s = s;
    table_entry candidate;
    for (;;) {
      s = next_s;
      int32_t between = skip >> 5;
      next_s = s + between;
      skip += between;
      if (next_s > s_limit) goto remainder;
      candidate = e->table[next_hash & TABLE_MASK];
      uint32_t now = load32(src, next_s);
      e->table[next_hash & TABLE_MASK].offset = s + e->cur;
      e->table[next_hash & TABLE_MASK].val = cv;
      next_hash = fhash(now);
      int32_t offset = s - (candidate.offset - e->cur);
      if (offset > MAX_MATCH_OFFSET || cv != candidate.val) {
        cv = now;
        continue;
      }
      break;
    }
    emit_literals(e, src + next_emit, s - next_emit);
    for (;;) {
      s += 4;
      int32_t t = candidate.offset - e->cur + 4;
      int32_t l = fast_match_len(e, s, t, src, src_len);
      e->tokens[e->ntokens++] = MATCH_TOKEN((uint32_t)(l + 4 - BASE_MATCH_LENGTH), (uint32_t)(s - t - BASE_MATCH_OFFSET));
      s += l;
      next_emit = s;
      if (s >= s_limit) goto remainder;
      uint64_t x = load64(src, s - 1);
      uint32_t prev_hash = fhash((uint32_t)x);
      e->table[prev_hash & TABLE_MASK].offset = e->cur + s - 1;
      e->table[prev_hash & TABLE_MASK].val = (uint32_t)x;
      x >>= 8;
      uint32_t curr_hash = fhash((uint32_t)x);
      candidate = e->table[curr_hash & TABLE_MASK];
      e->table[curr_hash & TABLE_MASK].offset = e->cur + s;
      e->table[curr_hash & TABLE_MASK].val = (uint32_t)x;
      int32_t offset = s - (candidate.offset - e->cur);
      if (offset > MAX_MATCH_OFFSET || (uint32_t)x != candidate.val) {
        cv = (uint32_t)(x >> 8);
        next_hash = fhash(cv);
        s++;
        break;
      }
    }
  }
remainder:
  if (next_emit < src_len) emit_literals(e, src + next_emit, src_len - next_emit);
  e->cur += src_len;
  memcpy(e->prev, src, (size_t)src_len);
  e->prev_len = src_len;
}

static void enc_speed(gf *e) {
  if (e->window_end < MAX_STORE_BLOCK_SIZE) {
    if (!e->sync) return;
    if (e->window_end < 128) {
      if (e->window_end == 0) return;
      if (e->window_end <= 16) {
        write_stored_header(e, e->window_end, 0);
        write_bytes(e, e->window, (size_t)e->window_end);
      } else {
        write_block_huff(e, 0, e->window, e->window_end);
      }
      e->window_end = 0;
      fast_reset(e);
      return;
    }
  }
  fast_encode(e, e->window, e->window_end);
  if (e->ntokens > e->window_end - (e->window_end >> 4)) write_block_huff(e, 0, e->window, e->window_end);
  else write_block_dynamic(e, e->tokens, e->ntokens, 0, e->window, e->window_end);
  e->window_end = 0;
}

/* ------------------------------------------------------------------------ */
/* Levels 0 and -2                                                           */
/* ------------------------------------------------------------------------ */

static int fill_store(gf *e, const uint8_t *b, size_t n) {
  size_t room = (size_t)(e->window_len - e->window_end);
  if (n > room) n = room;
  memcpy(e->window + e->window_end, b, n);
  e->window_end += (int)n;
  return (int)n;
}

static void store_step(gf *e) {
  if (e->window_end > 0 && (e->window_end == MAX_STORE_BLOCK_SIZE || e->sync)) {
    write_stored_header(e, e->window_end, 0);
    write_bytes(e, e->window, (size_t)e->window_end);
    e->window_end = 0;
  }
}

static void store_huff_step(gf *e) {
  if ((e->window_end < e->window_len && !e->sync) || e->window_end == 0) return;
  write_block_huff(e, 0, e->window, e->window_end);
  e->window_end = 0;
}

/* ------------------------------------------------------------------------ */
/* API                                                                       */
/* ------------------------------------------------------------------------ */

static void step(gf *e) {
  switch (e->level) {
    case 0: store_step(e); break;
    case -2: store_huff_step(e); break;
    case 1: enc_speed(e); break;
    default: deflate_step(e); break;
  }
}

static int fill(gf *e, const uint8_t *b, size_t n) {
  return e->level >= 2 ? fill_deflate(e, b, n) : fill_store(e, b, n);
}

gf *gf_new(int level) {
  if (level == -1) level = 6;
  if (level < -2 || level > 9) return NULL;
  init_tables();
  gf *e = calloc(1, sizeof(*e));
  if (!e) return NULL;
  e->level = level;
  if (level >= 2) {
    e->good = LEVELS[level].good;
    e->lazy = LEVELS[level].lazy;
    e->nice = LEVELS[level].nice;
    e->chain = LEVELS[level].chain;
    e->fast_skip = LEVELS[level].fast_skip;
    e->window_len = 2 * WINDOW_SIZE;
    e->window = malloc((size_t)e->window_len);
    e->tokens = malloc(sizeof(uint32_t) * (MAX_FLATE_BLOCK_TOKENS + 1));
    e->hash_head = calloc(HASH_SIZE, sizeof(uint32_t));
    e->hash_prev = calloc(WINDOW_SIZE, sizeof(uint16_t));
    e->hash_offset = 1;
    e->length = MIN_MATCH_LENGTH - 1;
    e->chain_head = -1;
    if (!e->window || !e->tokens || !e->hash_head || !e->hash_prev) goto fail;
  } else {
    e->window_len = MAX_STORE_BLOCK_SIZE;
    e->window = malloc((size_t)e->window_len);
    if (!e->window) goto fail;
    if (level == 1 || level == -2) {
      e->tokens = malloc(sizeof(uint32_t) * (MAX_STORE_BLOCK_SIZE + 1));
      if (!e->tokens) goto fail;
    }
    if (level == 1) {
      e->table = calloc(TABLE_SIZE, sizeof(table_entry));
      e->prev = malloc(MAX_STORE_BLOCK_SIZE);
      e->cur = MAX_STORE_BLOCK_SIZE;
      if (!e->table || !e->prev) goto fail;
    }
  }
  return e;
fail:
  gf_free(e);
  return NULL;
}

void gf_free(gf *e) {
  if (!e) return;
  free(e->out);
  free(e->window);
  free(e->tokens);
  free(e->hash_head);
  free(e->hash_prev);
  free(e->table);
  free(e->prev);
  free(e);
}

int gf_write(gf *e, const uint8_t *p, size_t n) {
  while (n > 0) {
    step(e);
    int k = fill(e, p, n);
    p += k;
    n -= (size_t)k;
  }
  return e->oom ? -1 : 0;
}

int gf_flush(gf *e) {
  e->sync = 1;
  step(e);
  write_stored_header(e, 0, 0);
  bw_flush(e);
  e->sync = 0;
  return e->oom ? -1 : 0;
}

int gf_close(gf *e) {
  e->sync = 1;
  step(e);
  write_stored_header(e, 0, 1);
  bw_flush(e);
  return e->oom ? -1 : 0;
}

const uint8_t *gf_take(gf *e, size_t *len) {
  *len = e->out_len;
  e->out_len = 0;
  return e->out;
}
