// AVX-512 fast path of the 2-D CPU warp (float32, linear interpolation, zeros or border
// padding): 16 consecutive output voxels along the last axis. Where their cells lie within
// 8 cell rows and 31 columns (smooth fields: nearly every block), each image row they touch
// is read as two 16-wide vectors and every lane picks its corners from them with a
// two-register permute: no per-lane reads, whatever the number of runs. Blocks that do not
// fit take the 8-wide path of warp_cpu_simd.h. The backward reads the corners the same way
// and scatters the image gradient through the 8-wide helpers, one half block at a time.
// Compiled with a target attribute and used only when the running CPU has AVX-512
// F/BW/DQ/VL. Same math as forward_block8 and backward_block8 (nested lerps and their
// differences).
#pragma once

#include "warp_cpu_simd.h"

#ifdef FASTREG_WARP_AVX2

namespace fastreg {
namespace warp {

#define FASTREG_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define FASTREG_AVX512_INLINE FASTREG_AVX512_TARGET __attribute__((always_inline)) inline

inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                          cpu_has_avx2();
  return has;
}

// At most this many distinct cell rows (first corner's row) per 16-voxel block.
constexpr int kMaxCellRows16 = 8;

// The cells of 16 output voxels of a 2-D warp and how their corners are read. Lanes that
// are not interior carry the cell of the first interior lane (finite, in range).
struct Cells16 {
  __mmask16 interior;  // lanes whose 4 corners lie inside the image (never NaN)
  __m512 ty, tx;       // fractions within the cell
  __m512 dy, dx;       // d(sampled coordinate)/d(position): 1, or 0 where border padding clamps
  __m512i iy, ix;      // the first corner's row and column
  __m512i col;         // ix - x0, in [0, 30]
  int64_t y0, x0;      // the first cell row and the window's first column
  int rows;            // distinct cell rows, y0 .. y0 + rows - 1
  __mmask16 in_row[kMaxCellRows16];  // lanes whose cell starts in row y0 + k
};

// Lanes 8h .. 8h+7 of x.
FASTREG_AVX512_INLINE __m256 half16(__m512 x, int h) {
  return h == 0 ? _mm512_castps512_ps256(x) : _mm512_extractf32x8_ps(x, 1);
}

FASTREG_AVX512_INLINE __m512 lerp16(__m512 a, __m512 b, __m512 t) {
  return _mm512_fmadd_ps(t, _mm512_sub_ps(b, a), a);
}

// The cells of output voxels v .. v+15 (row idx[0], columns idx[1] .. +15) from loc (2, n_out)
// of one position batch item (with `displacement` the voxel's index is added). Returns false
// when no lane is interior or the interior cells do not fit the windows: more than
// kMaxCellRows16 rows, more than 31 columns, or a window read past the last of the n_in
// elements (the caller then takes another path).
template <bool BORDER>
FASTREG_AVX512_INLINE bool cells16(const float* loc, int64_t n_out, int64_t v, const int64_t* idx, bool displacement,
                                   const int64_t* size, int64_t n_in, Cells16& c) {
  __m512 py = _mm512_loadu_ps(loc + v);
  __m512 px = _mm512_loadu_ps(loc + n_out + v);
  if (displacement) {
    py = _mm512_add_ps(py, _mm512_set1_ps(static_cast<float>(idx[0])));
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    px = _mm512_add_ps(px, _mm512_add_ps(_mm512_set1_ps(static_cast<float>(idx[1])), iota));
  }
  __mmask16 ok = _mm512_cmp_ps_mask(py, px, _CMP_ORD_Q);  // NaN: another path
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  c.dy = c.dx = one;
  if (BORDER) {  // clamped at 0 (interior lanes are never clamped at the top)
    c.dy = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(py, zero, _CMP_GT_OQ), one);
    c.dx = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(px, zero, _CMP_GT_OQ), one);
    py = _mm512_min_ps(_mm512_max_ps(py, zero), _mm512_set1_ps(static_cast<float>(size[0] - 1)));
    px = _mm512_min_ps(_mm512_max_ps(px, zero), _mm512_set1_ps(static_cast<float>(size[1] - 1)));
  }
  const __m512 fy = _mm512_roundscale_ps(py, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 fx = _mm512_roundscale_ps(px, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  ok &= _mm512_cmp_ps_mask(fy, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(fx, zero, _CMP_GE_OQ);
  ok &= _mm512_cmp_ps_mask(fy, _mm512_set1_ps(static_cast<float>(size[0] - 2)), _CMP_LE_OQ);
  ok &= _mm512_cmp_ps_mask(fx, _mm512_set1_ps(static_cast<float>(size[1] - 2)), _CMP_LE_OQ);
  c.interior = ok;
  if (ok == 0) return false;
  // The other lanes take the first interior lane's cell.
  const __m512i first = _mm512_set1_epi32(__builtin_ctz(ok));
  __m512i iy = _mm512_cvttps_epi32(fy), ix = _mm512_cvttps_epi32(fx);
  iy = _mm512_mask_blend_epi32(ok, _mm512_permutexvar_epi32(first, iy), iy);
  ix = _mm512_mask_blend_epi32(ok, _mm512_permutexvar_epi32(first, ix), ix);
  c.ty = _mm512_mask_blend_ps(ok, zero, _mm512_sub_ps(py, fy));
  c.tx = _mm512_mask_blend_ps(ok, zero, _mm512_sub_ps(px, fx));
  const int y0 = _mm512_reduce_min_epi32(iy), y1 = _mm512_reduce_max_epi32(iy);
  const int x0 = _mm512_reduce_min_epi32(ix), x1 = _mm512_reduce_max_epi32(ix);
  c.rows = y1 - y0 + 1;
  if (c.rows > kMaxCellRows16 || x1 - x0 > 30) return false;
  // The windows read 32 elements from column x0 of rows y0 .. y1 + 1.
  if ((static_cast<int64_t>(y1) + 1) * size[1] + x0 + 32 > n_in) return false;
  c.y0 = y0;
  c.x0 = x0;
  c.iy = iy;
  c.ix = ix;
  c.col = _mm512_sub_epi32(ix, _mm512_set1_epi32(x0));
  for (int k = 0; k < c.rows; ++k) c.in_row[k] = _mm512_cmpeq_epi32_mask(iy, _mm512_set1_epi32(y0 + k));
  return true;
}

// The 4 corners of the 16 cells in one channel src (rows of `width` elements): top row
// (c00 at the cell's column, c01 one further) and bottom row (c10, c11).
FASTREG_AVX512_INLINE void corners16(const float* src, int64_t width, const Cells16& c, __m512& c00, __m512& c01,
                                     __m512& c10, __m512& c11) {
  const __m512i col1 = _mm512_add_epi32(c.col, _mm512_set1_epi32(1));
  const float* p = src + c.y0 * width + c.x0;
  __m512 lo = _mm512_loadu_ps(p), hi = _mm512_loadu_ps(p + 16);
  c00 = _mm512_permutex2var_ps(lo, c.col, hi);
  c01 = _mm512_permutex2var_ps(lo, col1, hi);
  for (int k = 1; k <= c.rows; ++k) {
    p += width;
    lo = _mm512_loadu_ps(p);
    hi = _mm512_loadu_ps(p + 16);
    const __m512 a = _mm512_permutex2var_ps(lo, c.col, hi), b = _mm512_permutex2var_ps(lo, col1, hi);
    const __mmask16 below = c.in_row[k - 1];  // lanes whose bottom row is this one
    c10 = k == 1 ? a : _mm512_mask_blend_ps(below, c10, a);
    c11 = k == 1 ? b : _mm512_mask_blend_ps(below, c11, b);
    if (k < c.rows) {  // lanes whose top row is this one
      c00 = _mm512_mask_blend_ps(c.in_row[k], c00, a);
      c01 = _mm512_mask_blend_ps(c.in_row[k], c01, b);
    }
  }
}

// Interpolates output voxels v .. v+15 of a 2-D warp (see cells16) for the nb * C rows of
// img (n_in elements each, rows of size[1]) into out (rows of n_out, at voxel v). Returns
// -1, writing nothing, when the block does not fit (see cells16); else the interior lanes
// (bit k: voxel v + k), having written all 16 lanes, the others with values for the caller
// to overwrite by another path. Requires n_in < 2^31.
template <bool BORDER>
FASTREG_AVX512_TARGET int forward_block16(const float* loc, int64_t n_out, int64_t v, const int64_t* idx,
                                          bool displacement, const int64_t* size, const float* img, float* out,
                                          int64_t rows, int64_t n_in) {
  Cells16 c;
  if (!cells16<BORDER>(loc, n_out, v, idx, displacement, size, n_in, c)) return -1;
  for (int64_t r = 0; r < rows; ++r) {
    __m512 c00, c01, c10, c11;
    corners16(img + r * n_in, size[1], c, c00, c01, c10, c11);
    const __m512 value = lerp16(lerp16(c00, c01, c.tx), lerp16(c10, c11, c.tx), c.ty);
    _mm512_storeu_ps(out + r * n_out, value);
  }
  return c.interior;
}

// Backward of forward_block16 for the interior lanes of output voxels v .. v+15 of a 2-D warp
// (arguments as backward_block8, stride the image's element strides). Returns -1, writing
// nothing, when the block does not fit (see cells16; the caller takes another path), else
// the lanes it took (bit k: voxel v + k), the others left to the caller as in
// backward_block8.
template <bool BORDER>
FASTREG_AVX512_TARGET int backward_block16(const float* loc, int64_t n_out, int64_t v, const int64_t* idx,
                                           bool displacement, const int64_t* size, const int64_t* stride,
                                           const float* img, const float* gout, int64_t nb, int64_t channels,
                                           int64_t n_in, float* gloc, float* gimg, int64_t grad_row, int64_t shift,
                                           int64_t own_lo, int64_t own_hi) {
  Cells16 c;
  if (!cells16<BORDER>(loc, n_out, v, idx, displacement, size, n_in, c)) return -1;
  const __mmask16 ok = c.interior;
  const int64_t width = stride[0];
  const int64_t row_off[2] = {0, width};
  // The image gradient's scatter, per half block: the 8-wide windows of its flat offsets.
  __m256i base_g[2];
  Windows8 wg[2];
  alignas(64) int32_t handled[2][8];
  if (gimg != nullptr) {
    const int64_t lo = own_lo > 0 ? own_lo : 0, hi = own_hi < n_in ? own_hi : n_in;
    const __m512i base = _mm512_add_epi32(_mm512_mullo_epi32(c.iy, _mm512_set1_epi32(static_cast<int32_t>(width))), c.ix);
    _mm512_store_si512(handled, _mm512_movm_epi32(ok));
    for (int h = 0; h < 2; ++h) {
      const __m256i b = h == 0 ? _mm512_castsi512_si256(base) : _mm512_extracti64x4_epi64(base, 1);
      wg[h] = windows8(b, lo, hi - width - 1 - 8);
      wg[h].first -= static_cast<int32_t>(shift);
      wg[h].second -= static_cast<int32_t>(shift);
      base_g[h] = _mm256_sub_epi32(b, _mm256_set1_epi32(static_cast<int32_t>(shift)));
    }
  }
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 sl = _mm512_sub_ps(one, c.tx), sy = _mm512_sub_ps(one, c.ty);
  __m512 gy = _mm512_setzero_ps(), gx = _mm512_setzero_ps();
  for (int64_t r = 0; r < nb * channels; ++r) {
    const __m512 gu = _mm512_maskz_loadu_ps(ok, gout + r * n_out);
    if (gloc != nullptr) {
      __m512 c00, c01, c10, c11;
      corners16(img + r * n_in, width, c, c00, c01, c10, c11);
      const __m512 top = lerp16(c00, c01, c.tx), bottom = lerp16(c10, c11, c.tx);
      gy = _mm512_fmadd_ps(gu, _mm512_sub_ps(bottom, top), gy);
      gx = _mm512_fmadd_ps(gu, lerp16(_mm512_sub_ps(c01, c00), _mm512_sub_ps(c11, c10), c.ty), gx);
    }
    if (gimg == nullptr) continue;
    const __m512 rw0 = _mm512_mul_ps(gu, sy), rw1 = _mm512_mul_ps(gu, c.ty);
    float* dst = gimg + r * grad_row;
    for (int h = 0; h < 2; ++h) {
      const __m256 rw[2] = {half16(rw0, h), half16(rw1, h)};
      if (wg[h].ok) {
        scatter_windows8<2>(dst, row_off, wg[h], rw, half16(sl, h), half16(c.tx, h));
      } else {
        scatter_pairs8<2>(dst, row_off, base_g[h], handled[h], rw, half16(sl, h), half16(c.tx, h));
      }
    }
  }
  if (gloc != nullptr) {
    _mm512_storeu_ps(gloc, _mm512_mul_ps(gy, c.dy));
    _mm512_storeu_ps(gloc + n_out, _mm512_mul_ps(gx, c.dx));
  }
  return ok;
}

}  // namespace warp
}  // namespace fastreg

#endif
