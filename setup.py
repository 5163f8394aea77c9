"""Build of fastreg._C (the compiled kernels) with torch.utils.cpp_extension.

CPU sources (OpenMP) are always built. CUDA sources are added when the installed torch
has CUDA and nvcc is found, or when FASTREG_CUDA=1 (FASTREG_CUDA=0 turns them off).
FASTREG_NATIVE=1 adds -march=native to the CPU flags. Build against the torch already
installed: ``pip install --no-build-isolation -e .``.
"""
import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("FASTREG_CUDA")
    if flag is not None:
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/*_cpu.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    if os.environ.get("FASTREG_NATIVE") == "1":
        cxx.append("-march=native")
    link = ["-fopenmp"] if sys.platform != "darwin" else []
    if _want_cuda():
        cuda_sources = sorted(glob.glob("csrc/*/*_cuda.cu"))
        return CUDAExtension(
            "fastreg._C",
            cpu_sources + cuda_sources,
            define_macros=[("FASTREG_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
            extra_link_args=link,
        )
    return CppExtension("fastreg._C", cpu_sources, extra_compile_args=cxx, extra_link_args=link)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
