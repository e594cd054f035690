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
#include <time.h>
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
  C_STATFS, C_GETXATTR, C_GETXATTR_FAST, C_LISTXATTR, C_FLUSH, C_RELEASE, C_WRITEOPS, C_ACCESS, C_READDIR_END,
  C_READDIR_NATIVE, C_LOOKUP_NATIVE, C_PLUS_SWITCH, C_COUNT
};
static const char *COUNT_NAMES[C_COUNT] = {
  "lookup", "forget", "getattr", "readlink", "open", "opendir", "read", "readdir", "readdirplus",
  "statfs", "getxattr", "getxattrFast", "listxattr", "flush", "release", "writeOps", "access", "readdirEnd",
  "readdirNative", "lookupNative", "plusSwitch"};

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

/*
 * Directory listings kept natively (issue 18). JavaScript encodes a
 * directory's listing once (see replyDir); the binding keeps it, with a hash
 * table of its names, and answers from it on the native thread, without a
 * round trip to JavaScript: the continuations of the listing (the kernel asks
 * for a few KiB at a time), the request past its end, and lookups of names in
 * that directory (also absent ones: negative entries). Listings live in a
 * direct-mapped table by inode, bounded by DIR_KEPT_TOTAL bytes shared by
 * the sessions of the process (each may keep its share, at least
 * DIR_KEPT_MIN; a clock evicts the least recently used); JavaScript answers whatever a
 * listing no longer kept would have answered, identically.
 *
 * Lite listings. A readdirplus entry hands the kernel the entry's
 * attributes, and the kernel instantiates an inode for it (~2.5 us each
 * here): that made a cold `find` of 151k entries 2.7x ext4, which only reads
 * names. An entry sent without a node id is listed without an inode, and a
 * later stat of it is a lookup: native when its directory's listing is kept,
 * but a round trip all the same (~80 us here, a JavaScript one ~110 us).
 * So whether to send attributes depends on what the reader does next, which
 * the kernel cannot know either (its READDIRPLUS_AUTO guesses per directory
 * and always sends them in a directory's first request, which for most
 * directories is its only one). The binding guesses per mount, like a cost
 * model: while kept listings are sent lite (files, symlinks and devices
 * without node ids; subdirectories always with theirs, so a walk descends
 * without lookups), it counts the native lookups of names sent lite; past
 * one for LITE_BREAK_EVEN names sent lite (the ratio of the two costs
 * above; both counts halved past LITE_WINDOW names, so the ratio follows
 * what the reader does now), the mount sends attributes for PLUS_HOLD_S seconds, then tries
 * lite again. A directory of more than LITE_DIR_MAX entries always gets
 * attributes: the names of a listing already sent lite stay lite, so the
 * first `ls -l` of a directory costs up to LITE_DIR_MAX lookups (~80 ms)
 * before the switch helps the next ones. Measured on the 151k-entry image, cold: `find` 0.95 s with
 * attributes always sent, 0.4-0.6 s lite (ext4: 0.35 s); `find -ls` 1.8 s
 * with attributes, 13.4 s lite without the switch (ext4: 1.9 s).
 */
#define LITE_BREAK_EVEN 32
#define LITE_MIN_HITS 16
#define LITE_WINDOW 4096
#define LITE_DIR_MAX 1024
#define PLUS_HOLD_S 30
#define DIR_SLOTS 16384
#define DIR_KEPT_TOTAL (16u << 20)
#define DIR_KEPT_MIN (1u << 20)
#define LISTING_MAX (64u << 20)
struct listing {
  uint64_t ino;
  size_t len;     /* bytes of data */
  size_t bytes;   /* of the whole allocation */
  uint32_t hmask; /* hash table size - 1 */
  uint32_t nent;  /* records */
  int used;       /* looked at since the clock hand passed */
  int sent_lite;  /* some of it was sent without node ids (see lite_now) */
  uint32_t *hash; /* record offset + 1 of each name (0: empty), in the same allocation */
  char *data;
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
  struct listing *dirs[DIR_SLOTS];
  size_t dir_kept; /* bytes of dirs[] */
  uint32_t dir_hand;
  /* Lite listings (see struct listing; guarded by `lock`): names sent lite
     and native lookups of them since lite was (re)started, and until when
     attributes are sent (CLOCK_MONOTONIC seconds; 0: lite). */
  uint64_t lite_sent;
  uint64_t lite_hits;
  double plus_until;
  int counted; /* in g_sessions */
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

static void record_stat(const char *rec, struct stat *st);
static struct listing *dir_find(struct session *s, uint64_t ino);
static void lite_hit(struct session *s, const struct listing *l, const char *rec);
static const char *dir_lookup(const struct listing *l, const char *name);

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct session *s = fuse_req_userdata(req);
  COUNT(s, C_LOOKUP);
  /* From the parent's kept listing: the entry, or a negative one (cached like the others). */
  pthread_mutex_lock(&s->lock);
  struct listing *l = dir_find(s, parent);
  struct fuse_entry_param e;
  memset(&e, 0, sizeof(e));
  if (l) {
    const char *rec = dir_lookup(l, name);
    e.entry_timeout = s->entry_timeout;
    if (rec) {
      record_stat(rec, &e.attr);
      e.ino = e.attr.st_ino;
      e.attr_timeout = s->attr_timeout;
      lite_hit(s, l, rec);
    }
  }
  pthread_mutex_unlock(&s->lock);
  if (l) {
    COUNT(s, C_LOOKUP_NATIVE);
    fuse_reply_entry(req, &e);
    return;
  }
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

/* A stat from its SF_FIELDS doubles (the layout JavaScript writes: ImageTree.stat64). */
static void stat_from_fields(const double *f, struct stat *st) {
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
}

/* The stat of the listing record at `rec` (see encode_dir for the layout; the doubles may be unaligned). */
static void record_stat(const char *rec, struct stat *st) {
  double f[SF_FIELDS];
  memcpy(f, rec + 8, sizeof(f));
  stat_from_fields(f, st);
}

#define REC_HEAD (8 + 8 * SF_FIELDS)

/* Length of the well-formed record at `off` of `b` (`blen` bytes), or 0. */
static uint32_t record_at(const char *b, size_t blen, uint64_t off) {
  if (off + REC_HEAD > blen) return 0;
  uint32_t rec, nlen;
  memcpy(&rec, b + off, 4);
  memcpy(&nlen, b + off + 4, 4);
  if (rec < REC_HEAD + (uint64_t)nlen + 1 || off + rec > blen || b[off + REC_HEAD + nlen] != 0) return 0;
  return rec;
}

/*
 * Encodes into `out` (`size` bytes) the entries of `listing` (`blen` bytes)
 * from byte offset `*off` on, as readdir or readdirplus entries; advances
 * `*off` past the last entry that fit and returns the bytes used. `lite`:
 * readdirplus entries other than directories carry no node id (see struct
 * listing).
 *
 * listing: records u32 recordLength (multiple of 8), u32 nameLength,
 * f64 stat[SF_FIELDS], name, NUL, padding. The offset cookie of an entry is
 * the byte offset of the record after it. An offset that is not a record's
 * (a reader may seekdir anywhere) yields at worst entries made of the
 * listing's own bytes: every record is bounds-checked and NUL-terminated.
 */
static size_t encode_dir(struct session *s, fuse_req_t req, const char *b, size_t blen, uint64_t *offp, char *out, size_t size, int plus, int lite) {
  uint64_t off = *offp;
  size_t used = 0;
  uint32_t rec;
  while ((rec = record_at(b, blen, off)) != 0) {
    const char *name = b + off + REC_HEAD;
    uint64_t next = off + rec;
    struct fuse_entry_param e;
    memset(&e, 0, sizeof(e));
    record_stat(b + off, &e.attr);
    size_t n;
    int lite_entry = 0;
    if (plus) {
      if (!lite || S_ISDIR(e.attr.st_mode)) {
        e.ino = e.attr.st_ino;
        e.entry_timeout = s->entry_timeout;
        e.attr_timeout = s->attr_timeout;
      } else {
        lite_entry = 1;
      }
      n = fuse_add_direntry_plus(req, out + used, size - used, name, &e, (off_t)next);
    } else {
      n = fuse_add_direntry(req, out + used, size - used, name, &e.attr, (off_t)next);
    }
    if (n > size - used) break;
    used += n;
    off = next;
    if (lite_entry && ++s->lite_sent > LITE_WINDOW) {
      /* a moving estimate: what the reader did with the last few thousand names */
      s->lite_sent /= 2;
      s->lite_hits /= 2;
    }
  }
  *offp = off;
  return used;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* Whether kept listings are sent lite now (caller holds the lock; see struct listing). */
static int lite_now(struct session *s) {
  if (s->plus_until == 0) return 1;
  if (now_s() < s->plus_until) return 0;
  s->plus_until = 0;
  s->lite_sent = s->lite_hits = 0;
  return 1;
}

/* A native lookup found `rec` in listing `l` (caller holds the lock): counts it when it was sent lite, switching to attributes past break-even. */
static void lite_hit(struct session *s, const struct listing *l, const char *rec) {
  if (!l->sent_lite || s->plus_until != 0) return;
  double f;
  memcpy(&f, rec + 8 + 8 * SF_MODE, sizeof(f));
  if (S_ISDIR((mode_t)f)) return;
  s->lite_hits++;
  if (s->lite_hits >= LITE_MIN_HITS && s->lite_hits * LITE_BREAK_EVEN > s->lite_sent) {
    s->plus_until = now_s() + PLUS_HOLD_S;
    __atomic_add_fetch(&s->counts[C_PLUS_SWITCH], 1, __ATOMIC_RELAXED);
  }
}

/* Sessions serving now (mounted and not closed): they share DIR_KEPT_TOTAL. */
static uint32_t g_sessions;

static size_t dir_budget(void) {
  uint32_t n = __atomic_load_n(&g_sessions, __ATOMIC_RELAXED);
  size_t b = DIR_KEPT_TOTAL / (n ? n : 1);
  return b < DIR_KEPT_MIN ? DIR_KEPT_MIN : b;
}

static uint32_t dir_slot(uint64_t ino) {
  return (uint32_t)((ino * 0x9E3779B97F4A7C15ull) >> 50) & (DIR_SLOTS - 1);
}

static uint32_t name_hash(const char *name, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)name[i]) * 16777619u;
  return h;
}

/* The listing of `ino` when kept (caller holds the lock). */
static struct listing *dir_find(struct session *s, uint64_t ino) {
  struct listing *l = s->dirs[dir_slot(ino)];
  if (!l || l->ino != ino) return NULL;
  l->used = 1;
  return l;
}

static void dir_free_slot(struct session *s, uint32_t i) {
  struct listing *l = s->dirs[i];
  if (!l) return;
  s->dir_kept -= l->bytes;
  free(l);
  s->dirs[i] = NULL;
}

/* Keeps a copy of the listing of `ino` (caller holds the lock); returns it, or NULL when it is malformed or too big. */
static struct listing *dir_keep(struct session *s, uint64_t ino, const char *data, size_t len) {
  struct listing *l = dir_find(s, ino);
  if (l) return l;
  if (len == 0 || len > LISTING_MAX) return NULL;
  uint32_t n = 0, rec;
  uint64_t off = 0;
  for (; off < len; off += rec, n++)
    if ((rec = record_at(data, len, off)) == 0) return NULL;
  uint32_t hsize = 8;
  while (hsize < 2 * n) hsize <<= 1;
  size_t bytes = sizeof(*l) + (size_t)hsize * 4 + len;
  uint32_t slot = dir_slot(ino);
  dir_free_slot(s, slot);
  /* The clock: a listing looked at since the hand last passed gets another round. */
  size_t budget = dir_budget();
  for (uint32_t step = 0; s->dir_kept + bytes > budget && step < 2 * DIR_SLOTS; step++) {
    uint32_t i = s->dir_hand++ & (DIR_SLOTS - 1);
    if (!s->dirs[i]) continue;
    if (s->dirs[i]->used) s->dirs[i]->used = 0;
    else dir_free_slot(s, i);
  }
  if (s->dir_kept + bytes > budget) return NULL;
  l = malloc(bytes);
  if (!l) return NULL;
  l->ino = ino;
  l->len = len;
  l->bytes = bytes;
  l->hmask = hsize - 1;
  l->nent = n;
  l->used = 1;
  l->sent_lite = 0;
  l->hash = (uint32_t *)(l + 1);
  l->data = (char *)(l->hash + hsize);
  memset(l->hash, 0, (size_t)hsize * 4);
  memcpy(l->data, data, len);
  for (off = 0; off < len; off += rec) {
    rec = record_at(l->data, len, off);
    uint32_t nlen;
    memcpy(&nlen, l->data + off + 4, 4);
    const char *name = l->data + off + REC_HEAD;
    if ((nlen == 1 && name[0] == '.') || (nlen == 2 && name[0] == '.' && name[1] == '.')) continue;
    uint32_t h = name_hash(name, nlen) & l->hmask;
    while (l->hash[h]) h = (h + 1) & l->hmask;
    l->hash[h] = (uint32_t)off + 1;
  }
  s->dirs[slot] = l;
  s->dir_kept += bytes;
  return l;
}

/* The record of `name` in listing `l`, or NULL. */
static const char *dir_lookup(const struct listing *l, const char *name) {
  size_t len = strlen(name);
  for (uint32_t h = name_hash(name, len) & l->hmask; l->hash[h]; h = (h + 1) & l->hmask) {
    const char *rec = l->data + l->hash[h] - 1;
    uint32_t nlen;
    memcpy(&nlen, rec + 4, 4);
    if (nlen == len && memcmp(rec + REC_HEAD, name, len) == 0) return rec;
  }
  return NULL;
}

/* Answers a readdir of `ino` from its kept listing. Returns 1 when answered. */
static int dir_native(struct session *s, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus) {
  if (off < 0 || (off & 7) != 0) return 0;
  char *out = malloc(size ? size : 1);
  if (!out) return 0;
  pthread_mutex_lock(&s->lock);
  struct listing *l = dir_find(s, ino);
  if (!l) {
    pthread_mutex_unlock(&s->lock);
    free(out);
    return 0;
  }
  uint64_t pos = (uint64_t)off;
  int at_end = pos >= l->len;
  int lite = plus && l->nent <= LITE_DIR_MAX && lite_now(s);
  size_t used = at_end ? 0 : encode_dir(s, req, l->data, l->len, &pos, out, size, plus, lite);
  if (lite && used) l->sent_lite = 1;
  pthread_mutex_unlock(&s->lock);
  COUNT(s, at_end ? C_READDIR_END : C_READDIR_NATIVE);
  fuse_reply_buf(req, out, used);
  free(out);
  return 1;
}

/* readdir and readdirplus: answered here from a kept listing, otherwise by JavaScript. */
static void readdir_either(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus) {
  struct session *s = fuse_req_userdata(req);
  COUNT(s, plus ? C_READDIRPLUS : C_READDIR);
  if (dir_native(s, req, ino, size, off, plus)) return;
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
  char **names = __atomic_load_n(&s->xattr_names, __ATOMIC_ACQUIRE);
  if (names) {
    for (char **n = names; *n; n++)
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
  if (__atomic_load_n(&s->xattr_names, __ATOMIC_ACQUIRE) && !s->any_xattrs) {
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
  /* the kept listings go now (the session object may live on until collected) */
  pthread_mutex_lock(&s->lock);
  for (uint32_t i = 0; i < DIR_SLOTS; i++) dir_free_slot(s, i);
  pthread_mutex_unlock(&s->lock);
  if (s->counted) {
    s->counted = 0;
    __atomic_sub_fetch(&g_sessions, 1, __ATOMIC_RELAXED);
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
  for (uint32_t i = 0; i < DIR_SLOTS; i++) free(s->dirs[i]);
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

/* A NULL-terminated copy of the JavaScript array of strings `v` (NULL when `v` is not an array); *any: it is not empty. */
static char **get_names(napi_env env, napi_value v, int *any) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_object) return NULL;
  uint32_t n = 0;
  napi_get_array_length(env, v, &n);
  char **names = calloc(n + 1, sizeof(char *));
  for (uint32_t i = 0; names && i < n; i++) {
    napi_value e;
    napi_get_element(env, v, i, &e);
    names[i] = get_string(env, e);
  }
  *any = n > 0;
  return names;
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
  s->xattr_names = get_names(env, argv[4], &s->any_xattrs);
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
  s->counted = 1;
  __atomic_add_fetch(&g_sessions, 1, __ATOMIC_RELAXED);
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
  napi_value kept;
  napi_create_double(env, (double)s->dir_kept, &kept);
  pthread_mutex_unlock(&s->lock);
  napi_set_named_property(env, out, "outstanding", v);
  napi_set_named_property(env, out, "listingBytes", kept);
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
  stat_from_fields(data, st);
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

/*
 * setXattrNames(session, names) — the xattr names some inode has, for a
 * session mounted with null (every xattr request was asked of JavaScript
 * until the image's index was read): from now on others answer ENODATA
 * natively. Only once (a list given at mount or set before stays: the
 * native thread may be reading it, and it is never freed before the session).
 */
static napi_value js_set_xattr_names(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = argc >= 2 ? get_session(env, argv[0]) : NULL;
  if (!s) {
    napi_throw_type_error(env, NULL, "setXattrNames(session, names)");
    return NULL;
  }
  napi_value res;
  if (s->closed || __atomic_load_n(&s->xattr_names, __ATOMIC_ACQUIRE)) {
    napi_get_boolean(env, false, &res);
    return res;
  }
  int any = 0;
  char **names = get_names(env, argv[1], &any);
  s->any_xattrs = any;
  /* any_xattrs is written before the list is published (readers load the list first, acquiring) */
  __atomic_store_n(&s->xattr_names, names, __ATOMIC_RELEASE);
  napi_get_boolean(env, names != NULL, &res);
  return res;
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
 * The offset cookie of an entry is the byte offset of the record after it
 * (see encode_dir). The listing is then kept natively (see struct listing):
 * the rest of it, and lookups in the directory, are answered without
 * JavaScript while it stays.
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
  uint64_t ino = get_u64(env, argv[6]);
  pthread_mutex_lock(&s->lock);
  struct listing *l = dir_keep(s, ino, data, blen);
  int lite = l && plus && l->nent <= LITE_DIR_MAX && lite_now(s);
  size_t used = encode_dir(s, req, data, blen, &off, out, size, plus, lite);
  if (lite && used) l->sent_lite = 1;
  pthread_mutex_unlock(&s->lock);
  fuse_reply_buf(req, out, used);
  free(out);
  return ret_bool(env, 1);
}

/*
 * keepListing(session, ino, listing) → boolean
 *
 * Hands the binding the encoded listing of directory `ino` (as replyDir's)
 * before anyone reads it: lookups of names in it are answered natively from
 * then on. False when it was not kept (malformed, or bigger than the bound).
 */
static napi_value js_keep_listing(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = argc >= 3 ? get_session(env, argv[0]) : NULL;
  void *data;
  size_t len;
  if (!s || s->closed || get_bytes(env, argv[2], &data, &len) != 0) return ret_bool(env, 0);
  uint64_t ino = get_u64(env, argv[1]);
  pthread_mutex_lock(&s->lock);
  int kept = dir_keep(s, ino, data, len) != NULL;
  pthread_mutex_unlock(&s->lock);
  return ret_bool(env, kept);
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
    {"replyDir", js_reply_dir}, {"keepListing", js_keep_listing}, {"fuseVersion", js_version}, {"trimMemory", js_trim_memory}, {"setXattrNames", js_set_xattr_names},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
    napi_value f;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &f) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, f) != napi_ok) return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
