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
}  // namespace fastreg

namespace fastreg {
namespace integrate {

std::tuple<at::Tensor, at::Tensor> integrate_svf_forward_cpu(const at::Tensor& v, int64_t steps,
                                                             int64_t padding, bool save);
at::Tensor integrate_svf_backward_cpu(const at::Tensor& grad_out, const at::Tensor& v,
                                      const at::Tensor& saved, int64_t steps, int64_t padding);
#ifdef FASTREG_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> integrate_svf_forward_cuda(const at::Tensor& v, int64_t steps,
                                                              int64_t padding, bool save);
at::Tensor integrate_svf_backward_cuda(const at::Tensor& grad_out, const at::Tensor& v,
                                       const at::Tensor& saved, int64_t steps, int64_t padding);
#endif

}  // namespace integrate
}  // namespace fastreg
