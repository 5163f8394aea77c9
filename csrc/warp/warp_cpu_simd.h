// AVX2 fast path of the CPU warp forward (float32, linear interpolation, zeros or border
// padding): 8 consecutive output voxels along the last axis whose cells all lie inside the
// image, positions computed 8 at a time and corners read as windows or pairs (Windows8).
// Compiled for AVX2 with a target attribute and used only when the running CPU has AVX2 and
// FMA, so the default build flags stay portable; any other block (border cells, NaN, size-1
// axes) takes the scalar path of warp.h. Same math as interior_cell/interpolate_cell (nested lerps).
#pragma once

#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FASTREG_WARP_AVX2 1

namespace fastreg {
namespace warp {

// Helpers called per block: always inlined, so that their vectors stay in registers.
#define FASTREG_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

FASTREG_AVX2_INLINE __m256 lerp8(__m256 a, __m256 b, __m256 t) {
  return _mm256_fmadd_ps(t, _mm256_sub_ps(b, a), a);
}

// How a block reads the elements at 8 offsets o (lane l at o[l]): where the offsets form at
// most two runs of consecutive elements (lane l at first + l for the lanes before the split,
// at second + l after it), as one or two unaligned 8-wide windows; otherwise element by
// element. Smooth displacement fields give one or two runs for most blocks.
struct Windows8 {
  int32_t first, second;  // window starts; second == first for one run
  __m256 upper;           // the lanes of the second window (all clear for one run)
  bool ok;                // at most two runs, both windows within the limits
};

// The windows of the offsets o; ok only if both windows start within [lo, hi].
FASTREG_AVX2_INLINE Windows8 windows8(__m256i o, int64_t lo, int64_t hi) {
  const __m256i e = _mm256_sub_epi32(o, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));  // window start per lane
  Windows8 w;
  w.first = _mm256_cvtsi256_si32(e);
  w.second = _mm256_extract_epi32(e, 7);
  const __m256i in_first = _mm256_cmpeq_epi32(e, _mm256_set1_epi32(w.first));
  const int a = _mm256_movemask_ps(_mm256_castsi256_ps(in_first));
  const int b = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(e, _mm256_set1_epi32(w.second))));
  w.upper = _mm256_castsi256_ps(_mm256_andnot_si256(in_first, _mm256_set1_epi32(-1)));
  // The first run is a prefix of the lanes and the second run takes every other lane.
  w.ok = (a | b) == 0xFF && (a & (a + 1)) == 0 && w.first >= lo && w.first <= hi && w.second >= lo && w.second <= hi;
  return w;
}

// src[o] and src[o + 1] for 8 offsets o, in lane order: from the windows when w.ok, else as
// one 64-bit load per lane.
FASTREG_AVX2_INLINE void pairs8(const float* src, __m256i o, const Windows8& w,
                                                       __m256& x0, __m256& x1) {
  if (w.ok) {
    x0 = _mm256_loadu_ps(src + w.first);
    x1 = _mm256_loadu_ps(src + w.first + 1);
    if (w.second != w.first) {
      x0 = _mm256_blendv_ps(x0, _mm256_loadu_ps(src + w.second), w.upper);
      x1 = _mm256_blendv_ps(x1, _mm256_loadu_ps(src + w.second + 1), w.upper);
    }
    return;
  }
  alignas(32) int32_t off[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(off), o);
  auto pair = [&](int l) { return reinterpret_cast<const double*>(src + off[l]); };
  // Lanes (0, 1, 4, 5) then (2, 3, 6, 7): the shuffles below put them back in order.
  const __m128d l01 = _mm_loadh_pd(_mm_load_sd(pair(0)), pair(1));
  const __m128d l45 = _mm_loadh_pd(_mm_load_sd(pair(4)), pair(5));
  const __m128d l23 = _mm_loadh_pd(_mm_load_sd(pair(2)), pair(3));
  const __m128d l67 = _mm_loadh_pd(_mm_load_sd(pair(6)), pair(7));
  const __m256 lo = _mm256_castpd_ps(_mm256_insertf128_pd(_mm256_castpd128_pd256(l01), l45, 1));
  const __m256 hi = _mm256_castpd_ps(_mm256_insertf128_pd(_mm256_castpd128_pd256(l23), l67, 1));
  x0 = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
  x1 = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
}

// Linear interpolation along the last axis of 8 rows of src starting at offsets o.
FASTREG_AVX2_INLINE __m256 row8(const float* src, __m256i o, const Windows8& w, __m256 t) {
  __m256 x0, x1;
  pairs8(src, o, w, x0, x1);
  return lerp8(x0, x1, t);
}

// Interpolates 8 output voxels v .. v+7 (same leading indices idx[0..NDIM-2], last index
// idx[NDIM-1] .. +7) for the batch items [0, nb) of img/out. loc: (NDIM, n_out) of one
// position batch item, multiplied by `scale` (exact for the powers of two integrate_svf
// uses); img: (nb, C, n_in); out: (nb, C, n_out) at voxel v. Requires n_in < 2^31.
// With add_source (needs n_in == n_out) the output is scale * (img at v + interpolated):
// one scaling-and-squaring step of integrate_svf when img is loc.
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
                                                       float scale = 1.0f, int* interior = nullptr,
                                                       bool add_source = false) {
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
  const int64_t span = stride[0] + (NDIM == 3 ? stride[1] : 0) + 1;  // the last corner of a cell
  const Windows8 w = windows8(base, 0, n_in - span - 8);
  const int64_t s0 = stride[0], s1 = NDIM == 3 ? stride[1] : 0;
  for (int64_t r = 0; r < nb * channels; ++r) {
    const float* src = img + r * n_in;
    __m256 value;
    if constexpr (NDIM == 2) {
      value = lerp8(row8(src, base, w, t[1]), row8(src + s0, base, w, t[1]), t[0]);
    } else {
      const __m256 tl = t[2];
      value = lerp8(lerp8(row8(src, base, w, tl), row8(src + s1, base, w, tl), t[1]),
                    lerp8(row8(src + s0, base, w, tl), row8(src + s0 + s1, base, w, tl), t[1]), t[0]);
    }
    if (add_source) value = _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_add_ps(_mm256_loadu_ps(src + v), value));
    _mm256_storeu_ps(out + r * n_out, value);
  }
  return true;
}

}  // namespace warp
}  // namespace fastreg

#endif
