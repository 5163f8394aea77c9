// Host-side loops of integrate_svf over its steps, shared by the CPU and CUDA launchers:
// each launcher passes its step kernel and its step-backward kernel (integrate.h math).
//
// Forward: u_0 = v / 2^steps, u_{k+1} = u_k + warp(u_k, u_k); returns (u_steps, saved) where
//   saved is (len(keep), B, NDIM, *S) holding u_k for the step indices k in keep (strictly
//   increasing, in [1, steps - 1]). The factor 2^-steps is applied inside the first step.
// Backward: g <- step_backward(g, u_k) for k = steps-1 .. 0. The fields at hand are a stack
//   of snapshots: v (k = 0), the saved ones, and the ones the backward makes itself. For
//   step k it drops the snapshots above k, makes the next entries of `pushes` that lie in
//   (top, k] (each advanced from the snapshot below it), then advances from the top
//   snapshot to u_k. Any `pushes` gives the same result (it only trades memory for
//   recomputation); fastreg.ops.integrate.checkpoint_plan gives the schedule that needs the
//   fewest extra steps for a number of snapshots. Alive at once: the snapshots, the field of
//   step k or two fields while advancing, and two gradients.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace fastreg {
namespace integrate {

// step(v, out, scale, padding) writes one step of v into out (u = scale * v).
using StepFn = void (*)(const at::Tensor& v, at::Tensor& out, double scale, int64_t padding);
// step_backward(g, v, grad, scale, padding) writes dL/dv of that step into grad given
// g = dL/d out; g and grad are (B, NDIM, *S) in the accumulation type (float for half types).
using StepBackwardFn = void (*)(const at::Tensor& g, const at::Tensor& v, at::Tensor& grad,
                                double scale, int64_t padding);

inline void check_field(const at::Tensor& v, int64_t steps) {
  const int64_t ndim = v.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "fastreg integrate_svf: v must be (B, 2, H, W) or (B, 3, D, H, W)");
  TORCH_CHECK(v.size(1) == ndim, "fastreg integrate_svf: v must have one channel per spatial axis");
  TORCH_CHECK(steps >= 0 && steps < 64, "fastreg integrate_svf: steps must be in [0, 64)");
}

inline double scale_of_step(int64_t k, int64_t steps) {
  return k == 0 ? std::ldexp(1.0, -static_cast<int>(steps)) : 1.0;
}

// Buffers of one shape and dtype for reuse: a step writes into a buffer an earlier step gave
// back, so the allocator is asked (and on the CPU the kernel zeroes fresh pages) only when
// more buffers are alive than ever before. Peak memory is that of fresh allocations.
class BufferPool {
 public:
  explicit BufferPool(at::Tensor like) : like_(std::move(like)) {}
  at::Tensor take() {
    if (free_.empty()) return at::empty_like(like_, at::MemoryFormat::Contiguous);
    at::Tensor t = std::move(free_.back());
    free_.pop_back();
    return t;
  }
  void give(at::Tensor t) { free_.push_back(std::move(t)); }
  void release() { free_.clear(); }  // frees the buffers given back

 private:
  at::Tensor like_;
  std::vector<at::Tensor> free_;
};

// u_to from the field u_from (to >= from; returns u_from itself when equal). Intermediate
// fields go back to the pool; the result is a pool buffer unless to == from.
inline at::Tensor advance(const at::Tensor& u_from, int64_t from, int64_t to, int64_t steps,
                          int64_t padding, StepFn step, BufferPool& pool) {
  at::Tensor cur = u_from;
  for (int64_t k = from; k < to; ++k) {
    at::Tensor out = pool.take();
    step(cur, out, scale_of_step(k, steps), padding);
    if (k > from) pool.give(std::move(cur));
    cur = std::move(out);
  }
  return cur;
}

inline void check_steps_list(at::IntArrayRef list, int64_t steps, bool increasing, const char* name) {
  for (size_t i = 0; i < list.size(); ++i) {
    TORCH_CHECK(list[i] >= 1 && list[i] < steps, "fastreg integrate_svf: ", name,
                " must hold step indices in [1, steps - 1], got ", list[i]);
    TORCH_CHECK(!increasing || i == 0 || list[i] > list[i - 1], "fastreg integrate_svf: ", name,
                " must be strictly increasing");
  }
}

inline std::tuple<at::Tensor, at::Tensor> forward_loop(const at::Tensor& v_, int64_t steps,
                                                       int64_t padding, at::IntArrayRef keep,
                                                       StepFn step) {
  check_field(v_, steps);
  check_steps_list(keep, steps, true, "keep");
  const at::Tensor v = v_.contiguous();
  std::vector<int64_t> saved_sizes{static_cast<int64_t>(keep.size())};
  for (int64_t s : v.sizes()) saved_sizes.push_back(s);
  at::Tensor saved = v.new_empty(saved_sizes);
  if (steps == 0) return {v.clone(), saved};
  BufferPool pool(v);
  at::Tensor out;
  at::Tensor cur = v;
  bool cur_pooled = false;
  size_t next = 0;
  for (int64_t k = 0; k < steps; ++k) {
    const bool keep_next = next < keep.size() && keep[next] == k + 1;
    const bool pooled = k < steps - 1 && !keep_next;
    if (k == steps - 1) {  // the output replaces the free buffer: two fields alive, not three
      pool.release();
      out = at::empty_like(v);
    }
    at::Tensor dst = k == steps - 1 ? out : keep_next ? saved[next++] : pool.take();
    step(cur, dst, scale_of_step(k, steps), padding);
    if (cur_pooled) pool.give(std::move(cur));
    cur = std::move(dst);
    cur_pooled = pooled;
  }
  return {out, saved};
}

inline at::Tensor backward_loop(const at::Tensor& grad_out, const at::Tensor& v_,
                                const at::Tensor& saved, int64_t steps, int64_t padding,
                                at::IntArrayRef keep, at::IntArrayRef pushes, StepFn step,
                                StepBackwardFn step_backward) {
  check_field(v_, steps);
  TORCH_CHECK(grad_out.sizes() == v_.sizes(), "fastreg integrate_svf: grad_out must have the shape of v");
  check_steps_list(keep, steps, true, "keep");
  check_steps_list(pushes, steps, false, "pushes");
  TORCH_CHECK(saved.dim() == v_.dim() + 1 && saved.size(0) == static_cast<int64_t>(keep.size()) &&
                  saved.sizes().slice(1) == v_.sizes(),
              "fastreg integrate_svf: saved must be (len(keep), *v.shape)");
  const at::Tensor v = v_.contiguous();
  const at::ScalarType acc = at::toOpMathType(v.scalar_type());
  if (steps == 0) return grad_out.contiguous().to(v.scalar_type(), false, true);
  // One pool for the recomputed fields and, when they share the dtype (float32, float64),
  // the gradients: at most three are alive besides the snapshots (two fields while
  // advancing and g, or the field, g and the new gradient), so three are ever allocated.
  // Half types take fresh float gradients each step.
  BufferPool pool(v);
  const bool shared = acc == v.scalar_type();
  at::Tensor g = grad_out.contiguous().to(acc);  // the caller's grad_out is read, never written
  std::vector<std::pair<int64_t, at::Tensor>> snapshots{{0, v}};  // pushed ones are pool buffers
  for (size_t i = 0; i < keep.size(); ++i) snapshots.emplace_back(keep[i], saved[i].contiguous());
  const size_t kept = snapshots.size();
  size_t next = 0;
  for (int64_t k = steps - 1; k >= 0; --k) {
    while (snapshots.back().first > k) {
      if (snapshots.size() > kept) pool.give(std::move(snapshots.back().second));
      snapshots.pop_back();
    }
    while (next < pushes.size() && pushes[next] > snapshots.back().first && pushes[next] <= k) {
      at::Tensor u = advance(snapshots.back().second, snapshots.back().first, pushes[next], steps,
                             padding, step, pool);
      snapshots.emplace_back(pushes[next++], std::move(u));
    }
    at::Tensor u = advance(snapshots.back().second, snapshots.back().first, k, steps, padding, step, pool);
    at::Tensor grad = shared ? pool.take() : at::empty(v.sizes(), v.options().dtype(acc));
    step_backward(g, u, grad, scale_of_step(k, steps), padding);
    if (snapshots.back().first < k) pool.give(std::move(u));  // not a snapshot
    if (shared && !g.is_same(grad_out)) pool.give(std::move(g));
    g = std::move(grad);
  }
  return g.to(v.scalar_type());
}

}  // namespace integrate
}  // namespace fastreg
