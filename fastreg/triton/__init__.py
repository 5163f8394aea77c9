"""Triton kernels of the fastreg ops, one module per op family (registered as fastreg::triton_* ops)."""
