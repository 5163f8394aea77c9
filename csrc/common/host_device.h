// Shared macros for the per-element math headers (csrc/<family>/<family>.h).
// A function marked FASTREG_HOST_DEVICE compiles for the host (CPU launchers) and,
// under nvcc, for the device too, so the CPU and CUDA launchers run one body.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTREG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTREG_HOST_DEVICE inline
#endif
