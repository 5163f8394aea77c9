// CPU launcher of lncc (contract in lncc.h). One streaming pipeline per (slice, range of
// the first spatial axis): planes orthogonal to that axis are filtered in-plane (running sums
// along the rows, then across the rows, vectorised over a row), and the windowed sums along
// the first axis are running sums over a ring of the last k_0 planes. Every intermediate is
// double, so float32 inputs keep float64 accuracy; no full-volume buffer is allocated
// besides the outputs. The backward chains two such pipelines (windowed sums -> d loss / d
// sums -> their windowed sums) and writes both input gradients plane by plane.
// 2-D inputs (H, W) run as 3-D with a middle axis of size 1. The scratch of every thread is
// one torch allocation (so memory profilers see it), about (2 k_0 + 4) * 5 planes of doubles
// per thread in the forward and twice that in the backward.
// Speed: the work of a thread is one FASTREG_VECTOR_LOOP function (AVX2 where the CPU has it);
// along the rows (the contiguous axis), where a running sum is one serial chain per line,
// box windows of up to kDirectRow values are summed directly over a zero-padded copy of
// the row (vectorised over the row). Values that are not finite enter every sum as NaN, so
// direct sums and running sums (which count them) give NaN in exactly the same windows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>

#include "../common/vector_loop.h"
#include <torch/library.h>
#include "lncc.h"
#include "lncc_shapes.h"

namespace fastreg {
namespace lncc {
namespace {

// Scratch carved from one block of doubles.
class Arena {
 public:
  explicit Arena(double* base) : next_(base) {}
  double* take(int64_t n) {
    double* p = next_;
    next_ += n;
    return p;
  }

 private:
  double* next_;
};

// One row of `per_thread` doubles per thread of at::parallel_for, and the calling thread's row.
at::Tensor thread_scratch(int64_t per_thread) {
  return at::empty({at::get_num_threads(), per_thread}, at::TensorOptions().dtype(at::kDouble));
}
double* thread_slice(at::Tensor& scratch, int64_t per_thread) {
  const int64_t tid = at::get_thread_num();
  TORCH_CHECK(tid < scratch.size(0), "fastreg lncc: thread id ", tid, " beyond the scratch rows");
  return scratch.mutable_data_ptr<double>() + tid * per_thread;
}

// acc[i] += sign * src[i] for finite values; bad[i] counts the others (+sign each).
inline void accumulate(double* acc, double* bad, const double* src, int64_t len, double sign) {
  for (int64_t x = 0; x < len; ++x) {
    const double v = src[x];
    const bool fin = is_finite(v);
    acc[x] += fin ? sign * v : 0.0;
    bad[x] += fin ? 0.0 : sign;
  }
}

// Box windows along the rows up to this size are summed directly (k - 1 vector adds per value)
// rather than by a running sum (a serial chain of two dependent adds per value); across the
// rows and along axis 0, where both vectorise, up to kDirect (a running sum with its count of
// NaN costs about as many passes over the plane as a direct sum of 9).
constexpr int64_t kDirectRow = 15;

// The loops over voxels read several planes and write others: tell GCC they never overlap, or
// it gives up vectorising them for the number of run-time overlap checks they would need.
#if defined(__GNUC__) && !defined(__clang__)
#define FASTREG_IVDEP _Pragma("GCC ivdep")
#else
#define FASTREG_IVDEP
#endif
constexpr int64_t kDirect = 9;

// dst[i] = sum of src_j[i] over the `count` arrays srcs[0..count) (count >= 1), len values.
inline void sum_arrays(const double* const* srcs, int64_t count, double* dst, int64_t len) {
  const double* first = srcs[0];
  for (int64_t i = 0; i < len; ++i) dst[i] = first[i];
  for (int64_t j = 1; j < count; ++j) {
    const double* src = srcs[j];
    for (int64_t i = 0; i < len; ++i) dst[i] += src[i];
  }
}

// v if finite, else NaN: what enters the windowed sums (see the top of the file).
inline double finite_or_nan(double v) { return is_finite(v) ? v : NAN; }

// out[x] = sum_{j < k} padded[x + j] for x < len: the box sum of a row that `padded` holds
// with k / 2 zeros on either side.
inline void box_row_direct(const double* padded, double* out, int64_t len, int64_t k) {
  for (int64_t x = 0; x < len; ++x) out[x] = padded[x];
  for (int64_t j = 1; j < k; ++j) {
    const double* src = padded + j;
    for (int64_t x = 0; x < len; ++x) out[x] += src[x];
  }
}

// Box (w == nullptr) or weighted windowed sums across the rows of `rows` rows of `len`
// values: out[h] = sum_j w[j] in[h + j - r]. acc and bad are scratch of `len` each.
void filter_rows(const double* in, double* out, int64_t rows, int64_t len, int64_t k, const double* w,
                 double* acc, double* bad) {
  const int64_t r = k / 2;
  if (w == nullptr && k <= kDirect) {
    const double* srcs[kDirect];
    for (int64_t h = 0; h < rows; ++h) {
      int64_t count = 0;
      for (int64_t i = std::max<int64_t>(0, h - r); i <= std::min(rows - 1, h + r); ++i) srcs[count++] = in + i * len;
      sum_arrays(srcs, count, out + h * len, len);
    }
    return;
  }
  if (w == nullptr) {
    std::fill(acc, acc + len, 0.0);
    std::fill(bad, bad + len, 0.0);
    auto add = [&](int64_t h, double sign) { accumulate(acc, bad, in + h * len, len, sign); };
    for (int64_t j = 0; j < r && j < rows; ++j) add(j, 1.0);
    for (int64_t h = 0; h < rows; ++h) {
      if (h + r < rows) add(h + r, 1.0);
      double* dst = out + h * len;
      for (int64_t x = 0; x < len; ++x) dst[x] = bad[x] > 0.0 ? NAN : acc[x];
      if (h - r >= 0) add(h - r, -1.0);
    }
    return;
  }
  for (int64_t h = 0; h < rows; ++h) {
    double* dst = out + h * len;
    std::fill(dst, dst + len, 0.0);
    for (int64_t j = std::max<int64_t>(0, r - h); j <= 2 * r && h + j - r < rows; ++j) {
      const double* src = in + (h + j - r) * len;
      const double wj = w[j];
      for (int64_t x = 0; x < len; ++x) dst[x] += wj * src[x];
    }
  }
}

// The windowed sums along axis 0 of planes produced one by one in increasing order:
// next() returns the sums at e0, e0 + 1, ... (nq quantities of P values each).
// produce(p, dest) must write plane p (nq * P values) into dest.
class Stream {
 public:
  static int64_t scratch(int64_t nq, int64_t P, int64_t k0) { return (k0 + 3) * nq * P; }

  Stream(int64_t nq, int64_t P, int64_t n0, int64_t k0, const double* w0, Arena& arena)
      : nq_(nq), P_(P), n0_(n0), k0_(k0), r_(k0 / 2), w0_(w0), direct_(w0 == nullptr && k0 <= kDirect),
        ring_(arena.take(k0 * nq * P)),
        out_(arena.take(nq * P)), acc_(arena.take(nq * P)), bad_(arena.take(nq * P)) {}

  template <typename Produce>
  void start(int64_t e0, Produce& produce) {
    e_ = e0;
    e0_ = e0;
    std::fill(acc_, acc_ + nq_ * P_, 0.0);
    std::fill(bad_, bad_ + nq_ * P_, 0.0);
    for (int64_t p = std::max<int64_t>(0, e0 - r_); p < std::min(n0_, e0 + r_); ++p) take(p, produce);
  }

  template <typename Produce>
  const double* next(Produce& produce) {
    const int64_t e = e_++;
    const int64_t m = nq_ * P_;
    if (direct_) {
      if (e + r_ < n0_) take(e + r_, produce);
      const double* srcs[kDirect];
      int64_t count = 0;
      for (int64_t p = std::max<int64_t>(0, e - r_); p <= std::min(n0_ - 1, e + r_); ++p) srcs[count++] = slot(p);
      sum_arrays(srcs, count, out_, m);
      return out_;
    }
    if (w0_ == nullptr) {
      if (e - r_ - 1 >= 0 && e > e0_) accumulate(acc_, bad_, slot(e - r_ - 1), m, -1.0);  // left the window
      if (e + r_ < n0_) take(e + r_, produce);
      for (int64_t i = 0; i < m; ++i) out_[i] = bad_[i] > 0.0 ? NAN : acc_[i];
      return out_;
    }
    if (e + r_ < n0_) take(e + r_, produce);
    std::fill(out_, out_ + m, 0.0);
    for (int64_t j = std::max<int64_t>(0, r_ - e); j <= 2 * r_ && e + j - r_ < n0_; ++j) {
      const double* src = slot(e + j - r_);
      const double wj = w0_[j];
      for (int64_t i = 0; i < m; ++i) out_[i] += wj * src[i];
    }
    return out_;
  }

 private:
  double* slot(int64_t p) { return ring_ + (p % k0_) * nq_ * P_; }

  template <typename Produce>
  void take(int64_t p, Produce& produce) {
    produce(p, slot(p));
    if (w0_ == nullptr && !direct_) accumulate(acc_, bad_, slot(p), nq_ * P_, 1.0);
  }

  int64_t nq_, P_, n0_, k0_, r_;
  const double* w0_;
  bool direct_;  // box window of at most kDirect planes: sums of the ring's slots
  double *ring_, *out_, *acc_, *bad_;
  int64_t e_ = 0, e0_ = 0;
};

// In-plane filtering: per-voxel values of one plane, row by row (fill(h, row, pitch) writes
// the nq rows of n2 values of row h at row + q * pitch), filtered along the rows then across
// them into dest (nq * P values). Rows are kept with k2 / 2 zeros on either side, for the
// direct box sums.
struct PlaneFilter {
  static int64_t pitch_of(const Geometry& g) { return g.n2 + 2 * (g.k2 / 2); }
  static int64_t scratch(int64_t nq, const Geometry& g) {
    return nq * pitch_of(g) + nq * g.n1 * g.n2 + 2 * g.n2;
  }

  const Geometry& g;
  int64_t nq, pitch;
  bool direct;
  double *padded, *y, *acc, *bad;

  PlaneFilter(const Geometry& geo, int64_t nq_, Arena& arena)
      : g(geo), nq(nq_), pitch(pitch_of(geo)), direct(geo.w2 == nullptr && geo.k2 <= kDirectRow),
        padded(arena.take(nq_ * pitch_of(geo))), y(arena.take(nq_ * geo.n1 * geo.n2)),
        acc(arena.take(geo.n2)), bad(arena.take(geo.n2)) {
    std::fill(padded, padded + nq * pitch, 0.0);  // the pads stay zero: fill writes inside them
  }

  template <typename Fill>
  void run(Fill& fill, double* dest) {
    const int64_t P = g.n1 * g.n2, r2 = g.k2 / 2;
    const bool across = !(g.k1 == 1 && g.w1 == nullptr);
    double* rows_out = across ? y : dest;
    for (int64_t h = 0; h < g.n1; ++h) {
      fill(h, padded + r2, pitch);
      for (int64_t q = 0; q < nq; ++q) {
        double* out = rows_out + q * P + h * g.n2;
        if (direct) {
          box_row_direct(padded + q * pitch, out, g.n2, g.k2);
        } else {
          filter_line(padded + q * pitch + r2, 1, out, 1, g.n2, g.k2, g.w2);
        }
      }
    }
    if (!across) return;
    for (int64_t q = 0; q < nq; ++q) {
      filter_rows(y + q * P, dest + q * P, g.n1, g.n2, g.k1, g.w1, acc, bad);
    }
  }
};

// The five products at every voxel of row h of a plane, as fill(h, row, pitch) writes them.
template <typename scalar_t>
inline void moments_row(const scalar_t* ar, const scalar_t* br, int64_t n2, double* row, int64_t pitch) {
  FASTREG_IVDEP  // per-voxel values: the arrays never overlap
  for (int64_t x = 0; x < n2; ++x) {
    double m[kMoments];
    moments(static_cast<double>(ar[x]), static_cast<double>(br[x]), m);
    for (int q = 0; q < kMoments; ++q) row[q * pitch + x] = finite_or_nan(m[q]);
  }
}

// Forward tasks [t0, t1) of one thread (see split_tasks), with its scratch.
template <typename scalar_t>
FASTREG_VECTOR_LOOP void forward_tasks(const scalar_t* a, const scalar_t* b, scalar_t* out, const Geometry& g,
                                       const Params& prm, const Tasks& t, int64_t t0, int64_t t1, double* scratch) {
  const int64_t P = g.n1 * g.n2, N = g.n0 * P;
  Arena arena(scratch);
  PlaneFilter filt(g, kMoments, arena);
  Stream sums(kMoments, P, g.n0, g.k0, g.w0, arena);
  for (int64_t ti = t0; ti < t1; ++ti) {
    int64_t slice, d0, d1;
    t.range(ti, g.n0, slice, d0, d1);
    const scalar_t* as = a + slice * N;
    const scalar_t* bs = b + slice * N;
    int64_t plane = 0;
    auto fill = [&](int64_t h, double* row, int64_t pitch) {
      moments_row(as + plane * P + h * g.n2, bs + plane * P + h * g.n2, g.n2, row, pitch);
    };
    auto produce = [&](int64_t p, double* dest) {
      plane = p;
      filt.run(fill, dest);
    };
    sums.start(d0, produce);
    for (int64_t d = d0; d < d1; ++d) {
      const double* S = sums.next(produce);
      scalar_t* o = out + slice * N + d * P;
      FASTREG_IVDEP  // per-voxel values: the arrays never overlap
      for (int64_t v = 0; v < P; ++v) {
        double s[kMoments];
        for (int q = 0; q < kMoments; ++q) s[q] = S[q * P + v];
        o[v] = static_cast<scalar_t>(cc_value(s, prm));
      }
    }
  }
}

template <typename scalar_t>
void forward_kernel(const scalar_t* a, const scalar_t* b, scalar_t* out, const Geometry& g,
                    const Params& prm) {
  const int64_t P = g.n1 * g.n2;
  const Tasks t = split_tasks(g);
  const int64_t per_thread = PlaneFilter::scratch(kMoments, g) + Stream::scratch(kMoments, P, g.k0);
  at::Tensor scratch = thread_scratch(per_thread);
  at::parallel_for(0, t.count(), 1, [&](int64_t t0, int64_t t1) {
    forward_tasks(a, b, out, g, prm, t, t0, t1, thread_slice(scratch, per_thread));
  });
}

// Backward tasks [t0, t1) of one thread. The filtered maps needed: [G_a, beta, alpha] for
// grad_a, [alpha, G_b, gamma] for grad_b, i.e. the quantities q0 <= q < q1 (compile-time, so
// that the loops over voxels, which hold the loops over quantities, vectorise).
template <typename scalar_t, int q0, int q1>
FASTREG_VECTOR_LOOP void backward_tasks(const scalar_t* gout, const scalar_t* a, const scalar_t* b, scalar_t* ga,
                                        scalar_t* gb, const Geometry& g, const Params& prm, const Tasks& t,
                                        int64_t t0, int64_t t1, double* scratch) {
  constexpr int64_t nq = q1 - q0;
  const int64_t P = g.n1 * g.n2, N = g.n0 * P;
  Arena arena(scratch);
  PlaneFilter moment_filter(g, kMoments, arena);
  PlaneFilter grad_filter(g, nq, arena);
  Stream sums(kMoments, P, g.n0, g.k0, g.w0, arena);
  Stream filtered(nq, P, g.n0, g.k0, g.w0, arena);
  for (int64_t ti = t0; ti < t1; ++ti) {
    int64_t slice, d0, d1;
    t.range(ti, g.n0, slice, d0, d1);
    const scalar_t* as = a + slice * N;
    const scalar_t* bs = b + slice * N;
    const scalar_t* gs = gout + slice * N;
    int64_t plane = 0;
    auto fill_moments = [&](int64_t h, double* row, int64_t pitch) {
      moments_row(as + plane * P + h * g.n2, bs + plane * P + h * g.n2, g.n2, row, pitch);
    };
    auto produce_moments = [&](int64_t p, double* dest) {
      plane = p;
      moment_filter.run(fill_moments, dest);
    };
    sums.start(std::max<int64_t>(0, d0 - g.k0 / 2), produce_moments);

    const double* S = nullptr;
    int64_t gplane = 0;
    auto fill_grads = [&](int64_t h, double* row, int64_t pitch) {
      const scalar_t* gr = gs + gplane * P + h * g.n2;
      FASTREG_IVDEP  // per-voxel values: the arrays never overlap
      for (int64_t x = 0; x < g.n2; ++x) {
        const int64_t v = h * g.n2 + x;
        double s[kMoments], G[kGrads];
        for (int q = 0; q < kMoments; ++q) s[q] = S[q * P + v];
        sum_gradients(s, static_cast<double>(gr[x]), prm, G);
        for (int q = q0; q < q1; ++q) row[(q - q0) * pitch + x] = finite_or_nan(G[q]);
      }
    };
    auto produce_grads = [&](int64_t p, double* dest) {
      S = sums.next(produce_moments);  // the sums at plane p (planes come in order)
      gplane = p;
      grad_filter.run(fill_grads, dest);
    };
    filtered.start(d0, produce_grads);
    for (int64_t d = d0; d < d1; ++d) {
      const double* F = filtered.next(produce_grads);
      const int64_t base = slice * N + d * P;
      FASTREG_IVDEP  // per-voxel values: the arrays never overlap
      for (int64_t v = 0; v < P; ++v) {
        double f[kGrads];
        for (int q = q0; q < q1; ++q) f[q] = F[(q - q0) * P + v];
        const double av = static_cast<double>(a[base + v]);
        const double bv = static_cast<double>(b[base + v]);
        if constexpr (q0 == kGA) ga[base + v] = static_cast<scalar_t>(grad_a_value(f, av, bv));
        if constexpr (q1 == kGrads) gb[base + v] = static_cast<scalar_t>(grad_b_value(f, av, bv));
      }
    }
  }
}

template <typename scalar_t, int q0, int q1>
void backward_range(const scalar_t* gout, const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gb,
                    const Geometry& g, const Params& prm) {
  const int64_t P = g.n1 * g.n2;
  const Tasks t = split_tasks(g);
  const int64_t per_thread = PlaneFilter::scratch(kMoments, g) + PlaneFilter::scratch(q1 - q0, g) +
                             Stream::scratch(kMoments, P, g.k0) + Stream::scratch(q1 - q0, P, g.k0);
  at::Tensor scratch = thread_scratch(per_thread);
  at::parallel_for(0, t.count(), 1, [&](int64_t t0, int64_t t1) {
    backward_tasks<scalar_t, q0, q1>(gout, a, b, ga, gb, g, prm, t, t0, t1, thread_slice(scratch, per_thread));
  });
}

// ga or gb may be nullptr (that gradient is not needed), not both.
template <typename scalar_t>
void backward_kernel(const scalar_t* gout, const scalar_t* a, const scalar_t* b, scalar_t* ga,
                     scalar_t* gb, const Geometry& g, const Params& prm) {
  if (ga != nullptr && gb != nullptr) return backward_range<scalar_t, kGA, kGrads>(gout, a, b, ga, gb, g, prm);
  if (ga != nullptr) return backward_range<scalar_t, kGA, kAlpha + 1>(gout, a, b, ga, gb, g, prm);
  return backward_range<scalar_t, kAlpha, kGrads>(gout, a, b, ga, gb, g, prm);
}

}  // namespace

at::Tensor lncc_forward_cpu(const at::Tensor& a_, const at::Tensor& b_, at::IntArrayRef window,
                            at::ArrayRef<double> taps, double norm, double smooth_nr, double floor, double eps) {
  const Geometry g = check_shapes(a_, b_, window, taps);
  const at::Tensor a = a_.contiguous();
  const at::Tensor b = b_.contiguous();
  at::Tensor out = at::empty(a.sizes(), a.options());
  if (out.numel() == 0) return out;
  const Params prm = params(g, norm, smooth_nr, floor, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "lncc_forward_cpu", [&] {
    forward_kernel<scalar_t>(a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(), g, prm);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> lncc_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& a_,
                                                     const at::Tensor& b_, at::IntArrayRef window,
                                                     at::ArrayRef<double> taps, double norm, double smooth_nr,
                                                     double floor, double eps,
                                                     std::array<bool, 2> output_mask) {
  const Geometry g = check_shapes(a_, b_, window, taps);
  TORCH_CHECK(grad_out_.sizes() == a_.sizes(), "fastreg lncc: grad_out must have the shape of a");
  const at::Tensor a = a_.contiguous();
  const at::Tensor b = b_.contiguous();
  const at::Tensor gout = grad_out_.contiguous().to(a.scalar_type());
  at::Tensor ga = output_mask[0] ? at::empty(a.sizes(), a.options()) : at::empty({0}, a.options());
  at::Tensor gb = output_mask[1] ? at::empty(b.sizes(), b.options()) : at::empty({0}, b.options());
  if ((!output_mask[0] && !output_mask[1]) || a.numel() == 0) return {ga, gb};
  const Params prm = params(g, norm, smooth_nr, floor, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "lncc_backward_cpu", [&] {
    backward_kernel<scalar_t>(gout.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                              b.const_data_ptr<scalar_t>(),
                              output_mask[0] ? ga.mutable_data_ptr<scalar_t>() : nullptr,
                              output_mask[1] ? gb.mutable_data_ptr<scalar_t>() : nullptr, g, prm);
  });
  return {ga, gb};
}

}  // namespace lncc
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  m.impl("lncc_forward", &fastreg::lncc::lncc_forward_cpu);
  m.impl("lncc_backward", &fastreg::lncc::lncc_backward_cpu);
}
