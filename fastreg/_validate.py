"""Argument checks shared by the public ops: each error names the argument and what
was expected (TypeError for a wrong type or dtype, ValueError for a wrong value/shape)."""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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
