"""Triton backend of the fused deformable-sampling op.

The kernels are imported on first use, not here: @triton.jit decides between the compiler and
the interpreter (TRITON_INTERPRET=1) when it decorates, so the choice must be settled first.
"""
import importlib.util
import os
from typing import Optional

import torch
from torch import Tensor


def unavailable_reason() -> Optional[str]:
    """None when Triton can run this backend here: CUDA visible, or TRITON_INTERPRET=1."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not hasattr(torch.library, "triton_op"):
        return f"torch {torch.__version__} has no torch.library.triton_op (needs torch >= 2.6)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device visible (TRITON_INTERPRET=1 runs Triton on CPU tensors)"
    return None


def deformable_sample_triton(
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    alpha: Optional[Tensor] = None,
    offset_scale: float = 1.0,
) -> Tensor:
    """`stable_sam_ops.deformable_sample` computed by Triton kernels (no validation here: the
    public function validates); differentiable in all five tensors."""
    from .op import deformable_sample_triton_op

    return deformable_sample_triton_op(value, offset, amplitude, residual, alpha, float(offset_scale))


__all__ = ["deformable_sample_triton", "unavailable_reason"]
