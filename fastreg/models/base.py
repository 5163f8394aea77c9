"""The one interface every registration model of fastreg implements.

Contract (every model in fastreg/models/):
  fixed, moving  (B, 1, *S)      images scaled to [0, 1]; 2-D (H, W) or 3-D (D, H, W) spatial,
                                 matching the model's ``ndim``; any spatial size
  model(fixed, moving) -> disp   (B, ndim, *S) displacement in voxels on the fixed grid, ij
                                 order (channel k moves along spatial axis k), voxel centres at
                                 integer indices: ``fastreg.warp(moving, disp)`` matches ``fixed``
Levels (coarse to fine, for neural instance optimization):
  model.num_levels               how many levels the network refines the field in (>= 1)
  model(fixed, moving, levels=k) the displacement built by the k coarsest levels only, at the
                                 input's full resolution (each level's field upsampled); k =
                                 num_levels (the default, None) is the full prediction
Velocity models (``model.svf`` True) also give
  model.velocity(fixed, moving)  (B, ndim, *S') the stationary velocity the displacement
                                 integrates, so the inverse is ``exp(-v)``; S' is the grid the
                                 model integrates on (see the model's docstring)
  model.inverse(fixed, moving)   (B, ndim, *S) the displacement of the inverse deformation (on
                                 the moving grid): by default exp(-velocity) resized to S (a
                                 velocity on S' = S / k for an integer k); a model whose
                                 deformation is not one exponential (the cascade) overrides it
Recursion (``model.passes`` = n > 1, displacement models only): the network is applied n
times with the same weights, each pass registering the moving image warped by the field so
far, and the fields are composed (u <- u o ... : ``fastreg.compose(u, d)``), the weight-shared
recursive cascade of Zhao et al. (ICCV 2019); a model trained for one pass refines its own
residual. Levels apply to every pass. What a pass derives from the fixed image alone is the
same in every pass: a model may return it from ``encode_fixed(fixed)`` (None by default: no
reuse), and then its ``predict`` takes it as ``fixed_code=`` whenever passes > 1, so it is
computed once (UniReg's extractor features, the pyramids' fixed-image encoder); one pass runs
exactly as before.
Spacing: ``model.spacing`` is the isotropic voxel size (mm) the weights were trained for, set
by the loader of shipped weights (fastreg.models.weights) or a recipe's ``[model] spacing``;
None (the default) means any: `fastreg.register` then runs the network at the fixed image's
own smallest spacing.
Sizes: a subclass states ``multiple`` (the factor the network's input sizes must divide by)
and may state ``min_size`` (the smallest padded size per axis, e.g. for instance norms that
need more than one voxel at the coarsest level); ``forward`` pads both images up to them
(replicate padding of the last voxels) and crops the field back, so odd and tiny sizes never
raise.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from fastreg.ops.integrate import integrate_svf
from fastreg.ops.resize import resize_field
from fastreg.ops.warp import compose, warp


class RegistrationModel(nn.Module):
    """Base class: validation, padding to ``multiple`` and cropping back.

    Subclasses set ``ndim``, ``multiple``, ``num_levels`` and ``svf`` and implement
    ``predict(fixed, moving, levels)`` on padded inputs (sizes divisible by ``multiple``).
    """

    ndim: int = 3
    multiple: int = 1
    min_size: int = 1
    num_levels: int = 1
    svf: bool = False
    passes: int = 1
    spacing: float | None = None

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, levels: int) -> torch.Tensor:
        raise NotImplementedError

    def encode_fixed(self, fixed: torch.Tensor):
        """What ``predict`` derives from the padded fixed image alone, for reuse by every pass
        (module docstring: Recursion); None: nothing is reused."""
        return None

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        self.check_pair(fixed, moving)
        levels = self.check_levels(levels)
        shape = tuple(fixed.shape[2:])
        fixed_p, moving_p = self.pad(fixed), self.pad(moving)
        code = self.encode_fixed(fixed_p) if self.passes > 1 else None
        extra = {} if code is None else {"fixed_code": code}
        disp = self.predict(fixed_p, moving_p, levels, **extra)
        for _ in range(self.passes - 1):
            residual = self.predict(fixed_p, warp(moving_p, disp, padding_mode="border"), levels, **extra)
            disp = compose(disp, residual)
        return self.crop(disp, shape)

    def inverse(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """(B, ndim, *S): the inverse of ``self(fixed, moving)`` of a velocity model, exp(-v)
        resized to the input's size S (module docstring: Velocity models)."""
        if not self.svf:
            raise ValueError(f"inverse: {type(self).__name__} is not a velocity model (svf); "
                             "invert its displacement with fastreg.invert_field")
        self.check_pair(fixed, moving)
        u = integrate_svf(-self.velocity(fixed, moving))
        shape = tuple(fixed.shape[2:])
        return u if tuple(u.shape[2:]) == shape else resize_field(u, size=shape)

    def set_passes(self, passes: int) -> None:
        """Apply the network ``passes`` times (module docstring: Recursion)."""
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes: expected a positive int, got {passes!r}")
        if passes > 1 and self.svf:
            raise ValueError("passes: a velocity model (svf) is applied once (its inverse is exp(-v))")
        self.passes = passes

    # -- helpers shared by every model -------------------------------------------------
    def check_pair(self, fixed, moving) -> None:
        for name, x in (("fixed", fixed), ("moving", moving)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
            if not x.is_floating_point():
                raise TypeError(f"{name}: expected a floating-point image in [0, 1], got {x.dtype}")
            if x.dim() != self.ndim + 2:
                raise ValueError(
                    f"{name}: expected a {self.ndim + 2}-D tensor (B, 1, *S) for this {self.ndim}-D model, "
                    f"got shape {tuple(x.shape)}"
                )
            if x.shape[1] != 1:
                raise ValueError(f"{name}: expected 1 channel (B, 1, *S), got {x.shape[1]}")
        if fixed.shape != moving.shape:
            raise ValueError(f"moving: expected the shape of fixed {tuple(fixed.shape)}, got {tuple(moving.shape)}")
        if fixed.device != moving.device:
            raise ValueError(f"moving: expected a tensor on {fixed.device} like fixed, got {moving.device}")

    def check_levels(self, levels) -> int:
        if levels is None:
            return self.num_levels
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= self.num_levels:
            raise ValueError(f"levels: expected an int in [1, {self.num_levels}] or None, got {levels!r}")
        return levels

    def padded_shape(self, shape) -> tuple[int, ...]:
        m = self.multiple
        return tuple(max(-(-int(s) // m) * m, self.min_size) for s in shape)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad the trailing end of every spatial axis up to ``multiple`` (at least ``min_size``)."""
        target = self.padded_shape(x.shape[2:])
        extra = [t - s for s, t in zip(x.shape[2:], target)]
        if not any(extra):
            return x
        pads = []
        for e in reversed(extra):
            pads += [0, e]
        return F.pad(x, pads, mode="replicate")

    @staticmethod
    def crop(disp: torch.Tensor, shape) -> torch.Tensor:
        """The field on the leading ``shape`` voxels (the padding sits at the trailing end, so
        voxel indices and displacements are unchanged)."""
        if tuple(disp.shape[2:]) == tuple(shape):
            return disp
        return disp[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
