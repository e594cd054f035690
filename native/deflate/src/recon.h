/*
 * recon: reconstruction records for any deflate stream (issue 16's universal
 * fallback, in the spirit of preflate). A record holds what a deflate body
 * says beyond its uncompressed bytes: block boundaries and types, dynamic
 * Huffman headers verbatim, stored blocks' padding, and the LZ77 parse coded
 * as corrections to a predictor that both sides run over the uncompressed
 * bytes (recon.c). Given the uncompressed bytes and the record, the decoder
 * writes the original body bit for bit.
 *
 * The encoder reads the whole body (in memory) and keeps a bounded window of
 * what it inflates; the decoder is streaming (bytes in, body out), with a
 * bounded window, and never trusts the record: every value it decodes is
 * checked (a damaged record is an error, never a crash or a loop).
 */
#ifndef RECON_H
#define RECON_H
#include <stddef.h>
#include <stdint.h>

/*
 * Record of the raw deflate body `body` (n bytes). Returns 0 and a malloc'd
 * record in *out (*outn bytes) and the inflated size in *usize, or -1 with a
 * static reason in *why (the body is not a deflate stream this can record,
 * or memory ran out).
 */
int rec_encode(const uint8_t *body, size_t n, uint8_t **out, size_t *outn, uint64_t *usize, const char **why);

/*
 * Inflates the deflate stream at the start of `body` (n bytes, more may
 * follow it: the next gzip member): 0 with the bytes it takes and its
 * inflated size, or -1 with a static reason.
 */
int rec_scan(const uint8_t *body, size_t n, uint64_t *consumed, uint64_t *usize, const char **why);

typedef struct rec_dec rec_dec;

/* A decoder of `rec` (copied) that will write at most max_out bytes; NULL without memory. */
rec_dec *rec_dec_new(const uint8_t *rec, size_t n, uint64_t max_out);
void rec_dec_free(rec_dec *d);
/* Feeds uncompressed bytes; 0, or -1 on an error (rec_dec_error). */
int rec_dec_write(rec_dec *d, const uint8_t *p, size_t n);
/* No more bytes: writes the rest of the body; 0, or -1 on an error (the record does not fit the bytes). */
int rec_dec_finish(rec_dec *d);
/* Body bytes written so far (valid until the next call; handed over). */
const uint8_t *rec_dec_take(rec_dec *d, size_t *n);
const char *rec_dec_error(const rec_dec *d);

#endif
