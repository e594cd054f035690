/*
 * Runs a program with bytes on its standard input and returns its standard output:
 * GNU gzip for the .gz files it reproduces (src/delta/gzmember.ts).
 *
 * Why not Node's child_process.spawnSync: libuv starts a child with fork(), whose
 * cost grows with the parent's mapped memory (page tables copied): measured here
 * 1.7 ms per gzip run from a small process, 55 ms from one holding 1 GiB. A diff or
 * the FUSE manager holds hundreds of MiB, and Debian packages carry hundreds of .gz
 * files: postgresql-15's 217 changed man pages took 5.1 s of a thread in `cdimg
 * diff`. glibc's posix_spawn uses clone(CLONE_VM | CLONE_VFORK): no copy, whatever
 * the parent's size.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pipe.h"

extern char **environ;

static void close_fd(int *fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

int pipe_through(const char *file, char *const argv[], const uint8_t *in, size_t in_len, size_t max_out, struct pipe_result *r) {
  memset(r, 0, sizeof(*r));
  r->status = -1;
  int inp[2] = {-1, -1}, outp[2] = {-1, -1};
  if (pipe2(inp, O_CLOEXEC) != 0) return errno;
  if (pipe2(outp, O_CLOEXEC) != 0) {
    int e = errno;
    close_fd(&inp[0]);
    close_fd(&inp[1]);
    return e;
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  // the child gets the pipes as 0 and 1 (dup2 clears close-on-exec), stderr to /dev/null
  posix_spawn_file_actions_adddup2(&fa, inp[0], 0);
  posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  // default signal dispositions and an empty mask in the child (node ignores SIGPIPE)
  sigset_t def, none;
  sigemptyset(&none);
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &def);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  pid_t pid;
  int rc = posix_spawnp(&pid, file, &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close_fd(&inp[0]);
  close_fd(&outp[1]);
  if (rc != 0) {
    close_fd(&inp[1]);
    close_fd(&outp[0]);
    return rc;
  }
  fcntl(inp[1], F_SETFL, O_NONBLOCK);
  fcntl(outp[0], F_SETFL, O_NONBLOCK);
  // one byte over max_out tells that there was more
  const size_t limit = max_out + 1;
  size_t cap = in_len / 2 + 4096 < limit ? in_len / 2 + 4096 : limit, len = 0, written = 0;
  uint8_t *out = malloc(cap);
  int err = out ? 0 : ENOMEM;
  if (in_len == 0) close_fd(&inp[1]);
  while (!err && outp[0] >= 0) {
    struct pollfd p[2];
    int n = 0;
    p[n++] = (struct pollfd){.fd = outp[0], .events = POLLIN};
    if (inp[1] >= 0) p[n++] = (struct pollfd){.fd = inp[1], .events = POLLOUT};
    if (poll(p, n, -1) < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (n > 1 && p[1].revents) {
      ssize_t w = write(inp[1], in + written, in_len - written);
      if (w > 0) written += (size_t)w;
      else if (w < 0 && errno != EAGAIN && errno != EINTR) written = in_len;  // the child stopped reading: its status tells
      if (written == in_len) close_fd(&inp[1]);
    }
    if (p[0].revents) {
      if (len == cap) {
        size_t next = cap * 2 > limit ? limit : cap * 2;
        uint8_t *grown = realloc(out, next);
        if (!grown) {
          err = ENOMEM;
          break;
        }
        out = grown;
        cap = next;
      }
      ssize_t got = read(outp[0], out + len, cap - len);
      if (got > 0) {
        len += (size_t)got;
        if (len > max_out) err = EFBIG;
      } else if (got == 0) {
        close_fd(&outp[0]);
      } else if (errno != EAGAIN && errno != EINTR) {
        err = errno;
      }
    }
  }
  close_fd(&inp[1]);
  close_fd(&outp[0]);
  if (err) kill(pid, SIGKILL);
  int st;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) {
      st = -1;
      break;
    }
  }
  if (err) {
    free(out);
    return err;
  }
  r->out = out;
  r->len = len;
  r->status = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return 0;
}
