// FASTREG_VECTOR_LOOP: the attribute of a CPU function whose inner loops should vectorize.
// GCC: inline everything it calls (flatten), so the loops see the per-element math, and on
// x86-64 Linux also compile it for AVX2 next to the baseline, picked at load time by the CPU
// (the build flags stay portable). Clang cannot multiversion templates: flatten only.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTREG_AVX2_CLONES 1
#define FASTREG_VECTOR_LOOP __attribute__((flatten, target_clones("avx2", "default")))
#elif defined(__GNUC__)
#define FASTREG_VECTOR_LOOP __attribute__((flatten))
#else
#define FASTREG_VECTOR_LOOP
#endif
