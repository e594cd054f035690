#ifndef D4FS_ZLIBRAW_H
#define D4FS_ZLIBRAW_H
#include <node_api.h>
/* zlibRaw(bytes, level, memLevel[, expected]): raw deflate by the system's zlib (zlibraw.c). */
napi_value zlib_raw(napi_env env, napi_callback_info info);
#endif
