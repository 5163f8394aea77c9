// Declarations of the device implementations registered in bindings.cpp.
// Each op family's contract is the comment block of csrc/<family>/<family>.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

namespace fastreg {
namespace warp {

at::Tensor warp_forward_cpu(const at::Tensor& image, const at::Tensor& loc, int64_t mode,
                            int64_t padding, bool displacement);
std::tuple<at::Tensor, at::Tensor> warp_backward_cpu(const at::Tensor& grad_out,
                                                     const at::Tensor& image,
                                                     const at::Tensor& loc, int64_t mode,
                                                     int64_t padding, bool displacement,
                                                     std::array<bool, 2> output_mask);
#ifdef FASTREG_WITH_CUDA
at::Tensor warp_forward_cuda(const at::Tensor& image, const at::Tensor& loc, int64_t mode,
                             int64_t padding, bool displacement);
std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_out,
                                                      const at::Tensor& image,
                                                      const at::Tensor& loc, int64_t mode,
                                                      int64_t padding, bool displacement,
                                                      std::array<bool, 2> output_mask);
#endif

}  // namespace warp

namespace jacobian {

at::Tensor jacobian_det_forward_cpu(const at::Tensor& disp, int64_t mode, c10::ArrayRef<double> spacing);
at::Tensor jacobian_det_backward_cpu(const at::Tensor& grad_out, const at::Tensor& disp, int64_t mode,
                                     c10::ArrayRef<double> spacing);
at::Tensor jacobian_stats_cpu(const at::Tensor& disp, int64_t mode, c10::ArrayRef<double> spacing, int64_t crop);
#ifdef FASTREG_WITH_CUDA
at::Tensor jacobian_det_forward_cuda(const at::Tensor& disp, int64_t mode, c10::ArrayRef<double> spacing);
at::Tensor jacobian_det_backward_cuda(const at::Tensor& grad_out, const at::Tensor& disp, int64_t mode,
                                      c10::ArrayRef<double> spacing);
at::Tensor jacobian_stats_cuda(const at::Tensor& disp, int64_t mode, c10::ArrayRef<double> spacing, int64_t crop);
#endif

}  // namespace jacobian

namespace lncc {

at::Tensor lncc_forward_cpu(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                            at::ArrayRef<double> taps, double norm, double smooth_nr, double floor, double eps);
std::tuple<at::Tensor, at::Tensor> lncc_backward_cpu(const at::Tensor& grad_out, const at::Tensor& a,
                                                     const at::Tensor& b, at::IntArrayRef window,
                                                     at::ArrayRef<double> taps, double norm, double smooth_nr,
                                                     double floor, double eps,
                                                     std::array<bool, 2> output_mask);
#ifdef FASTREG_WITH_CUDA
at::Tensor lncc_forward_cuda(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                             at::ArrayRef<double> taps, double norm, double smooth_nr, double floor, double eps);
std::tuple<at::Tensor, at::Tensor> lncc_backward_cuda(const at::Tensor& grad_out, const at::Tensor& a,
                                                      const at::Tensor& b, at::IntArrayRef window,
                                                      at::ArrayRef<double> taps, double norm, double smooth_nr,
                                                      double floor, double eps,
                                                      std::array<bool, 2> output_mask);
#endif

}  // namespace lncc

namespace correlation {

// Contract: csrc/correlation/correlation.h. padding: 0 zeros, 1 border.
at::Tensor local_correlation_forward_cpu(const at::Tensor& f, const at::Tensor& m, int64_t radius,
                                         double scale, int64_t padding);
std::tuple<at::Tensor, at::Tensor> local_correlation_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& f, const at::Tensor& m, int64_t radius,
    double scale, int64_t padding, std::array<bool, 2> output_mask);
std::tuple<at::Tensor, at::Tensor> vfa_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                             int64_t radius, double scale);
std::tuple<at::Tensor, at::Tensor> vfa_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& out,
    const at::Tensor& lse, int64_t radius, double scale, std::array<bool, 2> output_mask);
#ifdef FASTREG_WITH_CUDA
at::Tensor local_correlation_forward_cuda(const at::Tensor& f, const at::Tensor& m, int64_t radius,
                                          double scale, int64_t padding);
std::tuple<at::Tensor, at::Tensor> local_correlation_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& f, const at::Tensor& m, int64_t radius,
    double scale, int64_t padding, std::array<bool, 2> output_mask);
std::tuple<at::Tensor, at::Tensor> vfa_attention_forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                                              int64_t radius, double scale);
std::tuple<at::Tensor, at::Tensor> vfa_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& out,
    const at::Tensor& lse, int64_t radius, double scale, std::array<bool, 2> output_mask);
#endif

}  // namespace correlation
}  // namespace fastreg

namespace fastreg {
namespace integrate {

std::tuple<at::Tensor, at::Tensor> integrate_svf_forward_cpu(const at::Tensor& v, int64_t steps,
                                                             int64_t padding, at::IntArrayRef keep);
at::Tensor integrate_svf_backward_cpu(const at::Tensor& grad_out, const at::Tensor& v,
                                      const at::Tensor& saved, int64_t steps, int64_t padding,
                                      at::IntArrayRef keep, at::IntArrayRef pushes);
#ifdef FASTREG_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> integrate_svf_forward_cuda(const at::Tensor& v, int64_t steps,
                                                              int64_t padding, at::IntArrayRef keep);
at::Tensor integrate_svf_backward_cuda(const at::Tensor& grad_out, const at::Tensor& v,
                                       const at::Tensor& saved, int64_t steps, int64_t padding,
                                       at::IntArrayRef keep, at::IntArrayRef pushes);
#endif

}  // namespace integrate
}  // namespace fastreg
