"""Infinite, batched, reproducible streams of synthetic training pairs (torch IterableDatasets).

  LabelMPairs      UniReg's LabelM and Multi-LabelM (Shao & Joshi), 2-D by default (224^2).
  SynthMorphPairs  the cascaded U-Net's SynthMorph-style pairs (Kolenbrander et al.), 3-D.

Each iteration yields one batch, a dict of tensors on ``device`` (use
``DataLoader(stream, batch_size=None, num_workers=n)``; DataLoader workers must generate on
the CPU, a GPU stream runs in the main process). Streams are reproducible from
``(seed, rank, worker id)``: each DataLoader worker and each DDP rank (``rank=`` or, when
torch.distributed is initialised, its rank) draws its own stream, seeded by
``fastreg.data._random.stream_seed``. ``draw(generator)`` makes one batch from a given
torch.Generator.

Field convention of ``disp`` (both streams): the displacement (B, ndim, *S), in voxels of the
fixed grid (ij channel order), that warps the moving image onto the fixed one::

    fastreg.warp(batch["moving"], batch["disp"]) ~ batch["fixed"]

up to interpolation, wherever the labels are locally constant and x + disp(x) stays inside
the image: the field a registration model should predict for (fixed, moving).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from fastreg import _validate as check
from fastreg.data import _random
from fastreg.data.fields import fold_free_disps, random_velocity
from fastreg.data.intensities import CONTRASTS, apply_colormap, pair_contrast, random_colormap, recolor_labels, render
from fastreg.data.labels import KINDS, NOISE_GRID, SIZES, label_map
from fastreg.ops.warp import compose, warp

RECOLOR = ("labels", "colormap")


class _PairStream(IterableDataset):
    """Seeding and iteration shared by the pair streams; subclasses implement ``draw``."""

    def __init__(self, seed: int, device, rank: int | None):
        self.seed = check.non_negative_int(seed, "seed")
        self.rank = None if rank is None else check.non_negative_int(rank, "rank")
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def stream_rank(self) -> int:
        """The rank whose stream this process draws: ``rank=``, else torch.distributed's."""
        if self.rank is not None:
            return self.rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
        return 0

    def generator(self) -> torch.Generator:
        """The generator of this process's stream: seeded from (seed, rank, worker id)."""
        worker = get_worker_info()
        seed = _random.stream_seed(self.seed, self.stream_rank(), worker.id if worker is not None else 0)
        return torch.Generator(self.device).manual_seed(seed)

    def __iter__(self):
        generator = self.generator()
        while True:
            yield self.draw(generator)

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class LabelMPairs(_PairStream):
    """UniReg's LabelM pairs: (B, 1, size, size) label-map images and their true field.

    Recipe (Shao & Joshi, sec. 3.1; J, r_p and b_p are not given as numbers in the paper,
    the defaults here are ours):
      * label map: ``fastreg.data.label_map(kind="labelm")`` with J = ``num_labels`` (16)
        noise images on an r_p^2 grid (``label_size``: "medium" r_p = 6, "small" 12,
        "large" 3), drawn ``margin`` voxels larger on every side than the crop;
      * fixed = label / (J - 1) (the label map as an image in [0, 1]), the central
        ``size``^2 crop (the map is stationary, so a fixed crop is as random as any);
      * phi = exp(v): v from ``fastreg.data.random_velocity``, normal noise on a
        ``field_grid``^2 grid (r_p, 6) with sigma ~ U(0, b_p), b_p = ``max_std`` = 8 voxels of
        the image, drawn per sample, upsampled to a grid ``integrate_factor`` (4) times
        coarser than the image, integrated there by ``steps`` (7) scaling-and-squaring steps
        and upsampled with ``fastreg.resize_field`` (the paper integrates at a coarse
        resolution and upsamples; 1 integrates on the image grid). The paper's "N SVFs, N the
        number of image channels" is read as one 2-component velocity shared by every
        channel, so that all channels move alike;
      * moving = fixed warped by phi (linear, border padding) on the large map, then cropped;
      * ``disp`` = exp(-v), the inverse of phi (see the module docstring): warps moving onto
        fixed. A rare tail draw whose phi or inverse would fold has its v scaled down until
        neither does (``fastreg.data.fields.fold_free_disps``).
    Multi-modal (``multimodal=True``, Multi-LabelM and the supplement's training recipe): the
    moving image is made from a recoloured fixed image, I_mM = recolour(I_f) o phi, with
    ``recolor="labels"`` (a random gray level per label, ``fastreg.data.recolor_labels``) or
    "colormap" (a random monotonic map ``fastreg.data.random_colormap``, BSD-style);
    ``channels`` 1 (gray) or 3 (colour); ``moving_mono`` is the mono-modal twin I_f o phi, the
    image the loss compares with.
    Yields {"fixed": (B, 1, S, S), "moving": (B, C, S, S), "disp": (B, 2, S, S), and with
    ``multimodal`` "moving_mono": (B, 1, S, S)}, float32 on ``device``.
    """

    def __init__(
        self,
        size: int = 224,
        multimodal: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        *,
        batch_size: int = 1,
        num_labels: int = 16,
        label_size: str = "medium",
        field_grid: int = NOISE_GRID["medium"],
        max_std: float = 8.0,
        steps: int = 7,
        integrate_factor: int = 4,
        margin: int = 16,
        recolor: str = "labels",
        channels: int = 1,
        rank: int | None = None,
    ):
        super().__init__(seed, device, rank)
        self.size = check.positive_int(size, "size", minimum=2)
        if not isinstance(multimodal, bool):
            raise TypeError(f"multimodal: expected a bool, got {type(multimodal).__name__}")
        self.multimodal = multimodal
        self.batch_size = check.positive_int(batch_size, "batch_size")
        self.num_labels = check.positive_int(num_labels, "num_labels", minimum=2)
        check.choice(label_size, "label_size", SIZES)
        self.label_size = label_size
        self.field_grid = check.positive_int(field_grid, "field_grid", minimum=2)
        self.max_std = check.non_negative(max_std, "max_std")
        self.steps = check.non_negative_int(steps, "steps")
        self.integrate_factor = check.positive_int(integrate_factor, "integrate_factor")
        self.margin = check.non_negative_int(margin, "margin")
        check.choice(recolor, "recolor", RECOLOR)
        self.recolor = recolor
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels: expected 1 (gray) or 3 (colour), got {channels!r}")
        self.channels = channels

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One batch (see the class docstring) from ``generator``."""
        big = (self.size + 2 * self.margin,) * 2
        labels = label_map(big, num_labels=self.num_labels, kind="labelm", size=self.label_size,
                           batch=self.batch_size, generator=generator, device=self.device)
        fixed = labels.to(torch.float32) / (self.num_labels - 1)
        grid = (max(2, math.ceil((big[0] - 1) / self.integrate_factor) + 1),) * 2
        max_std = self.max_std * (grid[0] - 1) / (big[0] - 1)  # voxels of the integration grid
        velocity = random_velocity(big, batch=self.batch_size, scales=(self.field_grid,), max_std=max_std,
                                   generator=generator, device=self.device, grid=grid)
        _, (forward, inverse) = fold_free_disps(velocity, self.steps, big, signs=(1, -1))
        crop = (slice(None), slice(None)) + (slice(self.margin, self.margin + self.size),) * 2
        out = {"fixed": fixed[crop]}
        moving = warp(fixed, forward, padding_mode="border")
        if self.multimodal:
            out["moving_mono"] = moving[crop]
            if self.recolor == "labels":
                colored = recolor_labels(labels, self.num_labels, self.channels, generator=generator)
            else:
                colormap = random_colormap(self.batch_size, self.channels, generator=generator, device=self.device)
                colored = apply_colormap(fixed, colormap)
            moving = warp(colored, forward, padding_mode="border")
        out["moving"] = moving[crop]
        out["disp"] = inverse[crop].contiguous()
        return {k: v.contiguous() for k, v in out.items()}


class SynthMorphPairs(_PairStream):
    """SynthMorph-style pairs for the cascaded U-Net (Kolenbrander, Maspero, Pluim; after
    Hoffmann et al. 2022): gray images, their label maps and true fields.

    Recipe per pair:
      * a base label map ``fastreg.data.label_map(shape, num_labels, kind, size)`` (kind
        "synthmorph" by default; "labelm", "spheres", "rectangles" also work);
      * two independent deformations phi_F, phi_M (``fastreg.data.random_field`` with
        ``scales`` (24, 12, 6), ``max_std`` 3, ``steps`` 5, ``half_res`` True: the paper's);
      * fixed_labels = base o phi_F, moving_labels = base o phi_M (nearest, border padding);
      * gray images by ``fastreg.data.render`` with ``pair_contrast(contrast)`` ("dynamic"
        default; "static", "dynamic*"), label 0 zeroed with p = 0.2, min-max scaled; the
        SynthMorph corruptions ``blur_std``, ``bias_std``, ``gamma_std``, ``noise_std`` (0 = off,
        as in the paper).
    Yields {"fixed", "moving": (B, 1, *S) float32 in [0, 1]; "fixed_labels", "moving_labels":
    (B, 1, *S) int64; "fixed_disp", "moving_disp": (B, ndim, *S) the displacements of phi_F and
    phi_M (base -> each image, in voxels)}, and with ``with_disp`` also "disp" =
    phi_M^-1 o phi_F (module docstring: warps moving onto fixed; phi_M^-1 = exp(-v_M); costs
    one more integration and a composition). Velocities whose fields would fold are scaled
    down until they do not (``fastreg.data.fields.fold_free_disps``).
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_labels: int = 26,
        contrast: str = "dynamic",
        seed: int = 0,
        device: torch.device | str | None = None,
        *,
        batch_size: int = 1,
        kind: str = "synthmorph",
        size: str = "medium",
        scales: Sequence[int] = (24, 12, 6),
        max_std: float = 3.0,
        steps: int = 5,
        half_res: bool = True,
        with_disp: bool = False,
        blur_std: float = 0.0,
        bias_std: float = 0.0,
        gamma_std: float = 0.0,
        noise_std: float = 0.0,
        rank: int | None = None,
    ):
        super().__init__(seed, device, rank)
        self.shape = check.spatial_shape(shape)
        self.num_labels = check.positive_int(num_labels, "num_labels")
        check.choice(contrast, "contrast", CONTRASTS)
        self.contrast = contrast
        self.batch_size = check.positive_int(batch_size, "batch_size")
        check.choice(kind, "kind", KINDS)
        check.choice(size, "size", SIZES)
        self.kind, self.size = kind, size
        self.field = dict(scales=tuple(scales), max_std=max_std, half_res=half_res)
        self.steps = check.non_negative_int(steps, "steps")
        # Validate the field arguments once, on a tiny draw.
        random_velocity((2,) * len(self.shape), generator=torch.Generator().manual_seed(0), **self.field)
        if not isinstance(with_disp, bool):
            raise TypeError(f"with_disp: expected a bool, got {type(with_disp).__name__}")
        self.with_disp = with_disp
        self.corruptions = dict(blur_std=check.non_negative(blur_std, "blur_std"),
                                bias_std=check.non_negative(bias_std, "bias_std"),
                                gamma_std=check.non_negative(gamma_std, "gamma_std"),
                                noise_std=check.non_negative(noise_std, "noise_std"))

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One batch (see the class docstring) from ``generator``."""
        batch, shape = self.batch_size, self.shape
        base = label_map(shape, num_labels=self.num_labels, kind=self.kind, size=self.size, batch=batch,
                         generator=generator, device=self.device).to(torch.float32)
        out = {}
        disps = {}
        for name in ("fixed", "moving"):
            velocity = random_velocity(shape, batch=batch, generator=generator, device=self.device, **self.field)
            signs = (1, -1) if name == "moving" and self.with_disp else (1,)
            _, disps[name] = fold_free_disps(velocity, self.steps, shape, signs)
            disp = disps[name][0]
            out[f"{name}_labels"] = warp(base, disp, mode="nearest", padding_mode="border").to(torch.int64)
            out[f"{name}_disp"] = disp
        del base
        (mean_f, std_f), (mean_m, std_m) = pair_contrast(batch, self.num_labels, self.contrast,
                                                          generator=generator, device=self.device)
        out["fixed"] = render(out["fixed_labels"], mean_f, std_f, generator=generator, **self.corruptions)
        out["moving"] = render(out["moving_labels"], mean_m, std_m, generator=generator, **self.corruptions)
        if self.with_disp:
            out["disp"] = compose(disps["moving"][1], out["fixed_disp"])
        return out
