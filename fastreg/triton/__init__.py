"""Triton kernels of the op families (one module per family, same names as fastreg/ops)."""
