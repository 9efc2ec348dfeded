"""Second-order gradients of the compiled backends.

The fused backward kernels compute first-order gradients only. When a backward runs with
create_graph=True (grad mode on inside the backward), the autograd formulas call
`differentiable_backward` instead: it differentiates the reference composition with
create_graph=True, so the gradients it returns are themselves differentiable in every input
and in grad_out, and second-order gradients are exact on every backend (gradgradcheck).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .reference import deformable_sample_reference


def wants_graph() -> bool:
    """True inside a backward that was asked for create_graph=True."""
    return torch.is_grad_enabled()


def differentiable_backward(
    grad_out: Tensor,
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor],
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
    offset_scale: float,
) -> Tuple[Optional[Tensor], ...]:
    """(grad_value, grad_offset, grad_amplitude, grad_residual, grad_alpha), None for None inputs,
    each connected to the graph of its inputs and of grad_out."""
    inputs = (value, offset, amplitude, residual, alpha)
    # Inputs that do not require grad become leaves of their own, so that every gradient exists;
    # the others are used as they are, keeping their history for the second derivative.
    local = [
        None if t is None else (t if t.requires_grad else t.detach().requires_grad_(True))
        for t in inputs
    ]
    present = [t for t in local if t is not None]
    with torch.enable_grad():
        out = deformable_sample_reference(*local, offset_scale=offset_scale)
        grads = iter(torch.autograd.grad(out, present, grad_out, create_graph=True))
    return tuple(None if t is None else next(grads) for t in local)
