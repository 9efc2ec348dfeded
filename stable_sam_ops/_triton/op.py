"""The Triton backend as torch ops: `stable_sam_ops::deformable_sample_triton` and its backward,
launched through torch.library.triton_op + wrap_triton so torch.compile sees the kernels, with
the autograd formula registered on the forward op.

Under TRITON_INTERPRET=1 (CPU tensors, the tests) the same path runs the interpreted kernels;
fake-tensor shape propagation skips the launch, and AOT tracing, which would need the kernels
in the graph, is refused with an error.
"""
import contextlib
from typing import Optional, Tuple

import torch
import triton
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor
from triton.runtime.interpreter import InterpretedFunction

from .. import _double_backward
from . import kernels

# Elements per program by rule: a tile of BLOCK_Q (query, group) rows by BLOCK_C channels. Wide
# tiles amortise the per-query offset loads; more is register pressure for four corners.
_TILE_ELEMENTS = 1024
_MAX_BLOCK_C = 128


def _block_sizes(Cg: int) -> Tuple[int, int]:
    block_c = min(triton.next_power_of_2(Cg), _MAX_BLOCK_C)
    return max(1, _TILE_ELEMENTS // block_c), block_c


def _launch(kernel, grid, *args, **meta):
    # What @triton.jit decided at decoration time counts, not the environment now.
    if isinstance(kernel, InterpretedFunction):
        # The interpreter runs kernels eagerly on real data, so it cannot be traced into a
        # graph; compiled kernels go through wrap_triton and are traced as usual.
        if any(isinstance(a, FunctionalTensor) for a in args):
            raise RuntimeError(
                "deformable_sample (triton): AOT tracing (torch.compile with an AOT backend, "
                "torch.export) needs compiled Triton kernels on a GPU; the interpreter "
                "(TRITON_INTERPRET=1) cannot be traced"
            )
        if any(isinstance(a, FakeTensor) for a in args):
            return  # shape propagation only: the outputs are already allocated

    device = next(a.device for a in args if isinstance(a, Tensor))
    with device_guard(device):
        torch.library.wrap_triton(kernel)[grid](*args, **meta)


def device_guard(device: torch.device):
    """Makes `device` current for a launch: Triton launches on the current CUDA device, which
    need not be the inputs' (inputs on cuda:1 while cuda:0 is current)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _opt(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scale_tensor(offset_scale: float, value: Tensor) -> Tensor:
    # In the accumulation dtype, so float64 inputs see the exact scale (see the kernels).
    return torch.full((1,), float(offset_scale), dtype=_acc_dtype(value.dtype), device=value.device)


@torch.library.triton_op("stable_sam_ops::deformable_sample_triton", mutates_args=())
def deformable_sample_triton_op(
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor],
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
    offset_scale: float,
) -> Tensor:
    value, offset = value.contiguous(), offset.contiguous()
    amplitude, residual, alpha = _opt(amplitude), _opt(residual), _opt(alpha)
    B, H, W, C = value.shape
    G = offset.shape[3]
    out = torch.empty_like(value, memory_format=torch.contiguous_format)
    n_qg = B * H * W * G
    if n_qg == 0:
        return out
    block_q, block_c = _block_sizes(C // G)
    _launch(
        kernels.deformable_sample_forward_kernel, (triton.cdiv(n_qg, block_q),),
        value, offset, amplitude if amplitude is not None else value,
        residual if residual is not None else value, alpha if alpha is not None else value, out,
        n_qg, H, W, C, G, C // G, _scale_tensor(offset_scale, value),
        HAS_AMPLITUDE=amplitude is not None, HAS_RESIDUAL=residual is not None,
        HAS_ALPHA=alpha is not None, IS_FP64=value.dtype == torch.float64,
        BLOCK_Q=block_q, BLOCK_C=block_c,
    )
    return out


@torch.library.triton_op("stable_sam_ops::deformable_sample_triton_backward", mutates_args=())
def deformable_sample_triton_backward_op(
    grad_out: Tensor,
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor],
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
    offset_scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_value, grad_offset, grad_amplitude, grad_residual, grad_alpha); a gradient whose
    input was None is an empty tensor, as in the compiled op."""
    grad_out, value, offset = grad_out.contiguous(), value.contiguous(), offset.contiguous()
    amplitude, residual, alpha = _opt(amplitude), _opt(residual), _opt(alpha)
    B, H, W, C = value.shape
    G = offset.shape[3]
    n_qg = B * H * W * G
    acc = _acc_dtype(value.dtype)

    def empty() -> Tensor:  # one per absent input: outputs of an op must not alias each other
        return value.new_empty((0,))

    grad_value_acc = torch.zeros(value.shape, dtype=acc, device=value.device)
    grad_offset = torch.empty_like(offset, memory_format=torch.contiguous_format)
    grad_amplitude = (
        torch.empty_like(amplitude, memory_format=torch.contiguous_format)
        if amplitude is not None else empty()
    )
    grad_residual = (
        torch.empty_like(residual, memory_format=torch.contiguous_format)
        if residual is not None else empty()
    )
    alpha_partials = torch.zeros((B, H * W * G, 2), dtype=acc, device=value.device)
    if n_qg > 0:
        block_q, block_c = _block_sizes(C // G)
        _launch(
            kernels.deformable_sample_backward_kernel, (triton.cdiv(n_qg, block_q),),
            grad_out, value, offset, amplitude if amplitude is not None else value,
            residual if residual is not None else value, alpha if alpha is not None else value,
            grad_value_acc, grad_offset,
            grad_amplitude if amplitude is not None else value,
            grad_residual if residual is not None else value,
            alpha_partials,
            n_qg, H, W, C, G, C // G, _scale_tensor(offset_scale, value),
            HAS_AMPLITUDE=amplitude is not None, HAS_RESIDUAL=residual is not None,
            HAS_ALPHA=alpha is not None, IS_FP64=value.dtype == torch.float64,
            BLOCK_Q=block_q, BLOCK_C=block_c,
        )
    # Second level of the dL/dalpha reduction: a fixed-shape sum over each batch item's partials.
    grad_alpha = alpha_partials.sum(1).to(value.dtype) if alpha is not None else empty()
    return grad_value_acc.to(value.dtype), grad_offset, grad_amplitude, grad_residual, grad_alpha


def _setup_context(ctx, inputs, output):
    value, offset, amplitude, residual, alpha, offset_scale = inputs
    ctx.save_for_backward(value, offset, amplitude, residual, alpha)
    ctx.offset_scale = offset_scale


def _backward(ctx, grad_out: Tensor):
    value, offset, amplitude, residual, alpha = ctx.saved_tensors
    if _double_backward.wants_graph():
        # The Triton backward kernel is first-order only; under create_graph the gradients must
        # stay differentiable, as on every other backend.
        return _double_backward.differentiable_backward(
            grad_out, value, offset, amplitude, residual, alpha, ctx.offset_scale) + (None,)
    g_value, g_offset, g_amplitude, g_residual, g_alpha = deformable_sample_triton_backward_op(
        grad_out, value, offset, amplitude, residual, alpha, ctx.offset_scale
    )
    return (
        g_value,
        g_offset,
        g_amplitude if amplitude is not None else None,
        g_residual if residual is not None else None,
        g_alpha if alpha is not None else None,
        None,
    )


deformable_sample_triton_op.register_autograd(_backward, setup_context=_setup_context)
