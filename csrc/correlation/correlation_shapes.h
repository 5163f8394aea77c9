// Host-side shape checks and geometry shared by the CPU and CUDA launchers of correlation.
// The Python layer (fastreg/ops/correlation.py) validates user input with readable errors;
// these TORCH_CHECKs guard direct calls of torch.ops.fastreg.* from the outside.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

#include "correlation.h"

namespace fastreg {
namespace correlation {

struct Shapes {
  int64_t ndim;      // spatial dimensions (2 or 3)
  int64_t batch;     // B
  int64_t channels;  // C
  int64_t n;         // voxels per channel
  int64_t rows;      // rows (batch item + leading-axis indices) in all batch items
  int64_t width;     // voxels per row (size of the last axis)
  int64_t offsets;   // K = (2r+1)^ndim
  std::vector<int64_t> spatial;
};

inline Shapes check_shapes(const at::Tensor& a, const at::Tensor& b, int64_t radius,
                           const char* op) {
  const int64_t ndim = a.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "fastreg ", op, ": inputs must be (B, C, H, W) or (B, C, D, H, W)");
  TORCH_CHECK(a.sizes() == b.sizes(), "fastreg ", op, ": both inputs must have the same shape");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastreg ", op, ": dtype mismatch");
  TORCH_CHECK(a.device() == b.device(), "fastreg ", op, ": device mismatch");
  TORCH_CHECK(radius >= 1, "fastreg ", op, ": radius must be at least 1");
  Shapes s;
  s.ndim = ndim;
  s.batch = a.size(0);
  s.channels = a.size(1);
  s.n = 1;
  for (int64_t d = 0; d < ndim; ++d) {
    s.spatial.push_back(a.size(2 + d));
    s.n *= a.size(2 + d);
  }
  s.width = a.size(1 + ndim);
  s.rows = s.width == 0 ? 0 : s.batch * (s.n / s.width);
  s.offsets = num_offsets(static_cast<int>(radius), static_cast<int>(ndim));
  return s;
}

// (B, c, *S) sizes.
inline std::vector<int64_t> volume_sizes(const Shapes& s, int64_t c) {
  std::vector<int64_t> out = {s.batch, c};
  out.insert(out.end(), s.spatial.begin(), s.spatial.end());
  return out;
}

// Checks of the saved tensors handed to vfa_attention_backward (both launchers).
inline Shapes check_vfa_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& out, const at::Tensor& lse, int64_t radius) {
  const Shapes s = check_shapes(q, k, radius, "vfa_attention");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(volume_sizes(s, s.ndim)) && out.sizes() == grad_out.sizes(),
              "fastreg vfa_attention: grad_out and out must be (B, ndim, *S)");
  TORCH_CHECK(lse.numel() == s.batch * s.n, "fastreg vfa_attention: lse must be (B, *S)");
  return s;
}

template <int NDIM>
Grid<NDIM> make_grid(const Shapes& s, int64_t radius, int64_t padding) {
  Grid<NDIM> g;
  int64_t stride = 1;
  for (int a = NDIM - 1; a >= 0; --a) {
    g.size[a] = s.spatial[a];
    g.stride[a] = stride;
    stride *= g.size[a];
  }
  g.n = s.n;
  g.radius = static_cast<int>(radius);
  g.padding = static_cast<int>(padding);
  return g;
}

}  // namespace correlation
}  // namespace fastreg
