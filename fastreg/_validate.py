"""Argument checks shared by the public ops: each error names the argument and what
was expected (TypeError for a wrong type or dtype, ValueError for a wrong value/shape)."""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FIELD = "(B, 2, H, W) or (B, 3, D, H, W)"  # the shapes of a displacement or velocity field


def tensor(x, name: str) -> torch.Tensor:
    """`x` is a floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor (float32/float64/float16/bfloat16), got {x.dtype}")
    return x


def spatial_ndim(x: torch.Tensor, name: str, what: str = "(B, C, H, W) or (B, C, D, H, W)") -> int:
    """Number of spatial dimensions (2 or 3) of a (B, C, *S) tensor."""
    if x.dim() not in (4, 5):
        raise ValueError(f"{name}: expected a 4-D or 5-D tensor {what}, got shape {tuple(x.shape)}")
    return x.dim() - 2


def field(x, name: str, ndim: int) -> torch.Tensor:
    """`x` is a vector field (B, ndim, *S) with `ndim` spatial dimensions."""
    tensor(x, name)
    if x.dim() != ndim + 2:
        raise ValueError(
            f"{name}: expected a {ndim + 2}-D field (B, {ndim}, *spatial) for {ndim}-D data, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != ndim:
        raise ValueError(f"{name}: expected {ndim} channels (one per spatial axis, ij order), got {x.shape[1]}")
    return x


def same_device(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    first_name, first = named[0]
    for name, x in named[1:]:
        if x.device != first.device:
            raise ValueError(f"{name}: expected a tensor on {first.device} like {first_name}, got {x.device}")


def same_dtype(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    first_name, first = named[0]
    for name, x in named[1:]:
        if x.dtype != first.dtype:
            raise TypeError(f"{name}: expected dtype {first.dtype} like {first_name}, got {x.dtype}")


def batch_broadcast(x: torch.Tensor, name: str, batch: int, batch_name: str) -> None:
    """`x` has batch 1 (broadcast) or `batch`."""
    if x.shape[0] not in (1, batch):
        raise ValueError(f"{name}: expected batch 1 or {batch} (the batch of {batch_name}), got {x.shape[0]}")


def choice(value, name: str, options: Sequence[str]) -> int:
    """Index of `value` among `options`."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {tuple(options)}, got {value!r}")
    return list(options).index(value)


def spacing(value, name: str, ndim: int) -> tuple[float, ...]:
    """Voxel size per spatial axis: None (1 everywhere), one positive number for every axis,
    or a sequence of `ndim` positive numbers."""
    if value is None:
        return (1.0,) * ndim
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * ndim
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected None, a number or {ndim} numbers, got {value!r}") from None
    if len(values) != ndim:
        raise ValueError(f"{name}: expected {ndim} values (one per spatial axis), got {len(values)}")
    if not all(v > 0 and v != float("inf") for v in values):
        raise ValueError(f"{name}: expected positive finite voxel sizes, got {values}")
    return values


def per_axis(value, name: str, ndim: int) -> tuple[int, ...]:
    """An int, or a sequence of `ndim` ints (one per spatial axis), as a tuple of `ndim` ints."""
    items = [value] * ndim if isinstance(value, int) else value
    if not isinstance(items, (list, tuple)) or len(items) != ndim:
        raise ValueError(f"{name}: expected an int or {ndim} ints (one per spatial axis), got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise TypeError(f"{name}: expected integers, got {value!r}")
    return tuple(items)


def non_negative_int(value, name: str) -> int:
    """`value` is an int >= 0 (bools and floats are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a non-negative int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value}")
    return int(value)


def spatial_shape(value, name: str = "shape") -> tuple[int, ...]:
    """A spatial size of 2 or 3 positive ints."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3):
        raise ValueError(f"{name}: expected 2 or 3 spatial sizes (H, W) or (D, H, W), got {value!r}")
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in value):
        raise TypeError(f"{name}: expected integers, got {value!r}")
    if any(s < 2 for s in value):
        raise ValueError(f"{name}: expected sizes of at least 2, got {value!r}")
    return tuple(int(s) for s in value)


def positive_int(value, name: str, minimum: int = 1) -> int:
    """An int >= ``minimum`` (bools and floats are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def non_negative(value, name: str) -> float:
    """A finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a non-negative number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return float(value)


def probability(value, name: str) -> float:
    """A number in [0, 1]."""
    p = non_negative(value, name)
    if p > 1:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")
    return p


def interval(value, name: str) -> tuple[float, float]:
    """A pair (low, high) of finite numbers with 0 <= low <= high."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name}: expected a pair (low, high), got {value!r}")
    low, high = (non_negative(v, name) for v in value)
    if low > high:
        raise ValueError(f"{name}: expected low <= high, got {value!r}")
    return low, high


def generator(value, name: str = "generator") -> torch.Generator | None:
    """A torch.Generator or None."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {type(value).__name__}")
    return value


def int_in_range(value, name: str, low: int, high: int, why: str = "") -> int:
    """`value` is an int in [low, high] (bools and floats are rejected); ``why`` explains the limit."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}]{f' ({why})' if why else ''}, got {value}")
    return int(value)


def positive_number(value, name: str) -> float:
    """`value` is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return float(value)


def positive_scalar_tensor(x, name: str) -> torch.Tensor:
    """`x` is a one-element floating-point tensor holding a finite value > 0 (checked on the
    host, except while torch.compile traces, where the value is unknown)."""
    tensor(x, name)
    if x.numel() != 1:
        raise ValueError(f"{name}: expected a one-element tensor, got shape {tuple(x.shape)}")
    if not torch.compiler.is_compiling():
        value = float(x.detach().reshape(()))
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return x


def channels(x: torch.Tensor, name: str) -> int:
    """`x` (B, C, *S) has at least one channel."""
    if x.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one channel, got shape {tuple(x.shape)}")
    return int(x.shape[1])


def sampled_image(image: torch.Tensor, name: str) -> None:
    """An image that is read (the output has elements) has no zero-size spatial axis."""
    if min(image.shape[2:]) == 0:
        raise ValueError(f"{name}: expected non-empty spatial axes to sample from, got shape {tuple(image.shape)}")


MAX_STEPS = 63


def squaring_steps(value, name: str) -> int:
    """Scaling-and-squaring steps: an int in [0, MAX_STEPS], the same limit on every backend
    (v is scaled by 2**-steps, and 2**steps must fit a 64-bit integer)."""
    return int_in_range(value, name, 0, MAX_STEPS, "2**steps must fit a 64-bit integer")


def finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """`x` holds no NaN or inf (one host sync on a GPU)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return x


def model_ndim(value, name: str = "ndim") -> int:
    """A model's spatial dimensionality: the int 2 or 3."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected the int 2 or 3, got {type(value).__name__} {value!r}")
    if value not in (2, 3):
        raise ValueError(f"{name}: expected 2 or 3 spatial dimensions, got {value}")
    return int(value)


def positive_ints(value, name: str, length: int | None = None) -> tuple[int, ...]:
    """A sequence of positive ints (``length`` of them when given), as a tuple."""
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                                                   for v in value):
        raise TypeError(f"{name}: expected a sequence of positive ints, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name}: expected {length} values, got {len(value)}: {tuple(value)}")
    if not value or any(v < 1 for v in value):
        raise ValueError(f"{name}: expected positive ints, got {tuple(value)}")
    return tuple(int(v) for v in value)


def boolean(value, name: str) -> bool:
    """True or False (a bool, not a truthy object)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


def resize_target(size, scale_factor, ndim: int) -> tuple[str, tuple]:
    """Exactly one of a new spatial ``size`` (an int or ``ndim`` ints >= 1) and a
    ``scale_factor`` (a number or ``ndim`` positive finite numbers): ("size", ints) or
    ("scale_factor", floats), one per spatial axis."""
    if (size is None) == (scale_factor is None):
        raise ValueError("size, scale_factor: expected exactly one of them, got "
                         f"size={size!r}, scale_factor={scale_factor!r}")
    if scale_factor is not None:
        factors = _numbers_per_axis(scale_factor, "scale_factor", ndim, float)
        if any(not math.isfinite(f) or f <= 0 for f in factors):
            raise ValueError(f"scale_factor: expected positive finite factors, got {scale_factor!r}")
        return "scale_factor", factors
    sizes = _numbers_per_axis(size, "size", ndim, int)
    if any(s < 1 for s in sizes):
        raise ValueError(f"size: expected positive sizes, got {size!r}")
    return "size", sizes


def _numbers_per_axis(value, name: str, ndim: int, kind: type) -> tuple:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a number or a sequence of {ndim}, got bool")
    if isinstance(value, (int, float)) and (kind is float or isinstance(value, int)):
        return (kind(value),) * ndim
    if isinstance(value, Sequence) and len(value) == ndim and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and (kind is float or isinstance(x, int)) for x in value
    ):
        return tuple(kind(x) for x in value)
    what = "int" if kind is int else "number"
    raise TypeError(f"{name}: expected an {what} or a sequence of {ndim} of them (one per spatial axis), got {value!r}")


def jacobian(disp, mode, voxel_size, modes: Sequence[str]) -> tuple[int, int, tuple[float, ...]]:
    """The arguments of jacobian_det / jacobian_stats: disp a field (B, ndim, *S), ``mode``
    one of ``modes`` ("gradient" needs every spatial size >= 2), ``voxel_size`` the argument
    ``spacing`` (see ``spacing``). Returns (ndim, the mode's index, the voxel sizes)."""
    tensor(disp, "disp")
    ndim = spatial_ndim(disp, "disp", FIELD)
    field(disp, "disp", ndim)
    mode_index = choice(mode, "mode", modes)
    sp = spacing(voxel_size, "spacing", ndim)
    if mode == "gradient" and min(disp.shape[2:]) < 2:
        raise ValueError(f"disp: mode 'gradient' (np.gradient) needs every spatial size >= 2, got {tuple(disp.shape[2:])}")
    return ndim, mode_index, sp


def crop(value, shape: Sequence[int]) -> int:
    """A border crop: an int >= 0 that leaves voxels of the spatial ``shape``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"crop: expected a non-negative integer, got {value!r}")
    if min(shape) <= 2 * value:
        raise ValueError(f"crop: {value} voxels from every border leave nothing of spatial size {tuple(shape)}")
    return value


def resize_options(size, scale_factor) -> None:
    """Exactly one of ``size`` (ints >= 1) and ``scale_factor`` (positive numbers), each one
    value or one per spatial axis (their count is checked against the field, by ``resize_target``)."""
    if (size is None) == (scale_factor is None):
        raise ValueError(f"size, scale_factor: expected exactly one of them, got size={size!r}, scale_factor={scale_factor!r}")
    for value, name in ((size, "size"), (scale_factor, "scale_factor")):  # per axis or one for all
        for item in value if isinstance(value, (list, tuple)) else ([] if value is None else [value]):
            if name == "size":
                int_in_range(item, name, 1, 2**62)
            else:
                positive_number(item, name)


def lncc_options(window, kernel: str, sigma, eps, kernels: Sequence[str]) -> None:
    """The options of ``lncc`` that do not depend on the images (nn.LNCCLoss checks them at
    construction): odd windows >= 1, the kernel (one of ``kernels``), sigma only with
    "gaussian" (positive numbers), eps a number >= 0."""
    items = window if isinstance(window, (list, tuple)) else [window]
    if not isinstance(window, (int, list, tuple)) or not items:
        raise ValueError(f"window: expected an odd int or odd ints (one per spatial axis), got {window!r}")
    if any(isinstance(k, bool) or not isinstance(k, int) for k in items):
        raise TypeError(f"window: expected integers, got {window!r}")
    if any(k < 1 or k % 2 == 0 for k in items):
        raise ValueError(f"window: expected odd sizes >= 1, got {window!r}")
    choice(kernel, "kernel", kernels)
    if kernel == "box" and sigma is not None:
        raise ValueError(f"sigma: only used by kernel='gaussian', got {sigma!r} with kernel='box'")
    values = sigma if isinstance(sigma, (list, tuple)) else [] if sigma is None else [sigma]
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < math.inf for x in values):
        raise ValueError(f"sigma: expected positive numbers, got {sigma!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < math.inf:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")


def windows(window, shape: Sequence[int]) -> tuple[int, ...]:
    """Validated window sizes, one odd int per spatial axis in [1, size of the axis] (any
    odd size along an empty axis: there is no voxel to window)."""
    sizes = per_axis(window, "window", len(shape))
    for k, size in zip(sizes, shape):
        if k < 1 or k % 2 == 0:
            raise ValueError(f"window: expected odd sizes >= 1, got {window!r}")
        if 0 < size < k:
            raise ValueError(f"window: expected sizes no larger than the image {tuple(shape)}, got {window!r}")
    return sizes


def sigmas(sigma, n: int) -> list[float]:
    """Gaussian widths: a positive number for all ``n`` axes or ``n`` positive numbers."""
    values = [sigma] * n if isinstance(sigma, (int, float)) else sigma
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise ValueError(f"sigma: expected a number or {n} numbers, got {sigma!r}")
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in values):
        raise ValueError(f"sigma: expected positive numbers, got {sigma!r}")
    return list(values)


def feature_pair(a, b, name_a: str, name_b: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature maps (B|1, C, *S) of the same C, *S, dtype and device; a batch-1 map is
    expanded to the other's batch. Returns the pair."""
    tensor(a, name_a)
    tensor(b, name_b)
    spatial_ndim(a, name_a)
    channels(a, name_a)
    same_device([(name_a, a), (name_b, b)])
    same_dtype([(name_a, a), (name_b, b)])
    if b.dim() != a.dim():
        raise ValueError(f"{name_b}: expected a {a.dim()}-D tensor like {name_a}, got shape {tuple(b.shape)}")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"{name_b}: expected {a.shape[1]} channels (those of {name_a}), got {b.shape[1]}")
    if b.shape[2:] != a.shape[2:]:
        raise ValueError(
            f"{name_b}: expected spatial size {tuple(a.shape[2:])} (that of {name_a}), got {tuple(b.shape[2:])}"
        )
    if a.shape[0] != b.shape[0]:
        if b.shape[0] == 1:
            b = b.expand(a.shape[0], *b.shape[1:])
        elif a.shape[0] == 1:
            a = a.expand(b.shape[0], *a.shape[1:])
        else:
            batch_broadcast(b, name_b, a.shape[0], name_a)
    return a, b


def radius(value, shape) -> int:
    """1 <= radius <= the largest spatial size (beyond it every added offset reads padding
    only, and the (2r+1)^ndim offsets grow without bound)."""
    return int_in_range(value, "radius", 1, max(max(shape), 1), f"at most the largest spatial size of {tuple(shape)}")


def correlation_scale(scale, channels: int) -> float:
    """local_correlation's ``scale``: "rsqrt_channels" (channels**-0.5), None (1) or a finite number."""
    if scale is None:
        return 1.0
    if isinstance(scale, str):
        if scale != "rsqrt_channels":
            raise ValueError(f"scale: expected 'rsqrt_channels', None or a number, got {scale!r}")
        return channels**-0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected 'rsqrt_channels', None or a number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    return float(scale)


def sampling(image, loc, loc_name: str, mode, padding_mode, modes: Sequence[str], paddings: Sequence[str],
             same_size: bool = False) -> int:
    """warp / sample: image (B, C, *S), positions ``loc`` (B|1, ndim, *S_out) of its dtype and
    device (S_out == S when ``same_size``: a displacement), mode and padding_mode among
    ``modes`` and ``paddings``. Returns ndim."""
    tensor(image, "image")
    ndim = spatial_ndim(image, "image")
    field(loc, loc_name, ndim)
    same_device([("image", image), (loc_name, loc)])
    same_dtype([("image", image), (loc_name, loc)])
    batch_broadcast(loc, loc_name, image.shape[0], "image")
    choice(mode, "mode", modes)
    choice(padding_mode, "padding_mode", paddings)
    if same_size and tuple(loc.shape[2:]) != tuple(image.shape[2:]):
        raise ValueError(
            f"{loc_name}: expected spatial size {tuple(image.shape[2:])} (that of image), got {tuple(loc.shape[2:])}"
        )
    return ndim


def field_pair(u, v, name_u: str, name_v: str) -> int:
    """Two fields (B|1, ndim, *S) of the same ndim, *S, dtype and device whose batches
    broadcast (compose). Returns ndim."""
    tensor(u, name_u)
    ndim = spatial_ndim(u, name_u, "(B, ndim, H, W) or (B, ndim, D, H, W)")
    field(u, name_u, ndim)
    field(v, name_v, ndim)
    same_device([(name_u, u), (name_v, v)])
    same_dtype([(name_u, u), (name_v, v)])
    if tuple(v.shape[2:]) != tuple(u.shape[2:]):
        raise ValueError(f"{name_v}: expected spatial size {tuple(u.shape[2:])} (that of {name_u}), got {tuple(v.shape[2:])}")
    if u.shape[0] != v.shape[0] and 1 not in (u.shape[0], v.shape[0]):
        raise ValueError(f"{name_v}: expected batch 1 or {u.shape[0]} (the batch of {name_u}), got {v.shape[0]}")
    return ndim
