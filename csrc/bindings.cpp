// The fastreg operator library: the schemas of every op. Each family registers its own
// CPU and CUDA implementations at the end of csrc/<family>/<family>_cpu.cpp / _cuda.cu
// (TORCH_LIBRARY_IMPL); autograd and fake (meta) implementations are registered from Python
// (fastreg/ops/<family>.py), as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

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
  // mode: 0 bilinear, 1 nearest, 2 bicubic; padding: 0 zeros, 1 border, 2 reflection.
  // displacement: loc is a displacement (B|1, ndim, *S) added to the voxel grid, else
  // absolute voxel coordinates (B|1, ndim, *S_out). Contract: csrc/warp/warp.h.
  m.def("warp_forward(Tensor image, Tensor loc, int mode, int padding, bool displacement) -> Tensor");
  m.def(
      "warp_backward(Tensor grad_out, Tensor image, Tensor loc, int mode, int padding, "
      "bool displacement, bool[2] output_mask) -> (Tensor, Tensor)");
  // Scaling and squaring of v (B, ndim, *S): returns (u, saved), saved = the intermediate
  // fields u_k for k in keep (len(keep), *v.shape); the backward recomputes the others,
  // storing the fields `pushes` on its way (fastreg.ops.integrate.checkpoint_plan).
  // padding as for warp. Contract: csrc/integrate/integrate.h, integrate_loop.h.
  m.def("integrate_svf_forward(Tensor v, int steps, int padding, int[] keep) -> (Tensor, Tensor)");
  m.def(
      "integrate_svf_backward(Tensor grad_out, Tensor v, Tensor saved, int steps, int padding, "
      "int[] keep, int[] pushes) -> Tensor");
  // mode: 0 central (Learn2Reg), 1 forward, 2 gradient (np.gradient); spacing: ndim voxel
  // sizes; crop: voxels left out at every border. Contract: csrc/jacobian/jacobian.h.
  m.def("jacobian_det_forward(Tensor disp, int mode, float[] spacing) -> Tensor");
  m.def("jacobian_det_backward(Tensor grad_out, Tensor disp, int mode, float[] spacing) -> Tensor");
  m.def("jacobian_stats(Tensor disp, int mode, float[] spacing, int crop) -> Tensor");
  // Local normalized cross-correlation map (B, C, *S); taps empty: box window, else the
  // per-axis weights concatenated; norm: the n of the formula (0: the sum of the weights).
  // Contract: csrc/lncc/lncc.h.
  m.def(
      "lncc_forward(Tensor a, Tensor b, int[] window, float[] taps, float norm, float smooth_nr, "
      "float floor, float eps) -> Tensor");
  m.def(
      "lncc_backward(Tensor grad_out, Tensor a, Tensor b, int[] window, float[] taps, "
      "float norm, float smooth_nr, float floor, float eps, bool[2] output_mask) -> (Tensor, Tensor)");
  // padding: 0 zeros, 1 border. vfa_attention returns (displacement, log-sum-exp).
  // Contract: csrc/correlation/correlation.h.
  m.def("local_correlation_forward(Tensor f, Tensor m, int radius, float scale, int padding) -> Tensor");
  m.def(
      "local_correlation_backward(Tensor grad_out, Tensor f, Tensor m, int radius, float scale, "
      "int padding, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("vfa_attention_forward(Tensor q, Tensor k, int radius, float scale) -> (Tensor, Tensor)");
  m.def(
      "vfa_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor out, Tensor lse, "
      "int radius, float scale, bool[2] output_mask) -> (Tensor, Tensor)");
}
