"""The op under torch.autocast: a lower-precision op, like matmul.

Every floating input but float64 is cast to the autocast dtype and the op runs with autocast
off, on every backend (the compiled op registers the same policy for its Autocast dispatch keys
in csrc/deformable_sample_autocast.cpp, for callers of torch.ops). The kernels accumulate half
and bfloat16 in float32, so the op loses little against float32 and reads half the bytes.
"""
import contextlib
from typing import ContextManager, Optional, Tuple

import torch
from torch import Tensor


def autocast_dtype(value) -> Optional[torch.dtype]:
    """The dtype autocast asks for on value's device, or None when autocast is off there."""
    if not isinstance(value, Tensor):
        return None
    device_type = value.device.type
    if not torch.amp.is_autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast_inputs(dtype: torch.dtype, *tensors) -> Tuple:
    """Each floating tensor but float64 cast to dtype (autocast's eligibility rule)."""
    return tuple(
        t.to(dtype)
        if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
        else t
        for t in tensors
    )


def disabled(value: Tensor, dtype: Optional[torch.dtype]) -> ContextManager:
    """Autocast off on value's device while the op runs on inputs already cast."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(value.device.type, enabled=False)
