// CPU launcher of local_correlation and vfa_attention (contract in correlation.h).
// Rows of at most tiles::kMaxWidth voxels (the coarse levels of a pyramid) go to the padded
// tiles of correlation_cpu_tiles.h. Longer rows: parallel over rows (batch item + leading-axis
// indices) with at::parallel_for; every row is computed as whole-row spans so the inner loops
// run over contiguous voxels (they vectorise: each thread's rows are one FASTREG_VECTOR_LOOP
// function, AVX2 where the CPU has it). Gradients of the padded operand are gathers: no
// scatter, no races, deterministic. vfa_attention keeps no logits: forward is one
// online-softmax pass and backward recomputes the logits from q, k and the saved log-sum-exp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "correlation.h"
#include "correlation_cpu_tiles.h"
#include "correlation_shapes.h"
#include "../common/vector_loop.h"

namespace fastreg {
namespace correlation {
namespace {

// Rows per parallel task: about 32k multiply-adds per task at least.
int64_t grain(const Shapes& s) {
  const int64_t work = std::max<int64_t>(1, s.width * s.channels * s.offsets);
  return std::max<int64_t>(1, (1 << 15) / work);
}

// Per-row cursor: batch item, leading-axis indices and flat offset of the row start.
template <int NDIM>
struct Row {
  int64_t b, start, idx[NDIM];
  Row(int64_t r, const Shapes& s, const Grid<NDIM>& g) {
    const int64_t per_batch = s.n / s.width;
    b = r / per_batch;
    int64_t rest = r % per_batch;
    for (int a = NDIM - 2; a >= 0; --a) {
      idx[a] = rest % g.size[a];
      rest /= g.size[a];
    }
    idx[NDIM - 1] = 0;
    start = row_offset<NDIM>(g, idx);
  }
};

// Rows [r0, r1) of correlation_forward_kernel (one thread's share, AVX2 where the CPU has it).
template <typename scalar_t, int NDIM>
FASTREG_VECTOR_LOOP void correlation_forward_rows(const scalar_t* fp, const scalar_t* mp, scalar_t* op, const Shapes& s,
                                                  const Grid<NDIM>& g, at::opmath_type<scalar_t> scale, int64_t r0,
                                                  int64_t r1) {
  using T = at::opmath_type<scalar_t>;
  std::vector<T> acc(s.width);
  for (int64_t r = r0; r < r1; ++r) {
    const Row<NDIM> row(r, s, g);
    const int64_t base = row.b * s.channels * s.n;
    for (int64_t k = 0; k < s.offsets; ++k) {
      int o[NDIM];
      offset_of<NDIM>(k, g.radius, o);
      neighbour_dot<scalar_t, T, NDIM>(fp + base, mp + base, s.channels, g, row.idx, o, 0, s.width, acc.data());
      scalar_t* dst = op + (row.b * s.offsets + k) * s.n + row.start;
      for (int64_t w = 0; w < s.width; ++w) dst[w] = static_cast<scalar_t>(scale * acc[w]);
    }
  }
}

template <typename scalar_t, int NDIM>
void correlation_forward_kernel(const at::Tensor& f, const at::Tensor& m, at::Tensor& out,
                                const Shapes& s, const Grid<NDIM>& g, double scale) {
  const scalar_t* fp = f.const_data_ptr<scalar_t>();
  const scalar_t* mp = m.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, s.rows, grain(s), [&](int64_t r0, int64_t r1) {
    correlation_forward_rows<scalar_t, NDIM>(fp, mp, op, s, g, static_cast<at::opmath_type<scalar_t>>(scale), r0, r1);
  });
}

// Rows [r0, r1) of correlation_backward_kernel (one thread's share, AVX2 where the CPU has it).
template <typename scalar_t, typename gscalar_t, int NDIM>
FASTREG_VECTOR_LOOP void correlation_backward_rows(const gscalar_t* gk, const scalar_t* ap, const scalar_t* bp,
                                                   scalar_t* ga, scalar_t* gb, const Shapes& s, const Grid<NDIM>& g,
                                                   at::opmath_type<scalar_t> scale, int64_t r0, int64_t r1) {
  using T = at::opmath_type<scalar_t>;
  std::vector<T> acc(s.channels * s.width);
  for (int64_t r = r0; r < r1; ++r) {
    const Row<NDIM> row(r, s, g);
    const gscalar_t* gr = gk + row.b * s.offsets * s.n;
    const int64_t base = row.b * s.channels * s.n;
    for (int grad = 0; grad < 2; ++grad) {
      if ((grad == 0 ? ga : gb) == nullptr) continue;
      if (grad == 0) {
        neighbour_gather<scalar_t, gscalar_t, T, NDIM>(gr, bp + base, s.channels, g, row.idx, 0, s.width, acc.data());
      } else {
        source_gather<scalar_t, gscalar_t, T, NDIM>(gr, ap + base, s.channels, g, row.idx, 0, s.width, acc.data());
      }
      scalar_t* dst = (grad == 0 ? ga : gb) + base + row.start;
      for (int64_t c = 0; c < s.channels; ++c) {
        for (int64_t w = 0; w < s.width; ++w) {
          dst[c * s.n + w] = static_cast<scalar_t>(scale * acc[c * s.width + w]);
        }
      }
    }
  }
}

// Gradients of sum_k g[k] * (a . pad(b) shifted by o_k): grad_a by neighbour_gather,
// grad_b by source_gather. gk is (B, K, *S) of type gscalar_t.
template <typename scalar_t, typename gscalar_t, int NDIM>
void correlation_backward_kernel(const gscalar_t* gk, const at::Tensor& a, const at::Tensor& b,
                                 at::Tensor& grad_a, at::Tensor& grad_b, const Shapes& s,
                                 const Grid<NDIM>& g, double scale, bool need_a, bool need_b) {
  const scalar_t* ap = a.const_data_ptr<scalar_t>();
  const scalar_t* bp = b.const_data_ptr<scalar_t>();
  scalar_t* ga = need_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gb = need_b ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, s.rows, grain(s), [&](int64_t r0, int64_t r1) {
    correlation_backward_rows<scalar_t, gscalar_t, NDIM>(gk, ap, bp, ga, gb, s, g,
                                                         static_cast<at::opmath_type<scalar_t>>(scale), r0, r1);
  });
}

// Rows [r0, r1) of vfa_forward_kernel (one thread's share, AVX2 where the CPU has it).
template <typename scalar_t, int NDIM>
FASTREG_VECTOR_LOOP void vfa_forward_rows(const scalar_t* qp, const scalar_t* kp, scalar_t* op, at::opmath_type<scalar_t>* lp,
                                          const Shapes& s, const Grid<NDIM>& g, at::opmath_type<scalar_t> scale,
                                          int64_t r0, int64_t r1) {
  using T = at::opmath_type<scalar_t>;
  std::vector<T> acc(s.width);
  std::vector<SoftmaxState<T, NDIM>> state(s.width);
  for (int64_t r = r0; r < r1; ++r) {
    const Row<NDIM> row(r, s, g);
    const int64_t base = row.b * s.channels * s.n;
    for (auto& st : state) softmax_init(st);
    for (int64_t j = 0; j < s.offsets; ++j) {
      int o[NDIM];
      offset_of<NDIM>(j, g.radius, o);
      neighbour_dot<scalar_t, T, NDIM>(qp + base, kp + base, s.channels, g, row.idx, o, 0, s.width, acc.data());
      for (int64_t w = 0; w < s.width; ++w) softmax_update(state[w], scale * acc[w], o);
    }
    for (int64_t w = 0; w < s.width; ++w) {
      T disp[NDIM];
      lp[row.b * s.n + row.start + w] = softmax_finish(state[w], disp);
      for (int a = 0; a < NDIM; ++a) {
        op[(row.b * NDIM + a) * s.n + row.start + w] = static_cast<scalar_t>(disp[a]);
      }
    }
  }
}

template <typename scalar_t, int NDIM>
void vfa_forward_kernel(const at::Tensor& q, const at::Tensor& k, at::Tensor& out,
                        at::Tensor& lse, const Shapes& s, const Grid<NDIM>& g, double scale) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  T* lp = lse.mutable_data_ptr<T>();
  at::parallel_for(0, s.rows, grain(s), [&](int64_t r0, int64_t r1) {
    vfa_forward_rows<scalar_t, NDIM>(qp, kp, op, lp, s, g, static_cast<T>(scale), r0, r1);
  });
}

// d loss / d (q . k_j) for every offset j, written to dl (B, K, *S) in the accumulation type:
// rows [r0, r1) (one thread's share, AVX2 where the CPU has it).
template <typename scalar_t, int NDIM>
FASTREG_VECTOR_LOOP void vfa_dlogit_rows(const scalar_t* gp, const scalar_t* qp, const scalar_t* kp, const scalar_t* op,
                                         const at::opmath_type<scalar_t>* lp, at::opmath_type<scalar_t>* dl,
                                         const Shapes& s, const Grid<NDIM>& g, at::opmath_type<scalar_t> scale,
                                         int64_t r0, int64_t r1) {
  using T = at::opmath_type<scalar_t>;
  std::vector<T> acc(s.width);
  std::vector<T> go(s.width * NDIM);
  std::vector<T> gdo(s.width);
  for (int64_t r = r0; r < r1; ++r) {
    const Row<NDIM> row(r, s, g);
    const int64_t base = row.b * s.channels * s.n;
    for (int64_t w = 0; w < s.width; ++w) {
      T dot = T(0);
      for (int a = 0; a < NDIM; ++a) {
        const int64_t i = (row.b * NDIM + a) * s.n + row.start + w;
        go[w * NDIM + a] = static_cast<T>(gp[i]);
        dot += go[w * NDIM + a] * static_cast<T>(op[i]);
      }
      gdo[w] = dot;
    }
    const T* lr = lp + row.b * s.n + row.start;
    for (int64_t j = 0; j < s.offsets; ++j) {
      int o[NDIM];
      offset_of<NDIM>(j, g.radius, o);
      neighbour_dot<scalar_t, T, NDIM>(qp + base, kp + base, s.channels, g, row.idx, o, 0, s.width, acc.data());
      T* dst = dl + (row.b * s.offsets + j) * s.n + row.start;
      for (int64_t w = 0; w < s.width; ++w) {
        dst[w] = dlogit<T, NDIM>(scale * acc[w], lr[w], &go[w * NDIM], gdo[w], o, scale);
      }
    }
  }
}

template <typename scalar_t, int NDIM>
void vfa_dlogit_kernel(const at::Tensor& gout, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& out, const at::Tensor& lse,
                       at::opmath_type<scalar_t>* dl, const Shapes& s, const Grid<NDIM>& g,
                       double scale) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* gp = gout.const_data_ptr<scalar_t>();
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* op = out.const_data_ptr<scalar_t>();
  const T* lp = lse.const_data_ptr<T>();
  at::parallel_for(0, s.rows, grain(s), [&](int64_t r0, int64_t r1) {
    vfa_dlogit_rows<scalar_t, NDIM>(gp, qp, kp, op, lp, dl, s, g, static_cast<T>(scale), r0, r1);
  });
}

}  // namespace

at::Tensor local_correlation_forward_cpu(const at::Tensor& f_, const at::Tensor& m_,
                                         int64_t radius, double scale, int64_t padding) {
  const Shapes s = check_shapes(f_, m_, radius, "local_correlation");
  const at::Tensor f = f_.contiguous();
  const at::Tensor m = m_.contiguous();
  at::Tensor out = at::empty(volume_sizes(s, s.offsets), f.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "local_correlation_forward_cpu", [&] {
    if (s.width <= tiles::kMaxWidth) {
      const tiles::Layout L(s, radius, radius);
      const tiles::Region R(L, 0);
      const at::Tensor a = L.pad(f, kZeros), b = L.pad(m, static_cast<int>(padding));
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, s.batch * R.tiles, R.grain(s.offsets * s.channels), [&](int64_t t0, int64_t t1) {
        tiles::correlation_forward_tiles<scalar_t>(a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), op, L, R,
                                                   s.channels, static_cast<at::opmath_type<scalar_t>>(scale), t0, t1);
      });
    } else if (s.ndim == 2) {
      correlation_forward_kernel<scalar_t, 2>(f, m, out, s, make_grid<2>(s, radius, padding), scale);
    } else {
      correlation_forward_kernel<scalar_t, 3>(f, m, out, s, make_grid<3>(s, radius, padding), scale);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> local_correlation_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& f_, const at::Tensor& m_, int64_t radius,
    double scale, int64_t padding, std::array<bool, 2> output_mask) {
  const Shapes s = check_shapes(f_, m_, radius, "local_correlation");
  TORCH_CHECK(grad_out_.sizes() == at::IntArrayRef(volume_sizes(s, s.offsets)),
              "fastreg local_correlation: grad_out shape");
  const at::Tensor f = f_.contiguous();
  const at::Tensor m = m_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous().to(f.scalar_type());
  at::Tensor gf = at::empty(output_mask[0] ? f.sizes() : at::IntArrayRef{0}, f.options());
  at::Tensor gm = at::empty(output_mask[1] ? m.sizes() : at::IntArrayRef{0}, m.options());
  if (f.numel() == 0 || (!output_mask[0] && !output_mask[1])) return {gf, gm};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "local_correlation_backward_cpu", [&] {
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    if (s.width <= tiles::kMaxWidth) {
      const tiles::Layout L(s, radius, 2 * radius);
      const at::Tensor a = output_mask[1] ? L.pad(f, kZeros) : at::Tensor();
      const at::Tensor b = output_mask[0] ? L.pad(m, static_cast<int>(padding)) : at::Tensor();
      tiles::backward<scalar_t, scalar_t>(L.pad(grad_out, kZeros), a, b, gf, gm, L, s.batch, s.channels,
                                          static_cast<int>(padding), scale);
    } else if (s.ndim == 2) {
      correlation_backward_kernel<scalar_t, scalar_t, 2>(gp, f, m, gf, gm, s, make_grid<2>(s, radius, padding),
                                                         scale, output_mask[0], output_mask[1]);
    } else {
      correlation_backward_kernel<scalar_t, scalar_t, 3>(gp, f, m, gf, gm, s, make_grid<3>(s, radius, padding),
                                                         scale, output_mask[0], output_mask[1]);
    }
  });
  return {gf, gm};
}

std::tuple<at::Tensor, at::Tensor> vfa_attention_forward_cpu(const at::Tensor& q_,
                                                             const at::Tensor& k_,
                                                             int64_t radius, double scale) {
  const Shapes s = check_shapes(q_, k_, radius, "vfa_attention");
  const at::Tensor q = q_.contiguous();
  const at::Tensor k = k_.contiguous();
  const auto acc_type = at::toOpMathType(q.scalar_type());
  at::Tensor out = at::empty(volume_sizes(s, s.ndim), q.options());
  std::vector<int64_t> lse_sizes = volume_sizes(s, 1);
  lse_sizes.erase(lse_sizes.begin() + 1);
  at::Tensor lse = at::empty(lse_sizes, q.options().dtype(acc_type));
  if (out.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "vfa_attention_forward_cpu", [&] {
    if (s.width <= tiles::kMaxWidth) {
      using T = at::opmath_type<scalar_t>;
      const tiles::Layout L(s, radius, radius);
      const tiles::Region R(L, 0);
      const at::Tensor qq = L.pad(q, kZeros), kk = L.pad(k, kBorder);
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      T* lp = lse.mutable_data_ptr<T>();
      at::parallel_for(0, s.batch * R.tiles, R.grain(s.offsets * s.channels), [&](int64_t t0, int64_t t1) {
        if (s.ndim == 2) {
          tiles::vfa_forward_tiles<scalar_t, 2>(qq.const_data_ptr<scalar_t>(), kk.const_data_ptr<scalar_t>(), op, lp, L, R,
                                                s.channels, static_cast<T>(scale), t0, t1);
        } else {
          tiles::vfa_forward_tiles<scalar_t, 3>(qq.const_data_ptr<scalar_t>(), kk.const_data_ptr<scalar_t>(), op, lp, L, R,
                                                s.channels, static_cast<T>(scale), t0, t1);
        }
      });
    } else if (s.ndim == 2) {
      vfa_forward_kernel<scalar_t, 2>(q, k, out, lse, s, make_grid<2>(s, radius, kBorder), scale);
    } else {
      vfa_forward_kernel<scalar_t, 3>(q, k, out, lse, s, make_grid<3>(s, radius, kBorder), scale);
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> vfa_attention_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_,
    const at::Tensor& out_, const at::Tensor& lse_, int64_t radius, double scale,
    std::array<bool, 2> output_mask) {
  const Shapes s = check_vfa_backward(grad_out_, q_, k_, out_, lse_, radius);
  const at::Tensor q = q_.contiguous();
  const at::Tensor k = k_.contiguous();
  const auto acc_type = at::toOpMathType(q.scalar_type());
  const at::Tensor grad_out = grad_out_.contiguous().to(q.scalar_type());
  const at::Tensor out = out_.contiguous().to(q.scalar_type());
  const at::Tensor lse = lse_.contiguous().to(acc_type);
  at::Tensor gq = at::empty(output_mask[0] ? q.sizes() : at::IntArrayRef{0}, q.options());
  at::Tensor gk = at::empty(output_mask[1] ? k.sizes() : at::IntArrayRef{0}, k.options());
  if (q.numel() == 0 || (!output_mask[0] && !output_mask[1])) return {gq, gk};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "vfa_attention_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    if (s.width <= tiles::kMaxWidth) {
      const tiles::Layout L(s, radius, 2 * radius);
      const tiles::Region R(L, 0);
      const at::Tensor qq = L.pad(q, kZeros), kk = L.pad(k, kBorder);
      // d loss / d (q . k_j) on the padded layout, zero outside the interior.
      at::Tensor dl = L.zeros(s.batch, s.offsets, q.options().dtype(acc_type));
      T* dlp = dl.mutable_data_ptr<T>();
      at::parallel_for(0, s.batch * R.tiles, R.grain(s.offsets * s.channels), [&](int64_t t0, int64_t t1) {
        if (s.ndim == 2) {
          tiles::vfa_dlogit_tiles<scalar_t, 2>(grad_out.const_data_ptr<scalar_t>(), qq.const_data_ptr<scalar_t>(),
                                               kk.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                                               lse.const_data_ptr<T>(), dlp, L, R, s.channels, static_cast<T>(scale), t0, t1);
        } else {
          tiles::vfa_dlogit_tiles<scalar_t, 3>(grad_out.const_data_ptr<scalar_t>(), qq.const_data_ptr<scalar_t>(),
                                               kk.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                                               lse.const_data_ptr<T>(), dlp, L, R, s.channels, static_cast<T>(scale), t0, t1);
        }
      });
      tiles::backward<scalar_t, T>(dl, qq, kk, gq, gk, L, s.batch, s.channels, kBorder, 1.0);
      return;
    }
    // d loss / d (q . k_j): (B, K, *S) in the accumulation type (the only temporary).
    at::Tensor dl = at::empty(volume_sizes(s, s.offsets), q.options().dtype(acc_type));
    T* dlp = dl.mutable_data_ptr<T>();
    if (s.ndim == 2) {
      const Grid<2> g = make_grid<2>(s, radius, kBorder);
      vfa_dlogit_kernel<scalar_t, 2>(grad_out, q, k, out, lse, dlp, s, g, scale);
      correlation_backward_kernel<scalar_t, T, 2>(dlp, q, k, gq, gk, s, g, 1.0, output_mask[0], output_mask[1]);
    } else {
      const Grid<3> g = make_grid<3>(s, radius, kBorder);
      vfa_dlogit_kernel<scalar_t, 3>(grad_out, q, k, out, lse, dlp, s, g, scale);
      correlation_backward_kernel<scalar_t, T, 3>(dlp, q, k, gq, gk, s, g, 1.0, output_mask[0], output_mask[1]);
    }
  });
  return {gq, gk};
}

}  // namespace correlation
}  // namespace fastreg

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  m.impl("local_correlation_forward", &fastreg::correlation::local_correlation_forward_cpu);
  m.impl("local_correlation_backward", &fastreg::correlation::local_correlation_backward_cpu);
  m.impl("vfa_attention_forward", &fastreg::correlation::vfa_attention_forward_cpu);
  m.impl("vfa_attention_backward", &fastreg::correlation::vfa_attention_backward_cpu);
}
