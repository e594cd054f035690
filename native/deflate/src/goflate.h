/*
 * goflate: a deflate encoder whose output is byte for byte that of Go's
 * compress/flate (Go 1.19; the algorithm has been unchanged since Go 1.7) at
 * every level: -2 (Huffman only), 0 (stored), 1 (BestSpeed), 2-9, and -1
 * (the default, level 6). Written from the behaviour of Go's encoder so
 * that `registry apply` can rebuild layers that Go tools compressed with
 * their original digests (issue 16).
 *
 * Streaming: gf_write() may be called with any split of the input (Go's
 * output does not depend on how its Writer is fed, only on Flush calls);
 * output accumulates in the encoder (gf_take() hands it over).
 */
#ifndef GOFLATE_H
#define GOFLATE_H
#include <stddef.h>
#include <stdint.h>

typedef struct gf gf;

/* A new encoder at `level` (-2..9; -1 is 6), or NULL for another level or no memory. */
gf *gf_new(int level);
void gf_free(gf *e);
/* Compresses `n` bytes; returns 0, or -1 when out of memory. */
int gf_write(gf *e, const uint8_t *p, size_t n);
/* Go's Writer.Flush (a sync flush). */
int gf_flush(gf *e);
/* Go's Writer.Close: the final block. */
int gf_close(gf *e);
/* The output produced so far: *len bytes at the returned pointer, valid until the next call; the encoder forgets them. */
const uint8_t *gf_take(gf *e, size_t *len);

#endif
