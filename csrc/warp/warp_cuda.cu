// CUDA launcher of warp (contract in warp.h; the per-element math is the same header the
// CPU launcher runs). One thread per (position batch item, output voxel); the weights are
// computed once and reused for every channel and broadcast batch item. 32-bit indexing when
// every tensor fits, 64-bit otherwise. The image gradient is scattered with atomicAdd into
// an opmath buffer, or, when torch.are_deterministic_algorithms_enabled(), into int64
// fixed point (integer atomics are order-independent, so gradients are bit-identical).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

#include <torch/library.h>

#include "../common/launch.cuh"
#include "warp.h"
#include "warp_shapes.h"

namespace fastreg {
namespace warp {
namespace {

template <int NDIM>
struct OutGrid {
  int64_t size[NDIM];
};

// The stencil of flat output index i = (position batch item bl, voxel v) and the batch items
// [b0, b1) it feeds: shared prologue of the forward and backward kernels.
template <int MODE, int PADDING, typename scalar_t, typename T, int NDIM, typename index_t>
__device__ __forceinline__ void voxel_stencil(index_t i, const scalar_t* loc, const Geometry<NDIM>& geo,
                                              const OutGrid<NDIM>& og, index_t batch, index_t loc_batch,
                                              index_t n_out, bool displacement, bool with_grad,
                                              StencilFor<MODE, T, NDIM>& st, index_t& bl, index_t& v, index_t& b0,
                                              index_t& b1) {
  bl = i / n_out;
  v = i % n_out;
  int64_t idx[NDIM];
  unravel<NDIM>(v, og.size, idx);
  T pos[NDIM];
  load_position<scalar_t, T, NDIM>(loc + bl * NDIM * n_out, n_out, v, idx, displacement, pos);
  build_stencil<MODE, PADDING>(pos, geo, with_grad, st);
  b0 = loc_batch == batch ? bl : 0;
  b1 = loc_batch == batch ? bl + 1 : batch;
}

template <typename scalar_t, int NDIM, int MODE, int PADDING, typename index_t>
__global__ void forward_kernel(const scalar_t* __restrict__ image, const scalar_t* __restrict__ loc,
                               scalar_t* __restrict__ out, Geometry<NDIM> geo, OutGrid<NDIM> og,
                               index_t batch, index_t loc_batch, index_t channels, index_t n_in,
                               index_t n_out, bool displacement) {
  using T = at::opmath_type<scalar_t>;
  const index_t total = loc_batch * n_out;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    StencilFor<MODE, T, NDIM> st;
    index_t bl, v, b0, b1;
    voxel_stencil<MODE, PADDING, scalar_t, T>(i, loc, geo, og, batch, loc_batch, n_out, displacement, false, st, bl,
                                              v, b0, b1);
    for (index_t b = b0; b < b1; ++b) {
      sample_channels<scalar_t, T, NDIM>(st, image + b * channels * n_in, channels, n_in,
                                         out + b * channels * n_out + v, n_out);
    }
  }
}

// Image-gradient accumulators for backward_channels.
template <typename acc_t, typename index_t>
struct AtomicScatter {
  acc_t* grad;  // (B, C, n_in)
  index_t channels, n_in;
  template <typename T>
  __device__ void operator()(int64_t b, int64_t c, int64_t offset, T value) const {
    atomicAdd(grad + (static_cast<index_t>(b) * channels + c) * n_in + offset, static_cast<acc_t>(value));
  }
};

template <typename index_t>
struct FixedPointScatter {
  unsigned long long* grad;  // (B, C, n_in) int64 two's complement
  index_t channels, n_in;
  double scale;
  template <typename T>
  __device__ void operator()(int64_t b, int64_t c, int64_t offset, T value) const {
    const long long q = __double2ll_rn(static_cast<double>(value) * scale);
    atomicAdd(grad + (static_cast<index_t>(b) * channels + c) * n_in + offset,
              static_cast<unsigned long long>(q));
  }
};

// Counts the contributions each image voxel receives (the fan-in), for the fixed-point scale.
template <typename index_t>
struct CountScatter {
  int* count;  // (B, n_in)
  index_t n_in;
  template <typename T>
  __device__ void operator()(int64_t b, int64_t c, int64_t offset, T) const {
    if (c == 0) atomicAdd(count + static_cast<index_t>(b) * n_in + offset, 1);
  }
};

template <typename scalar_t, int NDIM, int MODE, int PADDING, typename index_t, typename Scatter>
__global__ void backward_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ image,
                                const scalar_t* __restrict__ loc, scalar_t* __restrict__ gloc,
                                Scatter scatter, Geometry<NDIM> geo, OutGrid<NDIM> og,
                                index_t batch, index_t loc_batch, index_t channels, index_t n_in,
                                index_t n_out, bool displacement, bool need_image, bool need_loc) {
  using T = at::opmath_type<scalar_t>;
  const index_t total = loc_batch * n_out;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    StencilFor<MODE, T, NDIM> st;
    index_t bl, v, b0, b1;
    voxel_stencil<MODE, PADDING, scalar_t, T>(i, loc, geo, og, batch, loc_batch, n_out, displacement, need_loc, st,
                                              bl, v, b0, b1);
    T gpos[NDIM];
    for (int a = 0; a < NDIM; ++a) gpos[a] = T(0);
    for (index_t b = b0; b < b1; ++b) {
      backward_channels<scalar_t, T, NDIM>(st, image + b * channels * n_in,
                                           gout + b * channels * n_out + v, b, channels, n_in,
                                           n_out, need_image, need_loc, gpos, scatter);
    }
    if (need_loc) {
      for (int a = 0; a < NDIM; ++a) gloc[(bl * NDIM + a) * n_out + v] = static_cast<scalar_t>(gpos[a]);
    }
  }
}

template <int NDIM>
OutGrid<NDIM> out_grid(const at::Tensor& loc) {
  OutGrid<NDIM> og;
  for (int a = 0; a < NDIM; ++a) og.size[a] = loc.size(2 + a);
  return og;
}

template <typename scalar_t, int NDIM, typename index_t>
void launch_forward(const at::Tensor& image, const at::Tensor& loc, at::Tensor& out, const Shapes& s,
                    int mode, int padding, bool displacement) {
  const int64_t total = s.loc_batch * s.n_out;
  dispatch_mode_padding(mode, padding, [&](auto m, auto p) {
    forward_kernel<scalar_t, NDIM, m.value, p.value, index_t>
        <<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            image.const_data_ptr<scalar_t>(), loc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
            image_geometry<NDIM>(image), out_grid<NDIM>(loc), s.batch, s.loc_batch, s.channels, s.n_in,
            s.n_out, displacement);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t, int NDIM, typename index_t, typename Scatter>
void launch_backward(const at::Tensor& gout, const at::Tensor& image, const at::Tensor& loc,
                     at::Tensor& gloc, Scatter scatter, const Shapes& s, int mode, int padding,
                     bool displacement, bool need_image, bool need_loc) {
  const int64_t total = s.loc_batch * s.n_out;
  dispatch_mode_padding(mode, padding, [&](auto m, auto p) {
    backward_kernel<scalar_t, NDIM, m.value, p.value, index_t, Scatter>
        <<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            gout.const_data_ptr<scalar_t>(), image.const_data_ptr<scalar_t>(), loc.const_data_ptr<scalar_t>(),
            need_loc ? gloc.mutable_data_ptr<scalar_t>() : nullptr, scatter, image_geometry<NDIM>(image),
            out_grid<NDIM>(loc), s.batch, s.loc_batch, s.channels, s.n_in, s.n_out, displacement,
            need_image, need_loc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t, int NDIM, typename index_t>
void backward_impl(const at::Tensor& gout, const at::Tensor& image, const at::Tensor& loc,
                   at::Tensor& gimage, at::Tensor& gloc, const Shapes& s, int mode, int padding,
                   bool displacement, bool need_image, bool need_loc) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t channels = s.channels, n_in = s.n_in;
  if (!need_image) {
    CountScatter<index_t> none{nullptr, n_in};  // never called: need_image is false
    launch_backward<scalar_t, NDIM, index_t>(gout, image, loc, gloc, none, s, mode, padding,
                                             displacement, false, need_loc);
    return;
  }
  if (!at::globalContext().deterministicAlgorithms()) {
    const bool direct = std::is_same<acc_t, scalar_t>::value;
    at::Tensor acc = direct ? gimage.zero_() : at::zeros(image.sizes(), image.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    AtomicScatter<acc_t, index_t> scatter{acc.mutable_data_ptr<acc_t>(), channels, n_in};
    launch_backward<scalar_t, NDIM, index_t>(gout, image, loc, gloc, scatter, s, mode, padding,
                                             displacement, true, need_loc);
    if (!direct) gimage.copy_(acc);
    return;
  }
  // Deterministic: |grad_image| <= max fan-in * max|grad_out| (every weight is <= 1), so a
  // power-of-two scale with 2^62 headroom over that bound cannot overflow, and the result
  // is quantised to bound * 2^-62 (far below the rounding of the dtype for real fan-ins).
  at::Tensor count = at::zeros({s.batch, s.n_in}, image.options().dtype(at::kInt));
  CountScatter<index_t> counter{count.mutable_data_ptr<int>(), n_in};
  launch_backward<scalar_t, NDIM, index_t>(gout, image, loc, gloc, counter, s, mode, padding,
                                           displacement, true, false);
  const double fan_in = static_cast<double>(count.max().item<int>());
  const double gmax = gout.abs().max().item<double>();
  const double bound = fan_in * gmax;
  at::Tensor fixed = at::zeros(image.sizes(), image.options().dtype(at::kLong));
  if (bound > 0 && std::isfinite(bound)) {
    const double scale = std::ldexp(1.0, 62 - static_cast<int>(std::ceil(std::log2(bound))));
    FixedPointScatter<index_t> scatter{reinterpret_cast<unsigned long long*>(fixed.mutable_data_ptr<int64_t>()),
                                       channels, n_in, scale};
    launch_backward<scalar_t, NDIM, index_t>(gout, image, loc, gloc, scatter, s, mode, padding,
                                             displacement, true, need_loc);
    gimage.copy_(fixed.to(at::kDouble).div_(scale));
  } else {
    // grad_out is all zero (nothing to scatter) or non-finite (propagate it as NaN).
    launch_backward<scalar_t, NDIM, index_t>(gout, image, loc, gloc, counter, s, mode, padding,
                                             displacement, false, need_loc);
    gimage.fill_(bound > 0 || std::isnan(bound) ? NAN : 0.0);
  }
}

}  // namespace

at::Tensor warp_forward_cuda(const at::Tensor& image_, const at::Tensor& loc_, int64_t mode,
                             int64_t padding, bool displacement) {
  const Shapes s = check_shapes(image_, loc_, displacement);
  const c10::cuda::CUDAGuard guard(image_.device());
  const at::Tensor image = image_.contiguous();
  const at::Tensor loc = loc_.contiguous();
  at::Tensor out = at::empty(s.out_sizes, image.options());
  if (out.numel() == 0) return out;
  const bool small = fits_int32({image.numel(), loc.numel(), out.numel()});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "warp_forward_cuda", [&] {
    if (s.ndim == 2) {
      small ? launch_forward<scalar_t, 2, int32_t>(image, loc, out, s, mode, padding, displacement)
            : launch_forward<scalar_t, 2, int64_t>(image, loc, out, s, mode, padding, displacement);
    } else {
      small ? launch_forward<scalar_t, 3, int32_t>(image, loc, out, s, mode, padding, displacement)
            : launch_forward<scalar_t, 3, int64_t>(image, loc, out, s, mode, padding, displacement);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_out_,
                                                      const at::Tensor& image_,
                                                      const at::Tensor& loc_, int64_t mode,
                                                      int64_t padding, bool displacement,
                                                      std::array<bool, 2> output_mask) {
  const Shapes s = check_shapes(image_, loc_, displacement);
  TORCH_CHECK(grad_out_.sizes() == at::IntArrayRef(s.out_sizes), "fastreg warp: grad_out shape");
  const c10::cuda::CUDAGuard guard(image_.device());
  const at::Tensor image = image_.contiguous();
  const at::Tensor loc = loc_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous().to(image.scalar_type());
  const bool need_image = output_mask[0];
  const bool need_loc = output_mask[1] && mode != kNearest;
  at::Tensor gimage = need_image ? at::zeros(image.sizes(), image.options()) : at::empty({0}, image.options());
  at::Tensor gloc = output_mask[1] ? at::zeros(loc.sizes(), loc.options()) : at::empty({0}, loc.options());
  if ((!need_image && !need_loc) || grad_out.numel() == 0) return {gimage, gloc};
  const bool small = fits_int32({image.numel(), loc.numel(), grad_out.numel()});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "warp_backward_cuda", [&] {
    if (s.ndim == 2) {
      small ? backward_impl<scalar_t, 2, int32_t>(grad_out, image, loc, gimage, gloc, s, mode, padding, displacement, need_image, need_loc)
            : backward_impl<scalar_t, 2, int64_t>(grad_out, image, loc, gimage, gloc, s, mode, padding, displacement, need_image, need_loc);
    } else {
      small ? backward_impl<scalar_t, 3, int32_t>(grad_out, image, loc, gimage, gloc, s, mode, padding, displacement, need_image, need_loc)
            : backward_impl<scalar_t, 3, int64_t>(grad_out, image, loc, gimage, gloc, s, mode, padding, displacement, need_image, need_loc);
    }
  });
  return {gimage, gloc};
}

}  // namespace warp
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  m.impl("warp_forward", &fastreg::warp::warp_forward_cuda);
  m.impl("warp_backward", &fastreg::warp::warp_backward_cuda);
}
