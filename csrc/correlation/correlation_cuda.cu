// CUDA launcher of local_correlation and vfa_attention (contract in correlation.h): the same
// per-element math as the CPU launcher, called on spans of one voxel per thread. Threads are
// laid out voxel-fastest so neighbouring threads read neighbouring voxels (coalesced).
// Gradients of the padded operand are gathers: deterministic, no atomics. vfa_attention keeps
// no logits: forward is one online-softmax pass storing the log-sum-exp, backward recomputes
// the logits and holds one (B, K, *S) temporary of d loss / d logit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include <torch/library.h>

#include "../common/launch.cuh"
#include "correlation.h"
#include "correlation_shapes.h"

namespace fastreg {
namespace correlation {
namespace {

// Splits a flat voxel index into the leading-axis indices (idx) and the last-axis index.
template <int NDIM>
__device__ __forceinline__ int64_t split_voxel(const Grid<NDIM>& g, int64_t v, int64_t* idx) {
  const int64_t w = v % g.size[NDIM - 1];
  v /= g.size[NDIM - 1];
  for (int a = NDIM - 2; a >= 0; --a) {
    idx[a] = v % g.size[a];
    v /= g.size[a];
  }
  idx[NDIM - 1] = 0;
  return w;
}

// One thread per (b, k, voxel).
template <typename scalar_t, int NDIM>
__global__ void correlation_forward_kernel(const scalar_t* __restrict__ f,
                                           const scalar_t* __restrict__ m,
                                           scalar_t* __restrict__ out, int64_t batch,
                                           int64_t channels, int64_t count, Grid<NDIM> g,
                                           at::opmath_type<scalar_t> scale) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = batch * count * g.n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = i % g.n;
    const int64_t k = (i / g.n) % count;
    const int64_t b = i / (g.n * count);
    int64_t idx[NDIM];
    const int64_t w = split_voxel<NDIM>(g, v, idx);
    int o[NDIM];
    offset_of<NDIM>(k, g.radius, o);
    T acc[1];
    neighbour_dot<scalar_t, T, NDIM>(f + b * channels * g.n, m + b * channels * g.n, channels, g,
                                     idx, o, w, w + 1, acc);
    out[i] = static_cast<scalar_t>(scale * acc[0]);
  }
}

// One thread per (b, c, voxel): grad_a by neighbour_gather, grad_b by source_gather.
template <typename scalar_t, typename gscalar_t, int NDIM, bool kSource>
__global__ void correlation_gradient_kernel(const gscalar_t* __restrict__ gk,
                                            const scalar_t* __restrict__ x,
                                            scalar_t* __restrict__ grad, int64_t batch,
                                            int64_t channels, int64_t count, Grid<NDIM> g,
                                            at::opmath_type<scalar_t> scale) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = batch * channels * g.n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = i % g.n;
    const int64_t bc = i / g.n;
    const int64_t b = bc / channels;
    int64_t idx[NDIM];
    const int64_t w = split_voxel<NDIM>(g, v, idx);
    T acc[1];
    if (kSource) {
      source_gather<scalar_t, gscalar_t, T, NDIM>(gk + b * count * g.n, x + bc * g.n, 1, g, idx, w,
                                                  w + 1, acc);
    } else {
      neighbour_gather<scalar_t, gscalar_t, T, NDIM>(gk + b * count * g.n, x + bc * g.n, 1, g, idx,
                                                     w, w + 1, acc);
    }
    grad[i] = static_cast<scalar_t>(scale * acc[0]);
  }
}

// One thread per (b, voxel): online softmax over the K neighbours.
template <typename scalar_t, int NDIM>
__global__ void vfa_forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                   scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ lse,
                                   int64_t batch, int64_t channels, int64_t count, Grid<NDIM> g,
                                   at::opmath_type<scalar_t> scale) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = batch * g.n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = i % g.n;
    const int64_t b = i / g.n;
    int64_t idx[NDIM];
    const int64_t w = split_voxel<NDIM>(g, v, idx);
    SoftmaxState<T, NDIM> st;
    softmax_init(st);
    for (int64_t j = 0; j < count; ++j) {
      int o[NDIM];
      offset_of<NDIM>(j, g.radius, o);
      T acc[1];
      neighbour_dot<scalar_t, T, NDIM>(q + b * channels * g.n, k + b * channels * g.n, channels, g,
                                       idx, o, w, w + 1, acc);
      softmax_update(st, scale * acc[0], o);
    }
    T disp[NDIM];
    lse[i] = softmax_finish(st, disp);
    for (int a = 0; a < NDIM; ++a) out[(b * NDIM + a) * g.n + v] = static_cast<scalar_t>(disp[a]);
  }
}

// One thread per (b, voxel): dl[b, j, v] = d loss / d (q . k_j).
template <typename scalar_t, int NDIM>
__global__ void vfa_dlogit_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ q,
                                  const scalar_t* __restrict__ k, const scalar_t* __restrict__ out,
                                  const at::opmath_type<scalar_t>* __restrict__ lse,
                                  at::opmath_type<scalar_t>* __restrict__ dl, int64_t batch,
                                  int64_t channels, int64_t count, Grid<NDIM> g,
                                  at::opmath_type<scalar_t> scale) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = batch * g.n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = i % g.n;
    const int64_t b = i / g.n;
    int64_t idx[NDIM];
    const int64_t w = split_voxel<NDIM>(g, v, idx);
    T go[NDIM];
    T gdo = T(0);
    for (int a = 0; a < NDIM; ++a) {
      go[a] = static_cast<T>(gout[(b * NDIM + a) * g.n + v]);
      gdo += go[a] * static_cast<T>(out[(b * NDIM + a) * g.n + v]);
    }
    for (int64_t j = 0; j < count; ++j) {
      int o[NDIM];
      offset_of<NDIM>(j, g.radius, o);
      T acc[1];
      neighbour_dot<scalar_t, T, NDIM>(q + b * channels * g.n, k + b * channels * g.n, channels, g,
                                       idx, o, w, w + 1, acc);
      dl[(b * count + j) * g.n + v] = dlogit<T, NDIM>(scale * acc[0], lse[i], go, gdo, o, scale);
    }
  }
}

template <typename scalar_t, typename gscalar_t, int NDIM>
void launch_gradients(const gscalar_t* gk, const at::Tensor& a, const at::Tensor& b,
                      at::Tensor& grad_a, at::Tensor& grad_b, const Shapes& s,
                      const Grid<NDIM>& g, double scale, bool need_a, bool need_b,
                      cudaStream_t stream) {
  using T = at::opmath_type<scalar_t>;
  const int64_t blocks = blocks_for(s.batch * s.channels * s.n);
  if (need_a) {
    correlation_gradient_kernel<scalar_t, gscalar_t, NDIM, false><<<blocks, kThreads, 0, stream>>>(
        gk, b.const_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(), s.batch, s.channels,
        s.offsets, g, static_cast<T>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (need_b) {
    correlation_gradient_kernel<scalar_t, gscalar_t, NDIM, true><<<blocks, kThreads, 0, stream>>>(
        gk, a.const_data_ptr<scalar_t>(), grad_b.mutable_data_ptr<scalar_t>(), s.batch, s.channels,
        s.offsets, g, static_cast<T>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, int NDIM>
void vfa_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& out, const at::Tensor& lse, at::Tensor& dl, at::Tensor& gq,
                  at::Tensor& gk, const Shapes& s, int64_t radius, double scale,
                  std::array<bool, 2> mask, cudaStream_t stream) {
  using T = at::opmath_type<scalar_t>;
  const Grid<NDIM> g = make_grid<NDIM>(s, radius, kBorder);
  vfa_dlogit_kernel<scalar_t, NDIM><<<blocks_for(s.batch * s.n), kThreads, 0, stream>>>(
      grad_out.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
      out.const_data_ptr<scalar_t>(), lse.const_data_ptr<T>(), dl.mutable_data_ptr<T>(), s.batch,
      s.channels, s.offsets, g, static_cast<T>(scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_gradients<scalar_t, T, NDIM>(dl.const_data_ptr<T>(), q, k, gq, gk, s, g, 1.0, mask[0],
                                      mask[1], stream);
}

}  // namespace

at::Tensor local_correlation_forward_cuda(const at::Tensor& f_, const at::Tensor& m_,
                                          int64_t radius, double scale, int64_t padding) {
  const Shapes s = check_shapes(f_, m_, radius, "local_correlation");
  const c10::cuda::CUDAGuard guard(f_.device());
  const at::Tensor f = f_.contiguous();
  const at::Tensor m = m_.contiguous();
  at::Tensor out = at::empty(volume_sizes(s, s.offsets), f.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "local_correlation_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const int64_t blocks = blocks_for(out.numel());
    if (s.ndim == 2) {
      correlation_forward_kernel<scalar_t, 2><<<blocks, kThreads, 0, stream>>>(
          f.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          s.batch, s.channels, s.offsets, make_grid<2>(s, radius, padding), static_cast<T>(scale));
    } else {
      correlation_forward_kernel<scalar_t, 3><<<blocks, kThreads, 0, stream>>>(
          f.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          s.batch, s.channels, s.offsets, make_grid<3>(s, radius, padding), static_cast<T>(scale));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> local_correlation_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& f_, const at::Tensor& m_, int64_t radius,
    double scale, int64_t padding, std::array<bool, 2> output_mask) {
  const Shapes s = check_shapes(f_, m_, radius, "local_correlation");
  TORCH_CHECK(grad_out_.sizes() == at::IntArrayRef(volume_sizes(s, s.offsets)),
              "fastreg local_correlation: grad_out shape");
  const c10::cuda::CUDAGuard guard(f_.device());
  const at::Tensor f = f_.contiguous();
  const at::Tensor m = m_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous().to(f.scalar_type());
  at::Tensor gf = at::empty(output_mask[0] ? f.sizes() : at::IntArrayRef{0}, f.options());
  at::Tensor gm = at::empty(output_mask[1] ? m.sizes() : at::IntArrayRef{0}, m.options());
  if (f.numel() == 0 || (!output_mask[0] && !output_mask[1])) return {gf, gm};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "local_correlation_backward_cuda", [&] {
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    if (s.ndim == 2) {
      launch_gradients<scalar_t, scalar_t, 2>(gp, f, m, gf, gm, s, make_grid<2>(s, radius, padding),
                                              scale, output_mask[0], output_mask[1], stream);
    } else {
      launch_gradients<scalar_t, scalar_t, 3>(gp, f, m, gf, gm, s, make_grid<3>(s, radius, padding),
                                              scale, output_mask[0], output_mask[1], stream);
    }
  });
  return {gf, gm};
}

std::tuple<at::Tensor, at::Tensor> vfa_attention_forward_cuda(const at::Tensor& q_,
                                                              const at::Tensor& k_,
                                                              int64_t radius, double scale) {
  const Shapes s = check_shapes(q_, k_, radius, "vfa_attention");
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.contiguous();
  const at::Tensor k = k_.contiguous();
  at::Tensor out = at::empty(volume_sizes(s, s.ndim), q.options());
  std::vector<int64_t> lse_sizes = volume_sizes(s, 1);
  lse_sizes.erase(lse_sizes.begin() + 1);
  at::Tensor lse = at::empty(lse_sizes, q.options().dtype(at::toOpMathType(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "vfa_attention_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const int64_t blocks = blocks_for(s.batch * s.n);
    if (s.ndim == 2) {
      vfa_forward_kernel<scalar_t, 2><<<blocks, kThreads, 0, stream>>>(
          q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          lse.mutable_data_ptr<T>(), s.batch, s.channels, s.offsets, make_grid<2>(s, radius, kBorder),
          static_cast<T>(scale));
    } else {
      vfa_forward_kernel<scalar_t, 3><<<blocks, kThreads, 0, stream>>>(
          q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          lse.mutable_data_ptr<T>(), s.batch, s.channels, s.offsets, make_grid<3>(s, radius, kBorder),
          static_cast<T>(scale));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> vfa_attention_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_,
    const at::Tensor& out_, const at::Tensor& lse_, int64_t radius, double scale,
    std::array<bool, 2> output_mask) {
  const Shapes s = check_vfa_backward(grad_out_, q_, k_, out_, lse_, radius);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.contiguous();
  const at::Tensor k = k_.contiguous();
  const auto acc_type = at::toOpMathType(q.scalar_type());
  const at::Tensor grad_out = grad_out_.contiguous().to(q.scalar_type());
  const at::Tensor out = out_.contiguous().to(q.scalar_type());
  const at::Tensor lse = lse_.contiguous().to(acc_type);
  at::Tensor gq = at::empty(output_mask[0] ? q.sizes() : at::IntArrayRef{0}, q.options());
  at::Tensor gk = at::empty(output_mask[1] ? k.sizes() : at::IntArrayRef{0}, k.options());
  if (q.numel() == 0 || (!output_mask[0] && !output_mask[1])) return {gq, gk};
  at::Tensor dl = at::empty(volume_sizes(s, s.offsets), q.options().dtype(acc_type));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "vfa_attention_backward_cuda", [&] {
    if (s.ndim == 2) {
      vfa_backward<scalar_t, 2>(grad_out, q, k, out, lse, dl, gq, gk, s, radius, scale, output_mask, stream);
    } else {
      vfa_backward<scalar_t, 3>(grad_out, q, k, out, lse, dl, gq, gk, s, radius, scale, output_mask, stream);
    }
  });
  return {gq, gk};
}

}  // namespace correlation
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  m.impl("local_correlation_forward", &fastreg::correlation::local_correlation_forward_cuda);
  m.impl("local_correlation_backward", &fastreg::correlation::local_correlation_backward_cuda);
  m.impl("vfa_attention_forward", &fastreg::correlation::vfa_attention_forward_cuda);
  m.impl("vfa_attention_backward", &fastreg::correlation::vfa_attention_backward_cuda);
}
