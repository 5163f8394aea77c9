// lncc: local normalized cross-correlation (the per-line and per-voxel math of
// fastreg::lncc_forward and fastreg::lncc_backward, shared by the CPU and CUDA launchers).
//
// Contract
//   a, b      (B, C, *S)   2-D (H, W) or 3-D (D, H, W); same shape, dtype, device
//   window    ndim odd sizes k_i, 1 <= k_i <= S_i
//   taps      empty: box window (weights 1, windowed sums by running sums, O(1) per voxel);
//             else the concatenated per-axis weights (k_0 + ... + k_{ndim-1} values),
//             symmetric (w[j] == w[k - 1 - j]) and non-negative
//   norm      > 0: the n below; 0: n = prod_i (sum_j w_i(j))
//   out       (B, C, *S)   the cc map, each channel windowed on its own
// Per voxel x, with windowed sums over the window centred at x (zero padding, K(j) = prod_i w_i(j_i)):
//   S_a = sum K a, S_b, S_aa = sum K a^2, S_bb, S_ab = sum K a b, and n (see norm)
//   (box: n = the window volume, VoxelMorph's win_size, also at the borders)
//   cross = S_ab - S_a S_b / n,  var_a = max(S_aa - S_a^2 / n, floor),  var_b likewise
//   cc = (cross^2 + smooth_nr) / (var_a var_b + eps)
// fastreg.lncc uses floor = 0, smooth_nr = 0 (VoxelMorph: cc = cross^2 / (var_a var_b + eps),
// with the variances clamped at 0 so that rounding cannot push |cc| above 1); MONAI's
// loss uses floor = smooth_dr, eps = 0. The clamp passes the gradient where the variance
// is >= floor (torch.clamp's convention). A NaN or inf input makes NaN exactly the outputs
// whose window holds it, as a convolution would (running sums count non-finite values
// instead of adding them, so they do not spread along the line).
// Gradients: with g = d loss / d cc at each voxel,
//   alpha = g dcc/dcross, beta = g dcc/dvar_a, gamma = g dcc/dvar_b,
//   G_a = -(alpha S_b + 2 beta S_a) / n,  G_b = -(alpha S_a + 2 gamma S_b) / n
// are d loss / d (S_ab, S_aa, S_bb, S_a, S_b); the adjoint of the (symmetric, zero-padded)
// window filter is the same filter F, so
//   grad_a = F(G_a) + 2 a F(beta) + b F(alpha),  grad_b = F(G_b) + 2 b F(gamma) + a F(alpha).
// Precision: every windowed sum accumulates in double (running sums per line, and the
// partial sums between axes are kept in double), whatever the input dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <math.h>

#include "../common/host_device.h"

namespace fastreg {
namespace lncc {

// Quantities of the forward windowed sums, in this order.
constexpr int kA = 0, kB = 1, kAA = 2, kBB = 3, kAB = 4, kMoments = 5;
// Quantities of the backward filtered maps, in this order (G_a, beta, alpha, G_b, gamma):
// the first three are all that grad_a needs, the last three (with alpha) all grad_b needs.
constexpr int kGA = 0, kBeta = 1, kAlpha = 2, kGB = 3, kGamma = 4, kGrads = 5;

// One step of a running sum that counts non-finite values in `bad` instead of adding them.
FASTREG_HOST_DEVICE bool is_finite(double v) { return v - v == 0.0; }
FASTREG_HOST_DEVICE void running_add(double v, double& acc, int64_t& bad) {
  if (is_finite(v)) {
    acc += v;
  } else {
    ++bad;
  }
}
FASTREG_HOST_DEVICE void running_sub(double v, double& acc, int64_t& bad) {
  if (is_finite(v)) {
    acc -= v;
  } else {
    --bad;
  }
}

// Windowed sum along one line: out[i] = sum_{j=-r..r} w[j + r] in[i + j], zero outside
// [0, len). w == nullptr is the box window (all weights 1), computed by a running sum whose
// cost does not depend on k. in and out are strided (element strides is, os) and must not
// alias. Accumulates in double.
template <typename In, typename Out>
FASTREG_HOST_DEVICE void filter_line(const In* in, int64_t is, Out* out, int64_t os, int64_t len,
                                     int64_t k, const double* w) {
  const int64_t r = k / 2;
  if (w == nullptr) {
    // Non-finite values are counted, not summed, so that a NaN or inf makes NaN exactly the
    // outputs whose window holds it (as a convolution would) instead of the rest of the line.
    double acc = 0.0;
    int64_t bad = 0;
    for (int64_t j = 0; j < r && j < len; ++j) running_add(static_cast<double>(in[j * is]), acc, bad);
    for (int64_t i = 0; i < len; ++i) {
      if (i + r < len) running_add(static_cast<double>(in[(i + r) * is]), acc, bad);
      out[i * os] = static_cast<Out>(bad > 0 ? NAN : acc);
      if (i - r >= 0) running_sub(static_cast<double>(in[(i - r) * is]), acc, bad);
    }
    return;
  }
  for (int64_t i = 0; i < len; ++i) {
    const int64_t j0 = i - r < 0 ? r - i : 0;
    const int64_t j1 = i + r >= len ? r + len - 1 - i : 2 * r;
    double acc = 0.0;
    for (int64_t j = j0; j <= j1; ++j) acc += w[j] * static_cast<double>(in[(i + j - r) * is]);
    out[i * os] = static_cast<Out>(acc);
  }
}

// The five products whose windowed sums the forward needs, at one voxel.
FASTREG_HOST_DEVICE void moments(double a, double b, double* m) {
  m[kA] = a;
  m[kB] = b;
  m[kAA] = a * a;
  m[kBB] = b * b;
  m[kAB] = a * b;
}

// Clamp that keeps NaN (std::max would too, fmax would not) and its gradient mask.
FASTREG_HOST_DEVICE double clamp_min(double v, double floor) { return v < floor ? floor : v; }

struct Params {
  double inv_n;      // 1 / n
  double smooth_nr;  // added to cross^2
  double floor;      // lower clamp of the variances
  double eps;        // added to var_a var_b
};

// cc at one voxel from its windowed sums s[kMoments].
FASTREG_HOST_DEVICE double cc_value(const double* s, const Params& p) {
  const double cross = s[kAB] - s[kA] * s[kB] * p.inv_n;
  const double va = clamp_min(s[kAA] - s[kA] * s[kA] * p.inv_n, p.floor);
  const double vb = clamp_min(s[kBB] - s[kB] * s[kB] * p.inv_n, p.floor);
  return (cross * cross + p.smooth_nr) / (va * vb + p.eps);
}

// d loss / d (windowed sums) at one voxel (G_a, beta, alpha, G_b, gamma; see the contract),
// from the sums s and g = d loss / d cc.
FASTREG_HOST_DEVICE void sum_gradients(const double* s, double g, const Params& p, double* G) {
  const double cross = s[kAB] - s[kA] * s[kB] * p.inv_n;
  const double va_raw = s[kAA] - s[kA] * s[kA] * p.inv_n;
  const double vb_raw = s[kBB] - s[kB] * s[kB] * p.inv_n;
  const double va = clamp_min(va_raw, p.floor);
  const double vb = clamp_min(vb_raw, p.floor);
  const double inv_den = 1.0 / (va * vb + p.eps);  // one division per voxel
  const double cc = (cross * cross + p.smooth_nr) * inv_den;
  const double alpha = g * 2.0 * cross * inv_den;
  // d cc / d var_a = -cc var_b / den, passed where var_a >= floor (NaN passes, as NaN).
  const double beta = va_raw < p.floor ? 0.0 : -g * cc * vb * inv_den;
  const double gamma = vb_raw < p.floor ? 0.0 : -g * cc * va * inv_den;
  G[kGA] = -(alpha * s[kB] + 2.0 * beta * s[kA]) * p.inv_n;
  G[kBeta] = beta;
  G[kAlpha] = alpha;
  G[kGB] = -(alpha * s[kA] + 2.0 * gamma * s[kB]) * p.inv_n;
  G[kGamma] = gamma;
}

// Input gradients at one voxel from the filtered maps f (same order as sum_gradients).
FASTREG_HOST_DEVICE double grad_a_value(const double* f, double a, double b) {
  return f[kGA] + 2.0 * a * f[kBeta] + b * f[kAlpha];
}
FASTREG_HOST_DEVICE double grad_b_value(const double* f, double a, double b) {
  return f[kGB] + 2.0 * b * f[kGamma] + a * f[kAlpha];
}

}  // namespace lncc
}  // namespace fastreg
