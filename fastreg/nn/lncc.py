"""LNCCLoss: the local normalized cross-correlation loss as an nn.Module over fastreg.lncc.

Contract: forward(a, b) with a, b (B, C, *S) (2-D or 3-D, symmetric in a and b) returns a
0-d tensor: form="neg" gives -mean(cc) (VoxelMorph's NCC loss), form="one_minus" gives
1 - mean(cc) (DP-VFA). window, kernel, sigma and eps are those of fastreg.lncc.
"""
from __future__ import annotations

from typing import Sequence

import torch

from fastreg import _validate as check
from fastreg.ops.lncc import KERNELS, lncc

FORMS = ("neg", "one_minus")


class LNCCLoss(torch.nn.Module):
    """Local normalized cross-correlation loss, O(N) in the window size.

    Example::

        loss_fn = LNCCLoss(window=9)                      # VoxelMorph: -mean(cc)
        loss_fn = LNCCLoss(window=7, form="one_minus")    # DP-VFA / NIO: 1 - mean(cc)
        loss = loss_fn(fixed, moved)                      # (B, C, *S) each
    """

    def __init__(
        self,
        window: int | Sequence[int] = 9,
        kernel: str = "box",
        sigma: float | Sequence[float] | None = None,
        eps: float = 1e-5,
        form: str = "neg",
    ) -> None:
        super().__init__()
        check.lncc_options(window, kernel, sigma, eps, KERNELS)
        check.choice(form, "form", FORMS)
        self.window, self.kernel, self.sigma, self.eps, self.form = window, kernel, sigma, eps, form

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cc = lncc(a, b, self.window, self.kernel, self.sigma, "mean", self.eps)
        return -cc if self.form == "neg" else 1.0 - cc

    def extra_repr(self) -> str:
        return f"window={self.window}, kernel={self.kernel!r}, sigma={self.sigma}, eps={self.eps}, form={self.form!r}"
