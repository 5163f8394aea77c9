// Host-side shape checks and geometry shared by the CPU and CUDA launchers of warp.
// The Python layer (fastreg/ops/warp.py) validates user input with readable errors; these
// TORCH_CHECKs guard direct calls of torch.ops.fastreg.warp_* from the outside.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

#include "warp.h"

namespace fastreg {
namespace warp {

struct Shapes {
  int64_t ndim;      // spatial dimensions (2 or 3)
  int64_t batch;     // B of the image
  int64_t channels;  // C of the image
  int64_t loc_batch; // Bl of the positions: 1 (broadcast) or B
  int64_t n_in;      // voxels per channel of the image
  int64_t n_out;     // voxels per channel of the output
  std::vector<int64_t> out_sizes;  // (B, C, *S_out)
};

inline Shapes check_shapes(const at::Tensor& image, const at::Tensor& loc, bool displacement) {
  const int64_t ndim = image.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "fastreg warp: image must be (B, C, H, W) or (B, C, D, H, W)");
  TORCH_CHECK(loc.dim() == image.dim() && loc.size(1) == ndim,
              "fastreg warp: positions must be (B, ndim, *S) with ndim = ", ndim);
  TORCH_CHECK(loc.size(0) == 1 || loc.size(0) == image.size(0),
              "fastreg warp: position batch must be 1 or the image batch");
  TORCH_CHECK(loc.scalar_type() == image.scalar_type(), "fastreg warp: dtype mismatch");
  TORCH_CHECK(loc.device() == image.device(), "fastreg warp: device mismatch");
  Shapes s;
  s.ndim = ndim;
  s.batch = image.size(0);
  s.channels = image.size(1);
  s.loc_batch = loc.size(0);
  s.n_in = 1;
  s.n_out = 1;
  s.out_sizes = {s.batch, s.channels};
  for (int64_t a = 0; a < ndim; ++a) {
    if (displacement) {
      TORCH_CHECK(loc.size(2 + a) == image.size(2 + a),
                  "fastreg warp: displacement and image spatial sizes differ");
    }
    s.n_in *= image.size(2 + a);
    s.n_out *= loc.size(2 + a);
    s.out_sizes.push_back(loc.size(2 + a));
  }
  return s;
}

template <int NDIM>
Geometry<NDIM> image_geometry(const at::Tensor& image) {
  Geometry<NDIM> g;
  int64_t stride = 1;
  for (int a = NDIM - 1; a >= 0; --a) {
    g.size[a] = image.size(2 + a);
    g.stride[a] = stride;
    stride *= g.size[a];
  }
  return g;
}

}  // namespace warp
}  // namespace fastreg
