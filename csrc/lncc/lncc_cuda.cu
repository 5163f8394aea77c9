// CUDA launcher of lncc (contract in lncc.h; the line filter and the per-voxel math are the
// same header the CPU launcher runs). Work buffers are double (Q, slices, n0, n1, n2):
// the five products are written pointwise, each axis is filtered by one launch with one
// thread per line (box: running sum, cost independent of the window; adjacent threads take
// adjacent lines, so the loads coalesce except along the last axis), ping-ponging between
// two buffers, and a pointwise kernel forms cc. The backward recomputes the sums, forms
// d loss / d sums pointwise (only the maps the requested gradients need), filters them the
// same way (the filter is its own adjoint) and combines. 64-bit indexing throughout.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <tuple>

#include <torch/library.h>

#include "../common/launch.cuh"
#include "lncc.h"
#include "lncc_shapes.h"

namespace fastreg {
namespace lncc {
namespace {

#define FASTREG_GRID_LOOP(i, n)                                                          \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

template <typename scalar_t>
__global__ void moments_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                               double* __restrict__ x, int64_t total) {
  FASTREG_GRID_LOOP(i, total) {
    double m[kMoments];
    moments(static_cast<double>(a[i]), static_cast<double>(b[i]), m);
    for (int q = 0; q < kMoments; ++q) x[q * total + i] = m[q];
  }
}

// One thread per line along an axis of a (outer, length, inner) view.
__global__ void filter_kernel(const double* __restrict__ in, double* __restrict__ out,
                              const double* __restrict__ w, int64_t n_lines, int64_t length,
                              int64_t inner, int64_t k) {
  FASTREG_GRID_LOOP(line, n_lines) {
    const int64_t base = (line / inner) * length * inner + line % inner;
    filter_line(in + base, inner, out + base, inner, length, k, w);
  }
}

template <typename scalar_t>
__global__ void cc_kernel(const double* __restrict__ s, scalar_t* __restrict__ out, int64_t total,
                          Params prm) {
  FASTREG_GRID_LOOP(i, total) {
    double v[kMoments];
    for (int q = 0; q < kMoments; ++q) v[q] = s[q * total + i];
    out[i] = static_cast<scalar_t>(cc_value(v, prm));
  }
}

template <typename scalar_t>
__global__ void sum_grads_kernel(const double* __restrict__ s, const scalar_t* __restrict__ g,
                                 double* __restrict__ G, int64_t total, Params prm, int q0, int q1) {
  FASTREG_GRID_LOOP(i, total) {
    double v[kMoments], d[kGrads];
    for (int q = 0; q < kMoments; ++q) v[q] = s[q * total + i];
    sum_gradients(v, static_cast<double>(g[i]), prm, d);
    for (int q = q0; q < q1; ++q) G[(q - q0) * total + i] = d[q];
  }
}

template <typename scalar_t>
__global__ void combine_kernel(const double* __restrict__ f, const scalar_t* __restrict__ a,
                               const scalar_t* __restrict__ b, scalar_t* __restrict__ ga,
                               scalar_t* __restrict__ gb, int64_t total, int q0, int q1) {
  FASTREG_GRID_LOOP(i, total) {
    double v[kGrads];
    for (int q = q0; q < q1; ++q) v[q] = f[(q - q0) * total + i];
    const double av = static_cast<double>(a[i]);
    const double bv = static_cast<double>(b[i]);
    if (ga != nullptr) ga[i] = static_cast<scalar_t>(grad_a_value(v, av, bv));
    if (gb != nullptr) gb[i] = static_cast<scalar_t>(grad_b_value(v, av, bv));
  }
}

// Filters the buffer x (nq, slices, n0, n1, n2) along every axis; returns the one holding
// the result (x or y).
at::Tensor window_sums(at::Tensor x, at::Tensor y, const Geometry& g, const at::Tensor& weights,
                       at::ArrayRef<double> taps) {
  const int64_t n[3] = {g.n0, g.n1, g.n2};
  const int64_t k[3] = {g.k0, g.k1, g.k2};
  const double* w[3] = {g.w0, g.w1, g.w2};
  const int64_t numel = x.numel();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (int ax = 2; ax >= 0; --ax) {
    if (k[ax] == 1 && w[ax] == nullptr) continue;  // identity
    const int64_t inner = ax == 2 ? 1 : (ax == 1 ? g.n2 : g.n1 * g.n2);
    const int64_t n_lines = numel / n[ax];
    const double* wd = w[ax] == nullptr ? nullptr : weights.const_data_ptr<double>() + (w[ax] - taps.data());
    filter_kernel<<<blocks_for(n_lines), kThreads, 0, stream>>>(x.const_data_ptr<double>(), y.mutable_data_ptr<double>(),
                                                                 wd, n_lines, n[ax], inner, k[ax]);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::swap(x, y);
  }
  return x;
}

at::Tensor device_taps(at::ArrayRef<double> taps, const at::Tensor& like) {
  if (taps.empty()) return at::empty({0}, like.options().dtype(at::kDouble));
  return at::from_blob(const_cast<double*>(taps.data()), {static_cast<int64_t>(taps.size())}, at::kDouble)
      .to(like.device());
}

template <typename scalar_t>
at::Tensor sums(const at::Tensor& a, const at::Tensor& b, const Geometry& g, const at::Tensor& weights,
                at::ArrayRef<double> taps) {
  const int64_t total = a.numel();
  const auto opts = a.options().dtype(at::kDouble);
  at::Tensor x = at::empty({kMoments, total}, opts);
  at::Tensor y = at::empty({kMoments, total}, opts);
  moments_kernel<scalar_t><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), x.mutable_data_ptr<double>(), total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return window_sums(x, y, g, weights, taps);
}

}  // namespace

at::Tensor lncc_forward_cuda(const at::Tensor& a_, const at::Tensor& b_, at::IntArrayRef window,
                             at::ArrayRef<double> taps, double norm, double smooth_nr, double floor,
                             double eps) {
  const Geometry g = check_shapes(a_, b_, window, taps);
  const c10::cuda::CUDAGuard guard(a_.device());
  const at::Tensor a = a_.contiguous();
  const at::Tensor b = b_.contiguous();
  at::Tensor out = at::empty(a.sizes(), a.options());
  const int64_t total = a.numel();
  if (total == 0) return out;
  const Params prm = params(g, norm, smooth_nr, floor, eps);
  const at::Tensor weights = device_taps(taps, a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "lncc_forward_cuda", [&] {
    const at::Tensor s = sums<scalar_t>(a, b, g, weights, taps);
    cc_kernel<scalar_t><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        s.const_data_ptr<double>(), out.mutable_data_ptr<scalar_t>(), total, prm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> lncc_backward_cuda(const at::Tensor& grad_out_, const at::Tensor& a_,
                                                      const at::Tensor& b_, at::IntArrayRef window,
                                                      at::ArrayRef<double> taps, double norm,
                                                      double smooth_nr, double floor, double eps,
                                                      std::array<bool, 2> output_mask) {
  const Geometry g = check_shapes(a_, b_, window, taps);
  TORCH_CHECK(grad_out_.sizes() == a_.sizes(), "fastreg lncc: grad_out must have the shape of a");
  const c10::cuda::CUDAGuard guard(a_.device());
  const at::Tensor a = a_.contiguous();
  const at::Tensor b = b_.contiguous();
  const at::Tensor gout = grad_out_.contiguous().to(a.scalar_type());
  at::Tensor ga = output_mask[0] ? at::empty(a.sizes(), a.options()) : at::empty({0}, a.options());
  at::Tensor gb = output_mask[1] ? at::empty(b.sizes(), b.options()) : at::empty({0}, b.options());
  const int64_t total = a.numel();
  if ((!output_mask[0] && !output_mask[1]) || total == 0) return {ga, gb};
  const Params prm = params(g, norm, smooth_nr, floor, eps);
  const at::Tensor weights = device_taps(taps, a);
  const int q0 = output_mask[0] ? kGA : kAlpha;
  const int q1 = output_mask[1] ? kGrads : kAlpha + 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "lncc_backward_cuda", [&] {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor G = at::empty({q1 - q0, total}, a.options().dtype(at::kDouble));
    {
      const at::Tensor s = sums<scalar_t>(a, b, g, weights, taps);
      sum_grads_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          s.const_data_ptr<double>(), gout.const_data_ptr<scalar_t>(), G.mutable_data_ptr<double>(), total, prm,
          q0, q1);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor f = window_sums(G, at::empty(G.sizes(), G.options()), g, weights, taps);
    combine_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        f.const_data_ptr<double>(), a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        output_mask[0] ? ga.mutable_data_ptr<scalar_t>() : nullptr,
        output_mask[1] ? gb.mutable_data_ptr<scalar_t>() : nullptr, total, q0, q1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ga, gb};
}

}  // namespace lncc
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  m.impl("lncc_forward", &fastreg::lncc::lncc_forward_cuda);
  m.impl("lncc_backward", &fastreg::lncc::lncc_backward_cuda);
}
