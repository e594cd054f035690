/* LLVM bitcode's expanded form (bitcode.c; the reference is src/delta/bitcode.ts). */
#ifndef D4FS_BITCODE_H
#define D4FS_BITCODE_H
#include <stddef.h>
#include <stdint.h>

/* The expanded form of bitcode file b (malloc'd into *out): 0, or 1 when the TypeScript walk must decide. */
int bc_expand(const uint8_t *b, size_t n, uint8_t **out, size_t *outn);
/* The file (at most max bytes) whose expanded form is `form`: 0, or 1 when the TypeScript walk must decide. */
int bc_rebuild(const uint8_t *form, size_t n, size_t max, uint8_t **out, size_t *outn);

#endif
