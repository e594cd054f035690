/*
 * d4fs-fuse3: a Node-API binding of libfuse3's low-level (inode) API, made
 * for one purpose: serving a read-only, immutable image tree whose answers
 * come from JavaScript.
 *
 * One native thread per mount mounts the filesystem, then receives requests
 * from /dev/fuse. Requests that need the tree (lookup, getattr, readdir,
 * readlink, read, statfs, xattrs) are queued to the JavaScript thread
 * through a thread-safe function; JavaScript answers, possibly much later,
 * with the reply functions below, by request id. Everything else is answered
 * on the native thread at once: forget (nothing to count: inodes live as long
 * as the mount), open/opendir (ENOSYS, so that the kernel stops sending them
 * and keeps the page cache: no-open implies FOPEN_KEEP_CACHE), flush
 * (ENOSYS), every write (EROFS), and getxattr of a name no inode has
 * (ENODATA; overlayfs asks for trusted.overlay.* on every lookup).
 *
 * Request ids name a slot and its generation, so a late or repeated reply
 * (a deadline answered first, a result arriving after) is refused instead of
 * touching a freed request. When the connection ends (the kernel dropped the
 * last reference to a detached mount, or close() was called) the thread
 * posts a "closed" event; the JavaScript thread then fails whatever is still
 * outstanding and destroys the session, so no reply can race the teardown.
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <malloc.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Events and requests, as JavaScript sees them (keep in sync with index.js). */
enum {
  EV_MOUNTED = 1, /* a = 0 or errno of the mount */
  EV_INIT = 2,    /* a = capable, b = want */
  EV_CLOSED = 3,
  RQ_LOOKUP = 10,
  RQ_GETATTR = 11,
  RQ_READLINK = 12,
  RQ_READ = 13,     /* a = size, b = offset */
  RQ_READDIR = 14,  /* a = size, b = offset */
  RQ_READDIRPLUS = 15,
  RQ_STATFS = 16,
  RQ_GETXATTR = 17, /* a = size */
  RQ_LISTXATTR = 18 /* a = size */
};

/* Counters of requests, by kind (index into `counts`). */
enum {
  C_LOOKUP, C_FORGET, C_GETATTR, C_READLINK, C_OPEN, C_OPENDIR, C_READ, C_READDIR, C_READDIRPLUS,
  C_STATFS, C_GETXATTR, C_GETXATTR_FAST, C_LISTXATTR, C_FLUSH, C_RELEASE, C_WRITEOPS, C_ACCESS, C_READDIR_END, C_COUNT
};
static const char *COUNT_NAMES[C_COUNT] = {
  "lookup", "forget", "getattr", "readlink", "open", "opendir", "read", "readdir", "readdirplus",
  "statfs", "getxattr", "getxattrFast", "listxattr", "flush", "release", "writeOps", "access", "readdirEnd"};

/* Stat layout shared with JavaScript (a Float64Array). */
enum { SF_INO, SF_MODE, SF_NLINK, SF_UID, SF_GID, SF_RDEV, SF_SIZE, SF_BLOCKS, SF_BLKSIZE,
       SF_ATIME, SF_ATIME_NS, SF_MTIME, SF_MTIME_NS, SF_CTIME, SF_CTIME_NS, SF_FIELDS };

#define SLOT_BITS 21
#define SLOT_MAX (1u << SLOT_BITS)

struct slot {
  fuse_req_t req; /* NULL when free */
  uint32_t gen;
  int32_t next_free;
};

struct event {
  int op;
  uint64_t id;
  uint64_t ino;
  uint64_t a;
  uint64_t b;
  char *name;
};

/* End of a directory listing already sent in full (see session.dir_ends). */
#define DIR_END_SLOTS 4096
struct dir_end {
  uint64_t ino;
  uint64_t end; /* offset cookie just past the last entry; 0: free slot */
};

struct session {
  struct fuse_session *se;
  char *mountpoint;
  pthread_t thread;
  int thread_started;
  int wake[2];
  napi_threadsafe_function tsfn;
  double entry_timeout;
  double attr_timeout;
  /* xattr names present anywhere in the image (NULL-terminated list); others answer ENODATA natively. */
  char **xattr_names;
  int any_xattrs;

  pthread_mutex_t lock;
  struct slot *slots;
  uint32_t nslots;
  int32_t free_head;
  uint32_t outstanding;

  volatile int closed;    /* the loop ended and the session was destroyed */
  volatile int stopping;  /* close() was asked */
  int mounted;
  uint64_t counts[C_COUNT];
  /* Directories whose whole listing was sent: the continuation past its end
     is answered here, empty, without a round trip to JavaScript (direct
     mapped by inode; guarded by `lock`). */
  struct dir_end dir_ends[DIR_END_SLOTS];
};

/* ------------------------------------------------------------------------ */
/* Request slots                                                             */
/* ------------------------------------------------------------------------ */

static int slot_alloc(struct session *s, fuse_req_t req, uint64_t *id) {
  pthread_mutex_lock(&s->lock);
  if (s->free_head < 0) {
    uint32_t n = s->nslots ? s->nslots * 2 : 256;
    if (n > SLOT_MAX) n = SLOT_MAX;
    if (n <= s->nslots) {
      pthread_mutex_unlock(&s->lock);
      return -1;
    }
    struct slot *ns = realloc(s->slots, n * sizeof(*ns));
    if (!ns) {
      pthread_mutex_unlock(&s->lock);
      return -1;
    }
    for (uint32_t i = s->nslots; i < n; i++) {
      ns[i].req = NULL;
      ns[i].gen = 1;
      ns[i].next_free = (i + 1 < n) ? (int32_t)(i + 1) : -1;
    }
    s->free_head = (int32_t)s->nslots;
    s->slots = ns;
    s->nslots = n;
  }
  uint32_t i = (uint32_t)s->free_head;
  struct slot *sl = &s->slots[i];
  s->free_head = sl->next_free;
  sl->req = req;
  s->outstanding++;
  *id = ((uint64_t)sl->gen << SLOT_BITS) | i;
  pthread_mutex_unlock(&s->lock);
  return 0;
}

/* Takes the request of `id` out of its slot; NULL when it was answered already (or never existed). */
static fuse_req_t slot_take(struct session *s, uint64_t id) {
  uint32_t i = (uint32_t)(id & (SLOT_MAX - 1));
  uint32_t gen = (uint32_t)(id >> SLOT_BITS);
  fuse_req_t req = NULL;
  pthread_mutex_lock(&s->lock);
  if (i < s->nslots && s->slots[i].req && s->slots[i].gen == gen) {
    struct slot *sl = &s->slots[i];
    req = sl->req;
    sl->req = NULL;
    sl->gen = (sl->gen + 1) & 0x7fffffffu;
    if (sl->gen == 0) sl->gen = 1;
    sl->next_free = s->free_head;
    s->free_head = (int32_t)i;
    s->outstanding--;
  }
  pthread_mutex_unlock(&s->lock);
  return req;
}

/* ------------------------------------------------------------------------ */
/* Native thread: forwarding                                                 */
/* ------------------------------------------------------------------------ */

static void post(struct session *s, int op, uint64_t id, uint64_t ino, uint64_t a, uint64_t b, const char *name) {
  struct event *ev = calloc(1, sizeof(*ev));
  if (!ev) return;
  ev->op = op;
  ev->id = id;
  ev->ino = ino;
  ev->a = a;
  ev->b = b;
  ev->name = name ? strdup(name) : NULL;
  if (napi_call_threadsafe_function(s->tsfn, ev, napi_tsfn_nonblocking) != napi_ok) {
    free(ev->name);
    free(ev);
  }
}

/* Queues request `req` to JavaScript; answers EIO when that is impossible. */
static void forward(fuse_req_t req, int op, uint64_t ino, uint64_t a, uint64_t b, const char *name) {
  struct session *s = fuse_req_userdata(req);
  uint64_t id;
  if (s->stopping || slot_alloc(s, req, &id) != 0) {
    fuse_reply_err(req, EIO);
    return;
  }
  struct event *ev = calloc(1, sizeof(*ev));
  char *nm = name ? strdup(name) : NULL;
  if (!ev || (name && !nm)) goto fail;
  ev->op = op;
  ev->id = id;
  ev->ino = ino;
  ev->a = a;
  ev->b = b;
  ev->name = nm;
  if (napi_call_threadsafe_function(s->tsfn, ev, napi_tsfn_nonblocking) == napi_ok) return;
fail:
  free(nm);
  free(ev);
  if ((req = slot_take(s, id)) != NULL) fuse_reply_err(req, EIO);
}

#define COUNT(s, c) __atomic_add_fetch(&(s)->counts[c], 1, __ATOMIC_RELAXED)

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  struct session *s = userdata;
  unsigned want = FUSE_CAP_NO_OPEN_SUPPORT | FUSE_CAP_NO_OPENDIR_SUPPORT | FUSE_CAP_READDIRPLUS |
                  FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_ASYNC_READ | FUSE_CAP_PARALLEL_DIROPS;
  conn->want |= conn->capable & want;
  /* Images never change: no invalidation on attribute refresh; always stats with readdir. */
  conn->want &= ~(FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_SPLICE_READ |
                  FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE | FUSE_CAP_WRITEBACK_CACHE);
  post(s, EV_INIT, 0, 0, conn->capable, conn->want, NULL);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  COUNT((struct session *)fuse_req_userdata(req), C_LOOKUP);
  forward(req, RQ_LOOKUP, parent, 0, 0, name);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n) {
  (void)ino;
  (void)n;
  COUNT((struct session *)fuse_req_userdata(req), C_FORGET);
  fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f) {
  (void)count;
  (void)f;
  COUNT((struct session *)fuse_req_userdata(req), C_FORGET);
  fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_GETATTR);
  forward(req, RQ_GETATTR, ino, 0, 0, NULL);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  COUNT((struct session *)fuse_req_userdata(req), C_READLINK);
  forward(req, RQ_READLINK, ino, 0, 0, NULL);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_OPEN);
  fuse_reply_err(req, ENOSYS);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_OPENDIR);
  fuse_reply_err(req, ENOSYS);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_RELEASE);
  fuse_reply_err(req, 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_FLUSH);
  fuse_reply_err(req, ENOSYS);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_READ);
  forward(req, RQ_READ, ino, size, (uint64_t)off, NULL);
}

/* True when the listing of `ino` was sent in full and `off` is at or past its end. */
static int dir_at_end(struct session *s, fuse_ino_t ino, off_t off) {
  if (off <= 0) return 0;
  struct dir_end *d = &s->dir_ends[ino % DIR_END_SLOTS];
  pthread_mutex_lock(&s->lock);
  int at_end = d->end != 0 && d->ino == ino && (uint64_t)off >= d->end;
  pthread_mutex_unlock(&s->lock);
  return at_end;
}

/* readdir and readdirplus: the end of a listing sent in full is answered here, the rest by JavaScript. */
static void readdir_either(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus) {
  struct session *s = fuse_req_userdata(req);
  COUNT(s, plus ? C_READDIRPLUS : C_READDIR);
  if (dir_at_end(s, ino, off)) {
    COUNT(s, C_READDIR_END);
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  forward(req, plus ? RQ_READDIRPLUS : RQ_READDIR, ino, size, (uint64_t)off, NULL);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  readdir_either(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  readdir_either(req, ino, size, off, 1);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  COUNT((struct session *)fuse_req_userdata(req), C_STATFS);
  forward(req, RQ_STATFS, ino, 0, 0, NULL);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  struct session *s = fuse_req_userdata(req);
  int known = 0;
  if (s->xattr_names) {
    for (char **n = s->xattr_names; *n; n++)
      if (strcmp(*n, name) == 0) {
        known = 1;
        break;
      }
  } else {
    known = 1; /* no list given: ask JavaScript */
  }
  if (!known) {
    COUNT(s, C_GETXATTR_FAST);
    fuse_reply_err(req, ENODATA);
    return;
  }
  COUNT(s, C_GETXATTR);
  forward(req, RQ_GETXATTR, ino, size, 0, name);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  struct session *s = fuse_req_userdata(req);
  COUNT(s, C_LISTXATTR);
  if (s->xattr_names && !s->any_xattrs) {
    if (size == 0) fuse_reply_xattr(req, 0);
    else fuse_reply_buf(req, NULL, 0);
    return;
  }
  forward(req, RQ_LISTXATTR, ino, size, 0, NULL);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  (void)ino;
  (void)mask;
  COUNT((struct session *)fuse_req_userdata(req), C_ACCESS);
  fuse_reply_err(req, ENOSYS); /* default_permissions: the kernel checks */
}

static void rofs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *a, int to_set, struct fuse_file_info *fi) {
  (void)ino; (void)a; (void)to_set; (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t d) {
  (void)p; (void)n; (void)m; (void)d;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m) {
  (void)p; (void)n; (void)m;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_unlink(fuse_req_t req, fuse_ino_t p, const char *n) {
  (void)p; (void)n;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n) {
  (void)l; (void)p; (void)n;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn, unsigned f) {
  (void)p; (void)n; (void)np; (void)nn; (void)f;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t np, const char *nn) {
  (void)i; (void)np; (void)nn;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_write(fuse_req_t req, fuse_ino_t i, const char *b, size_t sz, off_t o, struct fuse_file_info *fi) {
  (void)i; (void)b; (void)sz; (void)o; (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *fi) {
  (void)p; (void)n; (void)m; (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_setxattr(fuse_req_t req, fuse_ino_t i, const char *n, const char *v, size_t sz, int f) {
  (void)i; (void)n; (void)v; (void)sz; (void)f;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_removexattr(fuse_req_t req, fuse_ino_t i, const char *n) {
  (void)i; (void)n;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}
static void rofs_fallocate(fuse_req_t req, fuse_ino_t i, int m, off_t o, off_t l, struct fuse_file_info *fi) {
  (void)i; (void)m; (void)o; (void)l; (void)fi;
  COUNT((struct session *)fuse_req_userdata(req), C_WRITEOPS);
  fuse_reply_err(req, EROFS);
}

static const struct fuse_lowlevel_ops OPS = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .forget_multi = op_forget_multi,
  .getattr = op_getattr,
  .setattr = rofs_setattr,
  .readlink = op_readlink,
  .mknod = rofs_mknod,
  .mkdir = rofs_mkdir,
  .unlink = rofs_unlink,
  .rmdir = rofs_unlink,
  .symlink = rofs_symlink,
  .rename = rofs_rename,
  .link = rofs_link,
  .open = op_open,
  .read = op_read,
  .write = rofs_write,
  .flush = op_flush,
  .release = op_release,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .readdirplus = op_readdirplus,
  .releasedir = op_release,
  .statfs = op_statfs,
  .setxattr = rofs_setxattr,
  .getxattr = op_getxattr,
  .listxattr = op_listxattr,
  .removexattr = rofs_removexattr,
  .access = op_access,
  .create = rofs_create,
  .fallocate = rofs_fallocate,
};

/* The thread of one mount: mount, then receive and dispatch until the connection ends. */
static void *loop_main(void *arg) {
  struct session *s = arg;
  int err = fuse_session_mount(s->se, s->mountpoint);
  if (err != 0) {
    post(s, EV_MOUNTED, 0, 0, EIO, 0, NULL);
    post(s, EV_CLOSED, 0, 0, 0, 0, NULL);
    return NULL;
  }
  s->mounted = 1;
  int fd = fuse_session_fd(s->se);
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  post(s, EV_MOUNTED, 0, 0, 0, 0, NULL);

  struct fuse_buf buf;
  memset(&buf, 0, sizeof(buf));
  while (!fuse_session_exited(s->se) && !s->stopping) {
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->wake[0], .events = POLLIN}};
    int r = poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents) break;
    if (!(p[0].revents & (POLLIN | POLLERR | POLLHUP | POLLNVAL))) continue;
    int n = fuse_session_receive_buf(s->se, &buf);
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n <= 0) {
      if (n < 0 || fuse_session_exited(s->se)) break;
      continue;
    }
    fuse_session_process_buf(s->se, &buf);
  }
  free(buf.mem);
  post(s, EV_CLOSED, 0, 0, 0, 0, NULL);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* JavaScript thread                                                         */
/* ------------------------------------------------------------------------ */

#define CHECK(call)                                                            \
  do {                                                                         \
    if ((call) != napi_ok) {                                                   \
      napi_throw_error(env, NULL, "d4fs-fuse3: " #call " failed");            \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

static void session_teardown(struct session *s) {
  /* Fail what JavaScript still holds: the connection is gone or going. */
  if (s->slots) {
    for (uint32_t i = 0; i < s->nslots; i++) {
      if (!s->slots[i].req) continue;
      uint64_t id = ((uint64_t)s->slots[i].gen << SLOT_BITS) | i;
      fuse_req_t req = slot_take(s, id);
      if (req) fuse_reply_err(req, EIO);
    }
  }
  if (s->thread_started) {
    pthread_join(s->thread, NULL);
    s->thread_started = 0;
  }
  if (s->se) {
    fuse_session_destroy(s->se); /* closes /dev/fuse: the kernel aborts what is left */
    s->se = NULL;
  }
  s->closed = 1;
}

static void call_js(napi_env env, napi_value handler, void *context, void *data) {
  struct session *s = context;
  struct event *ev = data;
  if (env == NULL || handler == NULL) {
    free(ev->name);
    free(ev);
    return;
  }
  if (ev->op == EV_CLOSED) {
    session_teardown(s);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
  }
  napi_value argv[6], undefined;
  napi_get_undefined(env, &undefined);
  napi_create_int32(env, ev->op, &argv[0]);
  napi_create_double(env, (double)ev->id, &argv[1]);
  napi_create_double(env, (double)ev->ino, &argv[2]);
  napi_create_double(env, (double)ev->a, &argv[3]);
  napi_create_double(env, (double)ev->b, &argv[4]);
  if (ev->name) napi_create_string_utf8(env, ev->name, NAPI_AUTO_LENGTH, &argv[5]);
  else argv[5] = undefined;
  free(ev->name);
  free(ev);
  napi_value result;
  napi_status st = napi_call_function(env, undefined, handler, 6, argv, &result);
  if (st == napi_pending_exception) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  (void)hint;
}

static void session_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  struct session *s = data;
  /* Only a closed session is freed (an open one is reachable from its thread). */
  if (!s->closed) return;
  if (s->xattr_names) {
    for (char **n = s->xattr_names; *n; n++) free(*n);
    free(s->xattr_names);
  }
  if (s->wake[0] >= 0) close(s->wake[0]);
  if (s->wake[1] >= 0) close(s->wake[1]);
  free(s->slots);
  free(s->mountpoint);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

static char *get_string(napi_env env, napi_value v) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *out = malloc(len + 1);
  if (!out) return NULL;
  napi_get_value_string_utf8(env, v, out, len + 1, &len);
  return out;
}

static struct session *get_session(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

static uint64_t get_u64(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d < 0 ? 0 : (uint64_t)d;
}

/*
 * mount(mountpoint, options, entryTimeout, attrTimeout, xattrNames | null, handler) → session
 * options: comma-separated mount options (e.g. "ro,allow_other,default_permissions,fsname=d4fs,subtype=d4fs").
 */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 6) {
    napi_throw_type_error(env, NULL, "mount(mountpoint, options, entryTimeout, attrTimeout, xattrNames, handler)");
    return NULL;
  }
  struct session *s = calloc(1, sizeof(*s));
  if (!s) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&s->lock, NULL);
  s->free_head = -1;
  s->wake[0] = s->wake[1] = -1;
  s->mountpoint = get_string(env, argv[0]);
  char *opts = get_string(env, argv[1]);
  napi_get_value_double(env, argv[2], &s->entry_timeout);
  napi_get_value_double(env, argv[3], &s->attr_timeout);
  napi_valuetype t;
  napi_typeof(env, argv[4], &t);
  if (t == napi_object) {
    uint32_t n = 0;
    napi_get_array_length(env, argv[4], &n);
    s->xattr_names = calloc(n + 1, sizeof(char *));
    for (uint32_t i = 0; s->xattr_names && i < n; i++) {
      napi_value e;
      napi_get_element(env, argv[4], i, &e);
      s->xattr_names[i] = get_string(env, e);
    }
    s->any_xattrs = n > 0;
  }
  if (!s->mountpoint || !opts || pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    free(opts);
    s->closed = 1;
    session_free(env, s, NULL);
    napi_throw_error(env, NULL, "d4fs-fuse3: cannot set up the session");
    return NULL;
  }
  char *fargv[] = {"d4fs", "-o", opts, NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  s->se = fuse_session_new(&args, &OPS, sizeof(OPS), s);
  fuse_opt_free_args(&args);
  free(opts);
  if (!s->se) {
    s->closed = 1;
    session_free(env, s, NULL);
    napi_throw_error(env, NULL, "d4fs-fuse3: fuse_session_new refused the options");
    return NULL;
  }
  napi_value name;
  napi_create_string_utf8(env, "d4fs-fuse3", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[5], NULL, name, 0, 1, NULL, tsfn_finalize, s, call_js, &s->tsfn) != napi_ok) {
    fuse_session_destroy(s->se);
    s->se = NULL;
    s->closed = 1;
    session_free(env, s, NULL);
    napi_throw_error(env, NULL, "d4fs-fuse3: cannot create the thread-safe function");
    return NULL;
  }
  napi_value handle;
  CHECK(napi_create_external(env, s, session_free, NULL, &handle));
  if (pthread_create(&s->thread, NULL, loop_main, s) != 0) {
    fuse_session_destroy(s->se);
    s->se = NULL;
    s->closed = 1;
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    napi_throw_error(env, NULL, "d4fs-fuse3: cannot start the session thread");
    return NULL;
  }
  s->thread_started = 1;
  return handle;
}

/* close(session): stops serving now (the loop ends; the "closed" event follows). */
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = get_session(env, argv[0]);
  if (s && !s->closed && !s->stopping) {
    s->stopping = 1;
    ssize_t w = write(s->wake[1], "x", 1);
    (void)w;
  }
  return NULL;
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = get_session(env, argv[0]);
  CHECK(napi_create_object(env, &out));
  if (!s) return out;
  for (int i = 0; i < C_COUNT; i++) {
    napi_create_double(env, (double)__atomic_load_n(&s->counts[i], __ATOMIC_RELAXED), &v);
    napi_set_named_property(env, out, COUNT_NAMES[i], v);
  }
  pthread_mutex_lock(&s->lock);
  napi_create_uint32(env, s->outstanding, &v);
  pthread_mutex_unlock(&s->lock);
  napi_set_named_property(env, out, "outstanding", v);
  napi_get_boolean(env, s->closed, &v);
  napi_set_named_property(env, out, "closed", v);
  return out;
}

/* Reads the arguments of a reply: session, request id (taken out of its slot), then `extra` more. */
static fuse_req_t reply_args(napi_env env, napi_callback_info info, size_t extra, napi_value *argv, struct session **sp) {
  size_t argc = 2 + extra;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 + extra) {
    napi_throw_type_error(env, NULL, "d4fs-fuse3: missing reply arguments");
    return NULL;
  }
  struct session *s = get_session(env, argv[0]);
  if (!s || s->closed) return NULL;
  *sp = s;
  return slot_take(s, get_u64(env, argv[1]));
}

static napi_value ret_bool(napi_env env, int ok) {
  napi_value v;
  napi_get_boolean(env, ok, &v);
  return v;
}

static int read_stat(napi_env env, napi_value v, struct stat *st) {
  napi_typedarray_type type;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &len, &data, NULL, NULL) != napi_ok || type != napi_float64_array || len < SF_FIELDS) return -1;
  const double *f = data;
  memset(st, 0, sizeof(*st));
  st->st_ino = (ino_t)f[SF_INO];
  st->st_mode = (mode_t)f[SF_MODE];
  st->st_nlink = (nlink_t)f[SF_NLINK];
  st->st_uid = (uid_t)f[SF_UID];
  st->st_gid = (gid_t)f[SF_GID];
  st->st_rdev = (dev_t)f[SF_RDEV];
  st->st_size = (off_t)f[SF_SIZE];
  st->st_blocks = (blkcnt_t)f[SF_BLOCKS];
  st->st_blksize = (blksize_t)f[SF_BLKSIZE];
  st->st_atim.tv_sec = (time_t)f[SF_ATIME];
  st->st_atim.tv_nsec = (long)f[SF_ATIME_NS];
  st->st_mtim.tv_sec = (time_t)f[SF_MTIME];
  st->st_mtim.tv_nsec = (long)f[SF_MTIME_NS];
  st->st_ctim.tv_sec = (time_t)f[SF_CTIME];
  st->st_ctim.tv_nsec = (long)f[SF_CTIME_NS];
  return 0;
}

/* replyErr(session, id, errno) */
static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 1, argv, &s);
  if (!req) return ret_bool(env, 0);
  int32_t e = EIO;
  napi_get_value_int32(env, argv[2], &e);
  if (e < 0) e = -e;
  fuse_reply_err(req, e);
  return ret_bool(env, 1);
}

/* replyEntry(session, id, stat: Float64Array | null) — null: a negative entry, cached like the others. */
static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 1, argv, &s);
  if (!req) return ret_bool(env, 0);
  struct fuse_entry_param e;
  memset(&e, 0, sizeof(e));
  e.entry_timeout = s->entry_timeout;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_null && t != napi_undefined) {
    if (read_stat(env, argv[2], &e.attr) != 0) {
      fuse_reply_err(req, EIO);
      napi_throw_type_error(env, NULL, "replyEntry: stat must be a Float64Array");
      return NULL;
    }
    e.ino = e.attr.st_ino;
    e.attr_timeout = s->attr_timeout;
  }
  fuse_reply_entry(req, &e);
  return ret_bool(env, 1);
}

/* replyAttr(session, id, stat) */
static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 1, argv, &s);
  if (!req) return ret_bool(env, 0);
  struct stat st;
  if (read_stat(env, argv[2], &st) != 0) {
    fuse_reply_err(req, EIO);
    napi_throw_type_error(env, NULL, "replyAttr: stat must be a Float64Array");
    return NULL;
  }
  fuse_reply_attr(req, &st, s->attr_timeout);
  return ret_bool(env, 1);
}

static int get_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) == napi_ok && is) return napi_get_buffer_info(env, v, data, len) == napi_ok ? 0 : -1;
  napi_typedarray_type type;
  size_t n;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &type, &n, data, &ab, &off) != napi_ok || type != napi_uint8_array) return -1;
  *len = n;
  return 0;
}

/* replyBuf(session, id, buffer, length) — data of a read, or a readlink target as bytes. */
static napi_value js_reply_buf(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 2, argv, &s);
  if (!req) return ret_bool(env, 0);
  void *data;
  size_t len;
  if (get_bytes(env, argv[2], &data, &len) != 0) {
    fuse_reply_err(req, EIO);
    napi_throw_type_error(env, NULL, "replyBuf: a Buffer is needed");
    return NULL;
  }
  uint64_t n = get_u64(env, argv[3]);
  if (n < len) len = (size_t)n;
  fuse_reply_buf(req, data, len);
  return ret_bool(env, 1);
}

/* replyReadlink(session, id, buffer) — the target, without NUL. */
static napi_value js_reply_readlink(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 1, argv, &s);
  if (!req) return ret_bool(env, 0);
  void *data;
  size_t len;
  if (get_bytes(env, argv[2], &data, &len) != 0) {
    fuse_reply_err(req, EIO);
    return ret_bool(env, 1);
  }
  char *z = malloc(len + 1);
  if (!z) {
    fuse_reply_err(req, ENOMEM);
    return ret_bool(env, 1);
  }
  memcpy(z, data, len);
  z[len] = 0;
  fuse_reply_readlink(req, z);
  free(z);
  return ret_bool(env, 1);
}

/* replyXattr(session, id, buffer, requestedSize) — size 0 asks for the length only; too small: ERANGE. */
static napi_value js_reply_xattr(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 2, argv, &s);
  if (!req) return ret_bool(env, 0);
  void *data;
  size_t len;
  if (get_bytes(env, argv[2], &data, &len) != 0) {
    fuse_reply_err(req, EIO);
    return ret_bool(env, 1);
  }
  uint64_t want = get_u64(env, argv[3]);
  if (want == 0) fuse_reply_xattr(req, len);
  else if (len > want) fuse_reply_err(req, ERANGE);
  else fuse_reply_buf(req, data, len);
  return ret_bool(env, 1);
}

/* replyStatfs(session, id, Float64Array [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax]) */
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 1, argv, &s);
  if (!req) return ret_bool(env, 0);
  napi_typedarray_type type;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, argv[2], &type, &len, &data, NULL, NULL) != napi_ok || type != napi_float64_array || len < 11) {
    fuse_reply_err(req, EIO);
    return ret_bool(env, 1);
  }
  const double *f = data;
  struct statvfs sv;
  memset(&sv, 0, sizeof(sv));
  sv.f_bsize = (unsigned long)f[0];
  sv.f_frsize = (unsigned long)f[1];
  sv.f_blocks = (fsblkcnt_t)f[2];
  sv.f_bfree = (fsblkcnt_t)f[3];
  sv.f_bavail = (fsblkcnt_t)f[4];
  sv.f_files = (fsfilcnt_t)f[5];
  sv.f_ffree = (fsfilcnt_t)f[6];
  sv.f_favail = (fsfilcnt_t)f[7];
  sv.f_fsid = (unsigned long)f[8];
  sv.f_flag = (unsigned long)f[9];
  sv.f_namemax = (unsigned long)f[10];
  fuse_reply_statfs(req, &sv);
  return ret_bool(env, 1);
}

/*
 * replyDir(session, id, listing, offset, size, plus, ino)
 *
 * listing: the whole directory, encoded once by JavaScript as records
 *   u32 recordLength (multiple of 8), u32 nameLength, f64 stat[SF_FIELDS], name, NUL, padding.
 * The offset cookie of an entry is the byte offset of the record after it,
 * so a continuation starts where the last reply stopped. When the reply
 * reaches the end of the listing, directory `ino`'s end is remembered: the
 * reader's next request (past the end, empty) is answered natively (one
 * round trip per directory instead of two: `find` of 151k entries, issue 18).
 */
static napi_value js_reply_dir(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  struct session *s;
  fuse_req_t req = reply_args(env, info, 5, argv, &s);
  if (!req) return ret_bool(env, 0);
  void *data;
  size_t blen;
  if (get_bytes(env, argv[2], &data, &blen) != 0) {
    fuse_reply_err(req, EIO);
    return ret_bool(env, 1);
  }
  uint64_t off = get_u64(env, argv[3]);
  size_t size = (size_t)get_u64(env, argv[4]);
  bool plus = false;
  napi_get_value_bool(env, argv[5], &plus);
  char *out = malloc(size ? size : 1);
  if (!out) {
    fuse_reply_err(req, ENOMEM);
    return ret_bool(env, 1);
  }
  const char *b = data;
  size_t used = 0;
  const size_t head = 8 + 8 * SF_FIELDS;
  while (off + head <= blen) {
    uint32_t rec, nlen;
    memcpy(&rec, b + off, 4);
    memcpy(&nlen, b + off + 4, 4);
    if (rec < head + nlen + 1 || off + rec > blen) break; /* malformed: stop */
    double f[SF_FIELDS];
    memcpy(f, b + off + 8, sizeof(f));
    const char *name = b + off + head;
    uint64_t next = off + rec;
    struct fuse_entry_param e;
    memset(&e, 0, sizeof(e));
    e.attr.st_ino = (ino_t)f[SF_INO];
    e.attr.st_mode = (mode_t)f[SF_MODE];
    e.attr.st_nlink = (nlink_t)f[SF_NLINK];
    e.attr.st_uid = (uid_t)f[SF_UID];
    e.attr.st_gid = (gid_t)f[SF_GID];
    e.attr.st_rdev = (dev_t)f[SF_RDEV];
    e.attr.st_size = (off_t)f[SF_SIZE];
    e.attr.st_blocks = (blkcnt_t)f[SF_BLOCKS];
    e.attr.st_blksize = (blksize_t)f[SF_BLKSIZE];
    e.attr.st_atim.tv_sec = (time_t)f[SF_ATIME];
    e.attr.st_atim.tv_nsec = (long)f[SF_ATIME_NS];
    e.attr.st_mtim.tv_sec = (time_t)f[SF_MTIME];
    e.attr.st_mtim.tv_nsec = (long)f[SF_MTIME_NS];
    e.attr.st_ctim.tv_sec = (time_t)f[SF_CTIME];
    e.attr.st_ctim.tv_nsec = (long)f[SF_CTIME_NS];
    size_t n;
    if (plus) {
      e.ino = e.attr.st_ino;
      e.entry_timeout = s->entry_timeout;
      e.attr_timeout = s->attr_timeout;
      n = fuse_add_direntry_plus(req, out + used, size - used, name, &e, (off_t)next);
    } else {
      n = fuse_add_direntry(req, out + used, size - used, name, &e.attr, (off_t)next);
    }
    if (n > size - used) break;
    used += n;
    off = next;
  }
  if (off >= blen && blen > 0) {
    uint64_t ino = get_u64(env, argv[6]);
    struct dir_end *d = &s->dir_ends[ino % DIR_END_SLOTS];
    pthread_mutex_lock(&s->lock);
    d->ino = ino;
    d->end = blen;
    pthread_mutex_unlock(&s->lock);
  }
  fuse_reply_buf(req, out, used);
  free(out);
  return ret_bool(env, 1);
}

/*
 * trimMemory(): gives the C heap's free memory back to the system
 * (malloc_trim). Decoding a big image's index frees tens of MiB that glibc
 * otherwise keeps in its arenas, counted in the manager's RSS (issue 18).
 * Returns true when memory was released.
 */
static napi_value js_trim_memory(napi_env env, napi_callback_info info) {
  (void)info;
  return ret_bool(env, malloc_trim(0));
}

static napi_value js_version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_int32(env, fuse_version(), &v);
  return v;
}

static napi_value init(napi_env env, napi_value exports) {
  const struct {
    const char *name;
    napi_callback cb;
  } fns[] = {
    {"mount", js_mount}, {"close", js_close}, {"stats", js_stats}, {"replyErr", js_reply_err},
    {"replyEntry", js_reply_entry}, {"replyAttr", js_reply_attr}, {"replyBuf", js_reply_buf},
    {"replyReadlink", js_reply_readlink}, {"replyXattr", js_reply_xattr}, {"replyStatfs", js_reply_statfs},
    {"replyDir", js_reply_dir}, {"fuseVersion", js_version}, {"trimMemory", js_trim_memory},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
    napi_value f;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &f) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, f) != napi_ok) return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
