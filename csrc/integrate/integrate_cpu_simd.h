// AVX2 block of the CPU step backward (float32, zeros or border padding): 8 consecutive
// voxels along the last axis whose cells are all interior and whose corners all lie in the
// gradient range the calling chunk owns. Same math as step_backward_voxel's interior path
// (cell_backward, nested differences), vectorised over the 8 voxels; corners are read with
// warp's Windows8/pairs8 and scattered the same way: by one or two 8-wide read-modify-writes
// per row of the cell when the block's offsets form at most two runs, else by scalar adds.
// Compiled for AVX2 with a target attribute and used only when the running CPU has it
// (warp::cpu_has_avx2); any other block takes the scalar path.
#pragma once

#include <cstdint>

#include "../warp/warp_cpu_simd.h"

#ifdef FASTREG_WARP_AVX2

namespace fastreg {
namespace integrate {

// Lanes moved up by one: lane l + 1 gets lane l, lane 0 gets 0.
FASTREG_AVX2_INLINE __m256 shift_up(__m256 x) {
  return _mm256_blend_ps(_mm256_permutevar8x32_ps(x, _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6)),
                         _mm256_setzero_ps(), 1);
}

// q[l] += w0[l] + w1[l - 1] over the lanes in mask (w0 = rw * sl, w1 = rw * tl): the two
// corners of one cell row for the lanes of one window starting at q.
FASTREG_AVX2_INLINE void add_window8(float* q, __m256 mask, __m256 rw, __m256 sl, __m256 tl) {
  const __m256 w0 = _mm256_and_ps(mask, _mm256_mul_ps(rw, sl));
  const __m256 w1 = _mm256_and_ps(mask, _mm256_mul_ps(rw, tl));
  _mm256_storeu_ps(q, _mm256_add_ps(_mm256_loadu_ps(q), _mm256_add_ps(w0, shift_up(w1))));
}

// Adds the weights of 8 lanes to the two corners of each cell row: lane l adds
// rw[k][l] * sl[l] at dst + row_off[k] + o[l] and rw[k][l] * tl[l] one element further, with
// o given by the windows (at most two runs; lanes whose gu is zero add zeros). One 8-wide
// read-modify-write per row and window, the second corners shifted up one lane into the
// same window; the last lane's second corner, past the window, by a scalar add. All rows'
// first windows are written before any second window: the two may overlap, and a load
// right after an overlapping store cannot take its data from the store buffer.
template <int kRows>
FASTREG_AVX2_INLINE void scatter_windows8(float* dst, const int64_t* row_off, const warp::Windows8& win,
                                          const __m256* rw, __m256 sl, __m256 tl) {
  // Each window takes its own lanes (win.upper is all clear for one run).
  const __m256 lower = _mm256_andnot_ps(win.upper, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
  for (int k = 0; k < kRows; ++k) add_window8(dst + row_off[k] + win.first, lower, rw[k], sl, tl);
  if (win.second != win.first) {
    for (int k = 0; k < kRows; ++k) add_window8(dst + row_off[k] + win.second, win.upper, rw[k], sl, tl);
  }
  for (int k = 0; k < kRows; ++k) {
    const __m256 w1 = _mm256_mul_ps(rw[k], tl);
    dst[row_off[k] + win.second + 8] += _mm256_cvtss_f32(_mm256_permutevar8x32_ps(w1, _mm256_set1_epi32(7)));
  }
}

// The same scatter lane by lane, for offsets o that do not form two runs; lanes with
// handled[l] == 0 are skipped. All lanes' first corners, then all second corners:
// neighbouring lanes usually share corners (one's o + 1 is the next one's o), and this
// order keeps those read-modify-writes apart instead of chaining them through store
// forwarding.
template <int kRows>
FASTREG_AVX2_INLINE void scatter_pairs8(float* dst, const int64_t* row_off, __m256i o, const int32_t* handled,
                                        const __m256* rw, __m256 sl, __m256 tl) {
  alignas(32) int32_t b[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(b), o);
  alignas(32) float w[2][kRows][8];
  for (int k = 0; k < kRows; ++k) {
    _mm256_store_ps(w[0][k], _mm256_mul_ps(rw[k], sl));
    _mm256_store_ps(w[1][k], _mm256_mul_ps(rw[k], tl));
  }
  for (int x = 0; x < 2; ++x) {
    for (int k = 0; k < kRows; ++k) {
      float* row = dst + row_off[k] + x;
      for (int l = 0; l < 8; ++l) {
        if (handled[l]) row[b[l]] += w[x][k][l];
      }
    }
  }
}

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
  __m256i base = _mm256_setzero_si256();
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int a = 0; a < NDIM; ++a) {
    const __m256 i0 = _mm256_set1_ps(static_cast<float>(idx[a]));
    __m256 pos = _mm256_mul_ps(_mm256_loadu_ps(v + a * n + p), _mm256_set1_ps(scale));
    pos = _mm256_add_ps(pos, a == NDIM - 1 ? _mm256_add_ps(i0, _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)) : i0);
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(pos, pos, _CMP_ORD_Q));
    dsrc[a] = one;
    if (BORDER) {  // clamped below 0: the coordinate does not move with the position
      dsrc[a] = _mm256_and_ps(one, _mm256_cmp_ps(pos, _mm256_setzero_ps(), _CMP_GT_OQ));
      pos = _mm256_max_ps(pos, _mm256_setzero_ps());
    }
    const __m256 f = _mm256_floor_ps(pos);
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(f, _mm256_setzero_ps(), _CMP_GE_OQ));
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(f, _mm256_set1_ps(static_cast<float>(size[a] - 2)), _CMP_LE_OQ));
    t[a] = _mm256_sub_ps(pos, f);
    const __m256i fi = _mm256_cvttps_epi32(_mm256_and_ps(f, ok));
    base = _mm256_add_epi32(base, _mm256_mullo_epi32(fi, _mm256_set1_epi32(static_cast<int>(stride[a]))));
  }
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
  const __m256 tl = t[NDIM - 1], sl = _mm256_sub_ps(one, tl);
  constexpr int kRows = 1 << (NDIM - 1);  // rows of a cell along the last axis
  int64_t row_off[kRows];
  for (int r = 0; r < kRows; ++r) {
    row_off[r] = NDIM == 3 ? ((r >> 1) & 1) * stride[0] + (r & 1) * stride[1] : r * stride[0];
  }
  __m256 gt[NDIM];
  for (int a = 0; a < NDIM; ++a) gt[a] = _mm256_setzero_ps();
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int c = 0; c < NDIM; ++c) {
    const float* src = v + c * n;
    const __m256 gu = _mm256_and_ps(ok, _mm256_mul_ps(vscale, _mm256_loadu_ps(g + c * n + p)));
    __m256 x0[kRows], x1[kRows], r[kRows], d[kRows];
    for (int k = 0; k < kRows; ++k) {
      warp::pairs8(src + row_off[k], base, win, x0[k], x1[k]);
      r[k] = warp::lerp8(x0[k], x1[k], tl);
      d[k] = _mm256_sub_ps(x1[k], x0[k]);
    }
    __m256 rw[kRows];  // gu * weight of each row (all axes but the last)
    if constexpr (NDIM == 2) {
      const __m256 t0 = t[0];
      gt[0] = _mm256_fmadd_ps(gu, _mm256_sub_ps(r[1], r[0]), gt[0]);
      gt[1] = _mm256_fmadd_ps(gu, warp::lerp8(d[0], d[1], t0), gt[1]);
      rw[0] = _mm256_mul_ps(gu, _mm256_sub_ps(one, t0));
      rw[1] = _mm256_mul_ps(gu, t0);
    } else {
      const __m256 t0 = t[0], t1 = t[1];
      const __m256 a0 = warp::lerp8(r[0], r[1], t1), a1 = warp::lerp8(r[2], r[3], t1);
      gt[0] = _mm256_fmadd_ps(gu, _mm256_sub_ps(a1, a0), gt[0]);
      gt[1] = _mm256_fmadd_ps(gu, warp::lerp8(_mm256_sub_ps(r[1], r[0]), _mm256_sub_ps(r[3], r[2]), t0), gt[1]);
      gt[2] = _mm256_fmadd_ps(gu, warp::lerp8(warp::lerp8(d[0], d[1], t1), warp::lerp8(d[2], d[3], t1), t0), gt[2]);
      const __m256 g0 = _mm256_mul_ps(gu, _mm256_sub_ps(one, t0)), g1 = _mm256_mul_ps(gu, t0);
      const __m256 s1 = _mm256_sub_ps(one, t1);
      rw[0] = _mm256_mul_ps(g0, s1);
      rw[1] = _mm256_mul_ps(g0, t1);
      rw[2] = _mm256_mul_ps(g1, s1);
      rw[3] = _mm256_mul_ps(g1, t1);
    }
    float* dst = grad + c * n;
    if (win.ok) {
      scatter_windows8<kRows>(dst, row_off, win, rw, sl, tl);
    } else {
      scatter_pairs8<kRows>(dst, row_off, base, handled, rw, sl, tl);
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
