/*
 * Small helpers both encoders share (goflate.c, kpflate.c); none of them
 * changes a result, only how fast it is had.
 */
#ifndef DF_UTIL_H
#define DF_UTIL_H
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && defined(__GNUC__)
#define DF_LE64 1
#else
#define DF_LE64 0
#endif

/*
 * The match length both encoders measure (Go's matchLen and klauspost's
 * matchLen give the same number): how many of the first `max` bytes of `a`
 * and `b` are equal, `max` itself when all are (and when max <= 0). Eight
 * bytes at a time on little-endian machines: the first differing byte is
 * the lowest set byte of the XOR of two words, so the result is the byte
 * loop's exactly.
 */
static inline int32_t df_match_len(const uint8_t *a, const uint8_t *b, int32_t max) {
  if (max <= 0) return max;
  int32_t i = 0;
#if DF_LE64
  for (; i + 8 <= max; i += 8) {
    uint64_t x, y;
    memcpy(&x, a + i, 8);
    memcpy(&y, b + i, 8);
    if (x != y) return i + (int32_t)(__builtin_ctzll(x ^ y) >> 3);
  }
#endif
  for (; i < max; i++)
    if (a[i] != b[i]) return i;
  return max;
}

/* Little-endian loads of 4 and 8 bytes at `p` (one instruction where the machine is little-endian). */
static inline uint32_t df_load32le(const uint8_t *p) {
#if DF_LE64
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
#else
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

static inline uint64_t df_load64le(const uint8_t *p) {
#if DF_LE64
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
#else
  return (uint64_t)df_load32le(p) | (uint64_t)df_load32le(p + 4) << 32;
#endif
}

/* Stores the 8 bytes of `v` at `p`, least significant first (the bit writers' byte order). */
static inline void df_store64le(uint8_t *p, uint64_t v) {
#if DF_LE64
  memcpy(p, &v, 8);
#else
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
#endif
}

#endif
