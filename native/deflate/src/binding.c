/*
 * d4fs-deflate: Node-API binding of the deflate encoders that reproduce
 * Go tools' output (goflate.h: Go's compress/flate; kpflate.h:
 * klauspost/compress's flate and pgzip) and the system's zlib (zlibraw.h:
 * zip members, which Node's own zlib does not reproduce).
 *
 *   goNew(level) → encoder     level -2..9 (-1: 6); throws RangeError otherwise
 *   goWrite(encoder, bytes) → Buffer   the compressed bytes produced so far
 *   goFlush(encoder) → Buffer          Go's Writer.Flush
 *   goClose(encoder) → Buffer          Go's Writer.Close: the rest; the encoder is freed
 *   kpNew(level, pgzipBlock, threads?) → encoder  level -2..9 (-1: 5); pgzipBlock 0 (one stream) or > 16384;
 *                                       threads: pgzip's blocks compressed at once (0 or absent: one per processor)
 *   kpWrite(encoder, bytes) → Buffer, kpClose(encoder) → Buffer   as above
 *   zlibRaw(bytes, level, memLevel[, expected]) → Buffer | boolean   raw deflate by the
 *                                       system's zlib (zlibraw.c); with expected: equal to it?
 *   recEncode(body) → { record, size } | string   reconstruction record of a raw deflate
 *                                       body (recon.h), or why there is none
 *   recScan(body) → { consumed, size } | string   the deflate stream at the start of body:
 *                                       its length and inflated size (a gzip member's end)
 *   recNew(record, maxOut) → decoder; recWrite(decoder, bytes) → Buffer;
 *   recClose(decoder) → Buffer          the body rebuilt from the record and the
 *                                       uncompressed bytes; throws when they do not fit
 *
 * Calls are synchronous (CPU-bound: run them in a worker thread); a pgzip
 * encoder's calls use threads of their own for the blocks they compress. An
 * encoder not closed is freed when collected.
 */
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

#include "goflate.h"
#include "kpflate.h"
#include "zlibraw.h"
#include "recon.h"
#include "pipe.h"
#include <errno.h>

typedef struct {
  gf *e;
  kp *k;
} handle;

static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  handle *h = data;
  gf_free(h->e);
  kp_free(h->k);
  free(h);
}

static handle *get_handle(napi_env env, napi_value v) {
  handle *h = NULL;
  if (napi_get_value_external(env, v, (void **)&h) != napi_ok || !h || !h->e) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: not an open encoder");
    return NULL;
  }
  return h;
}

/* A new Buffer holding `len` bytes at `p` (an encoder's output, valid until its next call). */
static napi_value bytes_out(napi_env env, const uint8_t *p, size_t len) {
  napi_value out;
  void *data;
  if (napi_create_buffer(env, len, &data, &out) != napi_ok) {
    napi_throw_error(env, NULL, "d4fs-deflate: cannot allocate the output");
    return NULL;
  }
  if (len) memcpy(data, p, len);
  return out;
}

static napi_value take(napi_env env, handle *h) {
  size_t len;
  const uint8_t *p = gf_take(h->e, &len);
  return bytes_out(env, p, len);
}

static napi_value js_new(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t level = 99;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &level) != napi_ok || level < -2 || level > 9) {
    napi_throw_range_error(env, NULL, "d4fs-deflate: goNew(level): level must be an integer from -2 to 9");
    return NULL;
  }
  handle *h = calloc(1, sizeof(*h));
  if (!h || !(h->e = gf_new(level))) {
    free(h);
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  napi_value ext;
  if (napi_create_external(env, h, finalize, NULL, &ext) != napi_ok) {
    gf_free(h->e);
    free(h);
    napi_throw_error(env, NULL, "d4fs-deflate: cannot create the encoder");
    return NULL;
  }
  return ext;
}

/* The bytes of a Uint8Array argument; -1 for anything else. */
static int get_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  bool is = false;
  napi_typedarray_type type;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is || napi_get_typedarray_info(env, v, &type, len, data, NULL, NULL) != napi_ok || type != napi_uint8_array)
    return -1;
  return 0;
}

static napi_value js_write(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  handle *h = argc >= 1 ? get_handle(env, argv[0]) : NULL;
  if (!h) return NULL;
  void *data = NULL;
  size_t len = 0;
  if (argc < 2 || get_bytes(env, argv[1], &data, &len)) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: goWrite(encoder, bytes): bytes must be a Uint8Array");
    return NULL;
  }
  if (gf_write(h->e, data, len) != 0) {
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  return take(env, h);
}

static napi_value js_flush(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  handle *h = argc >= 1 ? get_handle(env, argv[0]) : NULL;
  if (!h) return NULL;
  if (gf_flush(h->e) != 0) {
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  return take(env, h);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  handle *h = argc >= 1 ? get_handle(env, argv[0]) : NULL;
  if (!h) return NULL;
  if (gf_close(h->e) != 0) {
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  napi_value out = take(env, h);
  gf_free(h->e);
  h->e = NULL;
  return out;
}

static handle *get_kp(napi_env env, napi_value v) {
  handle *h = NULL;
  if (napi_get_value_external(env, v, (void **)&h) != napi_ok || !h || !h->k) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: not an open klauspost encoder");
    return NULL;
  }
  return h;
}

static napi_value take_kp(napi_env env, handle *h) {
  size_t len;
  const uint8_t *p = kp_take(h->k, &len);
  return bytes_out(env, p, len);
}

static napi_value js_kp_new(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t level = 99, block = -1, threads = 0;
  napi_valuetype t3 = napi_undefined;
  if (argc >= 3) napi_typeof(env, argv[2], &t3);
  if (argc < 2 || napi_get_value_int32(env, argv[0], &level) != napi_ok || napi_get_value_int32(env, argv[1], &block) != napi_ok ||
      (t3 != napi_undefined && napi_get_value_int32(env, argv[2], &threads) != napi_ok)) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: kpNew(level, pgzipBlock, threads?)");
    return NULL;
  }
  handle *h = calloc(1, sizeof(*h));
  if (!h) {
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  h->k = kp_new(level, block, threads);
  if (!h->k) {
    free(h);
    napi_throw_range_error(env, NULL, "d4fs-deflate: kpNew(level, pgzipBlock, threads?): level must be -2..9, pgzipBlock 0 or 16385..64 MiB, threads 0..16");
    return NULL;
  }
  napi_value ext;
  if (napi_create_external(env, h, finalize, NULL, &ext) != napi_ok) {
    kp_free(h->k);
    free(h);
    napi_throw_error(env, NULL, "d4fs-deflate: cannot create the encoder");
    return NULL;
  }
  return ext;
}

static napi_value js_kp_write(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  handle *h = argc >= 1 ? get_kp(env, argv[0]) : NULL;
  if (!h) return NULL;
  void *data = NULL;
  size_t len = 0;
  if (argc < 2 || get_bytes(env, argv[1], &data, &len)) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: kpWrite(encoder, bytes): bytes must be a Uint8Array");
    return NULL;
  }
  if (kp_write(h->k, data, len) != 0) {
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  return take_kp(env, h);
}

static napi_value js_kp_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  handle *h = argc >= 1 ? get_kp(env, argv[0]) : NULL;
  if (!h) return NULL;
  if (kp_close(h->k) != 0) {
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  napi_value out = take_kp(env, h);
  kp_free(h->k);
  h->k = NULL;
  return out;
}

/* ---- reconstruction records (recon.h) ---- */

static napi_value js_rec_encode(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data = NULL;
  size_t len = 0;
  if (argc < 1 || get_bytes(env, argv[0], &data, &len)) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: recEncode(body): body must be a Uint8Array");
    return NULL;
  }
  uint8_t *rec = NULL;
  size_t n = 0;
  uint64_t usize = 0;
  const char *why = NULL;
  napi_value res;
  if (rec_encode(data, len, &rec, &n, &usize, &why) != 0) {
    napi_create_string_utf8(env, why ? why : "unknown", NAPI_AUTO_LENGTH, &res);
    return res;
  }
  napi_value buf = bytes_out(env, rec, n);
  free(rec);
  if (!buf) return NULL;
  napi_value size;
  napi_create_double(env, (double)usize, &size);
  napi_create_object(env, &res);
  napi_set_named_property(env, res, "record", buf);
  napi_set_named_property(env, res, "size", size);
  return res;
}

static napi_value js_rec_scan(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data = NULL;
  size_t len = 0;
  if (argc < 1 || get_bytes(env, argv[0], &data, &len)) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: recScan(body): body must be a Uint8Array");
    return NULL;
  }
  uint64_t consumed = 0, usize = 0;
  const char *why = NULL;
  napi_value res;
  if (rec_scan(data, len, &consumed, &usize, &why) != 0) {
    napi_create_string_utf8(env, why ? why : "unknown", NAPI_AUTO_LENGTH, &res);
    return res;
  }
  napi_value a, b;
  napi_create_double(env, (double)consumed, &a);
  napi_create_double(env, (double)usize, &b);
  napi_create_object(env, &res);
  napi_set_named_property(env, res, "consumed", a);
  napi_set_named_property(env, res, "size", b);
  return res;
}

static void rec_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  rec_dec **h = data;
  rec_dec_free(*h);
  free(h);
}

static rec_dec **get_rec(napi_env env, napi_value v) {
  rec_dec **h = NULL;
  if (napi_get_value_external(env, v, (void **)&h) != napi_ok || !h || !*h) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: not an open record decoder");
    return NULL;
  }
  return h;
}

static napi_value js_rec_new(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data = NULL;
  size_t len = 0;
  double max_out = -1;
  if (argc < 2 || get_bytes(env, argv[0], &data, &len) || napi_get_value_double(env, argv[1], &max_out) != napi_ok || !(max_out >= 0)) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: recNew(record, maxOut)");
    return NULL;
  }
  rec_dec **h = calloc(1, sizeof(*h));
  if (!h || !(*h = rec_dec_new(data, len, (uint64_t)max_out))) {
    free(h);
    napi_throw_error(env, NULL, "d4fs-deflate: out of memory");
    return NULL;
  }
  napi_value ext;
  if (napi_create_external(env, h, rec_finalize, NULL, &ext) != napi_ok) {
    rec_dec_free(*h);
    free(h);
    napi_throw_error(env, NULL, "d4fs-deflate: cannot create the decoder");
    return NULL;
  }
  return ext;
}

static napi_value rec_out(napi_env env, rec_dec **h, int rc) {
  if (rc != 0) {
    const char *why = rec_dec_error(*h);
    rec_dec_free(*h);
    *h = NULL;
    napi_throw_error(env, "CORRUPT", why ? why : "the record does not fit the data");
    return NULL;
  }
  size_t n;
  const uint8_t *p = rec_dec_take(*h, &n);
  return bytes_out(env, p, n);
}

static napi_value js_rec_write(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  rec_dec **h = argc >= 1 ? get_rec(env, argv[0]) : NULL;
  if (!h) return NULL;
  void *data = NULL;
  size_t len = 0;
  if (argc < 2 || get_bytes(env, argv[1], &data, &len)) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: recWrite(decoder, bytes): bytes must be a Uint8Array");
    return NULL;
  }
  return rec_out(env, h, rec_dec_write(*h, data, len));
}

static napi_value js_rec_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  rec_dec **h = argc >= 1 ? get_rec(env, argv[0]) : NULL;
  if (!h) return NULL;
  napi_value out = rec_out(env, h, rec_dec_finish(*h));
  if (*h) {
    rec_dec_free(*h);
    *h = NULL;
  }
  return out;
}

/* Copies a JS string into a malloc'd C string (NULL when it is not a string or has a NUL). */
static char *get_string(napi_env env, napi_value v) {
  size_t n;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) return NULL;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  if (napi_get_value_string_utf8(env, v, s, n + 1, &n) != napi_ok || strlen(s) != n) {
    free(s);
    return NULL;
  }
  return s;
}

/*
 * pipeThrough(file, args, input, maxOut) → { status, stdout }: runs `file` (PATH lookup) with
 * `args` (argv[1..]) by posix_spawn, `input` on its stdin; throws an Error whose code is the
 * errno's name (ENOENT, EFBIG: output over maxOut, ...) when it cannot be run to its end.
 */
static napi_value js_pipe_through(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *in = NULL;
  size_t in_len = 0;
  uint32_t nargs = 0;
  int64_t max_out = 0;
  bool is_array = false;
  if (argc < 4 || napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[1], &nargs) != napi_ok || nargs > 64 ||
      get_bytes(env, argv[2], &in, &in_len) || napi_get_value_int64(env, argv[3], &max_out) != napi_ok || max_out < 1) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: pipeThrough(file, args, input, maxOut): a string, at most 64 strings, a Uint8Array, a positive number");
    return NULL;
  }
  char *file = get_string(env, argv[0]);
  char *args[66] = {0};
  int ok = file != NULL;
  args[0] = file;
  for (uint32_t i = 0; ok && i < nargs; i++) {
    napi_value a;
    ok = napi_get_element(env, argv[1], i, &a) == napi_ok && (args[i + 1] = get_string(env, a)) != NULL;
  }
  napi_value result = NULL;
  if (!ok) {
    napi_throw_type_error(env, NULL, "d4fs-deflate: pipeThrough: the program and its arguments must be strings without NUL");
  } else {
    struct pipe_result r;
    int e = pipe_through(file, args, in, in_len, (size_t)max_out, &r);
    if (e) {
      const char *name = e == ENOENT ? "ENOENT" : e == EFBIG ? "EFBIG" : e == ENOMEM ? "ENOMEM" : e == EACCES ? "EACCES" : "EIO";
      napi_throw_error(env, name, e == EFBIG ? "the program wrote more than maxOut bytes" : strerror(e));
    } else {
      napi_value out = bytes_out(env, r.out, r.len), status;
      free(r.out);
      if (out && napi_create_object(env, &result) == napi_ok && napi_create_int32(env, r.status, &status) == napi_ok) {
        napi_set_named_property(env, result, "status", status);
        napi_set_named_property(env, result, "stdout", out);
      }
    }
  }
  for (uint32_t i = 0; i <= nargs; i++) free(args[i]);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"goNew", NULL, js_new, NULL, NULL, NULL, napi_default, NULL},
      {"goWrite", NULL, js_write, NULL, NULL, NULL, napi_default, NULL},
      {"goFlush", NULL, js_flush, NULL, NULL, NULL, napi_default, NULL},
      {"goClose", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
      {"kpNew", NULL, js_kp_new, NULL, NULL, NULL, napi_default, NULL},
      {"kpWrite", NULL, js_kp_write, NULL, NULL, NULL, napi_default, NULL},
      {"kpClose", NULL, js_kp_close, NULL, NULL, NULL, napi_default, NULL},
      {"zlibRaw", NULL, zlib_raw, NULL, NULL, NULL, napi_default, NULL},
      {"recEncode", NULL, js_rec_encode, NULL, NULL, NULL, napi_default, NULL},
      {"recScan", NULL, js_rec_scan, NULL, NULL, NULL, napi_default, NULL},
      {"recNew", NULL, js_rec_new, NULL, NULL, NULL, napi_default, NULL},
      {"recWrite", NULL, js_rec_write, NULL, NULL, NULL, napi_default, NULL},
      {"recClose", NULL, js_rec_close, NULL, NULL, NULL, napi_default, NULL},
      {"pipeThrough", NULL, js_pipe_through, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
