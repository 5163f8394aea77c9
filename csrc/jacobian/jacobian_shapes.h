// Host-side shape checks and geometry shared by the CPU and CUDA launchers of jacobian.
// The Python layer (fastreg/ops/jacobian.py) validates user input with readable errors; these
// TORCH_CHECKs guard direct calls of torch.ops.fastreg.jacobian_* from the outside.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <vector>

#include "jacobian.h"

namespace fastreg {
namespace jacobian {

// Checks disp (B, ndim, *S), mode, spacing and crop; returns ndim.
inline int64_t check_disp(const at::Tensor& disp, int64_t mode, c10::ArrayRef<double> spacing,
                          int64_t crop = 0) {
  const int64_t ndim = disp.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "fastreg jacobian: disp must be (B, 2, H, W) or (B, 3, D, H, W)");
  TORCH_CHECK(disp.size(1) == ndim, "fastreg jacobian: disp must have ndim = ", ndim, " channels");
  TORCH_CHECK(mode == kCentral || mode == kForward || mode == kGradient, "fastreg jacobian: bad mode ", mode);
  TORCH_CHECK(static_cast<int64_t>(spacing.size()) == ndim, "fastreg jacobian: spacing needs ", ndim, " values");
  TORCH_CHECK(crop >= 0, "fastreg jacobian: crop must be >= 0");
  for (int64_t a = 0; a < ndim; ++a) {
    TORCH_CHECK(spacing[a] > 0, "fastreg jacobian: spacing must be positive");
    TORCH_CHECK(mode != kGradient || disp.size(2 + a) >= 2, "fastreg jacobian: mode gradient needs sizes >= 2");
    TORCH_CHECK(disp.size(2 + a) > 2 * crop, "fastreg jacobian: crop leaves no voxel");
  }
  return ndim;
}

template <int NDIM>
Geometry<NDIM> geometry(const at::Tensor& disp) {
  Geometry<NDIM> g;
  int64_t stride = 1;
  for (int a = NDIM - 1; a >= 0; --a) {
    g.size[a] = disp.size(2 + a);
    g.stride[a] = stride;
    stride *= g.size[a];
  }
  g.numel = stride;
  return g;
}

inline std::vector<int64_t> det_sizes(const at::Tensor& disp) {
  std::vector<int64_t> sizes = {disp.size(0)};
  for (int64_t a = 2; a < disp.dim(); ++a) sizes.push_back(disp.size(a));
  return sizes;
}

}  // namespace jacobian
}  // namespace fastreg
