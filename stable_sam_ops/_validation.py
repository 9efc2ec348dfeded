"""Input checks of the op, shared by the public API (every backend) and the fake kernels that
torch.compile traces with; the C++ op repeats them for callers of torch.ops on real tensors."""
import math
from typing import Optional

import torch
from torch import Tensor

from .reference import compute_dtype


def _check_tensor(name: str, t, value: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"deformable_sample: {name} must be a Tensor, got {type(t).__name__}")
    if t.device != value.device:
        raise ValueError(
            f"deformable_sample: {name} must be on the device of value ({value.device}), "
            f"got {t.device}"
        )
    if t.dtype != value.dtype:
        raise TypeError(
            f"deformable_sample: {name} must have the dtype of value ({value.dtype}), got {t.dtype}"
        )


def check_inputs(
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor],
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
    offset_scale: float,
) -> None:
    """Raises TypeError/ValueError naming the bad argument and what was expected."""
    check_tensors(value, offset, amplitude, residual, alpha)
    check_offset_scale(offset_scale, value.dtype)


def check_tensors(
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor],
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
) -> None:
    """The tensor arguments' types, shapes, dtypes and devices."""
    if not isinstance(value, Tensor):
        raise TypeError(f"deformable_sample: value must be a Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"deformable_sample: value must be floating point, got {value.dtype}")
    if value.dim() != 4:
        raise ValueError(
            f"deformable_sample: value must be (B, H, W, C), got shape {tuple(value.shape)}"
        )
    B, H, W, C = value.shape
    if H < 1 or W < 1 or C < 1:
        raise ValueError(
            f"deformable_sample: value must have H, W, C >= 1, got shape {tuple(value.shape)}"
        )
    _check_tensor("offset", offset, value)
    if offset.dim() != 5 or tuple(offset.shape[:3]) != (B, H, W) or offset.shape[4] != 2:
        raise ValueError(
            f"deformable_sample: offset must be (B, H, W, G, 2) = ({B}, {H}, {W}, G, 2), "
            f"got shape {tuple(offset.shape)}"
        )
    G = offset.shape[3]
    if G < 1 or C % G != 0:
        raise ValueError(f"deformable_sample: C ({C}) must be divisible by G ({G})")
    if amplitude is not None:
        _check_tensor("amplitude", amplitude, value)
        if tuple(amplitude.shape) != (B, H, W, G):
            raise ValueError(
                f"deformable_sample: amplitude must be (B, H, W, G) = ({B}, {H}, {W}, {G}), "
                f"got shape {tuple(amplitude.shape)}"
            )
    if residual is not None:
        _check_tensor("residual", residual, value)
        if residual.shape != value.shape:
            raise ValueError(
                f"deformable_sample: residual must have the shape of value {tuple(value.shape)}, "
                f"got {tuple(residual.shape)}"
            )
    if alpha is not None:
        _check_tensor("alpha", alpha, value)
        if tuple(alpha.shape) != (B, 2):
            raise ValueError(
                f"deformable_sample: alpha must be (B, 2) = ({B}, 2), got shape {tuple(alpha.shape)}"
            )


def check_offset_scale(offset_scale, dtype: torch.dtype) -> None:
    """offset_scale is a finite float > 0 that stays finite in the dtype the op computes in."""
    if isinstance(offset_scale, Tensor) or not isinstance(offset_scale, (int, float)):
        raise TypeError(
            f"deformable_sample: offset_scale must be a Python float, got {type(offset_scale).__name__}"
        )
    if not math.isfinite(offset_scale) or offset_scale <= 0:
        raise ValueError(f"deformable_sample: offset_scale must be finite and > 0, got {offset_scale}")
    acc = compute_dtype(dtype)
    if offset_scale > torch.finfo(acc).max:
        # offset_scale * tanh(offset) would be infinite, or NaN where tanh is 0.
        raise ValueError(
            f"deformable_sample: offset_scale ({offset_scale}) overflows {str(acc)[6:]}, the "
            f"dtype the op computes in for {dtype} inputs"
        )


def check_grad_out(grad_out: Tensor, value: Tensor) -> None:
    """The backward's incoming gradient has value's shape, dtype and device."""
    _check_tensor("grad_out", grad_out, value)
    if grad_out.shape != value.shape:
        raise ValueError(
            f"deformable_sample: grad_out must have the shape of value {tuple(value.shape)}, "
            f"got {tuple(grad_out.shape)}"
        )
