// CPU launcher of warp (contract in warp.h). Parallel over output voxels with
// at::parallel_for; the image gradient is scattered into per-chunk slabs that cover only
// the image range a chunk touches, then summed in a fixed order (deterministic, race-free).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <tuple>
#include <vector>

#include "../ops.h"
#include "warp.h"
#include "warp_shapes.h"

namespace fastreg {
namespace warp {
namespace {

constexpr int64_t kGrain = 4096;

// Flat output-loop state: batch item of the positions, voxel index, per-axis index.
template <int NDIM>
struct Cursor {
  int64_t bl, v, idx[NDIM];
  Cursor(int64_t flat, int64_t n_out, const int64_t* out_size) : bl(flat / n_out), v(flat % n_out) {
    unravel<NDIM>(v, out_size, idx);
  }
  void next(int64_t n_out, const int64_t* out_size) {
    if (++v == n_out) {
      v = 0;
      ++bl;
      for (int a = 0; a < NDIM; ++a) idx[a] = 0;
    } else {
      advance<NDIM>(out_size, idx);
    }
  }
};

template <typename scalar_t, int NDIM, int MODE, int PADDING>
void forward_kernel(const at::Tensor& image, const at::Tensor& loc, at::Tensor& out,
                    const Shapes& s, bool displacement) {
  using T = at::opmath_type<scalar_t>;
  const Geometry<NDIM> geo = image_geometry<NDIM>(image);
  int64_t out_size[NDIM];
  for (int a = 0; a < NDIM; ++a) out_size[a] = loc.size(2 + a);
  const scalar_t* img = image.const_data_ptr<scalar_t>();
  const scalar_t* pos_ptr = loc.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const bool broadcast = s.loc_batch != s.batch;
  at::parallel_for(0, s.loc_batch * s.n_out, kGrain, [&](int64_t begin, int64_t end) {
    Cursor<NDIM> cur(begin, s.n_out, out_size);
    T pos[NDIM];
    Stencil<T, NDIM> st;
    for (int64_t i = begin; i < end; ++i, cur.next(s.n_out, out_size)) {
      load_position<scalar_t, T, NDIM>(pos_ptr + cur.bl * NDIM * s.n_out, s.n_out, cur.v, cur.idx,
                                       displacement, pos);
      build_stencil<MODE, PADDING>(pos, geo, false, st);
      const int64_t b0 = broadcast ? 0 : cur.bl;
      const int64_t b1 = broadcast ? s.batch : cur.bl + 1;
      for (int64_t b = b0; b < b1; ++b) {
        sample_channels<scalar_t, T, NDIM>(st, img + b * s.channels * s.n_in, s.channels, s.n_in,
                                           out_ptr + b * s.channels * s.n_out + cur.v, s.n_out);
      }
    }
  });
}

// One chunk of the output loop and the slab of image gradient it writes:
// batch items [b0, b1) and flat spatial offsets [lo, hi] of the image.
struct Chunk {
  int64_t begin, end, b0, b1, lo, hi;
  int64_t len() const { return hi >= lo ? hi - lo + 1 : 0; }
};

template <typename scalar_t, int NDIM, int MODE, int PADDING>
void backward_kernel(const at::Tensor& gout, const at::Tensor& image, const at::Tensor& loc,
                     at::Tensor& gimage, at::Tensor& gloc, const Shapes& s, bool displacement,
                     bool need_image, bool need_loc) {
  using T = at::opmath_type<scalar_t>;
  const Geometry<NDIM> geo = image_geometry<NDIM>(image);
  int64_t out_size[NDIM];
  for (int a = 0; a < NDIM; ++a) out_size[a] = loc.size(2 + a);
  const scalar_t* img = image.const_data_ptr<scalar_t>();
  const scalar_t* go = gout.const_data_ptr<scalar_t>();
  const scalar_t* pos_ptr = loc.const_data_ptr<scalar_t>();
  scalar_t* gl = need_loc ? gloc.mutable_data_ptr<scalar_t>() : nullptr;
  const bool broadcast = s.loc_batch != s.batch;
  const int64_t total = s.loc_batch * s.n_out;
  const int64_t stride_b = s.channels * s.n_in;

  // Chunks of the output loop: one per thread (fewer for small problems).
  const int64_t nchunks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (total + kGrain - 1) / kGrain));
  std::vector<Chunk> chunks(nchunks);
  for (int64_t i = 0; i < nchunks; ++i) {
    Chunk& ch = chunks[i];
    ch.begin = total * i / nchunks;
    ch.end = total * (i + 1) / nchunks;
    ch.b0 = broadcast ? 0 : ch.begin / s.n_out;
    ch.b1 = broadcast ? s.batch : (ch.end - 1) / s.n_out + 1;
    ch.lo = std::numeric_limits<int64_t>::max();
    ch.hi = -1;
  }

  // Pass 1 (image gradient only): the image range each chunk touches.
  if (need_image) {
    at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      T pos[NDIM];
      Stencil<T, NDIM> st;
      for (int64_t ci = c0; ci < c1; ++ci) {
        Chunk& ch = chunks[ci];
        Cursor<NDIM> cur(ch.begin, s.n_out, out_size);
        for (int64_t i = ch.begin; i < ch.end; ++i, cur.next(s.n_out, out_size)) {
          load_position<scalar_t, T, NDIM>(pos_ptr + cur.bl * NDIM * s.n_out, s.n_out, cur.v,
                                           cur.idx, displacement, pos);
          build_stencil<MODE, PADDING>(pos, geo, false, st);
          if (st.nan) continue;
          for (int k = 0; k < st.count; ++k) {
            if (!st.valid[k]) continue;
            ch.lo = std::min(ch.lo, st.offset[k]);
            ch.hi = std::max(ch.hi, st.offset[k]);
          }
        }
      }
    });
  }

  // Slabs (b1 - b0, C, hi - lo + 1) per chunk, in the accumulation type.
  std::vector<std::vector<T>> slabs(nchunks);
  for (int64_t i = 0; i < nchunks; ++i) {
    if (need_image) slabs[i].assign((chunks[i].b1 - chunks[i].b0) * s.channels * chunks[i].len(), T(0));
  }

  // Pass 2: gradients.
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    T pos[NDIM];
    T gpos[NDIM];
    Stencil<T, NDIM> st;
    for (int64_t ci = c0; ci < c1; ++ci) {
      const Chunk& ch = chunks[ci];
      T* slab = slabs[ci].data();
      const int64_t len = ch.len();
      auto scatter = [&](int64_t b, int64_t c, int64_t offset, T value) {
        slab[((b - ch.b0) * s.channels + c) * len + (offset - ch.lo)] += value;
      };
      Cursor<NDIM> cur(ch.begin, s.n_out, out_size);
      for (int64_t i = ch.begin; i < ch.end; ++i, cur.next(s.n_out, out_size)) {
        load_position<scalar_t, T, NDIM>(pos_ptr + cur.bl * NDIM * s.n_out, s.n_out, cur.v,
                                         cur.idx, displacement, pos);
        build_stencil<MODE, PADDING>(pos, geo, need_loc, st);
        for (int a = 0; a < NDIM; ++a) gpos[a] = T(0);
        const int64_t b0 = broadcast ? 0 : cur.bl;
        const int64_t b1 = broadcast ? s.batch : cur.bl + 1;
        for (int64_t b = b0; b < b1; ++b) {
          backward_channels<scalar_t, T, NDIM>(st, img + b * stride_b,
                                               go + b * s.channels * s.n_out + cur.v, b,
                                               s.channels, s.n_in, s.n_out, need_image, need_loc,
                                               gpos, scatter);
        }
        if (need_loc) {
          for (int a = 0; a < NDIM; ++a) {
            gl[(cur.bl * NDIM + a) * s.n_out + cur.v] = static_cast<scalar_t>(gpos[a]);
          }
        }
      }
    }
  });

  // Pass 3: sum the slabs into the image gradient, chunk by chunk in a fixed order,
  // parallel over blocks of (batch, channel, spatial range).
  if (need_image) {
    scalar_t* gi = gimage.mutable_data_ptr<scalar_t>();
    constexpr int64_t kBlock = 1 << 15;
    const int64_t nblocks = (s.n_in + kBlock - 1) / kBlock;
    at::parallel_for(0, s.batch * s.channels * nblocks, 1, [&](int64_t r0, int64_t r1) {
      std::vector<T> acc(kBlock);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = r / nblocks;
        const int64_t b = row / s.channels;
        const int64_t c = row % s.channels;
        const int64_t j0 = (r % nblocks) * kBlock;
        const int64_t j1 = std::min(j0 + kBlock, s.n_in);
        std::fill(acc.begin(), acc.begin() + (j1 - j0), T(0));
        for (int64_t ci = 0; ci < nchunks; ++ci) {
          const Chunk& ch = chunks[ci];
          if (b < ch.b0 || b >= ch.b1) continue;
          const int64_t lo = std::max(j0, ch.lo);
          const int64_t hi = std::min(j1 - 1, ch.hi);
          const T* src = slabs[ci].data() + ((b - ch.b0) * s.channels + c) * ch.len() - ch.lo;
          for (int64_t j = lo; j <= hi; ++j) acc[j - j0] += src[j];
        }
        scalar_t* dst = gi + row * s.n_in;
        for (int64_t j = j0; j < j1; ++j) dst[j] = static_cast<scalar_t>(acc[j - j0]);
      }
    });
  }
}

}  // namespace

at::Tensor warp_forward_cpu(const at::Tensor& image_, const at::Tensor& loc_, int64_t mode,
                            int64_t padding, bool displacement) {
  const Shapes s = check_shapes(image_, loc_, displacement);
  const at::Tensor image = image_.contiguous();
  const at::Tensor loc = loc_.contiguous();
  at::Tensor out = at::empty(s.out_sizes, image.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "warp_forward_cpu", [&] {
    dispatch_mode_padding(mode, padding, [&](auto m, auto p) {
      if (s.ndim == 2) {
        forward_kernel<scalar_t, 2, m.value, p.value>(image, loc, out, s, displacement);
      } else {
        forward_kernel<scalar_t, 3, m.value, p.value>(image, loc, out, s, displacement);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cpu(const at::Tensor& grad_out_,
                                                     const at::Tensor& image_,
                                                     const at::Tensor& loc_, int64_t mode,
                                                     int64_t padding, bool displacement,
                                                     std::array<bool, 2> output_mask) {
  const Shapes s = check_shapes(image_, loc_, displacement);
  TORCH_CHECK(grad_out_.sizes() == at::IntArrayRef(s.out_sizes), "fastreg warp: grad_out shape");
  const at::Tensor image = image_.contiguous();
  const at::Tensor loc = loc_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous().to(image.scalar_type());
  const bool need_image = output_mask[0];
  const bool need_loc = output_mask[1] && mode == kBilinear;
  at::Tensor gimage = need_image ? at::empty(image.sizes(), image.options()) : at::empty({0}, image.options());
  at::Tensor gloc = output_mask[1] ? at::zeros(loc.sizes(), loc.options()) : at::empty({0}, loc.options());
  if ((!need_image && !need_loc) || grad_out.numel() == 0) {
    if (need_image) gimage.zero_();
    return {gimage, gloc};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "warp_backward_cpu", [&] {
    dispatch_mode_padding(mode, padding, [&](auto m, auto p) {
      if (s.ndim == 2) {
        backward_kernel<scalar_t, 2, m.value, p.value>(grad_out, image, loc, gimage, gloc, s,
                                                      displacement, need_image, need_loc);
      } else {
        backward_kernel<scalar_t, 3, m.value, p.value>(grad_out, image, loc, gimage, gloc, s,
                                                      displacement, need_image, need_loc);
      }
    });
  });
  return {gimage, gloc};
}

}  // namespace warp
}  // namespace fastreg
