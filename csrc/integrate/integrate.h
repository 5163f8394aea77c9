// integrate: one scaling-and-squaring step and its gradient (the per-element math of
// fastreg::integrate_svf_forward / _backward, shared by the CPU and CUDA launchers).
//
// Contract
//   v    (B, NDIM, *S)   velocity or displacement in voxels, float/double/half/bfloat16,
//                        contiguous; channel a moves along spatial axis a (ij order)
//   out  (B, NDIM, *S)   out[b, :, p] = u(p) + u sampled (linearly) at p + u(p),  u = scale * v
//   g    (B, NDIM, *S)   dL/d out; the backward gives dL/dv = scale * dL/du with
//                        dL/du(p) = g(p) + (d sample / d position)^T g(p)      (at p itself)
//                        dL/du(q) += W_q(p + u(p)) g(p)  for each stencil corner q of p
// scale is 2^-steps in the first step (folding the initial v / 2^steps into the kernel) and 1
// after it; a power of two commutes with every rounding, so folding it changes no bit.
// The sampling is exactly warp's (csrc/warp/warp.h): voxel centres at integer indices,
// padding kZeros/kBorder/kReflection, NaN positions give NaN. Accumulation in T
// (at::opmath_type: float for half types).
#pragma once

#include <cstdint>

#include "../warp/warp.h"

namespace fastreg {
namespace integrate {

// One output voxel p of one batch item: v and out point at the item (NDIM, n), idx holds
// the spatial indices of p.
template <typename scalar_t, typename T, int NDIM, int PADDING>
FASTREG_HOST_DEVICE void step_voxel(const scalar_t* v, scalar_t* out, int64_t n, int64_t p,
                                    const int64_t* idx, T scale, const warp::Geometry<NDIM>& geo) {
  T pos[NDIM];
  warp::load_position<scalar_t, T, NDIM>(v, n, p, idx, false, pos);
  for (int a = 0; a < NDIM; ++a) pos[a] = static_cast<T>(idx[a]) + scale * pos[a];
  // out <- v sampled at pos (rounded to scalar_t like the warp it replaces), then
  // out <- scale * (v(p) + out). Interior cells take warp's nested-lerp fast path.
  warp::Cell<T, NDIM> cell;
  if (warp::interior_cell<PADDING>(pos, geo, cell)) {
    for (int c = 0; c < NDIM; ++c) {
      out[c * n + p] = static_cast<scalar_t>(warp::interpolate_cell<scalar_t, T, NDIM>(v + c * n, cell, geo));
    }
  } else {
    warp::Stencil<T, NDIM> st;
    warp::build_stencil<warp::kBilinear, PADDING>(pos, geo, false, st);
    warp::sample_channels<scalar_t, T, NDIM>(st, v, NDIM, n, out + p, n);
  }
  for (int c = 0; c < NDIM; ++c) {
    const int64_t i = c * n + p;
    out[i] = static_cast<scalar_t>(scale * (static_cast<T>(v[i]) + static_cast<T>(out[i])));
  }
}

// Gradient contributions of one output voxel p of batch item b: v and g point at the item
// (NDIM, n). Every contribution to dL/dv goes to scatter(b, c, q, value): at q = p itself
// and at the corners q of p's stencil.
template <typename scalar_t, typename T, int NDIM, int PADDING, typename Scatter>
FASTREG_HOST_DEVICE void step_backward_voxel(const scalar_t* v, const scalar_t* g, int64_t b,
                                             int64_t n, int64_t p, const int64_t* idx, T scale,
                                             const warp::Geometry<NDIM>& geo, Scatter& scatter) {
  T pos[NDIM];
  warp::load_position<scalar_t, T, NDIM>(v, n, p, idx, false, pos);
  for (int a = 0; a < NDIM; ++a) pos[a] = static_cast<T>(idx[a]) + scale * pos[a];
  warp::Stencil<T, NDIM> st;
  warp::build_stencil<warp::kBilinear, PADDING>(pos, geo, true, st);
  // The image is u = scale * v: its gradient scales by `scale` (chain rule into v), the
  // position gradient by scale twice (sampled values and the position both carry it).
  auto to_v = [&](int64_t bb, int64_t c, int64_t q, T value) { scatter(bb, c, q, scale * value); };
  T gpos[NDIM];
  for (int a = 0; a < NDIM; ++a) gpos[a] = T(0);
  warp::backward_channels<scalar_t, T, NDIM>(st, v, g + p, b, NDIM, n, n, true, true, gpos, to_v);
  for (int c = 0; c < NDIM; ++c) {
    scatter(b, c, p, scale * (static_cast<T>(g[c * n + p]) + scale * gpos[c]));
  }
}

}  // namespace integrate
}  // namespace fastreg
