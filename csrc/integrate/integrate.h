// integrate: one scaling-and-squaring step and its gradient (the per-element math of
// fastreg::integrate_svf_forward / _backward, shared by the CPU and CUDA launchers).
//
// Contract
//   v    (B, NDIM, *S)   velocity or displacement in voxels, float/double/half/bfloat16,
//                        contiguous; channel a moves along spatial axis a (ij order)
//   out  (B, NDIM, *S)   out[b, :, p] = u(p) + u sampled (linearly) at p + u(p),  u = scale * v
//   g    (B, NDIM, *S)   dL/d out in T; the backward gives dL/dv = scale * dL/du with
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

// Gradient of one interior cell (warp::interior_cell) for one channel, with the sampled
// value's gradient gu = d loss / d sample: writes gu * (weight of corner k) into w[k] and adds
// gu * d sample / d t_a into gt[a]. Corner k's bits are its axes, the first axis highest
// (offset sum_a bit_a(k) * stride[a]: corner_offsets). Nested differences of the corner
// values, the backward of interpolate_cell.
template <typename scalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void cell_backward(const scalar_t* img, const warp::Cell<T, NDIM>& cell,
                                       const warp::Geometry<NDIM>& geo, T gu, T* w, T* gt) {
  const scalar_t* p = img + cell.base;
  const T tl = cell.t[NDIM - 1];
  const T sl = T(1) - tl;
  if constexpr (NDIM == 2) {
    const int64_t s0 = geo.stride[0];
    const T v00 = p[0], v01 = p[1], v10 = p[s0], v11 = p[s0 + 1];
    const T t0 = cell.t[0];
    const T r0 = warp::lerp(v00, v01, tl), r1 = warp::lerp(v10, v11, tl);
    gt[0] += gu * (r1 - r0);
    gt[1] += gu * warp::lerp(v01 - v00, v11 - v10, t0);
    const T g0 = gu * (T(1) - t0), g1 = gu * t0;
    w[0] = g0 * sl;
    w[1] = g0 * tl;
    w[2] = g1 * sl;
    w[3] = g1 * tl;
  } else {
    const int64_t s0 = geo.stride[0], s1 = geo.stride[1];
    T v[8];
    for (int k = 0; k < 4; ++k) {
      const int64_t o = ((k >> 1) & 1) * s0 + (k & 1) * s1;
      v[2 * k] = static_cast<T>(p[o]);
      v[2 * k + 1] = static_cast<T>(p[o + 1]);
    }
    const T t0 = cell.t[0], t1 = cell.t[1];
    // rows along the last axis (r) and their slopes (d), for (axis 0, axis 1) = 00, 01, 10, 11
    T r[4], d[4];
    for (int k = 0; k < 4; ++k) {
      r[k] = warp::lerp(v[2 * k], v[2 * k + 1], tl);
      d[k] = v[2 * k + 1] - v[2 * k];
    }
    const T a0 = warp::lerp(r[0], r[1], t1), a1 = warp::lerp(r[2], r[3], t1);
    gt[0] += gu * (a1 - a0);
    gt[1] += gu * warp::lerp(r[1] - r[0], r[3] - r[2], t0);
    gt[2] += gu * warp::lerp(warp::lerp(d[0], d[1], t1), warp::lerp(d[2], d[3], t1), t0);
    const T g0 = gu * (T(1) - t0), g1 = gu * t0;
    const T g00 = g0 * (T(1) - t1), g01 = g0 * t1, g10 = g1 * (T(1) - t1), g11 = g1 * t1;
    w[0] = g00 * sl;
    w[1] = g00 * tl;
    w[2] = g01 * sl;
    w[3] = g01 * tl;
    w[4] = g10 * sl;
    w[5] = g10 * tl;
    w[6] = g11 * sl;
    w[7] = g11 * tl;
  }
}

// Offsets of the 2^NDIM corners of a cell from its first corner, in cell_backward's order.
template <int NDIM>
FASTREG_HOST_DEVICE void corner_offsets(const warp::Geometry<NDIM>& geo, int64_t* offset) {
  for (int k = 0; k < (1 << NDIM); ++k) {
    offset[k] = 0;
    for (int a = 0; a < NDIM; ++a) offset[k] += ((k >> (NDIM - 1 - a)) & 1) * geo.stride[a];
  }
}

// Gradient contributions of one output voxel p of batch item b: v and g point at the item
// (NDIM, n). Contributions to dL/dv go to the scatter: scatter.cell(b, c, base, w) adds
// w[k] at the corners of an interior cell (offsets as in cell_backward), scatter(b, c, q,
// value) adds one value (p itself, and the corners of other stencils).
template <typename scalar_t, typename T, int NDIM, int PADDING, typename Scatter>
FASTREG_HOST_DEVICE void step_backward_voxel(const scalar_t* v, const T* g, int64_t b,
                                             int64_t n, int64_t p, const int64_t* idx, T scale,
                                             const warp::Geometry<NDIM>& geo, Scatter& scatter) {
  T pos[NDIM];
  warp::load_position<scalar_t, T, NDIM>(v, n, p, idx, false, pos);
  for (int a = 0; a < NDIM; ++a) pos[a] = static_cast<T>(idx[a]) + scale * pos[a];
  // The image is u = scale * v: its gradient scales by `scale` (chain rule into v), the
  // position gradient by scale twice (sampled values and the position both carry it).
  T gpos[NDIM];
  for (int a = 0; a < NDIM; ++a) gpos[a] = T(0);
  warp::Cell<T, NDIM> cell;
  if (warp::interior_cell<PADDING>(pos, geo, cell)) {
    T w[1 << NDIM];
    for (int c = 0; c < NDIM; ++c) {
      cell_backward<scalar_t, T, NDIM>(v + c * n, cell, geo, scale * g[c * n + p], w, gpos);
      scatter.cell(b, c, cell.base, w);
    }
    for (int a = 0; a < NDIM; ++a) gpos[a] *= cell.dsrc[a];  // scale of the image is in gu
  } else {
    warp::Stencil<T, NDIM> st;
    warp::build_stencil<warp::kBilinear, PADDING>(pos, geo, true, st);
    auto to_v = [&](int64_t bb, int64_t c, int64_t q, T value) { scatter(bb, c, q, scale * value); };
    warp::backward_channels<scalar_t, T, NDIM>(st, v, g + p, b, NDIM, n, n, true, true, gpos, to_v);
    for (int a = 0; a < NDIM; ++a) gpos[a] *= scale;
  }
  for (int c = 0; c < NDIM; ++c) {
    scatter(b, c, p, scale * (g[c * n + p] + gpos[c]));
  }
}

}  // namespace integrate
}  // namespace fastreg
