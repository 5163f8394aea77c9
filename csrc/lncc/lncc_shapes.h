// Host-side shape checks, geometry and work split shared by the CPU and CUDA launchers of
// lncc. The Python layer (fastreg/ops/lncc.py) validates user input with readable errors;
// these TORCH_CHECKs guard direct calls of torch.ops.fastreg.lncc_* from the outside.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "lncc.h"

namespace fastreg {
namespace lncc {

// A (B, C, *S) volume as slices of (n0, n1, n2) (2-D: n1 = 1), per-axis windows k and
// weights w (nullptr: box). The weights point into the caller's taps.
struct Geometry {
  int64_t slices;
  int64_t n0, n1, n2;
  int64_t k0, k1, k2;
  const double *w0, *w1, *w2;
  double n;  // sum of the window weights (box: the window volume)
};

inline Geometry check_shapes(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                             at::ArrayRef<double> taps) {
  const int64_t ndim = a.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "fastreg lncc: inputs must be (B, C, H, W) or (B, C, D, H, W)");
  TORCH_CHECK(a.sizes() == b.sizes(), "fastreg lncc: a and b must have the same shape");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastreg lncc: dtype mismatch");
  TORCH_CHECK(a.device() == b.device(), "fastreg lncc: device mismatch");
  TORCH_CHECK(static_cast<int64_t>(window.size()) == ndim, "fastreg lncc: one window size per spatial axis");
  int64_t total = 0;
  for (int64_t i = 0; i < ndim; ++i) {
    TORCH_CHECK(window[i] >= 1 && window[i] % 2 == 1 && window[i] <= std::max<int64_t>(1, a.size(2 + i)),
                "fastreg lncc: window sizes must be odd, from 1 to the image size");
    total += window[i];
  }
  TORCH_CHECK(taps.empty() || static_cast<int64_t>(taps.size()) == total,
              "fastreg lncc: taps must be empty (box) or hold sum(window) weights");
  Geometry g;
  g.slices = a.size(0) * a.size(1);
  int64_t n[3] = {1, 1, 1}, k[3] = {1, 1, 1};
  const double* w[3] = {nullptr, nullptr, nullptr};
  const int64_t first = 3 - ndim;  // 2-D: axes (H, W) become (n0, n2), n1 = 1
  int64_t offset = 0;
  g.n = 1.0;
  for (int64_t i = 0; i < ndim; ++i) {
    const int64_t ax = i == 0 ? 0 : first + i;
    n[ax] = a.size(2 + i);
    k[ax] = window[i];
    double sum = static_cast<double>(window[i]);
    if (!taps.empty()) {
      w[ax] = taps.data() + offset;
      sum = 0.0;
      for (int64_t j = 0; j < window[i]; ++j) sum += taps[offset + j];
    }
    offset += window[i];
    g.n *= sum;
  }
  g.n0 = n[0];
  g.n1 = n[1];
  g.n2 = n[2];
  g.k0 = k[0];
  g.k1 = k[1];
  g.k2 = k[2];
  g.w0 = w[0];
  g.w1 = w[1];
  g.w2 = w[2];
  return g;
}

// norm > 0 replaces n, the sum of the window weights (MONAI normalises by a float32 sum).
inline Params params(const Geometry& g, double norm, double smooth_nr, double floor, double eps) {
  Params p;
  p.inv_n = 1.0 / (norm > 0.0 ? norm : g.n);
  p.smooth_nr = smooth_nr;
  p.floor = floor;
  p.eps = eps;
  return p;
}

// CPU work split: every slice is cut into `chunks` ranges of axis 0 so that there are at
// least as many tasks as threads; a chunk recomputes the k0 / 2 planes (2 k0 / 2 in the
// backward) beyond each end, so chunks are kept at least k0 planes long.
struct Tasks {
  int64_t slices, chunks;
  int64_t count() const { return slices * chunks; }
  void range(int64_t task, int64_t n0, int64_t& slice, int64_t& d0, int64_t& d1) const {
    slice = task / chunks;
    const int64_t c = task % chunks;
    d0 = n0 * c / chunks;
    d1 = n0 * (c + 1) / chunks;
  }
};

inline Tasks split_tasks(const Geometry& g) {
  const int64_t threads = at::get_num_threads();
  const int64_t want = (threads + g.slices - 1) / g.slices;
  Tasks t;
  t.slices = g.slices;
  t.chunks = std::max<int64_t>(1, std::min(want, g.n0 / g.k0));
  return t;
}

}  // namespace lncc
}  // namespace fastreg
