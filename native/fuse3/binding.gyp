{
  "targets": [
    {
      "target_name": "d4fs_fuse3",
      "sources": ["src/binding.c"],
      "include_dirs": ["/usr/include/fuse3"],
      "libraries": ["-lfuse3", "-lpthread"],
      "defines": ["NAPI_VERSION=8", "_FILE_OFFSET_BITS=64"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    }
  ]
}
