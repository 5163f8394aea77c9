// warp: sample an image at voxel positions (the per-element math of fastreg::warp_forward
// and fastreg::warp_backward, shared by the CPU and CUDA launchers).
//
// Contract
//   image  (B, C, *S_in)              float/double/half/bfloat16, contiguous
//   loc    (Bl, NDIM, *S_out)         Bl in {1, B}; same dtype as image
//            displacement=true : position = index of the output voxel + loc   (S_out == S_in)
//            displacement=false: position = loc (absolute voxel coordinates)
//   out    (B, C, *S_out)             out[b, c, p] = image[b, c] interpolated at position(p)
// Units and conventions
//   Positions are in voxels, channel a of loc moves along spatial axis a (ij order), voxel
//   centres at integer indices (align_corners=True), exactly torch.nn.functional.grid_sample
//   with the normalised grid 2 * pos / (size - 1) - 1 in reversed (x, y, z) channel order.
//   A size-1 axis always samples index 0 (grid_sample's convention); a NaN position gives
//   NaN in every channel of that output voxel (grid_sample gives 0 there).
//   mode:    kBilinear (linear in every axis), kNearest (round half to even) or kBicubic
//            (separable cubic convolution, A = -0.75, over 4 taps per axis: grid_sample's
//            bicubic in 2-D, the same kernel in 3-D; see CubicStencil).
//   padding: kZeros (outside is 0), kBorder (clamp), kReflection (mirror about the border
//            voxel centres, then clamp), with grid_sample's gradients (0 where clamped).
//            Bicubic pads each tap index, never the position (as grid_sample).
#pragma once

#include <cmath>
#include <cstdint>
#include <math.h>
#include <type_traits>

#include "../common/host_device.h"
#include "../common/index.h"

namespace fastreg {
namespace warp {

constexpr int kBilinear = 0;
constexpr int kNearest = 1;
constexpr int kBicubic = 2;

constexpr int kZeros = 0;
constexpr int kBorder = 1;
constexpr int kReflection = 2;

// Sizes and element strides of one channel of the image, first spatial axis first.
template <int NDIM>
struct Geometry {
  int64_t size[NDIM];
  int64_t stride[NDIM];
};

// The interpolation stencil of one position: up to 2^NDIM corners, their flat offsets
// within one channel of the image, weights, and d weight / d position per axis.
template <typename T, int NDIM>
struct Stencil {
  static constexpr int kMaxCorners = 1 << NDIM;
  int count;
  bool nan;
  bool valid[kMaxCorners];
  int64_t offset[kMaxCorners];
  T weight[kMaxCorners];
  T dweight[NDIM][kMaxCorners];
};

// Maps a position along one axis to the coordinate actually sampled, per padding mode
// (PADDING: kZeros, kBorder or kReflection), and its derivative d(coordinate)/d(position)
// in `grad`.
template <int PADDING, typename T>
FASTREG_HOST_DEVICE T source_coordinate(T p, int64_t size, T& grad) {
  if (size == 1) {  // grid_sample maps every finite coordinate of a size-1 axis to 0
    grad = T(0);
    return p * T(0);
  }
  if constexpr (PADDING == kZeros) {
    grad = T(1);
    return p;
  } else {
    const T hi = static_cast<T>(size - 1);
    T g = T(1);
    if constexpr (PADDING == kReflection) {
      if (p < T(0)) {
        p = -p;
        g = -g;
      }
      const T flips = floor(p / hi);
      const T extra = fmod(p, hi);
      if (fmod(flips, T(2)) == T(0)) {
        p = extra;
      } else {
        p = hi - extra;
        g = -g;
      }
    }
    if (p <= T(0)) {
      grad = T(0);
      return T(0);
    }
    if (p >= hi) {
      grad = T(0);
      return hi;
    }
    grad = g;
    return p;  // NaN falls through unchanged
  }
}

// Round half to even, as grid_sample's nearest mode (std::nearbyint in the default mode).
template <typename T>
FASTREG_HOST_DEVICE T round_half_even(T x) {
  T r = floor(x + T(0.5));
  if (r - x == T(0.5) && fmod(r, T(2)) != T(0)) r -= T(1);
  return r;
}

// Builds the stencil of `pos` (NDIM voxel coordinates) for MODE (kBilinear, kNearest) and
// PADDING known at compile time. dweight is filled when with_grad.
template <int MODE, int PADDING, typename T, int NDIM>
FASTREG_HOST_DEVICE void build_stencil(const T* pos, const Geometry<NDIM>& geo, bool with_grad,
                                       Stencil<T, NDIM>& st) {
  st.nan = false;
  for (int a = 0; a < NDIM; ++a) st.nan = st.nan || (pos[a] != pos[a]);
  if constexpr (MODE == kNearest) {
    st.count = 1;
    st.weight[0] = T(1);
    bool valid = !st.nan;
    int64_t offset = 0;
    for (int a = 0; a < NDIM; ++a) {
      T g;
      const T r = round_half_even(source_coordinate<PADDING>(pos[a], geo.size[a], g));
      valid = valid && r >= T(0) && r <= static_cast<T>(geo.size[a] - 1);
      if (valid) offset += static_cast<int64_t>(r) * geo.stride[a];
      if (with_grad) st.dweight[a][0] = T(0);
    }
    st.valid[0] = valid;
    st.offset[0] = valid ? offset : 0;
  } else {
  // Linear: per axis the two neighbours i0 = floor(s) and i0 + 1 with weights 1 - t, t.
  int64_t index[NDIM];
  bool valid_axis[NDIM][2];
  T w[NDIM][2];
  T dw[NDIM][2];
  for (int a = 0; a < NDIM; ++a) {
    T g;
    const T s = source_coordinate<PADDING>(pos[a], geo.size[a], g);
    const T f = floor(s);
    const T last = static_cast<T>(geo.size[a] - 1);
    // Compare in floating point before any integer cast: far-away or NaN positions stay safe.
    valid_axis[a][0] = f >= T(0) && f <= last;
    valid_axis[a][1] = f >= T(-1) && f < last;
    index[a] = (f >= T(-1) && f <= last) ? static_cast<int64_t>(f) : 0;
    const T t = s - f;
    w[a][0] = T(1) - t;
    w[a][1] = t;
    dw[a][0] = -g;
    dw[a][1] = g;
  }
  st.count = 1 << NDIM;
  for (int k = 0; k < (1 << NDIM); ++k) {
    bool valid = !st.nan;
    int64_t offset = 0;
    T weight = T(1);
    for (int a = 0; a < NDIM; ++a) {
      const int bit = (k >> (NDIM - 1 - a)) & 1;
      valid = valid && valid_axis[a][bit];
      offset += (index[a] + bit) * geo.stride[a];
      weight *= w[a][bit];
    }
    st.valid[k] = valid;
    st.offset[k] = valid ? offset : 0;
    st.weight[k] = weight;
    if (with_grad) {
      for (int a = 0; a < NDIM; ++a) {
        T d = dw[a][(k >> (NDIM - 1 - a)) & 1];
        for (int b = 0; b < NDIM; ++b) {
          if (b != a) d *= w[b][(k >> (NDIM - 1 - b)) & 1];
        }
        st.dweight[a][k] = d;
      }
    }
  }
  }
}

// The same with mode and padding chosen at run time.
template <typename T, int NDIM>
FASTREG_HOST_DEVICE void build_stencil(const T* pos, const Geometry<NDIM>& geo, int mode,
                                       int padding, bool with_grad, Stencil<T, NDIM>& st) {
  if (mode == kNearest) {
    if (padding == kBorder) return build_stencil<kNearest, kBorder>(pos, geo, with_grad, st);
    if (padding == kReflection) return build_stencil<kNearest, kReflection>(pos, geo, with_grad, st);
    return build_stencil<kNearest, kZeros>(pos, geo, with_grad, st);
  }
  if (padding == kBorder) return build_stencil<kBilinear, kBorder>(pos, geo, with_grad, st);
  if (padding == kReflection) return build_stencil<kBilinear, kReflection>(pos, geo, with_grad, st);
  return build_stencil<kBilinear, kZeros>(pos, geo, with_grad, st);
}

// Bicubic: per axis the taps floor(p) - 1 .. floor(p) + 2, each tap's voxel index (times the
// axis stride) after padding, its validity (zeros padding reads nothing outside the image),
// Keys' cubic weight (A = -0.75) of the fraction t = p - floor(p) and d weight / d position.
// The weight of a tap combination is the product over axes; combination k reads tap
// (k >> 2 * (NDIM - 1 - a)) & 3 along axis a.
template <typename T, int NDIM>
struct CubicStencil {
  static constexpr int kTaps = 1 << (2 * NDIM);
  bool nan;
  bool valid[NDIM][4];
  int64_t offset[NDIM][4];
  T weight[NDIM][4];
  T dweight[NDIM][4];
};

constexpr double kCubicA = -0.75;

// Keys' kernel for |x| <= 1 and 1 < |x| < 2, and their derivatives, as torch's upsample.
template <typename T>
FASTREG_HOST_DEVICE T cubic_near(T x) {
  return ((T(kCubicA) + T(2)) * x - (T(kCubicA) + T(3))) * x * x + T(1);
}
template <typename T>
FASTREG_HOST_DEVICE T cubic_far(T x) {
  return ((T(kCubicA) * x - T(5) * T(kCubicA)) * x + T(8) * T(kCubicA)) * x - T(4) * T(kCubicA);
}
template <typename T>
FASTREG_HOST_DEVICE T cubic_near_grad(T x) {
  return (T(3) * (T(kCubicA) + T(2)) * x - T(2) * (T(kCubicA) + T(3))) * x;
}
template <typename T>
FASTREG_HOST_DEVICE T cubic_far_grad(T x) {
  return (T(3) * T(kCubicA) * x - T(10) * T(kCubicA)) * x + T(8) * T(kCubicA);
}

// The voxel index read by the integer-valued tap coordinate c along an axis of `size` voxels
// under PADDING; false when it reads nothing (zeros padding outside the image).
template <int PADDING, typename T>
FASTREG_HOST_DEVICE bool cubic_tap(T c, int64_t size, int64_t& index) {
  const T hi = static_cast<T>(size - 1);
  if constexpr (PADDING == kZeros) {
    if (!(c >= T(0) && c <= hi)) {
      index = 0;
      return false;
    }
  } else if constexpr (PADDING == kReflection) {
    T g;
    c = source_coordinate<kReflection>(c, size, g);  // mirrored, then clamped
  }
  index = c <= T(0) ? 0 : c >= hi ? size - 1 : static_cast<int64_t>(c);
  return true;
}

// The taps of one axis: position p (not NaN), d weight / d position when with_grad.
template <int PADDING, typename T>
FASTREG_HOST_DEVICE void cubic_axis(T p, int64_t size, int64_t stride, bool with_grad, bool* valid,
                                    int64_t* offset, T* weight, T* dweight) {
  T g = T(1);  // d position / d p
  if (size == 1) {  // grid_sample maps every finite coordinate of a size-1 axis to 0
    p = T(0);
    g = T(0);
  } else if constexpr (PADDING == kBorder) {
    // Beyond [-2, size + 1] every tap clamps to the edge voxel (infinite positions too).
    if (p < T(-2)) p = T(-2);
    if (p > static_cast<T>(size + 1)) p = static_cast<T>(size + 1);
  } else if (!(p >= T(-2) && p < static_cast<T>(size + 1)) && (PADDING == kZeros || !(p - p == T(0)))) {
    // No tap inside (zeros), or an infinite position (reflection has no image of it).
    for (int k = 0; k < 4; ++k) {
      valid[k] = false;
      offset[k] = 0;
      weight[k] = dweight[k] = T(0);
    }
    return;
  }
  const T f = floor(p);
  const T t = p - f;
  weight[0] = cubic_far(t + T(1));
  weight[1] = cubic_near(t);
  weight[2] = cubic_near(T(1) - t);
  weight[3] = cubic_far(T(2) - t);
  if (with_grad) {
    dweight[0] = g * cubic_far_grad(t + T(1));
    dweight[1] = g * cubic_near_grad(t);
    dweight[2] = -g * cubic_near_grad(T(1) - t);
    dweight[3] = -g * cubic_far_grad(T(2) - t);
  }
  for (int k = 0; k < 4; ++k) {
    int64_t index;
    valid[k] = cubic_tap<PADDING>(f + static_cast<T>(k - 1), size, index);
    offset[k] = index * stride;
  }
}

// Builds the bicubic stencil of `pos` (the overload of build_stencil for CubicStencil).
template <int MODE, int PADDING, typename T, int NDIM>
FASTREG_HOST_DEVICE void build_stencil(const T* pos, const Geometry<NDIM>& geo, bool with_grad,
                                       CubicStencil<T, NDIM>& st) {
  static_assert(MODE == kBicubic, "CubicStencil is the bicubic stencil");
  st.nan = false;
  for (int a = 0; a < NDIM; ++a) {
    const bool nan = pos[a] != pos[a];
    st.nan = st.nan || nan;
    cubic_axis<PADDING>(nan ? T(0) : pos[a], geo.size[a], geo.stride[a], with_grad, st.valid[a],
                        st.offset[a], st.weight[a], st.dweight[a]);
  }
}

// Tap combination k of a cubic stencil: its flat offset and weight; false when it reads nothing.
template <typename T, int NDIM>
FASTREG_HOST_DEVICE bool stencil_corner(const CubicStencil<T, NDIM>& st, int k, int64_t& offset, T& weight) {
  offset = 0;
  weight = T(1);
  for (int a = 0; a < NDIM; ++a) {
    const int i = (k >> (2 * (NDIM - 1 - a))) & 3;
    if (!st.valid[a][i]) return false;
    offset += st.offset[a][i];
    weight *= st.weight[a][i];
  }
  return true;
}

// The stencil type of MODE.
template <int MODE, typename T, int NDIM>
using StencilFor = std::conditional_t<MODE == kBicubic, CubicStencil<T, NDIM>, Stencil<T, NDIM>>;

// Calls f(std::integral_constant<int, MODE>, std::integral_constant<int, PADDING>) for runtime
// mode and padding values, so launchers instantiate one specialised loop per combination.
template <typename F>
void dispatch_mode_padding(int mode, int padding, F&& f) {
  auto with_padding = [&](auto m) {
    switch (padding) {
      case kBorder: f(m, std::integral_constant<int, kBorder>()); break;
      case kReflection: f(m, std::integral_constant<int, kReflection>()); break;
      default: f(m, std::integral_constant<int, kZeros>()); break;
    }
  };
  if (mode == kNearest) {
    with_padding(std::integral_constant<int, kNearest>());
  } else if (mode == kBicubic) {
    with_padding(std::integral_constant<int, kBicubic>());
  } else {
    with_padding(std::integral_constant<int, kBilinear>());
  }
}

// Fast path of linear interpolation for a position whose 2^NDIM corners all lie inside the
// image (the common case): the cell's first corner, the fractional offsets per axis and
// d(sampled coordinate)/d(position) per axis (1 inside; 0 where border padding clamps, -1
// where reflection mirrors).
template <typename T, int NDIM>
struct Cell {
  int64_t base;
  T t[NDIM];
  T dsrc[NDIM];
};

// Fills `cell` and returns true when every corner of pos is inside the image (false for NaN,
// size-1 axes and cells touching the border, which take the general stencil path).
template <int PADDING, typename T, int NDIM>
FASTREG_HOST_DEVICE bool interior_cell(const T* pos, const Geometry<NDIM>& geo, Cell<T, NDIM>& cell) {
  int64_t base = 0;
  for (int a = 0; a < NDIM; ++a) {
    T g;
    const T s = source_coordinate<PADDING>(pos[a], geo.size[a], g);
    const T f = floor(s);
    if (!(f >= T(0) && f <= static_cast<T>(geo.size[a] - 2))) return false;
    cell.t[a] = s - f;
    cell.dsrc[a] = g;
    base += static_cast<int64_t>(f) * geo.stride[a];
  }
  cell.base = base;
  return true;
}

template <typename T>
FASTREG_HOST_DEVICE T lerp(T a, T b, T t) {
  return a + t * (b - a);
}

// Linear interpolation of one channel in an interior cell by nested lerps along the last,
// middle, then first axis (equal to the stencil sum up to rounding).
template <typename scalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE T interpolate_cell(const scalar_t* img, const Cell<T, NDIM>& c, const Geometry<NDIM>& geo) {
  const scalar_t* p = img + c.base;
  auto row = [&](int64_t o) { return lerp(static_cast<T>(p[o]), static_cast<T>(p[o + 1]), c.t[NDIM - 1]); };
  if constexpr (NDIM == 2) {
    return lerp(row(0), row(geo.stride[0]), c.t[0]);
  } else {
    const int64_t s0 = geo.stride[0], s1 = geo.stride[1];
    return lerp(lerp(row(0), row(s1), c.t[1]), lerp(row(s0), row(s0 + s1), c.t[1]), c.t[0]);
  }
}

// Reads the position of output voxel v; loc points at one batch item (NDIM, n_out).
template <typename scalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void load_position(const scalar_t* loc, int64_t n_out, int64_t v,
                                       const int64_t* idx, bool displacement, T* pos) {
  for (int a = 0; a < NDIM; ++a) {
    pos[a] = static_cast<T>(loc[a * n_out + v]);
    if (displacement) pos[a] += static_cast<T>(idx[a]);
  }
}

// Corner k of a stencil (either kind): false when it reads nothing, else its flat offset
// within one channel and its weight; stencil_count gives the number of corners.
template <typename T, int NDIM>
FASTREG_HOST_DEVICE bool stencil_corner(const Stencil<T, NDIM>& st, int k, int64_t& offset, T& weight) {
  offset = st.offset[k];
  weight = st.weight[k];
  return st.valid[k];
}

template <typename T, int NDIM>
FASTREG_HOST_DEVICE int stencil_count(const Stencil<T, NDIM>& st) {
  return st.count;
}

template <typename T, int NDIM>
FASTREG_HOST_DEVICE int stencil_count(const CubicStencil<T, NDIM>&) {
  return CubicStencil<T, NDIM>::kTaps;
}

// Forward at one output voxel for one batch item: image (C, n_in), out strided by n_out;
// st is a Stencil or a CubicStencil.
template <typename scalar_t, typename T, int NDIM, typename StencilT>
FASTREG_HOST_DEVICE void sample_channels(const StencilT& st, const scalar_t* image,
                                         int64_t channels, int64_t n_in, scalar_t* out,
                                         int64_t n_out) {
  for (int64_t c = 0; c < channels; ++c) {
    const scalar_t* img = image + c * n_in;
    T acc = T(0);
    for (int k = 0; k < stencil_count(st); ++k) {
      int64_t offset;
      T weight;
      if (stencil_corner(st, k, offset, weight)) acc += weight * static_cast<T>(img[offset]);
    }
    if (st.nan) acc = static_cast<T>(NAN);
    out[c * n_out] = static_cast<scalar_t>(acc);
  }
}

// A NaN position has a NaN position gradient and no image-gradient contribution: sets gpos
// (when need_loc) and returns true for it.
template <int NDIM, typename T>
FASTREG_HOST_DEVICE bool nan_position(bool nan, bool need_loc, T* gpos) {
  if (nan && need_loc) {
    for (int a = 0; a < NDIM; ++a) gpos[a] = static_cast<T>(NAN);
  }
  return nan;
}

// Backward at one output voxel for one batch item b. Adds d loss / d position into gpos
// (when need_loc) and hands every image-gradient contribution to scatter(b, c, offset, value)
// (when need_image). gout points at the voxel of channel 0, channels n_out apart (scalar_t or
// the accumulation type).
template <typename scalar_t, typename T, int NDIM, typename gout_t, typename Scatter>
FASTREG_HOST_DEVICE void backward_channels(const Stencil<T, NDIM>& st, const scalar_t* image,
                                           const gout_t* gout, int64_t b, int64_t channels,
                                           int64_t n_in, int64_t n_out, bool need_image,
                                           bool need_loc, T* gpos, Scatter& scatter) {
  if (nan_position<NDIM>(st.nan, need_loc, gpos)) return;
  for (int64_t c = 0; c < channels; ++c) {
    const T g = static_cast<T>(gout[c * n_out]);
    const scalar_t* img = image + c * n_in;
    for (int k = 0; k < st.count; ++k) {
      if (!st.valid[k]) continue;
      if (need_image) scatter(b, c, st.offset[k], st.weight[k] * g);
      if (need_loc) {
        const T gv = g * static_cast<T>(img[st.offset[k]]);
        for (int a = 0; a < NDIM; ++a) gpos[a] += st.dweight[a][k] * gv;
      }
    }
  }
}

// backward_channels for the bicubic stencil.
template <typename scalar_t, typename T, int NDIM, typename gout_t, typename Scatter>
FASTREG_HOST_DEVICE void backward_channels(const CubicStencil<T, NDIM>& st, const scalar_t* image,
                                           const gout_t* gout, int64_t b, int64_t channels,
                                           int64_t n_in, int64_t n_out, bool need_image,
                                           bool need_loc, T* gpos, Scatter& scatter) {
  if (nan_position<NDIM>(st.nan, need_loc, gpos)) return;
  for (int k = 0; k < CubicStencil<T, NDIM>::kTaps; ++k) {
    int64_t offset;
    T weight;
    if (!stencil_corner(st, k, offset, weight)) continue;
    T dw[NDIM];  // d weight / d position along each axis: one factor differentiated
    if (need_loc) {
      for (int a = 0; a < NDIM; ++a) {
        T d = T(1);
        for (int b2 = 0; b2 < NDIM; ++b2) {
          const int i = (k >> (2 * (NDIM - 1 - b2))) & 3;
          d *= b2 == a ? st.dweight[b2][i] : st.weight[b2][i];
        }
        dw[a] = d;
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      const T g = static_cast<T>(gout[c * n_out]);
      if (need_image) scatter(b, c, offset, weight * g);
      if (need_loc) {
        const T gv = g * static_cast<T>(image[c * n_in + offset]);
        for (int a = 0; a < NDIM; ++a) gpos[a] += dw[a] * gv;
      }
    }
  }
}

}  // namespace warp
}  // namespace fastreg
