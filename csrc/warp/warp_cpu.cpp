// CPU launcher of warp (contract in warp.h). Parallel over output voxels with
// at::parallel_for (the backward's scatter in one OpenMP region); the image gradient is scattered race-free and deterministically
// (see backward_kernel: alternating chunks, or per-chunk slabs summed in a fixed order).
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
#include <type_traits>
#include <vector>

#include <torch/library.h>
#include "warp.h"
#include "warp_cpu_simd.h"
#include "warp_cpu_avx512.h"
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
  // Moves on by k voxels along the last axis; requires idx[NDIM - 1] + k <= out_size[NDIM - 1].
  void skip(int k, int64_t n_out, const int64_t* out_size) {
    v += k - 1;
    idx[NDIM - 1] += k - 1;
    next(n_out, out_size);
  }
  // Moves past a SIMD block of k voxels along the last axis that took the voxels of `taken`
  // (bit j: voxel v + j), calling scalar() at each voxel it did not take.
  template <typename Scalar>
  void finish_block(int k, int taken, int64_t n_out, const int64_t* out_size, Scalar&& scalar) {
    if (taken == (1 << k) - 1) {
      skip(k, n_out, out_size);
      return;
    }
    for (int j = 0; j < k; ++j) {
      if (!((taken >> j) & 1)) scalar();
      next(n_out, out_size);
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
#ifdef FASTREG_WARP_AVX2
  constexpr bool kSimd = std::is_same_v<scalar_t, float> && MODE == kBilinear && PADDING != kReflection;
  const bool simd = kSimd && cpu_has_avx2() && s.n_in < (int64_t(1) << 31);
  const bool simd16 = simd && cpu_has_avx512();
#endif
  at::parallel_for(0, s.loc_batch * s.n_out, kGrain, [&](int64_t begin, int64_t end) {
    Cursor<NDIM> cur(begin, s.n_out, out_size);
    T pos[NDIM];
    StencilFor<MODE, T, NDIM> st;
    // One output voxel (every batch item it feeds) through the scalar path.
    auto voxel = [&]() {
      load_position<scalar_t, T, NDIM>(pos_ptr + cur.bl * NDIM * s.n_out, s.n_out, cur.v, cur.idx,
                                       displacement, pos);
      const int64_t b0 = broadcast ? 0 : cur.bl;
      const int64_t b1 = broadcast ? s.batch : cur.bl + 1;
      if constexpr (MODE == kBilinear) {
        Cell<T, NDIM> cell;
        if (interior_cell<PADDING>(pos, geo, cell)) {
          for (int64_t b = b0; b < b1; ++b) {
            const scalar_t* src = img + b * s.channels * s.n_in;
            scalar_t* dst = out_ptr + b * s.channels * s.n_out + cur.v;
            for (int64_t c = 0; c < s.channels; ++c) {
              dst[c * s.n_out] = static_cast<scalar_t>(interpolate_cell<scalar_t, T, NDIM>(src + c * s.n_in, cell, geo));
            }
          }
          return;
        }
      }
      build_stencil<MODE, PADDING>(pos, geo, false, st);
      for (int64_t b = b0; b < b1; ++b) {
        sample_channels<scalar_t, T, NDIM>(st, img + b * s.channels * s.n_in, s.channels, s.n_in,
                                           out_ptr + b * s.channels * s.n_out + cur.v, s.n_out);
      }
    };
    for (int64_t i = begin; i < end;) {
#ifdef FASTREG_WARP_AVX2
      if constexpr (kSimd && NDIM == 2) {
        if (simd16 && i + 16 <= end && cur.idx[1] + 16 <= out_size[1]) {
          const int64_t b0 = broadcast ? 0 : cur.bl;
          const int interior = forward_block16<PADDING == kBorder>(
              pos_ptr + cur.bl * 2 * s.n_out, s.n_out, cur.v, cur.idx, displacement, geo.size,
              img + b0 * s.channels * s.n_in, out_ptr + b0 * s.channels * s.n_out + cur.v,
              (broadcast ? s.batch : 1) * s.channels, s.n_in);
          if (interior >= 0) {
            cur.finish_block(16, interior, s.n_out, out_size, voxel);
            i += 16;
            continue;
          }
        }
      }
      if constexpr (kSimd) {
        if (simd && i + 8 <= end && cur.idx[NDIM - 1] + 8 <= out_size[NDIM - 1]) {
          const int64_t b0 = broadcast ? 0 : cur.bl;
          int interior = 0;
          if (forward_block8<NDIM, PADDING == kBorder>(
                  pos_ptr + cur.bl * NDIM * s.n_out, s.n_out, cur.v, cur.idx, displacement, geo.size,
                  geo.stride, img + b0 * s.channels * s.n_in, out_ptr + b0 * s.channels * s.n_out + cur.v,
                  broadcast ? s.batch : 1, s.channels, s.n_in, 1.0f, &interior)) {
            cur.finish_block(8, interior, s.n_out, out_size, voxel);
            i += 8;
            continue;
          }
        }
      }
#endif
      voxel();
      cur.next(s.n_out, out_size);
      ++i;
    }
  });
}

// One chunk of the output loop and the image region its gradient can reach: batch items
// [b0, b1) and flat spatial offsets [lo, hi] (empty when hi < lo).
struct Chunk {
  int64_t begin, end, b0, b1, lo, hi;
  int64_t len() const { return hi >= lo ? hi - lo + 1 : 0; }
  bool overlaps(const Chunk& o) const {
    return len() > 0 && o.len() > 0 && b0 < o.b1 && o.b0 < b1 && lo <= o.hi && o.lo <= hi;
  }
};

// Where a chunk adds the image gradient: element `offset` (flat within one channel) of
// batch item b, channel c at ptr[((b - b0) * channels + c) * row_len + offset - shift]. The
// gradient itself (b0 = 0, row_len = n_in, shift = 0) or a chunk's slab over its region.
template <typename T>
struct GradTarget {
  T* ptr;
  int64_t b0, channels, row_len, shift;
  // Row (b, c) in the indexing of offset - shift.
  T* row(int64_t b, int64_t c) const { return ptr + ((b - b0) * channels + c) * row_len; }
  void operator()(int64_t b, int64_t c, int64_t offset, T value) const { row(b, c)[offset - shift] += value; }
};

// Rows [r0, r1] of the first spatial axis that a position p0 along it can touch.
template <int MODE, int PADDING, typename T>
bool touched_rows(T p0, int64_t size0, int64_t& r0, int64_t& r1) {
  if constexpr (MODE == kBicubic) {
    if (p0 != p0) return false;
    bool valid[4];
    int64_t index[4];
    T w[4], dw[4];
    cubic_axis<PADDING>(p0, size0, 1, false, valid, index, w, dw);
    r0 = size0;
    r1 = -1;
    for (int k = 0; k < 4; ++k) {
      if (valid[k]) {
        r0 = std::min(r0, index[k]);
        r1 = std::max(r1, index[k]);
      }
    }
    return r1 >= r0;
  }
  T g;
  const T c = source_coordinate<PADDING>(p0, size0, g);
  const T f = floor(c);
  if (!(f >= T(-1) && f <= static_cast<T>(size0 - 1))) return false;  // outside (zeros) or NaN
  const int64_t i = static_cast<int64_t>(f);
  r0 = std::max<int64_t>(i, 0);
  r1 = std::min<int64_t>(i + 1, size0 - 1);
  return true;
}

// Rows [r0, r1] of the first spatial axis that positions along it within [lo, hi] can touch
// under zeros or border padding (both map positions monotonically); false when none (also
// for lo > hi: no finite position).
template <int PADDING, typename T>
bool touched_row_range(T lo, T hi, int64_t size0, int64_t& r0, int64_t& r1) {
  const T last = static_cast<T>(size0 - 1);
  if (!(lo <= hi)) return false;
  if (size0 == 1) {  // every finite position samples index 0
    r0 = r1 = 0;
    return true;
  }
  if (PADDING == kZeros && (hi < T(-1) || lo >= last + T(1))) return false;
  const T f0 = floor(lo), f1 = floor(hi) + T(1);  // compared before any integer cast
  r0 = f0 <= T(0) ? 0 : f0 >= last ? size0 - 1 : static_cast<int64_t>(f0);
  r1 = f1 <= T(0) ? 0 : f1 >= last ? size0 - 1 : static_cast<int64_t>(f1);
  return true;
}

// Backward. The output loop is cut into 2 * threads chunks. A cheap first pass bounds the
// image rows each chunk can scatter into. When chunks of the same parity never overlap (the
// normal case for smooth fields), even chunks run in parallel scattering straight into the
// gradient, then odd chunks: no scratch, no reduction. Otherwise each chunk scatters into a
// private slab over its region and the slabs are summed in chunk order. Both are
// deterministic for a given thread count.
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

  const int64_t nchunks = std::max<int64_t>(
      1, std::min<int64_t>(2 * at::get_num_threads(), (total + kGrain - 1) / kGrain));
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

#ifdef FASTREG_WARP_AVX2
  constexpr bool kSimd = std::is_same_v<scalar_t, float> && MODE == kBilinear && PADDING != kReflection;
  const bool simd = kSimd && cpu_has_avx2() && s.n_in < (int64_t(1) << 31);
  const bool simd16 = simd && cpu_has_avx512();
#endif

  // Runs the output voxels of one chunk, adding image-gradient contributions to `grad`
  // (null when the image needs none).
  auto run_chunk = [&](const Chunk& ch, const GradTarget<T>* grad) {
    T pos[NDIM];
    T gpos[NDIM];
    StencilFor<MODE, T, NDIM> st{};
    auto none = [](int64_t, int64_t, int64_t, T) {};
    Cursor<NDIM> cur(ch.begin, s.n_out, out_size);
    // One output voxel (every batch item it feeds) through the scalar path.
    auto voxel = [&](int64_t b0, int64_t b1) {
      load_position<scalar_t, T, NDIM>(pos_ptr + cur.bl * NDIM * s.n_out, s.n_out, cur.v, cur.idx,
                                       displacement, pos);
      build_stencil<MODE, PADDING>(pos, geo, need_loc, st);
      for (int a = 0; a < NDIM; ++a) gpos[a] = T(0);
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* gob = go + b * s.channels * s.n_out + cur.v;
        if (grad != nullptr) {
          backward_channels<scalar_t, T, NDIM>(st, img + b * stride_b, gob, b, s.channels, s.n_in, s.n_out, true,
                                               need_loc, gpos, *grad);
        } else {
          backward_channels<scalar_t, T, NDIM>(st, img + b * stride_b, gob, b, s.channels, s.n_in, s.n_out, false,
                                               need_loc, gpos, none);
        }
      }
      if (need_loc) {
        for (int a = 0; a < NDIM; ++a) gl[(cur.bl * NDIM + a) * s.n_out + cur.v] = static_cast<scalar_t>(gpos[a]);
      }
    };
    for (int64_t i = ch.begin; i < ch.end;) {
      const int64_t b0 = broadcast ? 0 : cur.bl;
      const int64_t b1 = broadcast ? s.batch : cur.bl + 1;
#ifdef FASTREG_WARP_AVX2
      if constexpr (kSimd && NDIM == 2) {
        if (simd16 && i + 16 <= ch.end && cur.idx[1] + 16 <= out_size[1]) {
          const int handled = backward_block16<PADDING == kBorder>(
              pos_ptr + cur.bl * 2 * s.n_out, s.n_out, cur.v, cur.idx, displacement, geo.size, geo.stride,
              img + b0 * stride_b, go + b0 * s.channels * s.n_out + cur.v, b1 - b0, s.channels, s.n_in,
              need_loc ? gl + cur.bl * 2 * s.n_out + cur.v : nullptr,
              grad != nullptr ? grad->row(b0, 0) : nullptr, grad != nullptr ? grad->row_len : 0,
              grad != nullptr ? grad->shift : 0, grad != nullptr ? ch.lo : 0, grad != nullptr ? ch.hi + 1 : s.n_in);
          if (handled >= 0) {
            cur.finish_block(16, handled, s.n_out, out_size, [&] { voxel(b0, b1); });
            i += 16;
            continue;
          }
        }
      }
      if constexpr (kSimd) {
        int handled = 0;
        if (simd && i + 8 <= ch.end && cur.idx[NDIM - 1] + 8 <= out_size[NDIM - 1] &&
            (handled = backward_block8<NDIM, PADDING == kBorder>(
                 pos_ptr + cur.bl * NDIM * s.n_out, s.n_out, cur.v, cur.idx, displacement, geo.size, geo.stride,
                 img + b0 * stride_b, go + b0 * s.channels * s.n_out + cur.v, b1 - b0, s.channels, s.n_in,
                 need_loc ? gl + cur.bl * NDIM * s.n_out + cur.v : nullptr,
                 grad != nullptr ? grad->row(b0, 0) : nullptr, grad != nullptr ? grad->row_len : 0,
                 grad != nullptr ? grad->shift : 0, grad != nullptr ? ch.lo : 0,
                 grad != nullptr ? ch.hi + 1 : s.n_in)) != 0) {
          cur.finish_block(8, handled, s.n_out, out_size, [&] { voxel(b0, b1); });
          i += 8;
          continue;
        }
      }
#endif
      voxel(b0, b1);
      cur.next(s.n_out, out_size);
      ++i;
    }
  };

  if (!need_image) {
    at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ci = c0; ci < c1; ++ci) run_chunk(chunks[ci], nullptr);
    });
    return;
  }

  // The image rows each chunk can reach (first axis only: reads one channel of loc).
  // Zeros and border padding map positions monotonically, so the rows of a run of voxels
  // with the same first index follow from its least and greatest position (a superset when
  // some lie outside); reflection folds, so it bounds voxel by voxel.
  const int64_t inner = s.n_out / out_size[0];  // voxels per index of the first output axis
  auto bound_chunk = [&](Chunk& ch) {
    auto add_rows = [&](int64_t r0, int64_t r1) {
      ch.lo = std::min(ch.lo, r0 * geo.stride[0]);
      ch.hi = std::max(ch.hi, (r1 + 1) * geo.stride[0] - 1);
    };
    if constexpr (PADDING != kReflection) {
      for (int64_t i = ch.begin; i < ch.end;) {
        const int64_t bl = i / s.n_out, v = i % s.n_out, i0 = v / inner;
        const int64_t end = std::min(ch.end, bl * s.n_out + (i0 + 1) * inner);
        const scalar_t* p = pos_ptr + bl * NDIM * s.n_out + v;
        T lo = std::numeric_limits<T>::infinity(), hi = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < end - i; ++j) {  // NaN compares false: skipped
          const T x = static_cast<T>(p[j]);
          lo = x < lo ? x : lo;
          hi = x > hi ? x : hi;
        }
        const T shift = displacement ? static_cast<T>(i0) : T(0);
        const T reach = MODE == kBicubic ? T(1) : T(0);  // cubic taps reach one row further each way
        int64_t r0, r1;
        if (touched_row_range<PADDING>(lo + shift - reach, hi + shift + reach, geo.size[0], r0, r1)) add_rows(r0, r1);
        i = end;
      }
    } else {
      Cursor<NDIM> cur(ch.begin, s.n_out, out_size);
      for (int64_t i = ch.begin; i < ch.end; ++i, cur.next(s.n_out, out_size)) {
        T p0 = static_cast<T>(pos_ptr[cur.bl * NDIM * s.n_out + cur.v]);
        if (displacement) p0 += static_cast<T>(cur.idx[0]);
        int64_t r0, r1;
        if (touched_rows<MODE, PADDING>(p0, geo.size[0], r0, r1)) add_rows(r0, r1);
      }
    }
  };
  // Direct scatter is safe when no two chunks of the same parity overlap.
  auto parities_disjoint = [&]() {
    for (int64_t i = 0; i < nchunks; ++i) {
      for (int64_t j = i + 2; j < nchunks; j += 2) {
        if (chunks[i].overlaps(chunks[j])) return false;
      }
    }
    return true;
  };

  // One parallel region (its barriers are the synchronisation that matters with several
  // threads on a loaded machine): bound the chunks and zero the accumulator, one barrier;
  // then, when direct, even chunks scatter straight into it, one barrier, odd chunks.
  constexpr bool same = std::is_same_v<T, scalar_t>;
  at::Tensor acc = same ? gimage : at::empty(image.sizes(), image.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* acc_ptr = acc.mutable_data_ptr<T>();
  const int64_t n_acc = acc.numel();
  const GradTarget<T> target{acc_ptr, 0, s.channels, s.n_in, 0};
  const int nthreads = static_cast<int>(at::get_num_threads());
  const int64_t nzero = std::max<int64_t>(1, std::min<int64_t>(nthreads, n_acc / kGrain));
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && !at::in_parallel_region())
  {
#pragma omp for schedule(static) nowait
    for (int64_t ci = 0; ci < nchunks; ++ci) bound_chunk(chunks[ci]);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < nzero; ++k) std::fill(acc_ptr + n_acc * k / nzero, acc_ptr + n_acc * (k + 1) / nzero, T(0));
    if (parities_disjoint()) {  // the same answer on every thread: all or none take the loops
#pragma omp for schedule(static)
      for (int64_t ci = 0; ci < nchunks; ci += 2) run_chunk(chunks[ci], &target);
#pragma omp for schedule(static) nowait
      for (int64_t ci = 1; ci < nchunks; ci += 2) run_chunk(chunks[ci], &target);
    }
  }
  if (parities_disjoint()) {
    if (!same) gimage.copy_(acc);
    return;
  }

  // Fallback: private slabs (b1 - b0, C, hi - lo + 1) per chunk, summed in chunk order.
  std::vector<int64_t> slab_start(nchunks + 1, 0);
  for (int64_t i = 0; i < nchunks; ++i) {
    slab_start[i + 1] = slab_start[i] + (chunks[i].b1 - chunks[i].b0) * s.channels * chunks[i].len();
  }
  at::Tensor slabs = at::zeros({slab_start[nchunks]}, image.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* slab_ptr = slabs.mutable_data_ptr<T>();
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci) {
      const Chunk& ch = chunks[ci];
      const GradTarget<T> target{slab_ptr + slab_start[ci], ch.b0, s.channels, ch.len(), ch.lo};
      run_chunk(ch, &target);
    }
  });
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
        const T* src = slab_ptr + slab_start[ci] + ((b - ch.b0) * s.channels + c) * ch.len() - ch.lo;
        for (int64_t j = lo; j <= hi; ++j) acc[j - j0] += src[j];
      }
      scalar_t* dst = gi + row * s.n_in;
      for (int64_t j = j0; j < j1; ++j) dst[j] = static_cast<scalar_t>(acc[j - j0]);
    }
  });
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
  const bool need_loc = output_mask[1] && mode != kNearest;
  at::Tensor gimage = need_image ? at::empty(image.sizes(), image.options()) : at::empty({0}, image.options());
  // Every element of gloc is written when need_loc; nearest mode has a zero position gradient.
  at::Tensor gloc = !output_mask[1] ? at::empty({0}, loc.options())
                    : need_loc      ? at::empty(loc.sizes(), loc.options())
                                    : at::zeros(loc.sizes(), loc.options());
  if ((!need_image && !need_loc) || grad_out.numel() == 0) {
    if (need_image) gimage.zero_();
    if (need_loc) gloc.zero_();
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

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  m.impl("warp_forward", &fastreg::warp::warp_forward_cpu);
  m.impl("warp_backward", &fastreg::warp::warp_backward_cpu);
}
