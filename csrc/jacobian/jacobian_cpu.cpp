// CPU launcher of jacobian (contract in jacobian.h). Determinant map and its gradient run
// voxel by voxel with at::parallel_for. jacobian_stats runs one fused pass over the rows of the
// cropped region (no determinant map), each row in straight-line loops over its voxels that
// vectorize with the baseline ISA (SSE2 on x86-64) and, under GCC on x86-64 Linux, also come
// as AVX2 variants picked at load time: the determinants and volumes into row buffers
// (row_interior), the per-voxel terms of the sums (prepare_row: logs, NaN flags), then float64
// row sums (sum_row); rows are summed per batch item in a fixed order, so the result does not
// depend on the number of threads. Check what vectorizes with -fopt-info-vec-optimized.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../common/pieces.h"
#include "../common/vector_loop.h"
#include <torch/library.h>
#include "jacobian.h"
#include "jacobian_shapes.h"

namespace fastreg {
namespace jacobian {
namespace {

constexpr int64_t kGrain = 2048;
constexpr int64_t kRowChunk = 16;  // rows per task of jacobian_stats

template <typename T, int NDIM>
void inverse_spacing(c10::ArrayRef<double> spacing, T* inv) {
  for (int a = 0; a < NDIM; ++a) inv[a] = static_cast<T>(1.0 / spacing[a]);
}

template <typename scalar_t, int NDIM>
void det_kernel(const at::Tensor& disp, at::Tensor& out, int mode, c10::ArrayRef<double> spacing) {
  using T = at::opmath_type<scalar_t>;
  const Geometry<NDIM> g = geometry<NDIM>(disp);
  T inv[NDIM];
  inverse_spacing<T, NDIM>(spacing, inv);
  const scalar_t* u = disp.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, disp.size(0) * g.numel, kGrain, [&](int64_t begin, int64_t end) {
    int64_t idx[NDIM];
    unravel<NDIM>(begin % g.numel, g.size, idx);
    T J[NDIM][NDIM];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / g.numel, v = i % g.numel;  // advance() wraps idx to 0 at v == 0
      jacobian_at<scalar_t, T, NDIM>(u + b * NDIM * g.numel, g, inv, mode, idx, v, J);
      o[i] = static_cast<scalar_t>(det<T, NDIM>(J));
      advance<NDIM>(g.size, idx);
    }
  });
}

template <typename scalar_t, int NDIM>
void backward_kernel(const at::Tensor& gout, const at::Tensor& disp, at::Tensor& gdisp, int mode,
                     c10::ArrayRef<double> spacing) {
  using T = at::opmath_type<scalar_t>;
  const Geometry<NDIM> g = geometry<NDIM>(disp);
  T inv[NDIM];
  inverse_spacing<T, NDIM>(spacing, inv);
  const scalar_t* u = disp.const_data_ptr<scalar_t>();
  const scalar_t* go = gout.const_data_ptr<scalar_t>();
  scalar_t* gd = gdisp.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, disp.size(0) * g.numel, kGrain, [&](int64_t begin, int64_t end) {
    int64_t idx[NDIM];
    unravel<NDIM>(begin % g.numel, g.size, idx);
    T grad[NDIM];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / g.numel, v = i % g.numel;  // advance() wraps idx to 0 at v == 0
      backward_at<scalar_t, T, NDIM>(u + b * NDIM * g.numel, go + b * g.numel, g, inv, mode, idx, v, grad);
      for (int a = 0; a < NDIM; ++a) gd[(b * NDIM + a) * g.numel + v] = static_cast<scalar_t>(grad[a]);
      advance<NDIM>(g.size, idx);
    }
  });
}

// --- jacobian_stats -------------------------------------------------------------------------

// Rows of one channel around the current row, replicated across the borders:
// centre, -e0, +e0 and (3-D) -e1, +e1, -e0-e1, +e0+e1 (the last axis is the row itself).
enum RowId { kC = 0, kP0, kN0, kP1, kN1, kP01, kN01, kRows };

// Neighbourhood of voxel w of the row, with clamped last-axis neighbours wl and wr.
// kScale false: unit spacing (inv all 1), the values are not multiplied.
template <typename scalar_t, typename T, int NDIM, bool kScale = true>
inline void row_neighbourhood(const scalar_t* const (*rows)[kRows], const T* inv, int64_t w, int64_t wl,
                              int64_t wr, Neighbourhood<T, NDIM>& nb) {
  constexpr int L = NDIM - 1;  // the row axis
  for (int a = 0; a < NDIM; ++a) {
    const scalar_t* const* r = rows[a];
    const T s = kScale ? inv[a] : T(1);
    nb.c[a] = static_cast<T>(r[kC][w]) * s;
    nb.prev[0][a] = static_cast<T>(r[kP0][w]) * s;
    nb.next[0][a] = static_cast<T>(r[kN0][w]) * s;
    nb.prev[L][a] = static_cast<T>(r[kC][wl]) * s;
    nb.next[L][a] = static_cast<T>(r[kC][wr]) * s;
    if constexpr (NDIM == 3) {
      nb.prev[1][a] = static_cast<T>(r[kP1][w]) * s;
      nb.next[1][a] = static_cast<T>(r[kN1][w]) * s;
      nb.dprev[0][a] = static_cast<T>(r[kP01][w]) * s;   // -e0 -e1
      nb.dprev[1][a] = static_cast<T>(r[kP0][wl]) * s;   // -e0 -e2
      nb.dprev[2][a] = static_cast<T>(r[kP1][wl]) * s;   // -e1 -e2
      nb.dnext[0][a] = static_cast<T>(r[kN01][w]) * s;   // +e0 +e1
      nb.dnext[1][a] = static_cast<T>(r[kN0][wr]) * s;   // +e0 +e2
      nb.dnext[2][a] = static_cast<T>(r[kN1][wr]) * s;   // +e1 +e2
    }
  }
}

// The derivative of taps t as k * (x - y): x the row of the positive tap, y the row of the
// negative one (zero where there is none). Every mode's taps are one such pair or none, so this
// equals apply(t, ...) (scaling by 1/2 is exact) and reads only rows of non-zero taps.
template <typename scalar_t, typename T>
struct RowDiff {
  const scalar_t* x;
  const scalar_t* y;
  T k;
};

template <typename scalar_t, typename T>
RowDiff<scalar_t, T> row_diff(const Taps<T>& t, const scalar_t* prev, const scalar_t* centre,
                              const scalar_t* next, const scalar_t* zero) {
  RowDiff<scalar_t, T> d{zero, zero, T(0)};
  const T w[3] = {t.prev, t.centre, t.next};
  const scalar_t* rows[3] = {prev, centre, next};
  for (int i = 0; i < 3; ++i) {
    if (w[i] > T(0)) d.x = rows[i];
    if (w[i] < T(0)) d.y = rows[i];
    d.k = std::max(d.k, std::abs(w[i]));
  }
  return d;
}

// Per-row buffers of the statistics pass (length W).
template <typename T>
struct RowBuffers {
  explicit RowBuffers(int64_t n) : det(n), ndv(n), weight(n), positive(n), log3(n), log(n) {}
  std::vector<T> det, ndv;  // per voxel; sanitized in place by prepare_row
  std::vector<T> weight;    // 1, or 0 where det or ndv is NaN (flagged, left out of the sums)
  std::vector<T> positive;  // 1 where weight is 1 and det > 0, else 0
  std::vector<T> log3;      // log(clip(det + 3, 1e-9, 1e9))
  std::vector<T> log;       // log(det) where positive, else 0
};

// The per-voxel part of accumulate() for voxels [begin, end) of the row: flagged voxels get
// det 1 and ndv 0, so that every value is finite. float64: plain code with std::log (its path
// is checked to 1e-10).
template <typename T>
void prepare_row(RowBuffers<T>& rb, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const T d_in = rb.det[i], v_in = rb.ndv[i];
    const bool ok = d_in == d_in && v_in == v_in;
    const bool pos = ok && d_in > T(0);
    const T d = ok ? d_in : T(1);
    const T shifted = d + T(3);
    rb.det[i] = d;
    rb.ndv[i] = ok ? v_in : T(0);
    rb.weight[i] = ok ? T(1) : T(0);
    rb.positive[i] = pos ? T(1) : T(0);
    rb.log3[i] = std::log(shifted < T(1e-9) ? T(1e-9) : (shifted > T(1e9) ? T(1e9) : shifted));
    rb.log[i] = pos ? std::log(d) : T(0);
  }
}

// float: N voxels at a time in GCC/Clang vector extensions (N = 4: SSE2 on x86-64, NEON on
// arm64; N = 8: AVX2), branch-free (GCC does not vectorize the scalar form, whose selects it
// turns into branches). Only used inlined into prepare_row's variants, so the vector ABI of a
// call never matters (-Wpsabi, which warns at the end of the file, is off from here on).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <int N>
struct Vec {
  typedef float F __attribute__((vector_size(4 * N)));
  typedef int32_t I __attribute__((vector_size(4 * N)));

  // Lanes of a where mask (all ones or 0 per lane) is set, else of b.
  static F select(I mask, F a, F b) {
    return reinterpret_cast<F>((reinterpret_cast<I>(a) & mask) | (reinterpret_cast<I>(b) & ~mask));
  }

  // log of x > 0 (subnormals and +inf included): x = m 2^e with m in [sqrt(1/2), sqrt(2)),
  // log(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172, by its series to s^9 (truncation
  // < 3e-9 relative), log 2 split in two for the exponent part; about 1 ulp.
  static F log(F x) {
    const F one = F{} + 1.0f;
    const I tiny = x < F{} + std::numeric_limits<float>::min();
    const F y = x * select(tiny, F{} + 8388608.0f, one);  // 2^23: subnormals into the normal range
    const I bits = reinterpret_cast<I>(y);
    const I shift = (bits - 0x3f3504f3) >> 23;  // 0x3f3504f3: sqrt(1/2)
    const F f = reinterpret_cast<F>(bits - shift * (1 << 23)) - one;
    const F s = f / (2.0f + f);
    const F z = s * s;
    const F series = s * (2.0f + z * (2.0f / 3.0f + z * (2.0f / 5.0f + z * (2.0f / 7.0f + z * (2.0f / 9.0f)))));
    // The exponent as a float: 1.5 2^23 + e has e in its low mantissa bits (|e| < 2^22).
    const F k = reinterpret_cast<F>(shift - (tiny & 23) + 0x4b400000) - 12582912.0f;
    const F r = k * 0.693359375f + (series + k * -2.12194440e-4f);  // log 2 = 0.693359375 - 2.12194440e-4
    return select(y == F{} + std::numeric_limits<float>::infinity(), y, r);
  }

  // prepare_row of voxels [i, i + n), n <= N (a constant in the main loop: plain vector loads
  // and stores).
  static void block(RowBuffers<float>& rb, int64_t i, int64_t n) {
    const F zero{}, one = zero + 1.0f;
    F d_in = one, v_in = zero;
    std::memcpy(&d_in, rb.det.data() + i, n * sizeof(float));
    std::memcpy(&v_in, rb.ndv.data() + i, n * sizeof(float));
    const I ok = (d_in == d_in) & (v_in == v_in);
    const I pos = ok & (d_in > zero);
    const F d = select(ok, d_in, one);
    const F shifted = d + 3.0f;
    const F clipped = select(shifted < zero + 1e-9f, zero + 1e-9f, select(shifted > zero + 1e9f, zero + 1e9f, shifted));
    const F out[6] = {d, select(ok, v_in, zero), select(ok, one, zero), select(pos, one, zero), log(clipped),
                      log(select(pos, d_in, one))};  // log(1) = 0 exactly
    float* const dst[6] = {rb.det.data(), rb.ndv.data(), rb.weight.data(), rb.positive.data(), rb.log3.data(),
                           rb.log.data()};
    for (int k = 0; k < 6; ++k) std::memcpy(dst[k] + i, &out[k], n * sizeof(float));
  }

  static void row(RowBuffers<float>& rb, int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + N <= end; i += N) block(rb, i, N);
    if (i < end) block(rb, i, end - i);
  }
};

#if defined(FASTREG_AVX2_CLONES)
__attribute__((flatten, target("avx2"))) void prepare_row_avx2(RowBuffers<float>& rb, int64_t begin, int64_t end) {
  Vec<8>::row(rb, begin, end);
}
#endif

template <>
void prepare_row<float>(RowBuffers<float>& rb, int64_t begin, int64_t end) {
#if defined(FASTREG_AVX2_CLONES)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return prepare_row_avx2(rb, begin, end);
#endif
  Vec<4>::row(rb, begin, end);
}

// The sums of accumulate() over voxels [begin, end) of a prepared row, added to acc[kStats]:
// float64, in kLanes interleaved partial sums (an inner loop that vectorizes) added up in a
// fixed order, so the result does not depend on the instruction set.
template <typename T>
FASTREG_VECTOR_LOOP void sum_row(const RowBuffers<T>& rb, int64_t begin, int64_t end, double* acc) {
  constexpr int kLanes = 8;
  double s[kStats][kLanes] = {};
  auto add = [&](int64_t i, int j) {
    const double w = rb.weight[i], p = rb.positive[i];
    const double l3 = w * (static_cast<double>(rb.log3[i]) - kLog3);
    const double l = rb.log[i];
    const double dd = static_cast<double>(rb.det[i]) - 1.0;
    s[kNan][j] += 1.0 - w;
    s[kFolds][j] += w - p;
    s[kLog3Sum][j] += l3;
    s[kLog3Sq][j] += l3 * l3;
    s[kPositive][j] += p;
    s[kLogSum][j] += l;
    s[kLogSq][j] += l * l;
    s[kDetSum][j] += dd;
    s[kDetSq][j] += dd * dd;
    s[kNdv][j] += static_cast<double>(rb.ndv[i]);
  };
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) add(i + j, j);
  }
  for (int j = 0; i < end; ++i, ++j) add(i, j);
  for (int k = 0; k < kStats; ++k) {
    for (int j = 0; j < kLanes; ++j) acc[k] += s[k][j];
  }
}

// Determinant and volume of the voxels [begin, end) of a row, away from the row's ends: the
// last-axis derivative is k_last * (u[w+1] - u[w+last_y]) (central and gradient: k_last 1/2,
// last_y -1; forward: 1, 0), the others come as RowDiff. kUnit: unit spacing, values are not
// scaled. One loop over the voxels, straight-line and vectorizable (its derivatives are read
// from memory rather than selected among the neighbourhood's values: GCC turns such a select
// into a branch).
template <typename scalar_t, typename T, int NDIM, bool kUnit>
FASTREG_VECTOR_LOOP void row_interior(const scalar_t* const (*rows_in)[kRows],
                                  const RowDiff<scalar_t, T> (*diff_in)[NDIM - 1], const T* inv_in,
                                  int last_y, T k_last, int64_t begin, int64_t end, T* det_out, T* ndv_out) {
  constexpr int L = NDIM - 1;
  const scalar_t* rows[NDIM][kRows];
  RowDiff<scalar_t, T> diff[NDIM][NDIM];  // [a][L]: the last axis
  T inv[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    for (int k = 0; k < kRows; ++k) rows[a][k] = rows_in[a][k];
    for (int b = 0; b < L; ++b) diff[a][b] = diff_in[a][b];
    diff[a][L] = {rows[a][kC] + 1, rows[a][kC] + last_y, k_last};
    inv[a] = kUnit ? T(1) : inv_in[a];
  }
  // Three loops (determinant, corner and central tetrahedra), each with fewer live values.
#pragma GCC ivdep
  for (int64_t w = begin; w < end; ++w) {
    T J[NDIM][NDIM];
#pragma GCC unroll 3
    for (int a = 0; a < NDIM; ++a) {
#pragma GCC unroll 3
      for (int b = 0; b < NDIM; ++b) {
        const RowDiff<scalar_t, T>& rd = diff[a][b];
        const T x = static_cast<T>(rd.x[w]), y = static_cast<T>(rd.y[w]);
        const T d = rd.k * (kUnit ? x - y : x * inv[a] - y * inv[a]);
        J[a][b] = a == b ? T(1) + d : d;
      }
    }
    det_out[w] = det<T, NDIM>(J);
  }
#pragma GCC ivdep
  for (int64_t w = begin; w < end; ++w) {
    Neighbourhood<T, NDIM> nb;
    row_neighbourhood<scalar_t, T, NDIM, !kUnit>(rows, inv, w, w - 1, w + 1, nb);
    const T corners = corner_sum<T, NDIM>(nb);
    ndv_out[w] = NDIM == 2 ? corners / T(kNdvDivisor<NDIM>) : corners;
  }
  if constexpr (NDIM == 3) {
#pragma GCC ivdep
    for (int64_t w = begin; w < end; ++w) {
      Neighbourhood<T, NDIM> nb;
      row_neighbourhood<scalar_t, T, NDIM, !kUnit>(rows, inv, w, w - 1, w + 1, nb);
      ndv_out[w] = central_sum<T>(nb, ndv_out[w]) / T(kNdvDivisor<NDIM>);
    }
  }
}

// One pass over the rows of the cropped region. Per row: the determinant and the volume of the
// voxels away from the row's ends by row_interior (the mode's last-axis taps are constant
// there; the other axes' derivatives come as RowDiff), the (at most two) end voxels voxel by
// voxel, then prepare_row and sum_row into the row's float64 sums.
template <typename scalar_t, int NDIM>
void stats_kernel(const at::Tensor& disp, at::Tensor& out, int mode, c10::ArrayRef<double> spacing,
                  int64_t crop) {
  using T = at::opmath_type<scalar_t>;
  const Geometry<NDIM> g = geometry<NDIM>(disp);
  T inv[NDIM];
  inverse_spacing<T, NDIM>(spacing, inv);
  const scalar_t* u = disp.const_data_ptr<scalar_t>();
  const int64_t batch = disp.size(0);
  constexpr int L = NDIM - 1;
  int64_t lo[NDIM], len[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    lo[a] = crop;
    len[a] = g.size[a] - 2 * crop;
  }
  const int64_t rows_per_item = NDIM == 3 ? len[0] * len[1] : len[0];
  const int64_t W = g.size[L];
  const bool forward = mode == kForward;
  const T k_last = forward ? T(1) : T(0.5);
  bool unit = true;
  for (int a = 0; a < NDIM; ++a) unit = unit && inv[a] == T(1);
  std::vector<double> partial(batch * rows_per_item * kStats, 0.0);

  // Rows go out in chunks from a shared counter, so that a thread whose core is busy elsewhere
  // takes fewer; each row's sums land in its own slot, so the threads' order never matters.
  const int64_t total = batch * rows_per_item;
  Pieces pieces(total, kRowChunk);
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    RowBuffers<T> rb(W);
    const std::vector<scalar_t> zero(W, scalar_t(0));
    for (int64_t begin, end; pieces.next(begin, end);) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / rows_per_item, rr = r % rows_per_item;
        const int64_t i0 = lo[0] + (NDIM == 3 ? rr / len[1] : rr);
        const int64_t i1 = NDIM == 3 ? lo[1] + rr % len[1] : 0;
        const int64_t i0m = std::max<int64_t>(i0 - 1, 0), i0p = std::min<int64_t>(i0 + 1, g.size[0] - 1);
        const int64_t i1m = NDIM == 3 ? std::max<int64_t>(i1 - 1, 0) : 0;
        const int64_t i1p = NDIM == 3 ? std::min<int64_t>(i1 + 1, g.size[1] - 1) : 0;
        Taps<T> t[NDIM];
        t[0] = taps<T>(mode, i0, g.size[0]);
        if (NDIM == 3) t[1] = taps<T>(mode, i1, g.size[1]);
        const scalar_t* rows[NDIM][kRows];
        RowDiff<scalar_t, T> diff[NDIM][L];  // [a][b]: derivative of u_a along b < L
        for (int a = 0; a < NDIM; ++a) {
          const scalar_t* base = u + (b * NDIM + a) * g.numel;
          auto row = [&](int64_t j0, int64_t j1) {
            return base + (NDIM == 3 ? j0 * g.stride[0] + j1 * g.stride[1] : j0 * g.stride[0]);
          };
          rows[a][kC] = row(i0, i1);
          rows[a][kP0] = row(i0m, i1);
          rows[a][kN0] = row(i0p, i1);
          rows[a][kP1] = row(i0, i1m);
          rows[a][kN1] = row(i0, i1p);
          rows[a][kP01] = row(i0m, i1m);
          rows[a][kN01] = row(i0p, i1p);
          diff[a][0] = row_diff<scalar_t, T>(t[0], rows[a][kP0], rows[a][kC], rows[a][kN0], zero.data());
          if constexpr (NDIM == 3) {
            diff[a][1] = row_diff<scalar_t, T>(t[1], rows[a][kP1], rows[a][kC], rows[a][kN1], zero.data());
          }
        }
        auto voxel = [&](int64_t w) {
          Neighbourhood<T, NDIM> nb;
          row_neighbourhood<scalar_t, T, NDIM>(rows, inv, w, std::max<int64_t>(w - 1, 0),
                                               std::min<int64_t>(w + 1, W - 1), nb);
          t[L] = taps<T>(mode, w, W);
          rb.det[w] = neighbourhood_det<T, NDIM>(nb, t);
          rb.ndv[w] = neighbourhood_ndv<T, NDIM>(nb);
        };
        const int64_t w0 = lo[L], w1 = lo[L] + len[L];
        const int64_t inner0 = std::min(std::max<int64_t>(w0, 1), w1);
        const int64_t inner1 = std::max(std::min<int64_t>(w1, W - 1), inner0);
        for (int64_t w = w0; w < inner0; ++w) voxel(w);
        (unit ? row_interior<scalar_t, T, NDIM, true> : row_interior<scalar_t, T, NDIM, false>)(
            rows, diff, inv, forward ? 0 : -1, k_last, inner0, inner1, rb.det.data(), rb.ndv.data());
        for (int64_t w = inner1; w < w1; ++w) voxel(w);
        double acc[kStats] = {0.0};
        prepare_row<T>(rb, w0, w1);
        sum_row<T>(rb, w0, w1, acc);
        std::copy(acc, acc + kStats, partial.begin() + r * kStats);
      }
    }
  });

  double* o = out.mutable_data_ptr<double>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int k = 0; k < kStats; ++k) o[b * kStats + k] = 0.0;
    for (int64_t rr = 0; rr < rows_per_item; ++rr) {
      const double* p = partial.data() + (b * rows_per_item + rr) * kStats;
      for (int k = 0; k < kStats; ++k) o[b * kStats + k] += p[k];
    }
  }
}

}  // namespace

at::Tensor jacobian_det_forward_cpu(const at::Tensor& disp_, int64_t mode, c10::ArrayRef<double> spacing) {
  const int64_t ndim = check_disp(disp_, mode, spacing);
  const at::Tensor disp = disp_.contiguous();
  at::Tensor out = at::empty(det_sizes(disp), disp.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, disp.scalar_type(), "jacobian_det_forward_cpu", [&] {
    if (ndim == 2) {
      det_kernel<scalar_t, 2>(disp, out, mode, spacing);
    } else {
      det_kernel<scalar_t, 3>(disp, out, mode, spacing);
    }
  });
  return out;
}

at::Tensor jacobian_det_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& disp_, int64_t mode,
                                     c10::ArrayRef<double> spacing) {
  const int64_t ndim = check_disp(disp_, mode, spacing);
  TORCH_CHECK(grad_out_.sizes() == at::IntArrayRef(det_sizes(disp_)), "fastreg jacobian: grad_out shape");
  const at::Tensor disp = disp_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous().to(disp.scalar_type());
  at::Tensor gdisp = at::empty(disp.sizes(), disp.options());
  if (gdisp.numel() == 0) return gdisp;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, disp.scalar_type(), "jacobian_det_backward_cpu", [&] {
    if (ndim == 2) {
      backward_kernel<scalar_t, 2>(grad_out, disp, gdisp, mode, spacing);
    } else {
      backward_kernel<scalar_t, 3>(grad_out, disp, gdisp, mode, spacing);
    }
  });
  return gdisp;
}

at::Tensor jacobian_stats_cpu(const at::Tensor& disp_, int64_t mode, c10::ArrayRef<double> spacing, int64_t crop) {
  const int64_t ndim = check_disp(disp_, mode, spacing, crop);
  const at::Tensor disp = disp_.contiguous();
  at::Tensor out = at::zeros({disp.size(0), kStats}, disp.options().dtype(at::kDouble));
  if (disp.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, disp.scalar_type(), "jacobian_stats_cpu", [&] {
    if (ndim == 2) {
      stats_kernel<scalar_t, 2>(disp, out, mode, spacing, crop);
    } else {
      stats_kernel<scalar_t, 3>(disp, out, mode, spacing, crop);
    }
  });
  return out;
}

}  // namespace jacobian
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  m.impl("jacobian_det_forward", &fastreg::jacobian::jacobian_det_forward_cpu);
  m.impl("jacobian_det_backward", &fastreg::jacobian::jacobian_det_backward_cpu);
  m.impl("jacobian_stats", &fastreg::jacobian::jacobian_stats_cpu);
}
