{
  "targets": [
    {
      "target_name": "bsdiff_sa",
      "sources": ["src/bsdiff_sa.c", "src/cm.c", "src/bitcode.c"],
      "cflags_c": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-ldivsufsort"]
    }
  ]
}
