// Short-row path of the CPU correlation kernels (contract in correlation.h).
//
// The row kernels of correlation_cpu.cpp work on one row and one offset at a time, channel
// by channel, and stream every channel of both operands once per offset: on the coarse
// DP-VFA levels (rows of 14-56 voxels, 64 channels) that is bound by cache bandwidth and by
// per-row work. Here the operands are first copied (by ATen) into volumes padded by a halo
// on every spatial axis, with the op's padding, so that the neighbour p + o_k of a voxel
// sits at one flat shift Off_k of the padded volume. Kernels then run over tiles of whole
// rows as one contiguous span (the halo columns between rows are computed and discarded),
// with no edge cases, and keep their accumulators in registers:
//   forward, dlogit  out[k, p] = sum_c a[c, P(p)] * b[c, P(p) + Off_k]
//                    9 offsets (one plane of neighbours at radius 1) per pass over the channels
//   grad of a        ga[c, p] = sum_k g[k, P(p)] * b[c, P(p) + Off_k]       8 channels per pass
//   grad of b        gb[c, Q] = sum_k g[k, Q - Off_k] * a[c, Q - Off_k]      over the offsets
// The backward pass uses a halo of 2r and a zero-padded g: gb is gathered on the interior
// (kZeros) or on the interior and its r-halo, whose values are then folded onto the border
// voxels they replicate (kBorder). No atomics; the results equal the row kernels' up to the
// order of the sums.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "correlation.h"
#include "correlation_shapes.h"
#include "../common/vector_loop.h"

namespace fastreg {
namespace correlation {
namespace tiles {

// Rows at most this long take the tiled path (coarse levels); longer rows vectorise well
// in the row kernels and keep their memory (no padded copies).
constexpr int64_t kMaxWidth = 32;
// Span length a tile aims at (voxels of the padded layout).
constexpr int64_t kSpan = 512;
// Offsets per register block of the forward dots: the (2r+1)^2 = 9 offsets of the last two
// axes at radius 1 (one plane of neighbours); other radii go one offset at a time.
constexpr int kGroup = 9;
// Channels per register block of the gathers.
constexpr int kChannels = 8;

// Geometry of the padded layout; 2-D is (1, H, W) with no padding along the first axis.
struct Layout {
  int ndim;
  int r;
  int halo;
  int64_t size[3];   // interior sizes (D, H, W)
  int64_t psize[3];  // padded sizes
  int64_t np;        // voxels per channel of the padded volume
  int64_t n;         // voxels per channel of the interior
  int64_t group;     // offsets per forward block (kGroup at radius 1, else 1)
  std::vector<int64_t> shift;  // Off_k
  std::vector<int> offset;     // o_k, ndim entries per offset (ij order)

  Layout(const Shapes& s, int64_t radius, int64_t halo_)
      : ndim(static_cast<int>(s.ndim)), r(static_cast<int>(radius)), halo(static_cast<int>(halo_)) {
    const int lead = 3 - ndim;
    for (int a = 0; a < 3; ++a) {
      size[a] = a < lead ? 1 : s.spatial[a - lead];
      psize[a] = a < lead ? 1 : size[a] + 2 * halo;
    }
    np = psize[0] * psize[1] * psize[2];
    n = s.n;
    group = r == 1 ? kGroup : 1;
    offset.resize(s.offsets * ndim);
    shift.resize(s.offsets);
    for (int64_t k = 0; k < s.offsets; ++k) {
      int* o = offset.data() + k * ndim;
      if (ndim == 2) offset_of<2>(k, r, o); else offset_of<3>(k, r, o);
      int o3[3] = {0, 0, 0};
      for (int a = 0; a < ndim; ++a) o3[lead + a] = o[a];
      shift[k] = (o3[0] * psize[1] + o3[1]) * psize[2] + o3[2];
    }
  }
  int64_t offsets() const { return static_cast<int64_t>(shift.size()); }
  // Flat padded index of voxel (d, h, w) (interior coordinates; down to -halo).
  int64_t at(int64_t d, int64_t h, int64_t w) const {
    const int64_t hd = ndim == 3 ? halo : 0;
    return ((d + hd) * psize[1] + h + halo) * psize[2] + w + halo;
  }
  // Pads (B, C, *S) to (B, C, *Sp) with `padding` (kZeros or kBorder).
  at::Tensor pad(const at::Tensor& x, int padding) const {
    // Under autocast the replication pads would run in float32: the copy keeps x's dtype.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    std::vector<int64_t> pads(2 * ndim, halo);
    if (padding == kZeros) return at::constant_pad_nd(x, pads, 0);
    return ndim == 2 ? at::replication_pad2d(x, pads) : at::replication_pad3d(x, pads);
  }
  // A zero (B, c, *Sp) tensor with `options`.
  at::Tensor zeros(int64_t batch, int64_t c, const at::TensorOptions& options) const {
    std::vector<int64_t> sizes = {batch, c};
    for (int a = 3 - ndim; a < 3; ++a) sizes.push_back(psize[a]);
    return at::zeros(sizes, options);
  }
  // The voxels [-e, size + e) per axis of a padded (B, C, *Sp) tensor.
  at::Tensor box(const at::Tensor& x, int64_t e) const {
    at::Tensor out = x;
    for (int a = 0; a < ndim; ++a) out = out.narrow(2 + a, halo - e, size[3 - ndim + a] + 2 * e);
    return out;
  }
};

// The voxels [-e, size + e) per axis (e = 0: the interior), cut into tiles of whole rows.
struct Region {
  int64_t e, planes, height, width, rows, chunks, tiles, span;
  Region(const Layout& L, int64_t extend) : e(extend) {
    planes = L.size[0] + (L.ndim == 3 ? 2 * e : 0);
    height = L.size[1] + 2 * e;
    width = L.size[2] + 2 * e;
    rows = std::max<int64_t>(1, std::min<int64_t>(height, kSpan / L.psize[2]));
    chunks = (height + rows - 1) / rows;
    tiles = planes * chunks;
    span = rows * L.psize[2];
  }
  int64_t grain(int64_t work_per_voxel) const {
    return std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, span * work_per_voxel));
  }
};

// Tile t of a region: plane d, rows [h0, h0 + count) (interior coordinates), the span
// [p0, p0 + len) of the padded layout, and the flat index of its first voxel in the
// region's own layout (planes x height x width).
struct Tile {
  int64_t d, h0, count, p0, len, first;
  Tile(const Layout& L, const Region& R, int64_t t) {
    const int64_t plane = t / R.chunks;
    const int64_t row = (t % R.chunks) * R.rows;
    d = plane - (L.ndim == 3 ? R.e : 0);
    h0 = row - R.e;
    count = std::min(R.rows, R.height - row);
    p0 = L.at(d, h0, -R.e);
    len = (count - 1) * L.psize[2] + R.width;
    first = (plane * R.height + row) * R.width;
  }
  // Calls fn(j, i) for every voxel of the tile: j its index from the tile's first voxel in
  // the region's layout, i its index in the span.
  template <typename Fn>
  void each(const Layout& L, const Region& R, Fn fn) const {
    for (int64_t h = 0; h < count; ++h) {
      for (int64_t w = 0; w < R.width; ++w) fn(h * R.width + w, h * L.psize[2] + w);
    }
  }
};

// acc[i] = sum_c a[c * np + i] * b[c * np + i] for i < len.
template <typename scalar_t, typename T>
inline void span_dot(const scalar_t* a, const scalar_t* b, int64_t channels, int64_t np, int64_t len, T* acc) {
  for (int64_t i = 0; i < len; ++i) acc[i] = T(0);
  int64_t c = 0;
  for (; c + 4 <= channels; c += 4) {
    const scalar_t* a0 = a + c * np;
    const scalar_t* b0 = b + c * np;
    for (int64_t i = 0; i < len; ++i) {
      acc[i] += (static_cast<T>(a0[i]) * static_cast<T>(b0[i]) +
                 static_cast<T>(a0[np + i]) * static_cast<T>(b0[np + i])) +
                (static_cast<T>(a0[2 * np + i]) * static_cast<T>(b0[2 * np + i]) +
                 static_cast<T>(a0[3 * np + i]) * static_cast<T>(b0[3 * np + i]));
    }
  }
  for (; c < channels; ++c) {
    const scalar_t* a0 = a + c * np;
    const scalar_t* b0 = b + c * np;
    for (int64_t i = 0; i < len; ++i) acc[i] += static_cast<T>(a0[i]) * static_cast<T>(b0[i]);
  }
}

// acc[c * stride + i] = sum_k g[k * np + i + sg[k]] * x[c * np + i + sx[k]] for c < CB, i < len.
template <int CB, typename xscalar_t, typename gscalar_t, typename T>
inline void span_gather_scalar(const gscalar_t* g, const xscalar_t* x, const int64_t* sg, const int64_t* sx,
                               int64_t K, int64_t np, int64_t i0, int64_t len, T* acc, int64_t stride) {
  for (int64_t i = i0; i < len; ++i) {
    T sum[CB] = {};
    for (int64_t k = 0; k < K; ++k) {
      const T gv = static_cast<T>(g[k * np + i + sg[k]]);
      for (int c = 0; c < CB; ++c) sum[c] += gv * static_cast<T>(x[c * np + i + sx[k]]);
    }
    for (int c = 0; c < CB; ++c) acc[c * stride + i] = sum[c];
  }
}

// One AVX2 register of T as a GCC/Clang vector; other compilers: one lane.
#if defined(__GNUC__)
#define FASTREG_TILE_VECTORS 1
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = 32 / sizeof(T);
};
#else
template <typename T>
struct Vec {
  typedef T type;
  static constexpr int lanes = 1;
};
#endif

template <typename T, typename scalar_t>
inline typename Vec<T>::type load(const scalar_t* p) {
  typename Vec<T>::type v;
  if constexpr (Vec<T>::lanes == 1) {
    v = static_cast<T>(*p);
  } else if constexpr (std::is_same_v<T, scalar_t>) {
    std::memcpy(&v, p, sizeof v);
  } else {
    for (int l = 0; l < Vec<T>::lanes; ++l) v[l] = static_cast<T>(p[l]);
  }
  return v;
}

template <typename T>
inline void store(T* p, const typename Vec<T>::type& v) {
  std::memcpy(p, &v, sizeof v);
}

// exp of every lane. float vectors: Cephes' expf (range reduction by ln 2 in two parts, a
// degree-6 polynomial, the exponent set by integer arithmetic; within 2 ulp of expf, 0
// below -88.4, NaN stays NaN); other types lane by lane with std::exp.
template <typename T>
inline typename Vec<T>::type vexp(typename Vec<T>::type x) {
  using V = typename Vec<T>::type;
  if constexpr (Vec<T>::lanes > 1 && std::is_same_v<T, float>) {
    typedef int32_t I __attribute__((vector_size(32)));
    const V hi = V{} + 88.3762626647949f, lo = V{} - 88.3762626647949f;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    V fx = x * 1.44269504088896341f + 0.5f;
    V fl = __builtin_convertvector(__builtin_convertvector(fx, I), V);
    fl = fl > fx ? fl - 1.0f : fl;  // floor
    x = x - fl * 0.693359375f + fl * 2.12194440e-4f;
    const V z = x * x;
    V y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x +
           1.6666665459e-1f) * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    const I bits = (__builtin_convertvector(fl, I) + 127) << 23;
    V scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return y * scale;
  } else if constexpr (Vec<T>::lanes > 1) {
    for (int l = 0; l < Vec<T>::lanes; ++l) x[l] = std::exp(x[l]);
    return x;
  } else {
    return std::exp(x);
  }
}

#ifdef FASTREG_TILE_VECTORS
// acc[j * stride + i] = sum_c a[c * np + i] * b[c * np + i + shift[j]] for j < G, i < len:
// G offsets per pass over the channels, their accumulators in registers.
template <int G, typename scalar_t, typename T>
inline void span_dots(const scalar_t* a, const scalar_t* b, const int64_t* shift, int64_t channels, int64_t np,
                      int64_t len, T* acc, int64_t stride) {
  using V = typename Vec<T>::type;
  constexpr int lanes = Vec<T>::lanes;
  int64_t i = 0;
  for (; i + lanes <= len; i += lanes) {
    V sum[G];
    for (int j = 0; j < G; ++j) sum[j] = V{};
    for (int64_t c = 0; c < channels; ++c) {
      const V av = load<T>(a + c * np + i);
      const scalar_t* bc = b + c * np + i;
      for (int j = 0; j < G; ++j) sum[j] += av * load<T>(bc + shift[j]);
    }
    for (int j = 0; j < G; ++j) std::memcpy(acc + j * stride + i, &sum[j], sizeof(V));
  }
  for (; i < len; ++i) {
    for (int j = 0; j < G; ++j) {
      T sum = T(0);
      for (int64_t c = 0; c < channels; ++c) sum += static_cast<T>(a[c * np + i]) * static_cast<T>(b[c * np + i + shift[j]]);
      acc[j * stride + i] = sum;
    }
  }
}
#endif

// span_gather_scalar with CB channels per pass over the offsets, accumulators in registers.
template <int CB, typename xscalar_t, typename gscalar_t, typename T>
inline void span_gather(const gscalar_t* g, const xscalar_t* x, const int64_t* sg, const int64_t* sx, int64_t K,
                        int64_t np, int64_t len, T* acc, int64_t stride) {
  int64_t i = 0;
#ifdef FASTREG_TILE_VECTORS
  using V = typename Vec<T>::type;
  constexpr int lanes = Vec<T>::lanes;
  for (; i + lanes <= len; i += lanes) {
    V sum[CB];
    for (int c = 0; c < CB; ++c) sum[c] = V{};
    for (int64_t k = 0; k < K; ++k) {
      const V gv = load<T>(g + k * np + i + sg[k]);
      const xscalar_t* xk = x + i + sx[k];
      for (int c = 0; c < CB; ++c) sum[c] += gv * load<T>(xk + c * np);
    }
    for (int c = 0; c < CB; ++c) std::memcpy(acc + c * stride + i, &sum[c], sizeof(V));
  }
#endif
  span_gather_scalar<CB>(g, x, sg, sx, K, np, i, len, acc, stride);
}

// acc rows (stride `stride`) of offsets [k0, k0 + L.group) on a span of length len: a, b
// point at the span's first voxel in channel 0 of one batch item.
template <typename scalar_t, typename T>
inline void dots(const Layout& L, const scalar_t* a, const scalar_t* b, int64_t k0, int64_t C, int64_t len, T* acc,
                 int64_t stride) {
  const int64_t* shift = L.shift.data() + k0;
#ifdef FASTREG_TILE_VECTORS
  if (L.group == kGroup) {
    span_dots<kGroup>(a, b, shift, C, L.np, len, acc, stride);
    return;
  }
#endif
  for (int64_t j = 0; j < L.group; ++j) span_dot<scalar_t, T>(a, b + shift[j], C, L.np, len, acc + j * stride);
}

// local_correlation forward: out (B, K, *S) from padded a, b (B, C, *Sp), tiles [t0, t1)
// of the interior region of all batch items.
template <typename scalar_t>
FASTREG_VECTOR_LOOP void correlation_forward_tiles(const scalar_t* ap, const scalar_t* bp, scalar_t* op,
                                                   const Layout& L, const Region& R, int64_t C,
                                                   at::opmath_type<scalar_t> scale, int64_t t0, int64_t t1) {
  using T = at::opmath_type<scalar_t>;
  const int64_t K = L.offsets();
  std::vector<T> acc(kGroup * R.span);
  for (int64_t tt = t0; tt < t1; ++tt) {
    const int64_t b = tt / R.tiles;
    const Tile t(L, R, tt % R.tiles);
    for (int64_t k0 = 0; k0 < K; k0 += L.group) {
      dots(L, ap + b * C * L.np + t.p0, bp + b * C * L.np + t.p0, k0, C, t.len, acc.data(), R.span);
      for (int64_t k = k0; k < k0 + L.group; ++k) {
        scalar_t* dst = op + (b * K + k) * L.n + t.first;
        const T* src = acc.data() + (k - k0) * R.span;
        t.each(L, R, [&](int64_t j, int64_t i) { dst[j] = static_cast<scalar_t>(scale * src[i]); });
      }
    }
  }
}

// a - b, or 0 where a == b (so that inf - inf gives 0, as the scalar online softmax does).
template <typename V>
inline V minus(V a, V b) {
  return a == b ? V{} * 0 : a - b;
}

// The online softmax of vfa_attention over the voxels of a span (halo columns included and
// unused), by vectors: running max, sum of exp and exp-weighted offsets, as in correlation.h
// (a NaN logit makes the voxel's outputs NaN).
template <typename T, int NDIM>
struct SpanSoftmax {
  using V = typename Vec<T>::type;
  static constexpr int lanes = Vec<T>::lanes;
  int64_t stride;
  std::vector<T> mx, sm, ds;  // ds: NDIM rows of `stride`

  explicit SpanSoftmax(int64_t span) : stride(span), mx(span), sm(span), ds(NDIM * span) {}

  void init() {
    std::fill(mx.begin(), mx.end(), -INFINITY);
    std::fill(sm.begin(), sm.end(), T(0));
    std::fill(ds.begin(), ds.end(), T(0));
  }

  // Adds the logits scale * rows[j * stride + i] of `count` offsets o (NDIM ints each).
  void update(const T* rows, int64_t count, const int* o, T scale, int64_t len) {
    for (int64_t i = 0; i < len; i += lanes) {
      const V m0 = load<T>(mx.data() + i);
      V m = m0;
      for (int64_t j = 0; j < count; ++j) {
        const V l = scale * load<T>(rows + j * stride + i);
        m = (l > m) | (l != l) ? l : m;
      }
      const V r = vexp<T>(minus(m0, m));
      V s = load<T>(sm.data() + i) * r;
      V d[NDIM];
      for (int a = 0; a < NDIM; ++a) d[a] = load<T>(ds.data() + a * stride + i) * r;
      for (int64_t j = 0; j < count; ++j) {
        const V e = vexp<T>(minus(scale * load<T>(rows + j * stride + i), m));
        s += e;
        for (int a = 0; a < NDIM; ++a) d[a] += e * static_cast<T>(o[j * NDIM + a]);
      }
      store<T>(mx.data() + i, m);
      store<T>(sm.data() + i, s);
      for (int a = 0; a < NDIM; ++a) store<T>(ds.data() + a * stride + i, d[a]);
    }
  }
};

// Span length rounded up to whole vectors of T (buffers of a span are this long).
template <typename T>
inline int64_t padded_span(const Region& R) {
  constexpr int64_t lanes = Vec<T>::lanes;
  return (R.span + lanes - 1) / lanes * lanes;
}

// vfa_attention forward: out (B, ndim, *S), lse (B, *S) from padded q, k.
template <typename scalar_t, int NDIM>
FASTREG_VECTOR_LOOP void vfa_forward_tiles(const scalar_t* qp, const scalar_t* kp, scalar_t* op,
                                           at::opmath_type<scalar_t>* lp, const Layout& L, const Region& R, int64_t C,
                                           at::opmath_type<scalar_t> scale, int64_t t0, int64_t t1) {
  using T = at::opmath_type<scalar_t>;
  const int64_t K = L.offsets();
  const int64_t span = padded_span<T>(R);
  std::vector<T> acc(kGroup * span);
  SpanSoftmax<T, NDIM> softmax(span);
  for (int64_t tt = t0; tt < t1; ++tt) {
    const int64_t b = tt / R.tiles;
    const Tile t(L, R, tt % R.tiles);
    softmax.init();
    for (int64_t k0 = 0; k0 < K; k0 += L.group) {
      dots(L, qp + b * C * L.np + t.p0, kp + b * C * L.np + t.p0, k0, C, t.len, acc.data(), span);
      softmax.update(acc.data(), L.group, L.offset.data() + k0 * NDIM, scale, t.len);
    }
    t.each(L, R, [&](int64_t j, int64_t i) {
      lp[b * L.n + t.first + j] = softmax.mx[i] + std::log(softmax.sm[i]);
      for (int a = 0; a < NDIM; ++a) {
        op[(b * NDIM + a) * L.n + t.first + j] = static_cast<scalar_t>(softmax.ds[a * span + i] / softmax.sm[i]);
      }
    });
  }
}

// d loss / d (q . k_j) = scale * w_j (G_j - g . out) into dl (B, K, *Sp), zero outside the
// interior (zero-initialised by the caller; only interior voxels are written).
template <typename scalar_t, int NDIM>
FASTREG_VECTOR_LOOP void vfa_dlogit_tiles(const scalar_t* gp, const scalar_t* qp, const scalar_t* kp,
                                          const scalar_t* op, const at::opmath_type<scalar_t>* lp,
                                          at::opmath_type<scalar_t>* dl, const Layout& L, const Region& R,
                                          int64_t C, at::opmath_type<scalar_t> scale, int64_t t0, int64_t t1) {
  using T = at::opmath_type<scalar_t>;
  using V = typename Vec<T>::type;
  constexpr int lanes = Vec<T>::lanes;
  const int64_t K = L.offsets();
  const int64_t span = padded_span<T>(R);
  std::vector<T> acc(kGroup * span), go(NDIM * span), gdo(span), lse(span), row(span);
  for (int64_t tt = t0; tt < t1; ++tt) {
    const int64_t b = tt / R.tiles;
    const Tile t(L, R, tt % R.tiles);
    t.each(L, R, [&](int64_t j, int64_t i) {
      T dot = T(0);
      for (int a = 0; a < NDIM; ++a) {
        const int64_t x = (b * NDIM + a) * L.n + t.first + j;
        go[a * span + i] = static_cast<T>(gp[x]);
        dot += go[a * span + i] * static_cast<T>(op[x]);
      }
      gdo[i] = dot;
      lse[i] = lp[b * L.n + t.first + j];
    });
    for (int64_t k0 = 0; k0 < K; k0 += L.group) {
      dots(L, qp + b * C * L.np + t.p0, kp + b * C * L.np + t.p0, k0, C, t.len, acc.data(), span);
      for (int64_t k = k0; k < k0 + L.group; ++k) {
        const int* o = L.offset.data() + k * NDIM;
        const T* src = acc.data() + (k - k0) * span;
        for (int64_t i = 0; i < t.len; i += lanes) {
          V G = V{} * 0;
          for (int a = 0; a < NDIM; ++a) G += load<T>(go.data() + a * span + i) * static_cast<T>(o[a]);
          const V w = vexp<T>(scale * load<T>(src + i) - load<T>(lse.data() + i));
          store<T>(row.data() + i, scale * w * (G - load<T>(gdo.data() + i)));
        }
        T* dst = dl + (b * K + k) * L.np + t.p0;
        t.each(L, R, [&](int64_t, int64_t i) { dst[i] = row[i]; });
      }
    }
  }
}

// out[c, Q] = sum_k g[k, Q + sg_k] * x[c, Q + sx_k] on tiles [t0, t1) of region R for every
// channel (blocks of kChannels); store(b, c, tile, row) receives each channel's span (T).
template <typename xscalar_t, typename gscalar_t, typename T, typename Store>
FASTREG_VECTOR_LOOP void gather_tiles(const gscalar_t* gp, const xscalar_t* xp, const int64_t* sg, const int64_t* sx,
                                      const Layout& L, const Region& R, int64_t C, int64_t t0, int64_t t1,
                                      Store store) {
  const int64_t K = L.offsets();
  std::vector<T> acc(kChannels * R.span);
  for (int64_t tt = t0; tt < t1; ++tt) {
    const int64_t b = tt / R.tiles;
    const Tile t(L, R, tt % R.tiles);
    const gscalar_t* g = gp + b * K * L.np + t.p0;
    for (int64_t c0 = 0; c0 < C; c0 += kChannels) {
      const xscalar_t* x = xp + (b * C + c0) * L.np + t.p0;
      const int64_t cb = std::min<int64_t>(kChannels, C - c0);
      if (cb == kChannels) {
        span_gather<kChannels>(g, x, sg, sx, K, L.np, t.len, acc.data(), R.span);
      } else {
        for (int64_t c = 0; c < cb; ++c) span_gather<1>(g, x + c * L.np, sg, sx, K, L.np, t.len, acc.data() + c * R.span, R.span);
      }
      for (int64_t c = 0; c < cb; ++c) store(b, c0 + c, t, acc.data() + c * R.span);
    }
  }
}

// Gradients of sum_k g[k] * (a . pad(b) shifted by o_k) on the tiled path, into grad_a,
// grad_b (B, C, *S) where they have elements. L has a halo of 2r; g_pad (B, K, *Sp) is
// zero-padded, a_pad (B, C, *Sp) zero-padded, b_pad (B, C, *Sp) with `padding` (either
// may be undefined when its gradient is not wanted).
template <typename scalar_t, typename gscalar_t>
void backward(const at::Tensor& g_pad, const at::Tensor& a_pad, const at::Tensor& b_pad, at::Tensor& grad_a,
              at::Tensor& grad_b, const Layout& L, int64_t B, int64_t C, int padding, double scale) {
  using T = at::opmath_type<scalar_t>;
  const gscalar_t* gp = g_pad.const_data_ptr<gscalar_t>();
  const int64_t K = L.offsets();
  const T s = static_cast<T>(scale);
  if (grad_a.numel() > 0) {  // ga[c, p] = sum_k g[k, P] b[c, P + Off_k]
    const Region R(L, 0);
    const std::vector<int64_t> sg(K, 0);
    scalar_t* ga = grad_a.mutable_data_ptr<scalar_t>();
    auto store = [&](int64_t b, int64_t c, const Tile& t, const T* row) {
      scalar_t* dst = ga + (b * C + c) * L.n + t.first;
      t.each(L, R, [&](int64_t j, int64_t i) { dst[j] = static_cast<scalar_t>(s * row[i]); });
    };
    at::parallel_for(0, B * R.tiles, R.grain(K * C), [&](int64_t t0, int64_t t1) {
      gather_tiles<scalar_t, gscalar_t, T>(gp, b_pad.const_data_ptr<scalar_t>(), sg.data(), L.shift.data(), L, R, C,
                                           t0, t1, store);
    });
  }
  if (grad_b.numel() > 0) {  // gb[c, Q] = sum_k g[k, Q - Off_k] a[c, Q - Off_k], Q on the box
    const Region R(L, padding == kBorder ? L.r : 0);
    std::vector<int64_t> back(K);
    for (int64_t k = 0; k < K; ++k) back[k] = -L.shift[k];
    at::Tensor gb = L.zeros(B, C, a_pad.options().dtype(at::toOpMathType(a_pad.scalar_type())));
    T* gbp = gb.mutable_data_ptr<T>();
    auto store = [&](int64_t b, int64_t c, const Tile& t, const T* row) {
      T* dst = gbp + (b * C + c) * L.np + t.p0;
      t.each(L, R, [&](int64_t, int64_t i) { dst[i] = row[i]; });
    };
    at::parallel_for(0, B * R.tiles, R.grain(K * C), [&](int64_t t0, int64_t t1) {
      gather_tiles<scalar_t, gscalar_t, T>(gp, a_pad.const_data_ptr<scalar_t>(), back.data(), back.data(), L, R, C,
                                           t0, t1, store);
    });
    at::Tensor box = L.box(gb, R.e);
    if (padding == kBorder) {  // fold the r-halo onto the border voxels it replicates, axis by axis
      for (int a = 0; a < L.ndim; ++a) {
        const int64_t dim = 2 + a, n = L.size[3 - L.ndim + a];
        box.narrow(dim, L.r, 1).add_(box.narrow(dim, 0, L.r).sum(dim, true));
        box.narrow(dim, L.r + n - 1, 1).add_(box.narrow(dim, L.r + n, L.r).sum(dim, true));
      }
    }
    grad_b.copy_(L.box(gb, 0).mul(scale));
  }
}

}  // namespace tiles
}  // namespace correlation
}  // namespace fastreg
