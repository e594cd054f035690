/*
 * Raw deflate by the system's zlib (libz), for members of zip archives
 * (.jar, .whl, .zip): Debian's archives are made by the reference zlib, whose
 * output Node's zlib (Chromium's fork, other match finding) does not
 * reproduce: of 3,585 deflated entries of libtomcat10-java's jars, Node's
 * zlib rebuilt none at any level, libz at level 6 all of them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "zlibraw.h"

#define PIECE 65536

/*
 * The system's libz, opened by name with RTLD_DEEPBIND: node exports zlib's symbols
 * (its own fork), which a plain -lz link would resolve to (same names, other output),
 * and DEEPBIND keeps libz's calls into itself inside libz.
 */
static struct {
  int tried;
  int (*init2)(z_streamp, int, int, int, int, int, const char *, int);
  int (*deflate)(z_streamp, int);
  int (*end)(z_streamp);
  uLong (*bound)(z_streamp, uLong);
} libz;

static int load_libz(void) {
  if (__atomic_load_n(&libz.tried, __ATOMIC_ACQUIRE)) return libz.init2 != NULL;
  void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (h) {
    libz.deflate = (int (*)(z_streamp, int))dlsym(h, "deflate");
    libz.end = (int (*)(z_streamp))dlsym(h, "deflateEnd");
    libz.bound = (uLong(*)(z_streamp, uLong))dlsym(h, "deflateBound");
    void *i = dlsym(h, "deflateInit2_");
    if (libz.deflate && libz.end && libz.bound) libz.init2 = (int (*)(z_streamp, int, int, int, int, int, const char *, int))i;
  }
  __atomic_store_n(&libz.tried, 1, __ATOMIC_RELEASE);
  return libz.init2 != NULL;
}

static int get_int(napi_env env, napi_value v, int lo, int hi, int *out) {
  int32_t x;
  if (napi_get_value_int32(env, v, &x) != napi_ok || x < lo || x > hi) return 0;
  *out = x;
  return 1;
}

/*
 * zlibRaw(bytes, level, memLevel[, expected]) → Buffer | boolean
 * Raw deflate (window 2^15, default strategy) of `bytes`; with `expected`,
 * whether the output is exactly `expected`, stopping at the first difference.
 */
napi_value zlib_raw(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) {
    napi_throw_type_error(env, NULL, "zlibRaw(bytes, level, memLevel[, expected])");
    return NULL;
  }
  void *in = NULL;
  size_t inLen = 0;
  bool isBuf = false;
  int level, memLevel;
  if (napi_is_typedarray(env, argv[0], &isBuf) != napi_ok || !isBuf) {
    napi_throw_type_error(env, NULL, "zlibRaw: bytes must be a Uint8Array");
    return NULL;
  }
  napi_typedarray_type tt;
  napi_get_typedarray_info(env, argv[0], &tt, &inLen, &in, NULL, NULL);
  if (!get_int(env, argv[1], 0, 9, &level) || !get_int(env, argv[2], 1, 9, &memLevel)) {
    napi_throw_range_error(env, NULL, "zlibRaw: level 0-9, memLevel 1-9");
    return NULL;
  }
  const uint8_t *want = NULL;
  size_t wantLen = 0;
  if (argc >= 4) {
    bool t = false;
    napi_valuetype vt;
    napi_typeof(env, argv[3], &vt);
    if (vt != napi_undefined) {
      if (napi_is_typedarray(env, argv[3], &t) != napi_ok || !t) {
        napi_throw_type_error(env, NULL, "zlibRaw: expected must be a Uint8Array");
        return NULL;
      }
      void *w;
      napi_get_typedarray_info(env, argv[3], &tt, &wantLen, &w, NULL, NULL);
      want = w;
      if (!want) want = (const uint8_t *)"";
    }
  }
  if (!load_libz()) {
    napi_throw_error(env, NULL, "zlibRaw: cannot load the system's zlib (libz.so.1)");
    return NULL;
  }
  z_stream z;
  memset(&z, 0, sizeof(z));
  if (libz.init2(&z, level, Z_DEFLATED, -15, memLevel, Z_DEFAULT_STRATEGY, ZLIB_VERSION, (int)sizeof(z_stream)) != Z_OK) {
    napi_throw_error(env, NULL, "zlibRaw: deflateInit2 failed");
    return NULL;
  }
  z.next_in = in;
  z.avail_in = (uInt)inLen;
  napi_value res;
  if (want) {
    /* compare as the output comes: a wrong level is refused after its first piece */
    uint8_t piece[PIECE];
    size_t at = 0;
    int same = 1, rc;
    do {
      z.next_out = piece;
      z.avail_out = PIECE;
      rc = libz.deflate(&z, Z_FINISH);
      size_t n = PIECE - z.avail_out;
      if (at + n > wantLen || memcmp(piece, want + at, n) != 0) same = 0;
      at += n;
    } while (same && rc == Z_OK);
    if (rc != Z_STREAM_END && rc != Z_OK) same = 0;
    if (same && at != wantLen) same = 0;
    libz.end(&z);
    napi_get_boolean(env, same, &res);
    return res;
  }
  uLong bound = libz.bound(&z, (uLong)inLen);
  uint8_t *out = malloc(bound ? bound : 1);
  if (!out) {
    libz.end(&z);
    napi_throw_error(env, NULL, "zlibRaw: out of memory");
    return NULL;
  }
  z.next_out = out;
  z.avail_out = (uInt)bound;
  int rc = libz.deflate(&z, Z_FINISH);
  size_t n = bound - z.avail_out;
  libz.end(&z);
  if (rc != Z_STREAM_END) {
    free(out);
    napi_throw_error(env, NULL, "zlibRaw: deflate did not finish");
    return NULL;
  }
  void *data;
  if (napi_create_buffer_copy(env, n, out, &data, &res) != napi_ok) res = NULL;
  free(out);
  if (!res) napi_throw_error(env, NULL, "zlibRaw: cannot allocate the output");
  return res;
}
