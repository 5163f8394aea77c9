// CPU launcher of jacobian (contract in jacobian.h). Determinant map and its gradient run
// voxel by voxel with at::parallel_for. jacobian_stats runs one fused pass over the rows of the
// cropped region (no determinant map): each row is computed into a row buffer (a loop the
// compiler can vectorize), then reduced into float64 row sums; rows are summed per batch item
// in a fixed order, so the result does not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ops.h"
#include "jacobian.h"
#include "jacobian_shapes.h"

namespace fastreg {
namespace jacobian {
namespace {

constexpr int64_t kGrain = 2048;

template <typename T, int NDIM>
void inverse_spacing(c10::ArrayRef<double> spacing, T* inv) {
  for (int a = 0; a < NDIM; ++a) inv[a] = static_cast<T>(1.0 / spacing[a]);
}

// Per-axis index of a flat voxel index, advanced in C order.
template <int NDIM>
void advance(const int64_t* size, int64_t* idx) {
  for (int a = NDIM - 1; a >= 0; --a) {
    if (++idx[a] < size[a]) return;
    idx[a] = 0;
  }
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
template <typename scalar_t, typename T, int NDIM>
inline void row_neighbourhood(const scalar_t* const (*rows)[kRows], const T* inv, int64_t w, int64_t wl,
                              int64_t wr, Neighbourhood<T, NDIM>& nb) {
  constexpr int L = NDIM - 1;  // the row axis
  for (int a = 0; a < NDIM; ++a) {
    const scalar_t* const* r = rows[a];
    const T s = inv[a];
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
  // Last-axis taps inside the row (constant away from the two ends).
  const Taps<T> t_inner = taps<T>(mode, 1, std::max<int64_t>(W, 3));
  std::vector<double> partial(batch * rows_per_item * kStats, 0.0);

  at::parallel_for(0, batch * rows_per_item, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> det_row(W), ndv_row(W);
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
      }
      auto voxel = [&](int64_t w, int64_t wl, int64_t wr, const Taps<T>& tl) {
        Neighbourhood<T, NDIM> nb;
        row_neighbourhood<scalar_t, T, NDIM>(rows, inv, w, wl, wr, nb);
        Taps<T> tt[NDIM];
        for (int a = 0; a < L; ++a) tt[a] = t[a];
        tt[L] = tl;
        det_row[w] = neighbourhood_det<T, NDIM>(nb, tt);
        ndv_row[w] = neighbourhood_ndv<T, NDIM>(nb);
      };
      const int64_t w0 = lo[L], w1 = lo[L] + len[L];
      const int64_t inner0 = std::max<int64_t>(w0, 1), inner1 = std::min<int64_t>(w1, W - 1);
      for (int64_t w = w0; w < std::min(inner0, w1); ++w) {
        voxel(w, std::max<int64_t>(w - 1, 0), std::min<int64_t>(w + 1, W - 1), taps<T>(mode, w, W));
      }
      for (int64_t w = inner0; w < inner1; ++w) voxel(w, w - 1, w + 1, t_inner);
      for (int64_t w = std::max(inner1, inner0); w < w1; ++w) {
        voxel(w, std::max<int64_t>(w - 1, 0), std::min<int64_t>(w + 1, W - 1), taps<T>(mode, w, W));
      }
      double acc[kStats] = {0.0};
      for (int64_t w = w0; w < w1; ++w) accumulate<T>(det_row[w], ndv_row[w], acc);
      std::copy(acc, acc + kStats, partial.begin() + r * kStats);
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
