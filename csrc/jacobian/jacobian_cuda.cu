// CUDA launcher of jacobian (contract in jacobian.h; the per-element math is the same header
// the CPU launcher runs). Determinant and gradient: one thread per (batch item, voxel), the
// gradient gathered (no atomics, deterministic). jacobian_stats: one fused pass, each block
// reduces its voxels' float64 sums in shared memory and writes one partial row; the rows are
// summed by torch in a fixed order (deterministic). 32-bit indexing when every tensor fits.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include <torch/library.h>

#include "../common/launch.cuh"
#include "jacobian.h"
#include "jacobian_shapes.h"

namespace fastreg {
namespace jacobian {
namespace {

template <int NDIM, typename T>
struct Params {
  Geometry<NDIM> g;
  T inv[NDIM];
};

template <typename scalar_t, int NDIM, typename index_t>
__global__ void det_kernel(const scalar_t* __restrict__ u, scalar_t* __restrict__ out,
                           Params<NDIM, at::opmath_type<scalar_t>> p, index_t total, int mode) {
  using T = at::opmath_type<scalar_t>;
  const index_t n = p.g.numel;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t b = i / n, v = i % n;
    int64_t idx[NDIM];
    unravel<NDIM>(v, p.g.size, idx);
    T J[NDIM][NDIM];
    jacobian_at<scalar_t, T, NDIM>(u + b * NDIM * n, p.g, p.inv, mode, idx, v, J);
    out[i] = static_cast<scalar_t>(det<T, NDIM>(J));
  }
}

template <typename scalar_t, int NDIM, typename index_t>
__global__ void backward_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ gout,
                                scalar_t* __restrict__ gdisp, Params<NDIM, at::opmath_type<scalar_t>> p,
                                index_t total, int mode) {
  using T = at::opmath_type<scalar_t>;
  const index_t n = p.g.numel;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t b = i / n, v = i % n;
    int64_t idx[NDIM];
    unravel<NDIM>(v, p.g.size, idx);
    T grad[NDIM];
    backward_at<scalar_t, T, NDIM>(u + b * NDIM * n, gout + b * n, p.g, p.inv, mode, idx, v, grad);
    for (int a = 0; a < NDIM; ++a) gdisp[(b * NDIM + a) * n + v] = static_cast<scalar_t>(grad[a]);
  }
}

// Grid (blocks, B): block x of batch item y covers region voxels [x * kThreads, ...) strided
// by the grid; writes its sums to partial[y, x, :].
template <typename scalar_t, int NDIM, typename index_t>
__global__ void stats_kernel(const scalar_t* __restrict__ u, double* __restrict__ partial,
                             Params<NDIM, at::opmath_type<scalar_t>> p, Geometry<NDIM> region,
                             int64_t crop, int mode) {
  using T = at::opmath_type<scalar_t>;
  __shared__ double shared[kThreads][kStats];
  double acc[kStats];
  for (int k = 0; k < kStats; ++k) acc[k] = 0.0;
  const index_t n = p.g.numel;
  const index_t b = blockIdx.y;
  const scalar_t* ub = u + b * NDIM * n;
  for (index_t r = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; r < region.numel;
       r += static_cast<index_t>(blockDim.x) * gridDim.x) {
    int64_t idx[NDIM];
    unravel<NDIM>(r, region.size, idx);
    index_t v = 0;
    for (int a = 0; a < NDIM; ++a) {
      idx[a] += crop;
      v += idx[a] * p.g.stride[a];
    }
    Neighbourhood<T, NDIM> nb;
    load_neighbourhood<scalar_t, T, NDIM>(ub, p.g, p.inv, idx, v, nb);
    Taps<T> t[NDIM];
    for (int a = 0; a < NDIM; ++a) t[a] = taps<T>(mode, idx[a], p.g.size[a]);
    accumulate<T>(neighbourhood_det<T, NDIM>(nb, t), neighbourhood_ndv<T, NDIM>(nb), acc);
  }
  for (int k = 0; k < kStats; ++k) shared[threadIdx.x][k] = acc[k];
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      for (int k = 0; k < kStats; ++k) shared[threadIdx.x][k] += shared[threadIdx.x + s][k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double* out = partial + (static_cast<int64_t>(b) * gridDim.x + blockIdx.x) * kStats;
    for (int k = 0; k < kStats; ++k) out[k] = shared[0][k];
  }
}

template <int NDIM, typename T>
Params<NDIM, T> params(const at::Tensor& disp, c10::ArrayRef<double> spacing) {
  Params<NDIM, T> p;
  p.g = geometry<NDIM>(disp);
  for (int a = 0; a < NDIM; ++a) p.inv[a] = static_cast<T>(1.0 / spacing[a]);
  return p;
}

}  // namespace

at::Tensor jacobian_det_forward_cuda(const at::Tensor& disp_, int64_t mode, c10::ArrayRef<double> spacing) {
  const int64_t ndim = check_disp(disp_, mode, spacing);
  const c10::cuda::CUDAGuard guard(disp_.device());
  const at::Tensor disp = disp_.contiguous();
  at::Tensor out = at::empty(det_sizes(disp), disp.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, disp.scalar_type(), "jacobian_det_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto launch = [&](auto ndim_tag, auto index_tag) {
      constexpr int N = decltype(ndim_tag)::value;
      using index_t = decltype(index_tag);
      det_kernel<scalar_t, N, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
          disp.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), params<N, T>(disp, spacing),
          static_cast<index_t>(total), static_cast<int>(mode));
    };
    const bool small = fits_int32({disp.numel()});
    if (ndim == 2) {
      small ? launch(std::integral_constant<int, 2>{}, int32_t{}) : launch(std::integral_constant<int, 2>{}, int64_t{});
    } else {
      small ? launch(std::integral_constant<int, 3>{}, int32_t{}) : launch(std::integral_constant<int, 3>{}, int64_t{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor jacobian_det_backward_cuda(const at::Tensor& grad_out_, const at::Tensor& disp_, int64_t mode,
                                      c10::ArrayRef<double> spacing) {
  const int64_t ndim = check_disp(disp_, mode, spacing);
  TORCH_CHECK(grad_out_.sizes() == at::IntArrayRef(det_sizes(disp_)), "fastreg jacobian: grad_out shape");
  const c10::cuda::CUDAGuard guard(disp_.device());
  const at::Tensor disp = disp_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous().to(disp.scalar_type());
  at::Tensor gdisp = at::empty(disp.sizes(), disp.options());
  const int64_t total = grad_out.numel();
  if (total == 0) return gdisp;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, disp.scalar_type(), "jacobian_det_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto launch = [&](auto ndim_tag, auto index_tag) {
      constexpr int N = decltype(ndim_tag)::value;
      using index_t = decltype(index_tag);
      backward_kernel<scalar_t, N, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
          disp.const_data_ptr<scalar_t>(), grad_out.const_data_ptr<scalar_t>(), gdisp.mutable_data_ptr<scalar_t>(),
          params<N, T>(disp, spacing), static_cast<index_t>(total), static_cast<int>(mode));
    };
    const bool small = fits_int32({disp.numel()});
    if (ndim == 2) {
      small ? launch(std::integral_constant<int, 2>{}, int32_t{}) : launch(std::integral_constant<int, 2>{}, int64_t{});
    } else {
      small ? launch(std::integral_constant<int, 3>{}, int32_t{}) : launch(std::integral_constant<int, 3>{}, int64_t{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gdisp;
}

at::Tensor jacobian_stats_cuda(const at::Tensor& disp_, int64_t mode, c10::ArrayRef<double> spacing, int64_t crop) {
  const int64_t ndim = check_disp(disp_, mode, spacing, crop);
  const c10::cuda::CUDAGuard guard(disp_.device());
  const at::Tensor disp = disp_.contiguous();
  const int64_t batch = disp.size(0);
  if (disp.numel() == 0) return at::zeros({batch, kStats}, disp.options().dtype(at::kDouble));
  int64_t region_numel = 1;
  for (int64_t a = 0; a < ndim; ++a) region_numel *= disp.size(2 + a) - 2 * crop;
  const int blocks = std::min<int>(blocks_for(region_numel), 4096);
  TORCH_CHECK(batch <= 65535, "fastreg jacobian: batch too large for one launch");
  at::Tensor partial = at::empty({batch, blocks, kStats}, disp.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, disp.scalar_type(), "jacobian_stats_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto launch = [&](auto ndim_tag, auto index_tag) {
      constexpr int N = decltype(ndim_tag)::value;
      using index_t = decltype(index_tag);
      Geometry<N> region;
      int64_t stride = 1;
      for (int a = N - 1; a >= 0; --a) {
        region.size[a] = disp.size(2 + a) - 2 * crop;
        region.stride[a] = stride;
        stride *= region.size[a];
      }
      region.numel = stride;
      stats_kernel<scalar_t, N, index_t><<<dim3(blocks, static_cast<unsigned>(batch)), kThreads, 0, stream>>>(
          disp.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<double>(), params<N, T>(disp, spacing), region,
          crop, static_cast<int>(mode));
    };
    const bool small = fits_int32({disp.numel()});
    if (ndim == 2) {
      small ? launch(std::integral_constant<int, 2>{}, int32_t{}) : launch(std::integral_constant<int, 2>{}, int64_t{});
    } else {
      small ? launch(std::integral_constant<int, 3>{}, int32_t{}) : launch(std::integral_constant<int, 3>{}, int64_t{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial.sum(1);
}

}  // namespace jacobian
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  m.impl("jacobian_det_forward", &fastreg::jacobian::jacobian_det_forward_cuda);
  m.impl("jacobian_det_backward", &fastreg::jacobian::jacobian_det_backward_cuda);
  m.impl("jacobian_stats", &fastreg::jacobian::jacobian_stats_cuda);
}
