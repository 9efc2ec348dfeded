"""Fake (meta) kernels and the autograd formula of the compiled op, registered from Python so
that torch.compile, opcheck and autograd see one real op. Imported once the extension loads.

The fake kernels run the op's own input checks (`_validation`), so a traced graph refuses what
the real kernels refuse, at trace time."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _double_backward
from ._validation import check_grad_out, check_inputs, check_tensors

_registered = False


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,))


def _check(value, offset, amplitude, residual, alpha, offset_scale) -> None:
    if isinstance(offset_scale, torch.SymFloat):
        # A traced scale has no value to test yet: the real kernel checks it when it runs.
        check_tensors(value, offset, amplitude, residual, alpha)
    else:
        check_inputs(value, offset, amplitude, residual, alpha, offset_scale)


def _deformable_sample_fake(value, offset, amplitude, residual, alpha, offset_scale):
    _check(value, offset, amplitude, residual, alpha, offset_scale)
    return value.new_empty(value.shape)


def _deformable_sample_backward_fake(
    grad_out, value, offset, amplitude, residual, alpha, offset_scale
):
    _check(value, offset, amplitude, residual, alpha, offset_scale)
    check_grad_out(grad_out, value)
    return (
        value.new_empty(value.shape),
        offset.new_empty(offset.shape),
        amplitude.new_empty(amplitude.shape) if amplitude is not None else _empty(value),
        residual.new_empty(residual.shape) if residual is not None else _empty(value),
        alpha.new_empty(alpha.shape) if alpha is not None else _empty(value),
    )


def _setup_context(ctx, inputs, output):
    value, offset, amplitude, residual, alpha, offset_scale = inputs
    ctx.save_for_backward(value, offset, amplitude, residual, alpha)
    ctx.offset_scale = offset_scale


def _backward(ctx, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
    value, offset, amplitude, residual, alpha = ctx.saved_tensors
    if _double_backward.wants_graph():
        return _double_backward.differentiable_backward(
            grad_out, value, offset, amplitude, residual, alpha, ctx.offset_scale
        ) + (None,)
    g_value, g_offset, g_amplitude, g_residual, g_alpha = (
        torch.ops.stable_sam_ops._deformable_sample_backward.default(
            grad_out.contiguous(), value, offset, amplitude, residual, alpha, ctx.offset_scale
        )
    )
    return (
        g_value,
        g_offset,
        g_amplitude if amplitude is not None else None,
        g_residual if residual is not None else None,
        g_alpha if alpha is not None else None,
        None,
    )


def register() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("stable_sam_ops::deformable_sample")(_deformable_sample_fake)
    torch.library.register_fake("stable_sam_ops::_deformable_sample_backward")(
        _deformable_sample_backward_fake
    )
    torch.library.register_autograd(
        "stable_sam_ops::deformable_sample", _backward, setup_context=_setup_context
    )
    _registered = True
