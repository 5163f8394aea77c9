"""Triton kernels of the op families (one module per family, same names as fastreg/ops).
Importing a module registers its torch.library triton_ops; fastreg.ops imports them lazily."""
