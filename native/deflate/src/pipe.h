#ifndef D4FS_PIPE_H
#define D4FS_PIPE_H
#include <stddef.h>
#include <stdint.h>

struct pipe_result {
  uint8_t *out;  /* malloc'd standard output (free it) */
  size_t len;
  int status;    /* exit status, -1 when killed by a signal */
};

/*
 * Runs `file` (looked up in PATH) with `argv`, `in` on its standard input, stderr to
 * /dev/null; fills `r` with what it wrote to its standard output (at most `max_out`
 * bytes) and its exit status. Returns 0, or an errno (ENOENT: no such program; EFBIG:
 * more output than max_out, the child killed).
 */
int pipe_through(const char *file, char *const argv[], const uint8_t *in, size_t in_len, size_t max_out, struct pipe_result *r);

#endif
