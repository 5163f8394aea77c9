// CPU launcher of integrate_svf (contract in integrate.h and integrate_loop.h). One fused
// kernel per step, parallel over rows: each output voxel reads v at itself and at its
// interpolation stencil and is written once. float32 with zeros or border padding runs 8
// voxels at a time with AVX2 where the CPU has it (forward: warp_cpu_simd.h; backward:
// integrate_cpu_simd.h), the scalar math of integrate.h elsewhere.
//
// The step backward scatters into the gradient deterministically and without races: the
// flat voxel range over (B, *S) is cut into one chunk per thread; a chunk owns the gradient
// over its own range and sends what lands outside it to two private halo buffers, then a
// second pass adds the halos to their owners in chunk order. A halo's extent is bounded
// before any scatter from the chunk's displacement range: along every axis a stencil corner
// lies within [floor(lo) - 1, floor(hi) + 2] voxels of its source, where [lo, hi] contains
// every displacement of the chunk and 0 (border padding clamps, 1-Lipschitz with the grid
// fixed) or is [-max|d|, max|d|] (reflection folds); the extra voxel on each side absorbs
// rounding. Smooth fields need halos of a few slices, far less than a field; they are torch
// tensors, so the bench's peak memory counts them.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/pieces.h"
#include <torch/library.h>
#include "../warp/warp_cpu_simd.h"
#include "../warp/warp_shapes.h"
#include "integrate.h"
#include "integrate_cpu_simd.h"
#include "integrate_loop.h"

namespace fastreg {
namespace integrate {
namespace {

constexpr int64_t kGrain = 4096;

// One step, parallel over rows along the last axis, handed out in pieces (common/pieces.h;
// which voxels take the AVX2 blocks depends on the data only, never on the threads: results
// are bit-identical for any thread count). float32 with zeros or border padding runs 8 voxels at a time through
// warp's forward_block8, and the voxels of a block whose cells are not interior (borders,
// NaN) through the scalar path; everything else goes voxel by voxel.
template <typename scalar_t, int NDIM, int PADDING>
void step_kernel(const at::Tensor& v, at::Tensor& out, double scale) {
  using T = at::opmath_type<scalar_t>;
  const warp::Geometry<NDIM> geo = warp::image_geometry<NDIM>(v);
  int64_t n = 1;
  for (int a = 0; a < NDIM; ++a) n *= geo.size[a];
  const int64_t width = geo.size[NDIM - 1];
  const int64_t rows_per_item = n / width;
  const scalar_t* src = v.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const T s = static_cast<T>(scale);
#ifdef FASTREG_WARP_AVX2
  constexpr bool kSimd = std::is_same_v<scalar_t, float> && PADDING != warp::kReflection;
  const bool simd = kSimd && warp::cpu_has_avx2() && n < (int64_t(1) << 31);
#endif
  // One row: 8-voxel blocks where they fit, the scalar path for the rest.
  auto row = [&](int64_t r, int64_t* idx) {
    const int64_t b = r / rows_per_item;
    const int64_t row_start = (r % rows_per_item) * width;
    const scalar_t* item = src + b * NDIM * n;
    scalar_t* item_out = dst + b * NDIM * n;
    fastreg::unravel<NDIM>(row_start, geo.size, idx);
    for (int64_t x = 0; x < width;) {
      const int64_t p = row_start + x;
      idx[NDIM - 1] = x;
#ifdef FASTREG_WARP_AVX2
      if constexpr (kSimd) {
        int interior = 0;
        if (simd && x + 8 <= width &&
            warp::forward_block8<NDIM, PADDING == warp::kBorder>(item, n, p, idx, true, geo.size, geo.stride,
                                                                 item, item_out + p, 1, NDIM, n, s, &interior,
                                                                 true)) {
          for (int k = 0; k < 8; ++k) {
            if ((interior >> k) & 1) continue;
            idx[NDIM - 1] = x + k;
            step_voxel<scalar_t, T, NDIM, PADDING>(item, item_out, n, p + k, idx, s, geo);
          }
          x += 8;
          continue;
        }
      }
#endif
      step_voxel<scalar_t, T, NDIM, PADDING>(item, item_out, n, p, idx, s, geo);
      ++x;
    }
  };
  Pieces pieces(v.size(0) * rows_per_item, std::max<int64_t>(1, kGrain / width));
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    int64_t idx[NDIM];
    for (int64_t r0, r1; pieces.next(r0, r1);) {
      for (int64_t r = r0; r < r1; ++r) row(r, idx);
    }
  });
}

void step_cpu(const at::Tensor& v, at::Tensor& out, double scale, int64_t padding) {
  if (v.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "integrate_step_cpu", [&] {
    warp::dispatch_mode_padding(warp::kBilinear, static_cast<int>(padding), [&](auto, auto pad) {
      constexpr int PADDING = decltype(pad)::value;
      if (v.dim() == 4) {
        step_kernel<scalar_t, 2, PADDING>(v, out, scale);
      } else {
        step_kernel<scalar_t, 3, PADDING>(v, out, scale);
      }
    });
  });
}

// Calls fn(b, q0, q1) for the runs of flat voxel indices [i0, i1) within each batch item.
template <typename Fn>
void for_runs(int64_t i0, int64_t i1, int64_t n, const Fn& fn) {
  while (i0 < i1) {
    const int64_t b = i0 / n, q0 = i0 % n, q1 = std::min(n, q0 + (i1 - i0));
    fn(b, q0, q1);
    i0 += q1 - q0;
  }
}

// One chunk of the backward: its own flat voxel range [begin, end) over (B, *S), the range
// [lo, hi) its scatters can reach, and the halos (NDIM, begin - lo) and (NDIM, hi - end),
// torch tensors made on the calling thread (so the profiler's memory count includes them).
template <typename T>
struct Chunk {
  int64_t begin, end, lo, hi;
  at::Tensor left_t, right_t;
  T* left;
  T* right;
};

// Routes contributions to the chunk's own part of the gradient or to a halo.
// grad is (B, NDIM, n) in the accumulation type.
template <typename T, int NDIM>
struct Router {
  T* grad;
  int64_t n;
  Chunk<T>* ch;
  int64_t corner[1 << NDIM];  // corner_offsets of the image
  void operator()(int64_t b, int64_t c, int64_t q, T value) const {
    const int64_t i = b * n + q;
    if (i >= ch->end) {
      ch->right[c * (ch->hi - ch->end) + (i - ch->end)] += value;
    } else if (i >= ch->begin) {
      grad[(b * NDIM + c) * n + q] += value;
    } else {
      ch->left[c * (ch->begin - ch->lo) + (i - ch->lo)] += value;
    }
  }
  // The corners of an interior cell: straight into the gradient when the chunk owns them all.
  void cell(int64_t b, int64_t c, int64_t base, const T* w) const {
    const int64_t i = b * n + base;
    if (i >= ch->begin && i + corner[(1 << NDIM) - 1] < ch->end) {
      T* dst = grad + (b * NDIM + c) * n + base;
      for (int k = 0; k < (1 << NDIM); ++k) dst[corner[k]] += w[k];
    } else {
      for (int k = 0; k < (1 << NDIM); ++k) (*this)(b, c, base + corner[k], w[k]);
    }
  }
};

// Sets ch.lo, ch.hi from the displacements scale * v over the chunk's voxels (NaN skipped).
template <typename scalar_t, typename T, int NDIM>
void bound_chunk(const scalar_t* v, int64_t n, int64_t total, T scale,
                 const warp::Geometry<NDIM>& geo, int padding, Chunk<T>& ch) {
  T lo[NDIM], hi[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    lo[a] = std::numeric_limits<T>::infinity();
    hi[a] = -std::numeric_limits<T>::infinity();
  }
  for_runs(ch.begin, ch.end, n, [&](int64_t b, int64_t q0, int64_t q1) {
    for (int a = 0; a < NDIM; ++a) {
      const scalar_t* x = v + (b * NDIM + a) * n;
      // Eight independent lanes (the compiler vectorises them: no reassociation), then one.
      T l[8], h[8];
      std::fill(l, l + 8, lo[a]);
      std::fill(h, h + 8, hi[a]);
      int64_t q = q0;
      for (; q + 8 <= q1; q += 8) {
        for (int j = 0; j < 8; ++j) {
          const T d = scale * static_cast<T>(x[q + j]);
          l[j] = d < l[j] ? d : l[j];  // comparisons skip NaN
          h[j] = d > h[j] ? d : h[j];
        }
      }
      for (; q < q1; ++q) {
        const T d = scale * static_cast<T>(x[q]);
        l[0] = d < l[0] ? d : l[0];
        h[0] = d > h[0] ? d : h[0];
      }
      for (int j = 0; j < 8; ++j) {
        lo[a] = l[j] < lo[a] ? l[j] : lo[a];
        hi[a] = h[j] > hi[a] ? h[j] : hi[a];
      }
    }
  });
  int64_t dlo = 0, dhi = 0;
  for (int a = 0; a < NDIM; ++a) {
    T l = std::min(lo[a], T(0)), h = std::max(hi[a], T(0));
    if (padding == warp::kReflection) {
      h = std::max(-l, h);
      l = -h;
    }
    const T size = static_cast<T>(geo.size[a]);
    l = std::max(l, -size);  // an index of the axis is never farther than its size
    h = std::min(h, size);
    dlo += (static_cast<int64_t>(std::floor(l)) - 1) * geo.stride[a];
    dhi += (static_cast<int64_t>(std::floor(h)) + 2) * geo.stride[a];
  }
  ch.lo = std::max<int64_t>(0, ch.begin + dlo);
  ch.hi = std::min<int64_t>(total, ch.end + dhi);
}

template <typename scalar_t, int NDIM, int PADDING>
void step_backward_kernel(const at::Tensor& g, const at::Tensor& v, at::Tensor& grad, double scale_) {
  using T = at::opmath_type<scalar_t>;
  const T scale = static_cast<T>(scale_);
  const warp::Geometry<NDIM> geo = warp::image_geometry<NDIM>(v);
  const int64_t n = v.numel() / (v.size(0) * NDIM);
  const int64_t total = v.size(0) * n;
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  const T* gp = g.const_data_ptr<T>();
  T* out = grad.mutable_data_ptr<T>();
  // One chunk per thread (halos grow with the number of chunks; two per thread measured
  // slower at 128^3), handed out in pieces.
  const int64_t nchunks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (total + kGrain - 1) / kGrain));
  std::vector<Chunk<T>> chunks(nchunks);
  auto each_chunk = [&](const auto& fn) {
    Pieces pieces(nchunks, 1);
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
      for (int64_t c0, c1; pieces.next(c0, c1);) fn(chunks[c0]);
    });
  };
#ifdef FASTREG_WARP_AVX2
  constexpr bool kSimd = std::is_same_v<scalar_t, float> && PADDING != warp::kReflection;
  const bool simd = kSimd && warp::cpu_has_avx2() && n < (int64_t(1) << 31);
#endif

  // Pass 1: bound every chunk's reach, then make the halos (on this thread), then per chunk
  // zero its own range and scatter.
  for (int64_t ci = 0; ci < nchunks; ++ci) {
    chunks[ci].begin = total * ci / nchunks;
    chunks[ci].end = total * (ci + 1) / nchunks;
  }
  each_chunk([&](Chunk<T>& ch) { bound_chunk<scalar_t, T, NDIM>(vp, n, total, scale, geo, PADDING, ch); });
  for (Chunk<T>& ch : chunks) {
    ch.left_t = at::zeros({NDIM * (ch.begin - ch.lo)}, grad.options());
    ch.right_t = at::zeros({NDIM * (ch.hi - ch.end)}, grad.options());
    ch.left = ch.left_t.template mutable_data_ptr<T>();
    ch.right = ch.right_t.template mutable_data_ptr<T>();
  }
  each_chunk([&](Chunk<T>& ch) {
    {
      for_runs(ch.begin, ch.end, n, [&](int64_t b, int64_t q0, int64_t q1) {
        for (int c = 0; c < NDIM; ++c) std::fill(out + (b * NDIM + c) * n + q0, out + (b * NDIM + c) * n + q1, T(0));
      });
      Router<T, NDIM> router{out, n, &ch, {}};
      corner_offsets<NDIM>(geo, router.corner);
      int64_t b = ch.begin / n;
      int64_t p = ch.begin % n;
      int64_t idx[NDIM];
      fastreg::unravel<NDIM>(p, geo.size, idx);
      for (int64_t i = ch.begin; i < ch.end; ++i) {
#ifdef FASTREG_WARP_AVX2
        if constexpr (kSimd) {
          // Blocks start where (i - begin) % 8 == 0 within a row: the same voxels every call.
          int handled = 0;
          if (simd && (i - ch.begin) % 8 == 0 && i + 8 <= ch.end && idx[NDIM - 1] + 8 <= geo.size[NDIM - 1] &&
              (handled = backward_block8<NDIM, PADDING == warp::kBorder>(
                   vp + b * NDIM * n, gp + b * NDIM * n, out + b * NDIM * n, n, p, idx, geo.size, geo.stride,
                   scale, ch.begin - b * n, ch.end - b * n)) != 0) {
            for (int k = 0; k < 8; ++k, ++p, ++idx[NDIM - 1]) {  // the lanes it did not take
              if (!((handled >> k) & 1)) {
                step_backward_voxel<scalar_t, T, NDIM, PADDING>(vp + b * NDIM * n, gp + b * NDIM * n, b, n, p,
                                                                idx, scale, geo, router);
              }
            }
            p -= 1;  // the block stays within the row; the step below moves past it
            i += 7;
            idx[NDIM - 1] -= 1;
          } else {
            step_backward_voxel<scalar_t, T, NDIM, PADDING>(vp + b * NDIM * n, gp + b * NDIM * n, b, n, p,
                                                            idx, scale, geo, router);
          }
        } else
#endif
        {
          step_backward_voxel<scalar_t, T, NDIM, PADDING>(vp + b * NDIM * n, gp + b * NDIM * n, b, n, p,
                                                          idx, scale, geo, router);
        }
        if (++p == n) {
          p = 0;
          ++b;
          for (int a = 0; a < NDIM; ++a) idx[a] = 0;
        } else {
          fastreg::advance<NDIM>(geo.size, idx);
        }
      }
    }
  });

  // Pass 2, per owner chunk: add every other chunk's halos over its range, in chunk order.
  each_chunk([&](const Chunk<T>& own) {
    {
      for (const Chunk<T>& ch : chunks) {
        if (&ch == &own) continue;
        const int64_t parts[2][3] = {{ch.lo, ch.begin, 0}, {ch.end, ch.hi, 1}};
        for (const auto& part : parts) {
          const int64_t i0 = std::max(part[0], own.begin), i1 = std::min(part[1], own.end);
          const T* halo = part[2] == 0 ? ch.left : ch.right;
          const int64_t len = part[1] - part[0];
          for_runs(i0, i1, n, [&](int64_t b, int64_t q0, int64_t q1) {
            for (int c = 0; c < NDIM; ++c) {
              T* dst = out + (b * NDIM + c) * n;
              const T* src = halo + c * len + (b * n - part[0]);
              for (int64_t q = q0; q < q1; ++q) dst[q] += src[q];
            }
          });
        }
      }
    }
  });
}

void step_backward_cpu(const at::Tensor& g, const at::Tensor& v, at::Tensor& grad, double scale,
                       int64_t padding) {
  if (v.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "integrate_step_backward_cpu", [&] {
    warp::dispatch_mode_padding(warp::kBilinear, static_cast<int>(padding), [&](auto, auto pad) {
      constexpr int PADDING = decltype(pad)::value;
      if (v.dim() == 4) {
        step_backward_kernel<scalar_t, 2, PADDING>(g, v, grad, scale);
      } else {
        step_backward_kernel<scalar_t, 3, PADDING>(g, v, grad, scale);
      }
    });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> integrate_svf_forward_cpu(const at::Tensor& v, int64_t steps,
                                                             int64_t padding, at::IntArrayRef keep) {
  return forward_loop(v, steps, padding, keep, &step_cpu);
}

at::Tensor integrate_svf_backward_cpu(const at::Tensor& grad_out, const at::Tensor& v,
                                      const at::Tensor& saved, int64_t steps, int64_t padding,
                                      at::IntArrayRef keep, at::IntArrayRef pushes) {
  return backward_loop(grad_out, v, saved, steps, padding, keep, pushes, &step_cpu, &step_backward_cpu);
}

}  // namespace integrate
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  m.impl("integrate_svf_forward", &fastreg::integrate::integrate_svf_forward_cpu);
  m.impl("integrate_svf_backward", &fastreg::integrate::integrate_svf_backward_cpu);
}
