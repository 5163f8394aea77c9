// CUDA launcher of integrate_svf (contract in integrate.h and integrate_loop.h): the same
// per-voxel math as the CPU launcher, one thread per output voxel (grid-stride loops;
// 32-bit loop indices when the field fits, 64-bit otherwise). The step backward scatters
// with atomicAdd into a buffer of the accumulation type (float for half/bfloat16), so its
// sums are not bit-reproducible across runs (like grid_sample's; it raises under
// torch.use_deterministic_algorithms(True)); the forward is.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include <torch/library.h>

#include "../common/launch.cuh"
#include "../warp/warp_shapes.h"
#include "integrate.h"
#include "integrate_loop.h"

namespace fastreg {
namespace integrate {
namespace {

template <typename scalar_t, typename T, int NDIM, int PADDING, typename index_t>
__global__ void step_kernel(const scalar_t* __restrict__ v, scalar_t* __restrict__ out, index_t n,
                            index_t total, T scale, warp::Geometry<NDIM> geo) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t b = i / n, p = i % n;
    int64_t idx[NDIM];
    fastreg::unravel<NDIM>(p, geo.size, idx);
    step_voxel<scalar_t, T, NDIM, PADDING>(v + b * NDIM * n, out + b * NDIM * n, n, p, idx, scale, geo);
  }
}

// Scatter of the step backward: atomic adds into grad (B, NDIM, n) of the accumulation type.
template <typename T, int NDIM>
struct AtomicScatter {
  T* grad;
  int64_t n;  // voxels per channel
  int64_t corner[1 << NDIM];  // corner_offsets of the image
  __device__ void operator()(int64_t b, int64_t c, int64_t q, T value) const {
    atomicAdd(grad + (b * NDIM + c) * n + q, value);
  }
  __device__ void cell(int64_t b, int64_t c, int64_t base, const T* w) const {
    T* dst = grad + (b * NDIM + c) * n + base;
    for (int k = 0; k < (1 << NDIM); ++k) atomicAdd(dst + corner[k], w[k]);
  }
};

template <typename scalar_t, typename T, int NDIM, int PADDING, typename index_t>
__global__ void step_backward_kernel(const T* __restrict__ g, const scalar_t* __restrict__ v,
                                     T* grad, index_t n, index_t total, T scale,
                                     warp::Geometry<NDIM> geo) {
  AtomicScatter<T, NDIM> scatter{grad, n, {}};
  corner_offsets<NDIM>(geo, scatter.corner);
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t b = i / n, p = i % n;
    int64_t idx[NDIM];
    fastreg::unravel<NDIM>(p, geo.size, idx);
    step_backward_voxel<scalar_t, T, NDIM, PADDING>(v + b * NDIM * n, g + b * NDIM * n, b, n, p, idx,
                                                    scale, geo, scatter);
  }
}

// Calls fn(std::integral_constant<int, NDIM>, std::integral_constant<int, PADDING>, index_t{})
// for the spatial rank of v, the padding and the narrowest index type that addresses v.
template <typename Fn>
void with_rank_padding_index(const at::Tensor& v, int64_t padding, const Fn& fn) {
  const bool narrow = fits_int32({v.numel()});
  warp::dispatch_mode_padding(warp::kBilinear, static_cast<int>(padding), [&](auto, auto pad) {
    if (v.dim() == 4) {
      narrow ? fn(std::integral_constant<int, 2>{}, pad, int32_t{}) : fn(std::integral_constant<int, 2>{}, pad, int64_t{});
    } else {
      narrow ? fn(std::integral_constant<int, 3>{}, pad, int32_t{}) : fn(std::integral_constant<int, 3>{}, pad, int64_t{});
    }
  });
}

void step_cuda(const at::Tensor& v, at::Tensor& out, double scale, int64_t padding) {
  if (v.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(v.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = v.numel() / (v.size(0) * v.size(1));
  const int64_t total = v.size(0) * n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "integrate_step_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    with_rank_padding_index(v, padding, [&](auto rank, auto pad, auto index) {
      constexpr int NDIM = decltype(rank)::value;
      constexpr int PADDING = decltype(pad)::value;
      using index_t = decltype(index);
      step_kernel<scalar_t, T, NDIM, PADDING, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
          v.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(n),
          static_cast<index_t>(total), static_cast<T>(scale), warp::image_geometry<NDIM>(v));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void step_backward_cuda(const at::Tensor& g, const at::Tensor& v, at::Tensor& grad, double scale,
                        int64_t padding) {
  const c10::cuda::CUDAGuard guard(v.device());
  at::globalContext().alertNotDeterministic("fastreg integrate_svf backward (CUDA atomic scatter)");
  if (v.numel() == 0) return;
  grad.zero_();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = v.numel() / (v.size(0) * v.size(1));
  const int64_t total = v.size(0) * n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "integrate_step_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    with_rank_padding_index(v, padding, [&](auto rank, auto pad, auto index) {
      constexpr int NDIM = decltype(rank)::value;
      constexpr int PADDING = decltype(pad)::value;
      using index_t = decltype(index);
      step_backward_kernel<scalar_t, T, NDIM, PADDING, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
          g.const_data_ptr<T>(), v.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<T>(),
          static_cast<index_t>(n), static_cast<index_t>(total), static_cast<T>(scale),
          warp::image_geometry<NDIM>(v));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> integrate_svf_forward_cuda(const at::Tensor& v, int64_t steps,
                                                              int64_t padding, at::IntArrayRef keep) {
  const c10::cuda::CUDAGuard guard(v.device());
  return forward_loop(v, steps, padding, keep, &step_cuda);
}

at::Tensor integrate_svf_backward_cuda(const at::Tensor& grad_out, const at::Tensor& v,
                                       const at::Tensor& saved, int64_t steps, int64_t padding,
                                       at::IntArrayRef keep, at::IntArrayRef pushes) {
  const c10::cuda::CUDAGuard guard(v.device());
  return backward_loop(grad_out, v, saved, steps, padding, keep, pushes, &step_cuda, &step_backward_cuda);
}

}  // namespace integrate
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  m.impl("integrate_svf_forward", &fastreg::integrate::integrate_svf_forward_cuda);
  m.impl("integrate_svf_backward", &fastreg::integrate::integrate_svf_backward_cuda);
}
