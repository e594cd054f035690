#ifndef D4FS_CM_H
#define D4FS_CM_H
#include <stddef.h>
#include <stdint.h>

/* Results: 0 ok, 1 the coded stream ends early (damaged), 2 out of memory. */

/* Decode n diff bytes, given the n old bytes under them, into out (n bytes). *consumed: bytes of packed read. */
int cm_decode(const uint8_t *packed, size_t plen, const uint8_t *ou, size_t n, uint8_t *out, size_t *consumed);

/* Encode n diff bytes given the n old bytes under them; *out is malloc'ed (free it). */
int cm_encode(const uint8_t *diff, const uint8_t *ou, size_t n, uint8_t **out, size_t *outlen);

/* Section method 4 (block model of which diff bytes are non-zero; segments coded on up to
 * `threads` threads; <= 0: one per processor, at most 8). cmb_encode codes the zero/non-zero
 * pattern of diff; cmb_decode rebuilds the diff stream from it and the nlits non-zero bytes
 * `lits`. Results as method 3's functions; cmb_decode also returns 1 when the segment table
 * is inconsistent, a segment is not consumed exactly, or the literals do not fit the pattern
 * (count differs, or a zero literal). */
size_t cmb_segments(size_t n);
int cmb_encode(const uint8_t *diff, const uint8_t *ou, size_t n, int threads, uint8_t **out, size_t *outlen);
int cmb_decode(const uint8_t *packed, size_t plen, const uint8_t *ou, size_t n, const uint8_t *lits, size_t nlits, uint8_t *out, int threads);

#endif
