// AVX2 fast path of the CPU warp forward (float32, linear interpolation, zeros or border
// padding): 8 consecutive output voxels along the last axis whose cells all lie inside the
// image, positions computed 8 at a time and corners gathered. Compiled for AVX2 with a
// target attribute and used only when the running CPU has AVX2 and FMA, so the default build
// flags stay portable; any other block (border cells, NaN, size-1 axes) takes the scalar
// path of warp.h. Same math as interior_cell/interpolate_cell (nested lerps).
#pragma once

#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FASTREG_WARP_AVX2 1

namespace fastreg {
namespace warp {

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

__attribute__((target("avx2,fma"))) inline __m256 lerp8(__m256 a, __m256 b, __m256 t) {
  return _mm256_fmadd_ps(t, _mm256_sub_ps(b, a), a);
}

// Lanes 0..7 in the order 0, 1, 4, 5, 2, 3, 6, 7 and back (the permutation is its own inverse).
__attribute__((target("avx2,fma"))) inline __m256 pair_order8(__m256 x) {
  return _mm256_permutevar8x32_ps(x, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
}

// src[o] and src[o + 1] for 8 offsets o, in pair_order8's lane order. Each pair comes in one
// 64-bit gather element: half the elements of two 32-bit gathers, which is what a gather
// costs on current x86 cores.
__attribute__((target("avx2,fma"))) inline void pairs8(const float* src, __m256i o, __m256& x0, __m256& x1) {
  const double* base = reinterpret_cast<const double*>(src);
  const __m256 lo = _mm256_castpd_ps(_mm256_i32gather_pd(base, _mm256_castsi256_si128(o), 4));
  const __m256 hi = _mm256_castpd_ps(_mm256_i32gather_pd(base, _mm256_extracti128_si256(o, 1), 4));
  // lo = (o0, o0+1, o1, o1+1 | o2, .., o3+1), hi likewise for lanes 4..7
  x0 = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
  x1 = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
}

// Linear interpolation along the last axis of 8 rows of src starting at offsets o, with t
// and the result in pair_order8's lane order.
__attribute__((target("avx2,fma"))) inline __m256 row8(const float* src, __m256i o, __m256 t) {
  __m256 x0, x1;
  pairs8(src, o, x0, x1);
  return lerp8(x0, x1, t);
}

// Interpolates 8 output voxels v .. v+7 (same leading indices idx[0..NDIM-2], last index
// idx[NDIM-1] .. +7) for the batch items [0, nb) of img/out. loc: (NDIM, n_out) of one
// position batch item, multiplied by `scale` (exact for the powers of two integrate_svf
// uses); img: (nb, C, n_in); out: (nb, C, n_out) at voxel v. Requires n_in < 2^31.
// Without `interior` (nullptr): returns false, writing nothing, unless all 8 cells are
// interior. With it: *interior gets the lanes whose cells are interior (bit k: voxel v + k);
// returns false, writing nothing, when there is none, else writes all 8 lanes, the others
// with garbage for the caller to overwrite by the scalar path.
template <int NDIM, bool BORDER>
__attribute__((target("avx2,fma"))) bool forward_block8(const float* loc, int64_t n_out, int64_t v,
                                                       const int64_t* idx, bool displacement,
                                                       const int64_t* size, const int64_t* stride,
                                                       const float* img, float* out, int64_t nb,
                                                       int64_t channels, int64_t n_in,
                                                       float scale = 1.0f, int* interior = nullptr) {
  __m256 t[NDIM];
  __m256i base = _mm256_setzero_si256();
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (int a = 0; a < NDIM; ++a) {
    __m256 p = _mm256_mul_ps(_mm256_loadu_ps(loc + a * n_out + v), _mm256_set1_ps(scale));
    if (displacement) {
      const __m256 i0 = _mm256_set1_ps(static_cast<float>(idx[a]));
      p = _mm256_add_ps(p, a == NDIM - 1 ? _mm256_add_ps(i0, _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)) : i0);
    }
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(p, p, _CMP_ORD_Q));  // NaN: scalar path
    if (BORDER) {
      p = _mm256_min_ps(_mm256_max_ps(p, _mm256_setzero_ps()), _mm256_set1_ps(static_cast<float>(size[a] - 1)));
    }
    const __m256 f = _mm256_floor_ps(p);
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(f, _mm256_setzero_ps(), _CMP_GE_OQ));
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(f, _mm256_set1_ps(static_cast<float>(size[a] - 2)), _CMP_LE_OQ));
    t[a] = _mm256_sub_ps(p, f);
    const __m256i fi = _mm256_cvttps_epi32(_mm256_and_ps(f, ok));  // masked lanes read offset 0
    base = _mm256_add_epi32(base, _mm256_mullo_epi32(fi, _mm256_set1_epi32(static_cast<int>(stride[a]))));
  }
  const int mask = _mm256_movemask_ps(ok);
  if (interior != nullptr) *interior = mask;
  if (interior == nullptr ? mask != 0xFF : mask == 0) return false;
  for (int a = 0; a < NDIM; ++a) t[a] = pair_order8(t[a]);
  const __m256 tl = t[NDIM - 1];
  const __m256i s0 = _mm256_set1_epi32(static_cast<int>(stride[0]));
  const __m256i s1 = _mm256_set1_epi32(static_cast<int>(NDIM == 3 ? stride[1] : 0));
  for (int64_t r = 0; r < nb * channels; ++r) {
    const float* src = img + r * n_in;
    __m256 value;
    if constexpr (NDIM == 2) {
      value = lerp8(row8(src, base, tl), row8(src, _mm256_add_epi32(base, s0), tl), t[0]);
    } else {
      const __m256i b1 = _mm256_add_epi32(base, s0);
      value = lerp8(lerp8(row8(src, base, tl), row8(src, _mm256_add_epi32(base, s1), tl), t[1]),
                    lerp8(row8(src, b1, tl), row8(src, _mm256_add_epi32(b1, s1), tl), t[1]), t[0]);
    }
    _mm256_storeu_ps(out + r * n_out, pair_order8(value));
  }
  return true;
}

}  // namespace warp
}  // namespace fastreg

#endif
