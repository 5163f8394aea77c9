// jacobian: determinant of the Jacobian of x -> x + u(x) per voxel, and its statistics
// (the per-element math of fastreg::jacobian_det_forward, fastreg::jacobian_det_backward and
// fastreg::jacobian_stats, shared by the CPU and CUDA launchers).
//
// Contract
//   disp   (B, NDIM, *S)     NDIM in {2, 3}; channel a moves along spatial axis a (ij order)
//   det    (B, *S)           det(I + du/dx) at every voxel
//   stats  (B, kStats)       float64 sums over the voxels of the cropped region (see Stats)
// Units
//   With spacing h (per axis) the displacement is in physical units (same unit as h) and the
//   derivatives are physical; the determinant equals that of the voxel-unit field u_a / h_a,
//   which is how it is computed (every value is scaled by inv_spacing[a] when loaded).
// Derivative of u along axis b at index i of an axis of size n (mode):
//   kCentral  (Learn2Reg): (u[i+1] - u[i-1]) / 2 with u = 0 outside (zero padding), i.e.
//             scipy.ndimage.correlate(u, [-0.5, 0, 0.5], mode='constant').
//   kForward : u[i+1] - u[i]; 0 at the last index (u extended by replication).
//   kGradient (VoxelMorph, np.gradient): central inside, u[1] - u[0] at the first and
//             u[n-1] - u[n-2] at the last index; needs n >= 2.
//   Neighbours whose weight is 0 are never read, so a NaN reaches exactly the voxels whose
//   stencil contains it.
// Non-diffeomorphic volume (Liu et al., "On finite difference Jacobian computation in
// deformable image registration", IJCV 2024): u is extended by replication; in 3-D each voxel
// carries 10 tetrahedra (8 corner ones from the forward/backward difference combinations and
// the two central ones spanned by the face diagonals), each of volume det/6 and counted with
// weight 1/2 (two cube decompositions): ndv(p) = sum_t max(-det_t, 0) / 12. In 2-D: 4
// triangles (forward/backward combinations), ndv(p) = sum_t max(-det_t, 0) / 4.
#pragma once

#include <cmath>
#include <cstdint>
#include <math.h>

#include "../common/host_device.h"
#include "../common/index.h"

namespace fastreg {
namespace jacobian {

constexpr int kCentral = 0;
constexpr int kForward = 1;
constexpr int kGradient = 2;

// Sums accumulated per batch item by jacobian_stats (float64), over the region voxels.
enum Stats {
  kNan = 0,     // voxels whose determinant or tetrahedra are NaN
  kFolds,       // det <= 0
  kLog3Sum,     // sum of log(clip(det + 3, 1e-9, 1e9)) - log(3)     (Learn2Reg SDlogJ)
  kLog3Sq,      //   and of its square
  kPositive,    // det > 0
  kLogSum,      // sum of log(det) over det > 0
  kLogSq,       //   and of its square
  kDetSum,      // sum of det - 1
  kDetSq,       //   and of its square
  kNdv,         // non-diffeomorphic volume, in voxels
  kStats        // number of sums
};

constexpr double kLog3 = 1.0986122886681098;  // log(3), the shift of the Learn2Reg log

// Sizes and element strides of one channel, first spatial axis first; numel = voxels.
template <int NDIM>
struct Geometry {
  int64_t size[NDIM];
  int64_t stride[NDIM];
  int64_t numel;
};

// Weights of u[i-1], u[i], u[i+1] in the derivative at index i of an axis of size n.
template <typename T>
struct Taps {
  T prev, centre, next;
};

template <typename T>
FASTREG_HOST_DEVICE Taps<T> taps(int mode, int64_t i, int64_t n) {
  const bool has_prev = i > 0;
  const bool has_next = i < n - 1;
  if (mode == kCentral) return {has_prev ? T(-0.5) : T(0), T(0), has_next ? T(0.5) : T(0)};
  if (mode == kForward) return has_next ? Taps<T>{T(0), T(-1), T(1)} : Taps<T>{T(0), T(0), T(0)};
  if (!has_prev && !has_next) return {T(0), T(0), T(0)};  // n == 1 (rejected by the checks)
  if (!has_prev) return {T(0), T(-1), T(1)};
  if (!has_next) return {T(-1), T(1), T(0)};
  return {T(-0.5), T(0), T(0.5)};
}

// Derivative from the three values; a tap of weight 0 never touches its value (NaN-exact).
template <typename T>
FASTREG_HOST_DEVICE T apply(const Taps<T>& t, T prev, T centre, T next) {
  return (t.prev != T(0) ? t.prev * prev : T(0)) + (t.centre != T(0) ? t.centre * centre : T(0)) +
         (t.next != T(0) ? t.next * next : T(0));
}

template <typename T>
FASTREG_HOST_DEVICE T det2(T a, T b, T c, T d) {
  return a * d - b * c;
}

// Determinant of a 2x2 or 3x3 matrix (rows a, columns b).
template <typename T, int NDIM>
FASTREG_HOST_DEVICE T det(const T J[NDIM][NDIM]) {
  if constexpr (NDIM == 2) {
    return det2(J[0][0], J[0][1], J[1][0], J[1][1]);
  } else {
    return J[0][0] * det2(J[1][1], J[1][2], J[2][1], J[2][2]) -
           J[0][1] * det2(J[1][0], J[1][2], J[2][0], J[2][2]) +
           J[0][2] * det2(J[1][0], J[1][1], J[2][0], J[2][1]);
  }
}

// Cofactors C[a][b] = d det / d J[a][b].
template <typename T, int NDIM>
FASTREG_HOST_DEVICE void cofactor(const T J[NDIM][NDIM], T C[NDIM][NDIM]) {
  if constexpr (NDIM == 2) {
    C[0][0] = J[1][1];
    C[0][1] = -J[1][0];
    C[1][0] = -J[0][1];
    C[1][1] = J[0][0];
  } else {
    for (int a = 0; a < NDIM; ++a) {
      const int a1 = (a + 1) % NDIM, a2 = (a + 2) % NDIM;
      for (int b = 0; b < NDIM; ++b) {
        const int b1 = (b + 1) % NDIM, b2 = (b + 2) % NDIM;
        C[a][b] = J[a1][b1] * J[a2][b2] - J[a1][b2] * J[a2][b1];
      }
    }
  }
}

// The Jacobian I + du/dx at voxel v (per-axis index idx) of one batch item u (NDIM, numel).
template <typename scalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void jacobian_at(const scalar_t* u, const Geometry<NDIM>& g, const T* inv_spacing,
                                     int mode, const int64_t* idx, int64_t v, T J[NDIM][NDIM]) {
  for (int b = 0; b < NDIM; ++b) {
    const Taps<T> t = taps<T>(mode, idx[b], g.size[b]);
    const int64_t s = g.stride[b];
    for (int a = 0; a < NDIM; ++a) {
      const scalar_t* c = u + a * g.numel + v;
      const T prev = t.prev != T(0) ? static_cast<T>(c[-s]) : T(0);
      const T centre = t.centre != T(0) ? static_cast<T>(c[0]) : T(0);
      const T next = t.next != T(0) ? static_cast<T>(c[s]) : T(0);
      J[a][b] = (a == b ? T(1) : T(0)) + apply(t, prev, centre, next) * inv_spacing[a];
    }
  }
}

// Gradient of sum_p gout[p] * det(p) with respect to u_a at voxel q (all channels a), gathered
// over the voxels p whose derivative stencil reads q (q itself and q +- e_b).
template <typename scalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void backward_at(const scalar_t* u, const scalar_t* gout, const Geometry<NDIM>& g,
                                     const T* inv_spacing, int mode, const int64_t* idx, int64_t q,
                                     T* grad) {
  T J[NDIM][NDIM], C[NDIM][NDIM], Cq[NDIM][NDIM];
  jacobian_at<scalar_t, T, NDIM>(u, g, inv_spacing, mode, idx, q, J);
  cofactor<T, NDIM>(J, Cq);
  const T gq = static_cast<T>(gout[q]);
  for (int a = 0; a < NDIM; ++a) grad[a] = T(0);
  int64_t pidx[NDIM];
  for (int b = 0; b < NDIM; ++b) pidx[b] = idx[b];
  for (int b = 0; b < NDIM; ++b) {
    for (int k = -1; k <= 1; ++k) {  // p = q + k e_b reads u[q] with its tap at offset -k
      const int64_t i = idx[b] + k;
      if (i < 0 || i >= g.size[b]) continue;
      const Taps<T> t = taps<T>(mode, i, g.size[b]);
      const T w = k == 1 ? t.prev : (k == 0 ? t.centre : t.next);
      if (w == T(0)) continue;
      if (k == 0) {
        for (int a = 0; a < NDIM; ++a) grad[a] += gq * Cq[a][b] * w * inv_spacing[a];
        continue;
      }
      const int64_t p = q + k * g.stride[b];
      pidx[b] = i;
      jacobian_at<scalar_t, T, NDIM>(u, g, inv_spacing, mode, pidx, p, J);
      pidx[b] = idx[b];
      cofactor<T, NDIM>(J, C);
      const T gp = static_cast<T>(gout[p]);
      for (int a = 0; a < NDIM; ++a) grad[a] += gp * C[a][b] * w * inv_spacing[a];
    }
  }
}

// --- statistics ---------------------------------------------------------------------------

// Pairs of axes spanning the face diagonals of the central tetrahedra: (0,1), (0,2), (1,2).
constexpr int kPairs = 3;

// The displacement around one voxel in voxel units, replicated across the borders.
template <typename T, int NDIM>
struct Neighbourhood {
  T c[NDIM];               // u(p)
  T prev[NDIM][NDIM];      // prev[b][a] = u_a(p - e_b)
  T next[NDIM][NDIM];      // next[b][a] = u_a(p + e_b)
  T dprev[kPairs][NDIM];   // 3-D: u_a(p - e_i - e_j) for the pairs (i, j) above
  T dnext[kPairs][NDIM];   // 3-D: u_a(p + e_i + e_j)
};

template <typename scalar_t, typename T, int NDIM>
FASTREG_HOST_DEVICE void load_neighbourhood(const scalar_t* u, const Geometry<NDIM>& g,
                                            const T* inv_spacing, const int64_t* idx, int64_t v,
                                            Neighbourhood<T, NDIM>& nb) {
  int64_t dm[NDIM], dp[NDIM];  // offsets to the clamped neighbours along each axis
  for (int b = 0; b < NDIM; ++b) {
    dm[b] = idx[b] > 0 ? -g.stride[b] : 0;
    dp[b] = idx[b] < g.size[b] - 1 ? g.stride[b] : 0;
  }
  for (int a = 0; a < NDIM; ++a) {
    const scalar_t* c = u + a * g.numel + v;
    const T s = inv_spacing[a];
    nb.c[a] = static_cast<T>(c[0]) * s;
    for (int b = 0; b < NDIM; ++b) {
      nb.prev[b][a] = static_cast<T>(c[dm[b]]) * s;
      nb.next[b][a] = static_cast<T>(c[dp[b]]) * s;
    }
    if constexpr (NDIM == 3) {
      const int pi[kPairs] = {0, 0, 1}, pj[kPairs] = {1, 2, 2};
      for (int k = 0; k < kPairs; ++k) {
        nb.dprev[k][a] = static_cast<T>(c[dm[pi[k]] + dm[pj[k]]]) * s;
        nb.dnext[k][a] = static_cast<T>(c[dp[pi[k]] + dp[pj[k]]]) * s;
      }
    }
  }
}

// Determinant of the mode's Jacobian from a neighbourhood (values already in voxel units).
// Taps of weight 0 leave their (replicated) neighbour out, so this equals jacobian_at.
template <typename T, int NDIM>
FASTREG_HOST_DEVICE T neighbourhood_det(const Neighbourhood<T, NDIM>& nb, const Taps<T>* t) {
  T J[NDIM][NDIM];
  for (int a = 0; a < NDIM; ++a) {
    for (int b = 0; b < NDIM; ++b) {
      J[a][b] = (a == b ? T(1) : T(0)) + apply(t[b], nb.prev[b][a], nb.c[a], nb.next[b][a]);
    }
  }
  return det<T, NDIM>(J);
}

// 2 max(-d, 0) = |d| - d, which keeps NaN (the caller flags NaN separately; this keeps the sum
// honest; +inf gives NaN too, -inf gives +inf). No branch, so that it vectorizes; exact unless
// |d| > max / 2 (overflow).
template <typename T>
FASTREG_HOST_DEVICE T twice_negative_part(T d) {
  return fabs(d) - d;
}

template <typename T>
FASTREG_HOST_DEVICE void cross(const T* x, const T* y, T* out) {
  out[0] = x[1] * y[2] - x[2] * y[1];
  out[1] = x[2] * y[0] - x[0] * y[2];
  out[2] = x[0] * y[1] - x[1] * y[0];
}

template <typename T>
FASTREG_HOST_DEVICE T dot(const T* x, const T* y) {
  return x[0] * y[0] + x[1] * y[1] + x[2] * y[2];
}

// Edge p -> p + step (e_i + e_j) of a central tetrahedron: u(p + step (e_i + e_j)) - u(p) + step (e_i + e_j).
template <typename T>
FASTREG_HOST_DEVICE void diagonal_edge(const T* other, const T* c, int i, int j, T step, T* edge) {
  for (int a = 0; a < 3; ++a) {
    const T d = other[a] - c[a];
    edge[a] = a == i || a == j ? step + d : d;
  }
}

// Non-diffeomorphic volume of voxel p (in voxels, see the header comment), in two parts:
// corner_sum, twice the negative parts of the corner tetrahedra, then (3-D) central_sum adds
// those of the two central ones. Straight-line code (loops of constant trip count only), so
// that a loop over voxels calling them vectorizes; the 3-D corner determinants share the cross
// products of their last two columns; the identity is added on the diagonal only.
template <typename T, int NDIM>
FASTREG_HOST_DEVICE T corner_sum(const Neighbourhood<T, NDIM>& nb) {
  // col[b][s][a]: difference of u_a along b, forward (s = 0) or backward (s = 1), + e_b.
  T col[NDIM][2][NDIM];
  for (int b = 0; b < NDIM; ++b) {
    for (int a = 0; a < NDIM; ++a) {
      const T fwd = nb.next[b][a] - nb.c[a], bwd = nb.c[a] - nb.prev[b][a];
      col[b][0][a] = a == b ? T(1) + fwd : fwd;
      col[b][1][a] = a == b ? T(1) + bwd : bwd;
    }
  }
  T sum = T(0);
  if constexpr (NDIM == 2) {
    for (int s1 = 0; s1 < 2; ++s1) {
      for (int s0 = 0; s0 < 2; ++s0) {
        sum += twice_negative_part(det2(col[0][s0][0], col[1][s1][0], col[0][s0][1], col[1][s1][1]));
      }
    }
  } else {
    for (int s2 = 0; s2 < 2; ++s2) {
      for (int s1 = 0; s1 < 2; ++s1) {
        T x[3];
        cross(col[1][s1], col[2][s2], x);
        for (int s0 = 0; s0 < 2; ++s0) sum += twice_negative_part(dot(col[0][s0], x));
      }
    }
  }
  return sum;
}

// Central tetrahedra: edges p -> p - e_i - e_j in the order (01, 02, 12), and p -> p + e_i + e_j
// in the order (01, 12, 02); both have determinant 2 at the identity.
template <typename T>
FASTREG_HOST_DEVICE T central_sum(const Neighbourhood<T, 3>& nb, T sum) {
  T e[3][3], x[3];
  diagonal_edge(nb.dprev[0], nb.c, 0, 1, T(-1), e[0]);
  diagonal_edge(nb.dprev[1], nb.c, 0, 2, T(-1), e[1]);
  diagonal_edge(nb.dprev[2], nb.c, 1, 2, T(-1), e[2]);
  cross(e[1], e[2], x);
  sum += twice_negative_part(dot(e[0], x));
  diagonal_edge(nb.dnext[0], nb.c, 0, 1, T(1), e[0]);
  diagonal_edge(nb.dnext[2], nb.c, 1, 2, T(1), e[1]);
  diagonal_edge(nb.dnext[1], nb.c, 0, 2, T(1), e[2]);
  cross(e[1], e[2], x);
  return sum + twice_negative_part(dot(e[0], x));
}

// Twice the negative parts summed over the tetrahedra -> the volume: / (2 * 4) or / (2 * 12).
template <int NDIM>
constexpr int kNdvDivisor = NDIM == 2 ? 8 : 24;

template <typename T, int NDIM>
FASTREG_HOST_DEVICE T neighbourhood_ndv(const Neighbourhood<T, NDIM>& nb) {
  if constexpr (NDIM == 2) {
    return corner_sum<T, NDIM>(nb) / T(kNdvDivisor<NDIM>);
  } else {
    return central_sum<T>(nb, corner_sum<T, NDIM>(nb)) / T(kNdvDivisor<NDIM>);
  }
}

// Adds one voxel's determinant and non-diffeomorphic volume to the float64 sums acc[kStats].
template <typename T>
FASTREG_HOST_DEVICE void accumulate(T d, T ndv, double* acc) {
  if (d != d || ndv != ndv) {
    acc[kNan] += 1.0;
    return;
  }
  const T shifted = d + T(3);
  const T clipped = shifted < T(1e-9) ? T(1e-9) : (shifted > T(1e9) ? T(1e9) : shifted);
  const double l3 = static_cast<double>(log(clipped)) - kLog3;
  acc[kLog3Sum] += l3;
  acc[kLog3Sq] += l3 * l3;
  if (d > T(0)) {
    const double l = static_cast<double>(log(d));
    acc[kPositive] += 1.0;
    acc[kLogSum] += l;
    acc[kLogSq] += l * l;
  } else {
    acc[kFolds] += 1.0;
  }
  const double dd = static_cast<double>(d) - 1.0;
  acc[kDetSum] += dd;
  acc[kDetSq] += dd * dd;
  acc[kNdv] += static_cast<double>(ndv);
}

}  // namespace jacobian
}  // namespace fastreg
