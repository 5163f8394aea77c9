// correlation: local correlation volumes and the fused vector-field-attention step (the
// per-element math of fastreg::local_correlation_* and fastreg::vfa_attention_*, shared by
// the CPU and CUDA launchers).
//
// Contract
//   f, m / q, k  (B, C, *S)        float/double/half/bfloat16, contiguous, same shape
//   offsets      o_k, k = 0 .. K-1, K = (2r+1)^NDIM, in ij order with the first spatial axis
//                outermost: o_k[a] = (k / (2r+1)^(NDIM-1-a)) % (2r+1) - r
//   local_correlation_forward
//     out (B, K, *S)   out[b, k, p] = scale * sum_c f[b, c, p] * m[b, c, p + o_k], where m is
//                      0 outside the image (kZeros: the product f * 0 is still formed, so a
//                      NaN/inf in f propagates as with an explicitly zero-padded m) or the
//                      nearest border voxel (kBorder, replicate padding).
//   local_correlation_backward
//     grad_f[c, p] = scale * sum_k g[k, p] * m[c, p + o_k]            (same padding)
//     grad_m[c, q] = scale * sum_k sum_{p : pad(p + o_k) = q} g[k, p] * f[c, p]
//                      computed as a gather (deterministic, no atomics): along each axis the
//                      p with pad(p + o) = q form an interval (see `sources`).
//   vfa_attention_forward (keys always replicate-padded)
//     l_k(p) = scale * sum_c q[c, p] * k[c, p + o_k];  w_k = softmax_k(l_k)
//     out (B, NDIM, *S)  out[a, p] = sum_k w_k(p) * o_k[a]        displacement in voxels
//     lse (B, *S)        log sum_k exp(l_k(p)), in the accumulation type (kept for backward;
//                        no logits are stored)
//   vfa_attention_backward: with G_k = sum_a g[a, p] o_k[a] and g . out = sum_k w_k G_k,
//     dlogit_k(p) = scale * w_k (G_k - g . out), w_k = exp(l_k - lse) recomputed; then
//     grad_q = local_correlation grad_f of (dlogit, k) and grad_k = grad_m of (dlogit, q),
//     both with scale 1 and kBorder padding.
// Work is expressed on spans [w0, w1) of voxels along the last (contiguous) axis of one
// row (batch item + indices of the leading axes): the CPU launcher passes whole rows (the
// inner loops vectorise), the CUDA launcher spans of one voxel per thread.
#pragma once

#include <cmath>
#include <cstdint>
#include <math.h>

#include "../common/host_device.h"

namespace fastreg {
namespace correlation {

constexpr int kZeros = 0;
constexpr int kBorder = 1;

// Spatial sizes and element strides of one channel, voxels per channel, the neighbourhood.
template <int NDIM>
struct Grid {
  int64_t size[NDIM];
  int64_t stride[NDIM];
  int64_t n;
  int radius;
  int padding;
};

FASTREG_HOST_DEVICE int64_t num_offsets(int radius, int ndim) {
  int64_t k = 1;
  for (int a = 0; a < ndim; ++a) k *= 2 * radius + 1;
  return k;
}

// The offset o_k (ij order, first axis outermost).
template <int NDIM>
FASTREG_HOST_DEVICE void offset_of(int64_t k, int radius, int* o) {
  const int64_t width = 2 * radius + 1;
  for (int a = NDIM - 1; a >= 0; --a) {
    o[a] = static_cast<int>(k % width) - radius;
    k /= width;
  }
}

// Index of i + o along an axis of size n after padding; -1 outside with kZeros.
FASTREG_HOST_DEVICE int64_t neighbour(int64_t i, int o, int64_t n, int padding) {
  const int64_t j = i + o;
  if (j >= 0 && j < n) return j;
  if (padding == kZeros) return -1;
  return j < 0 ? 0 : n - 1;
}

// The interval [lo, hi] of indices p along an axis of size n with pad(p + o) == q.
// Returns false when it is empty.
FASTREG_HOST_DEVICE bool sources(int64_t q, int o, int64_t n, int padding, int64_t& lo,
                                 int64_t& hi) {
  lo = q - o;
  hi = q - o;
  if (padding == kBorder) {
    if (q == 0) lo = 0;
    if (q == n - 1) hi = n - 1;
  }
  if (lo < 0) lo = 0;
  if (hi > n - 1) hi = n - 1;
  return lo <= hi;
}

// The sub-span [lo, hi) of [w0, w1) where w + o lies inside [0, n) (the shift needs no padding).
FASTREG_HOST_DEVICE void inside(int o, int64_t n, int64_t w0, int64_t w1, int64_t& lo,
                                int64_t& hi) {
  lo = w0 > -o ? w0 : -o;
  hi = w1 < n - o ? w1 : n - o;
  if (hi < lo) hi = lo;
}

// Flat offset (within one channel) of the row whose leading-axis indices are idx[0..NDIM-2].
template <int NDIM>
FASTREG_HOST_DEVICE int64_t row_offset(const Grid<NDIM>& g, const int64_t* idx) {
  int64_t off = 0;
  for (int a = 0; a < NDIM - 1; ++a) off += idx[a] * g.stride[a];
  return off;
}

// Flat offset of the row holding the neighbours o of row idx; -1 when it lies outside (kZeros).
template <int NDIM>
FASTREG_HOST_DEVICE int64_t neighbour_row(const Grid<NDIM>& g, const int64_t* idx, const int* o) {
  int64_t off = 0;
  for (int a = 0; a < NDIM - 1; ++a) {
    const int64_t j = neighbour(idx[a], o[a], g.size[a], g.padding);
    if (j < 0) return -1;
    off += j * g.stride[a];
  }
  return off;
}

// acc[w - w0] = sum_c a[c, p] * b[c, p + o] for p = (row idx, w), w in [w0, w1).
// a, b point at channel 0 of one batch item; b is padded per g.padding.
template <typename scalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void neighbour_dot(const scalar_t* a, const scalar_t* b, int64_t channels,
                                       const Grid<NDIM>& g, const int64_t* idx, const int* o,
                                       int64_t w0, int64_t w1, T* acc) {
  const int64_t len = g.size[NDIM - 1];
  const int ol = o[NDIM - 1];
  const int64_t ra = row_offset<NDIM>(g, idx);
  const int64_t rb = neighbour_row<NDIM>(g, idx, o);
  int64_t lo, hi;
  inside(ol, len, w0, w1, lo, hi);
  if (rb < 0) lo = hi = w1;  // the whole neighbour row is padding
  T* out = acc - w0;
  for (int64_t w = w0; w < w1; ++w) out[w] = T(0);
  const scalar_t* br0 = b + (rb < 0 ? 0 : rb);
  // Padded voxels of one channel (the product with 0 is still formed: NaN/inf propagate).
  auto edges = [&](const scalar_t* ar, const scalar_t* br) {
    for (int64_t w = w0; w < w1; ++w) {
      if (w == lo) w = hi;
      if (w >= w1) break;
      const int64_t j = rb < 0 ? -1 : neighbour(w, ol, len, g.padding);
      out[w] += static_cast<T>(ar[w]) * (j < 0 ? T(0) : static_cast<T>(br[j]));
    }
  };
  int64_t c = 0;
  for (; c + 4 <= channels; c += 4) {  // four channels per pass over the span (vectorises)
    const scalar_t* a0 = a + c * g.n + ra;
    const scalar_t* b0 = br0 + c * g.n + ol;
    const int64_t n = g.n;
    for (int64_t w = lo; w < hi; ++w) {
      out[w] += (static_cast<T>(a0[w]) * static_cast<T>(b0[w]) +
                 static_cast<T>(a0[n + w]) * static_cast<T>(b0[n + w])) +
                (static_cast<T>(a0[2 * n + w]) * static_cast<T>(b0[2 * n + w]) +
                 static_cast<T>(a0[3 * n + w]) * static_cast<T>(b0[3 * n + w]));
    }
    for (int64_t i = 0; i < 4; ++i) edges(a0 + i * n, br0 + (c + i) * n);
  }
  for (; c < channels; ++c) {
    const scalar_t* ar = a + c * g.n + ra;
    const scalar_t* br = br0 + c * g.n;
    for (int64_t w = lo; w < hi; ++w) out[w] += static_cast<T>(ar[w]) * static_cast<T>(br[w + ol]);
    edges(ar, br);
  }
}

// acc[c * L + w - w0] = sum_k gk[k, p] * b[c, p + o_k] for c < channels, L = w1 - w0.
// gk points at channel 0 of one batch item of a (K, *S) tensor, b at the first channel wanted.
template <typename scalar_t, typename gscalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void neighbour_gather(const gscalar_t* gk, const scalar_t* b, int64_t channels,
                                          const Grid<NDIM>& g, const int64_t* idx, int64_t w0,
                                          int64_t w1, T* acc) {
  const int64_t len = g.size[NDIM - 1];
  const int64_t ra = row_offset<NDIM>(g, idx);
  const int64_t count = num_offsets(g.radius, NDIM);
  const int64_t span = w1 - w0;
  for (int64_t i = 0; i < channels * span; ++i) acc[i] = T(0);
  for (int64_t k = 0; k < count; ++k) {
    int o[NDIM];
    offset_of<NDIM>(k, g.radius, o);
    const int ol = o[NDIM - 1];
    const int64_t rb = neighbour_row<NDIM>(g, idx, o);
    int64_t lo, hi;
    inside(ol, len, w0, w1, lo, hi);
    if (rb < 0) lo = hi = w1;
    const gscalar_t* gr = gk + k * g.n + ra;
    for (int64_t c = 0; c < channels; ++c) {
      const scalar_t* br = b + c * g.n + (rb < 0 ? 0 : rb);
      T* out = acc + c * span - w0;
      for (int64_t w = lo; w < hi; ++w) out[w] += static_cast<T>(gr[w]) * static_cast<T>(br[w + ol]);
      for (int64_t w = w0; w < w1; ++w) {
        if (w == lo) w = hi;
        if (w >= w1) break;
        const int64_t j = rb < 0 ? -1 : neighbour(w, ol, len, g.padding);
        out[w] += static_cast<T>(gr[w]) * (j < 0 ? T(0) : static_cast<T>(br[j]));
      }
    }
  }
}

// acc[c * L + w - w0] = sum_k sum_{p : pad(p + o_k) = q} gk[k, p] * a[c, p] for q = (row idx, w)
// and c < channels: the gradient with respect to the padded operand, as a gather. a points
// at the first channel wanted.
template <typename scalar_t, typename gscalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void source_gather(const gscalar_t* gk, const scalar_t* a, int64_t channels,
                                       const Grid<NDIM>& g, const int64_t* idx, int64_t w0,
                                       int64_t w1, T* acc) {
  const int64_t len = g.size[NDIM - 1];
  const int64_t count = num_offsets(g.radius, NDIM);
  const int64_t span = w1 - w0;
  for (int64_t i = 0; i < channels * span; ++i) acc[i] = T(0);
  for (int64_t k = 0; k < count; ++k) {
    int o[NDIM];
    offset_of<NDIM>(k, g.radius, o);
    const int ol = o[NDIM - 1];
    // Leading axes: a box of source rows.
    int64_t lo_a[NDIM], hi_a[NDIM];
    int64_t rows = 1;
    bool empty = false;
    for (int ax = 0; ax < NDIM - 1; ++ax) {
      empty = empty || !sources(idx[ax], o[ax], g.size[ax], g.padding, lo_a[ax], hi_a[ax]);
      if (!empty) rows *= hi_a[ax] - lo_a[ax] + 1;
    }
    if (empty) continue;
    // Last axis: where the source of w is exactly w - ol (no border pile-up), a plain shift.
    int64_t lo, hi;
    inside(-ol, len, w0, w1, lo, hi);
    if (g.padding == kBorder) {
      if (lo < 1) lo = 1;
      if (hi > len - 1) hi = len - 1;
      if (hi < lo) lo = hi = w1;
    }
    for (int64_t t = 0; t < rows; ++t) {
      int64_t rest = t, off = 0;
      for (int ax = NDIM - 2; ax >= 0; --ax) {
        const int64_t extent = hi_a[ax] - lo_a[ax] + 1;
        off += (lo_a[ax] + rest % extent) * g.stride[ax];
        rest /= extent;
      }
      const gscalar_t* gr = gk + k * g.n + off;
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* ar = a + c * g.n + off;
        T* out = acc + c * span - w0;
        for (int64_t w = lo; w < hi; ++w) out[w] += static_cast<T>(gr[w - ol]) * static_cast<T>(ar[w - ol]);
        for (int64_t w = w0; w < w1; ++w) {
          if (w == lo) w = hi;
          if (w >= w1) break;
          int64_t s0, s1;
          if (!sources(w, ol, len, g.padding, s0, s1)) continue;
          for (int64_t s = s0; s <= s1; ++s) out[w] += static_cast<T>(gr[s]) * static_cast<T>(ar[s]);
        }
      }
    }
  }
}

// Online softmax over the neighbours of one voxel: running max, sum of exp, and the
// weighted sum of offsets (all relative to the running max).
template <typename T, int NDIM>
struct SoftmaxState {
  T max;
  T sum;
  T disp[NDIM];
};

template <typename T, int NDIM>
FASTREG_HOST_DEVICE void softmax_init(SoftmaxState<T, NDIM>& s) {
  s.max = -INFINITY;
  s.sum = T(0);
  for (int a = 0; a < NDIM; ++a) s.disp[a] = T(0);
}

// Adds logit l of offset o. A NaN logit makes the sum (and so every output) NaN.
template <typename T, int NDIM>
FASTREG_HOST_DEVICE void softmax_update(SoftmaxState<T, NDIM>& s, T l, const int* o) {
  if (l > s.max) {
    const T r = exp(s.max - l);
    s.sum = s.sum * r + T(1);
    for (int a = 0; a < NDIM; ++a) s.disp[a] = s.disp[a] * r + static_cast<T>(o[a]);
    s.max = l;
  } else {
    const T e = exp(l - s.max);
    s.sum += e;
    for (int a = 0; a < NDIM; ++a) s.disp[a] += e * static_cast<T>(o[a]);
  }
}

// The displacement (divided out) and log-sum-exp of a finished state.
template <typename T, int NDIM>
FASTREG_HOST_DEVICE T softmax_finish(const SoftmaxState<T, NDIM>& s, T* disp) {
  for (int a = 0; a < NDIM; ++a) disp[a] = s.disp[a] / s.sum;
  return s.max + log(s.sum);
}

// d loss / d (q . k_k) at one voxel for offset o with logit l: scale * w (G - g . out).
template <typename T, int NDIM>
FASTREG_HOST_DEVICE T dlogit(T l, T lse, const T* gout, T g_dot_out, const int* o, T scale) {
  T G = T(0);
  for (int a = 0; a < NDIM; ++a) G += gout[a] * static_cast<T>(o[a]);
  return scale * exp(l - lse) * (G - g_dot_out);
}

}  // namespace correlation
}  // namespace fastreg
