{
  "targets": [
    {
      "target_name": "d4fs_deflate",
      "sources": ["src/binding.c", "src/goflate.c", "src/kpflate.c", "src/zlibraw.c", "src/recon.c", "src/pipe.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_c": ["-std=gnu11", "-O3", "-ffp-contract=off", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "ldflags": ["-pthread"],
      "libraries": ["-lm", "-ldl"]
    }
  ]
}
