// Host-side loops of integrate_svf over its steps, shared by the CPU and CUDA launchers:
// each launcher passes its step kernel and its step-backward kernel (integrate.h math).
//
// Forward: u_0 = v / 2^steps, u_{k+1} = u_k + warp(u_k, u_k); returns (u_steps, saved) where
//   saved is (steps - 1, B, NDIM, *S) holding u_1 .. u_{steps-1} when save is true, else an
//   empty tensor. The factor 2^-steps is applied inside the first step (never stored).
// Backward: g <- step_backward(g, u_k) for k = steps-1 .. 0. Without saved fields
//   (checkpointing) each u_k is recomputed from v: k steps, steps (steps - 1) / 2 in all,
//   with at most two fields alive, so the backward needs O(1) fields instead of steps - 1.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace fastreg {
namespace integrate {

// step(v, out, scale, padding) writes one step of v into out (u = scale * v).
using StepFn = void (*)(const at::Tensor& v, at::Tensor& out, double scale, int64_t padding);
// step_backward(g, v, scale, padding) returns dL/dv of that step given g = dL/d out.
using StepBackwardFn = at::Tensor (*)(const at::Tensor& g, const at::Tensor& v, double scale,
                                      int64_t padding);

inline void check_field(const at::Tensor& v, int64_t steps) {
  const int64_t ndim = v.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "fastreg integrate_svf: v must be (B, 2, H, W) or (B, 3, D, H, W)");
  TORCH_CHECK(v.size(1) == ndim, "fastreg integrate_svf: v must have one channel per spatial axis");
  TORCH_CHECK(steps >= 0 && steps < 64, "fastreg integrate_svf: steps must be in [0, 64)");
}

inline double scale_of_step(int64_t k, int64_t steps) {
  return k == 0 ? std::ldexp(1.0, -static_cast<int>(steps)) : 1.0;
}

// Runs the first `count` steps from v; step k writes into dst[k] when dst is given, else
// into a fresh tensor. Returns u_count (v itself when count == 0).
inline at::Tensor run_steps(const at::Tensor& v, int64_t steps, int64_t count, int64_t padding,
                            const at::Tensor* dst, StepFn step) {
  at::Tensor cur = v;
  for (int64_t k = 0; k < count; ++k) {
    at::Tensor out = dst != nullptr ? (*dst)[k] : at::empty_like(v);
    step(cur, out, scale_of_step(k, steps), padding);
    cur = out;
  }
  return cur;
}

inline std::tuple<at::Tensor, at::Tensor> forward_loop(const at::Tensor& v_, int64_t steps,
                                                       int64_t padding, bool save, StepFn step) {
  check_field(v_, steps);
  const at::Tensor v = v_.contiguous();
  if (steps == 0) return {v.clone(), v.new_empty({0})};
  std::vector<int64_t> saved_sizes{steps - 1};
  for (int64_t s : v.sizes()) saved_sizes.push_back(s);
  at::Tensor saved = save ? v.new_empty(saved_sizes) : v.new_empty({0});
  const at::Tensor last_in = run_steps(v, steps, steps - 1, padding, save ? &saved : nullptr, step);
  at::Tensor out = at::empty_like(v);
  step(last_in, out, scale_of_step(steps - 1, steps), padding);
  return {out, saved};
}

inline at::Tensor backward_loop(const at::Tensor& grad_out, const at::Tensor& v_,
                                const at::Tensor& saved, int64_t steps, int64_t padding,
                                StepFn step, StepBackwardFn step_backward) {
  check_field(v_, steps);
  TORCH_CHECK(grad_out.sizes() == v_.sizes(), "fastreg integrate_svf: grad_out must have the shape of v");
  const at::Tensor v = v_.contiguous();
  at::Tensor g = grad_out.contiguous().to(v.scalar_type());
  if (steps == 0) return g.clone();
  const bool stored = saved.numel() > 0 || steps == 1;
  TORCH_CHECK(!stored || steps == 1 || (saved.dim() == v.dim() + 1 && saved.size(0) == steps - 1),
              "fastreg integrate_svf: saved must be (steps - 1, *v.shape) or empty");
  for (int64_t k = steps - 1; k >= 0; --k) {
    const at::Tensor u = k == 0   ? v
                         : stored ? saved[k - 1].contiguous()
                                  : run_steps(v, steps, k, padding, nullptr, step);
    g = step_backward(g, u, scale_of_step(k, steps), padding);
  }
  return g;
}

}  // namespace integrate
}  // namespace fastreg
