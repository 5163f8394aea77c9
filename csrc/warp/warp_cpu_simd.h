// AVX2 fast path of the CPU warp forward and backward (float32, linear interpolation, zeros
// or border padding): 8 consecutive output voxels along the last axis whose cells all lie
// inside the image, positions computed 8 at a time, corners read as windows or pairs
// (Windows8) and image gradients scattered the same way (also used by integrate_svf).
// Compiled for AVX2 with a target attribute and used only when the running CPU has AVX2 and
// FMA, so the default build flags stay portable; any other block (border cells, NaN, size-1
// axes) takes the scalar path of warp.h. Same math as interior_cell/interpolate_cell (nested
// lerps); the backward differentiates the nested lerps.
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

// The cells of the 8 output voxels v .. v+7 (same leading indices idx[0..NDIM-2], last index
// idx[NDIM-1] .. +7): loc is (NDIM, n_out) of one position batch item, multiplied by `scale`;
// with `displacement` the voxel's index is added. Per axis: t, the fraction within the cell,
// and dsrc, d(sampled coordinate)/d(position) (1; 0 where border padding clamps); base: the
// flat offset of each cell's first corner (0 in lanes that are not interior). Returns the
// mask of the interior lanes (all 2^NDIM corners inside; never NaN).
template <int NDIM, bool BORDER>
FASTREG_AVX2_INLINE __m256 cells8(const float* loc, int64_t n_out, int64_t v, const int64_t* idx,
                                  bool displacement, const int64_t* size, const int64_t* stride, float scale,
                                  __m256* t, __m256* dsrc, __m256i& base) {
  base = _mm256_setzero_si256();
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int a = 0; a < NDIM; ++a) {
    __m256 p = _mm256_mul_ps(_mm256_loadu_ps(loc + a * n_out + v), _mm256_set1_ps(scale));
    if (displacement) {
      const __m256 i0 = _mm256_set1_ps(static_cast<float>(idx[a]));
      p = _mm256_add_ps(p, a == NDIM - 1 ? _mm256_add_ps(i0, _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)) : i0);
    }
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(p, p, _CMP_ORD_Q));  // NaN: scalar path
    dsrc[a] = one;
    if (BORDER) {  // clamped at 0 (interior lanes are never clamped at the top)
      dsrc[a] = _mm256_and_ps(one, _mm256_cmp_ps(p, _mm256_setzero_ps(), _CMP_GT_OQ));
      p = _mm256_min_ps(_mm256_max_ps(p, _mm256_setzero_ps()), _mm256_set1_ps(static_cast<float>(size[a] - 1)));
    }
    const __m256 f = _mm256_floor_ps(p);
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(f, _mm256_setzero_ps(), _CMP_GE_OQ));
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(f, _mm256_set1_ps(static_cast<float>(size[a] - 2)), _CMP_LE_OQ));
    t[a] = _mm256_sub_ps(p, f);
    const __m256i fi = _mm256_cvttps_epi32(_mm256_and_ps(f, ok));  // masked lanes read offset 0
    base = _mm256_add_epi32(base, _mm256_mullo_epi32(fi, _mm256_set1_epi32(static_cast<int>(stride[a]))));
  }
  return ok;
}

// Interpolates 8 output voxels v .. v+7 (see cells8 for loc, idx, displacement, scale) for
// the batch items [0, nb) of img/out. img: (nb, C, n_in); out: (nb, C, n_out) at voxel v.
// Requires n_in < 2^31.
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
  __m256 t[NDIM], dsrc[NDIM];
  __m256i base;
  const int mask = _mm256_movemask_ps(cells8<NDIM, BORDER>(loc, n_out, v, idx, displacement, size, stride, scale, t, dsrc, base));
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

// Offsets of the 2^(NDIM-1) rows of a cell along the last axis from its first corner.
template <int NDIM>
inline void cell_rows(const int64_t* stride, int64_t* row_off) {
  for (int r = 0; r < (1 << (NDIM - 1)); ++r) {
    row_off[r] = NDIM == 3 ? ((r >> 1) & 1) * stride[0] + (r & 1) * stride[1] : r * stride[0];
  }
}

// Backward of the interpolation of one channel src in 8 interior cells (first corners base,
// read through the windows w; fractions t per axis) against the output gradient gu:
// gt[a] += gu * d(interpolated)/d(t[a]) when gt is not null (nested differences of the
// corners), and rw[k] = gu * the weight of cell row k (row_off order of cell_rows) over all
// axes but the last.
template <int NDIM>
FASTREG_AVX2_INLINE void cell_backward8(const float* src, const int64_t* row_off, __m256i base, const Windows8& w,
                                        const __m256* t, __m256 gu, __m256* gt, __m256* rw) {
  constexpr int kRows = 1 << (NDIM - 1);
  const __m256 one = _mm256_set1_ps(1.0f);
  if (gt != nullptr) {
    const __m256 tl = t[NDIM - 1];
    __m256 r[kRows], d[kRows];
    for (int k = 0; k < kRows; ++k) {
      __m256 x0, x1;
      pairs8(src + row_off[k], base, w, x0, x1);
      r[k] = lerp8(x0, x1, tl);
      d[k] = _mm256_sub_ps(x1, x0);
    }
    if constexpr (NDIM == 2) {
      gt[0] = _mm256_fmadd_ps(gu, _mm256_sub_ps(r[1], r[0]), gt[0]);
      gt[1] = _mm256_fmadd_ps(gu, lerp8(d[0], d[1], t[0]), gt[1]);
    } else {
      const __m256 a0 = lerp8(r[0], r[1], t[1]), a1 = lerp8(r[2], r[3], t[1]);
      gt[0] = _mm256_fmadd_ps(gu, _mm256_sub_ps(a1, a0), gt[0]);
      gt[1] = _mm256_fmadd_ps(gu, lerp8(_mm256_sub_ps(r[1], r[0]), _mm256_sub_ps(r[3], r[2]), t[0]), gt[1]);
      gt[2] = _mm256_fmadd_ps(gu, lerp8(lerp8(d[0], d[1], t[1]), lerp8(d[2], d[3], t[1]), t[0]), gt[2]);
    }
  }
  if constexpr (NDIM == 2) {
    rw[0] = _mm256_mul_ps(gu, _mm256_sub_ps(one, t[0]));
    rw[1] = _mm256_mul_ps(gu, t[0]);
  } else {
    const __m256 g0 = _mm256_mul_ps(gu, _mm256_sub_ps(one, t[0])), g1 = _mm256_mul_ps(gu, t[0]);
    const __m256 s1 = _mm256_sub_ps(one, t[1]);
    rw[0] = _mm256_mul_ps(g0, s1);
    rw[1] = _mm256_mul_ps(g0, t[1]);
    rw[2] = _mm256_mul_ps(g1, s1);
    rw[3] = _mm256_mul_ps(g1, t[1]);
  }
}

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
// o given by the windows (at most two runs; lanes whose rw is zero add zeros). One 8-wide
// read-modify-write per row and window, the second corners shifted up one lane into the
// same window; the last lane's second corner, past the window, by a scalar add. Every
// element from each window's start to 8 past it is read and written back: the caller owns
// them. All rows' first windows are written before any second window: the two may overlap,
// and a load right after an overlapping store cannot take its data from the store buffer.
template <int kRows>
FASTREG_AVX2_INLINE void scatter_windows8(float* dst, const int64_t* row_off, const Windows8& win,
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

// Backward of forward_block8 (scale 1) for the lanes of 8 output voxels v .. v+7 whose cells
// are interior; returns those lanes (bit k: voxel v + k), 0, writing nothing, when there is
// none. The caller runs the scalar path for the other lanes (they add nothing to gimg here
// and their gloc entries are left for the caller to overwrite). For the batch items
// [0, nb) of img (nb, C, n_in) and gout (nb, C, n_out) at voxel v:
//   gloc (when not null; (NDIM, n_out) at voxel v of the position batch item): set to
//     d loss / d position, summed over the nb * C rows;
//   gimg (when not null): the image gradient of row r (batch item, channel) is added at
//     gimg + r * grad_row + (offset - shift), where offset is the flat corner offset within
//     the row. Corners and the windows read and written back all lie within [own_lo,
//     own_hi), the offsets the caller owns (it bounds them before: every corner of its
//     voxels lies there); blocks whose windows would leave it scatter lane by lane.
// Requires n_in < 2^31.
template <int NDIM, bool BORDER>
__attribute__((target("avx2,fma"))) int backward_block8(const float* loc, int64_t n_out, int64_t v,
                                                        const int64_t* idx, bool displacement,
                                                        const int64_t* size, const int64_t* stride,
                                                        const float* img, const float* gout, int64_t nb,
                                                        int64_t channels, int64_t n_in, float* gloc,
                                                        float* gimg, int64_t grad_row, int64_t shift,
                                                        int64_t own_lo, int64_t own_hi) {
  __m256 t[NDIM], dsrc[NDIM];
  __m256i base;
  const __m256 ok = cells8<NDIM, BORDER>(loc, n_out, v, idx, displacement, size, stride, 1.0f, t, dsrc, base);
  const int mask = _mm256_movemask_ps(ok);
  if (mask == 0) return 0;
  for (int a = 0; a < NDIM; ++a) t[a] = _mm256_and_ps(ok, t[a]);  // other lanes: finite, weight 0
  alignas(32) int32_t handled[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(handled), _mm256_castps_si256(ok));
  constexpr int kRows = 1 << (NDIM - 1);
  int64_t row_off[kRows];
  cell_rows<NDIM>(stride, row_off);
  const int64_t span = row_off[kRows - 1] + 1;  // the last corner of a cell
  const int64_t lo = own_lo > 0 ? own_lo : 0, hi = own_hi < n_in ? own_hi : n_in;
  const Windows8 w = windows8(base, lo, hi - span - 8);
  Windows8 wg = w;  // the same windows in gimg's indexing
  wg.first -= static_cast<int32_t>(shift);
  wg.second -= static_cast<int32_t>(shift);
  const __m256i base_g = _mm256_sub_epi32(base, _mm256_set1_epi32(static_cast<int32_t>(shift)));
  const __m256 tl = t[NDIM - 1], sl = _mm256_sub_ps(_mm256_set1_ps(1.0f), tl);
  __m256 gt[NDIM];
  for (int a = 0; a < NDIM; ++a) gt[a] = _mm256_setzero_ps();
  for (int64_t r = 0; r < nb * channels; ++r) {
    const __m256 gu = _mm256_and_ps(ok, _mm256_loadu_ps(gout + r * n_out));
    __m256 rw[kRows];
    cell_backward8<NDIM>(img + r * n_in, row_off, base, w, t, gu, gloc != nullptr ? gt : nullptr, rw);
    if (gimg == nullptr) continue;
    float* dst = gimg + r * grad_row;
    if (w.ok) {
      scatter_windows8<kRows>(dst, row_off, wg, rw, sl, tl);
    } else {
      scatter_pairs8<kRows>(dst, row_off, base_g, handled, rw, sl, tl);
    }
  }
  if (gloc != nullptr) {
    for (int a = 0; a < NDIM; ++a) _mm256_storeu_ps(gloc + a * n_out, _mm256_mul_ps(gt[a], dsrc[a]));
  }
  return mask;
}

}  // namespace warp
}  // namespace fastreg

#endif
