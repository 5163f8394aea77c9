// AVX2 block of the CPU step backward (float32, zeros or border padding): 8 consecutive
// voxels along the last axis whose cells are all interior and whose corners all lie in the
// gradient range the calling chunk owns. Same math as step_backward_voxel's interior path
// (cell_backward, nested differences), vectorised over the 8 voxels; corners are read with
// warp's Windows8/pairs8 and scattered by warp's scatter_windows8/scatter_pairs8: one or two
// 8-wide read-modify-writes per row of the cell when the block's offsets form at most two
// runs, else scalar adds.
// Compiled for AVX2 with a target attribute and used only when the running CPU has it
// (warp::cpu_has_avx2); any other block takes the scalar path.
#pragma once

#include <cstdint>

#include "../warp/warp_cpu_simd.h"

#ifdef FASTREG_WARP_AVX2

namespace fastreg {
namespace integrate {

// v, g, grad: one batch item (NDIM, n), g and grad in float; p: the first voxel of the block
// (spatial index idx, last index idx[NDIM-1] .. +7); [own_lo, own_hi): the spatial indices
// of grad this call may write. scale: u = scale * v. Returns the lanes it handled (bit k:
// voxel p + k), those whose cells are interior; 0, writing nothing, when there is none or
// their corners are not all owned. The caller runs the scalar path for the other lanes.
// Requires n < 2^31.
template <int NDIM, bool BORDER>
__attribute__((target("avx2,fma"))) int backward_block8(const float* v, const float* g, float* grad,
                                                        int64_t n, int64_t p, const int64_t* idx,
                                                        const int64_t* size, const int64_t* stride,
                                                        float scale, int64_t own_lo, int64_t own_hi) {
  __m256 t[NDIM], dsrc[NDIM];
  __m256i base;
  const __m256 ok = warp::cells8<NDIM, BORDER>(v, n, p, idx, true, size, stride, scale, t, dsrc, base);
  const int mask = _mm256_movemask_ps(ok);
  if (mask == 0) return 0;
  const int span = static_cast<int>(stride[0] + (NDIM == 3 ? stride[1] : 0) + 1);  // last corner
  alignas(32) int32_t b[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(b), base);
  int64_t lo = own_hi, hi = own_lo - span - 1;
  for (int l = 0; l < 8; ++l) {
    if (!((mask >> l) & 1)) continue;
    lo = b[l] < lo ? b[l] : lo;
    hi = b[l] > hi ? b[l] : hi;
  }
  if (lo < own_lo || hi + span >= own_hi) return 0;
  // The other lanes contribute nothing here (gu = 0) and are skipped by the scatter.
  alignas(32) int32_t handled[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(handled), _mm256_castps_si256(ok));
  // Windows for reading v and writing grad: within the item and the owned range (the
  // last window element is 8 past a lane's last corner).
  const warp::Windows8 win = warp::windows8(base, own_lo > 0 ? own_lo : 0, (own_hi < n ? own_hi : n) - span - 8);
  const __m256 tl = t[NDIM - 1], sl = _mm256_sub_ps(_mm256_set1_ps(1.0f), tl);
  constexpr int kRows = 1 << (NDIM - 1);  // rows of a cell along the last axis
  int64_t row_off[kRows];
  warp::cell_rows<NDIM>(stride, row_off);
  __m256 gt[NDIM];
  for (int a = 0; a < NDIM; ++a) gt[a] = _mm256_setzero_ps();
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int c = 0; c < NDIM; ++c) {
    const __m256 gu = _mm256_and_ps(ok, _mm256_mul_ps(vscale, _mm256_loadu_ps(g + c * n + p)));
    __m256 rw[kRows];  // gu * weight of each row (all axes but the last)
    warp::cell_backward8<NDIM>(v + c * n, row_off, base, win, t, gu, gt, rw);
    float* dst = grad + c * n;
    if (win.ok) {
      warp::scatter_windows8<kRows>(dst, row_off, win, rw, sl, tl);
    } else {
      warp::scatter_pairs8<kRows>(dst, row_off, base, handled, rw, sl, tl);
    }
  }
  // Own voxels: scale * (g + gpos), gpos = gt * dsrc (gt carries one factor scale via gu).
  for (int c = 0; c < NDIM; ++c) {
    const __m256 gpos = _mm256_mul_ps(gt[c], dsrc[c]);
    float* q = grad + c * n + p;
    const __m256 own = _mm256_mul_ps(vscale, _mm256_add_ps(_mm256_loadu_ps(g + c * n + p), gpos));
    _mm256_storeu_ps(q, _mm256_add_ps(_mm256_loadu_ps(q), _mm256_and_ps(ok, own)));
  }
  return mask;
}

}  // namespace integrate
}  // namespace fastreg

#endif
