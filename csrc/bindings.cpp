// The fastreg operator library: schemas and their CPU/CUDA implementations.
// Autograd and fake (meta) implementations are registered from Python next to each op's
// public function (fastreg/ops/<family>.py), as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

extern "C" {
// Importing fastreg._C loads this library and with it the TORCH_LIBRARY registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef FASTREG_WITH_CUDA
  PyModule_AddObject(module, "WITH_CUDA", Py_True);
  Py_INCREF(Py_True);
#else
  PyModule_AddObject(module, "WITH_CUDA", Py_False);
  Py_INCREF(Py_False);
#endif
  return module;
}
}

TORCH_LIBRARY(fastreg, m) {
  // mode: 0 bilinear, 1 nearest; padding: 0 zeros, 1 border, 2 reflection.
  // displacement: loc is a displacement (B|1, ndim, *S) added to the voxel grid, else
  // absolute voxel coordinates (B|1, ndim, *S_out). Contract: csrc/warp/warp.h.
  m.def("warp_forward(Tensor image, Tensor loc, int mode, int padding, bool displacement) -> Tensor");
  m.def(
      "warp_backward(Tensor grad_out, Tensor image, Tensor loc, int mode, int padding, "
      "bool displacement, bool[2] output_mask) -> (Tensor, Tensor)");
  // Scaling and squaring of v (B, ndim, *S): returns (u, saved), saved = the steps - 1
  // intermediate fields when save, else empty (the backward recomputes them).
  // padding as for warp. Contract: csrc/integrate/integrate.h, integrate_loop.h.
  m.def("integrate_svf_forward(Tensor v, int steps, int padding, bool save) -> (Tensor, Tensor)");
  m.def("integrate_svf_backward(Tensor grad_out, Tensor v, Tensor saved, int steps, int padding) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  m.impl("warp_forward", &fastreg::warp::warp_forward_cpu);
  m.impl("warp_backward", &fastreg::warp::warp_backward_cpu);
  m.impl("integrate_svf_forward", &fastreg::integrate::integrate_svf_forward_cpu);
  m.impl("integrate_svf_backward", &fastreg::integrate::integrate_svf_backward_cpu);
}

#ifdef FASTREG_WITH_CUDA
TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  m.impl("warp_forward", &fastreg::warp::warp_forward_cuda);
  m.impl("warp_backward", &fastreg::warp::warp_backward_cuda);
  m.impl("integrate_svf_forward", &fastreg::integrate::integrate_svf_forward_cuda);
  m.impl("integrate_svf_backward", &fastreg::integrate::integrate_svf_backward_cuda);
}
#endif
