/*
 * kpflate: deflate streams byte for byte as klauspost/compress's flate
 * (v1.15.12, Debian 12's golang-github-klauspost-compress-dev) writes them
 * at every level (-2 to 9; 5 is its default), and as klauspost/pgzip (v1.2.5) writes them on
 * top of it: the input cut in blocks, each compressed with the previous
 * block's last 16 KiB as dictionary and ended by a sync flush (umoci writes
 * layers so, with 256 KiB blocks). For issue 16: `registry apply` rebuilding
 * layers such tools wrote with their original digests.
 */
#ifndef KPFLATE_H
#define KPFLATE_H
#include <stddef.h>
#include <stdint.h>

typedef struct kp kp;

/*
 * An encoder at `level` (-2..9, -1 for 5; NULL for others); pgzip_block > 16384: pgzip's scheme with blocks of that size, 0: one stream.
 * threads (pgzip only): how many blocks are compressed at once, each in a thread of its own (0: one per processor online,
 * at most 16, and no more than 64 MiB of blocks held); the output is the same for any number.
 */
kp *kp_new(int level, int pgzip_block, int threads);
void kp_free(kp *e);
int kp_write(kp *e, const uint8_t *p, size_t n);
int kp_close(kp *e);
const uint8_t *kp_take(kp *e, size_t *len);

#endif
