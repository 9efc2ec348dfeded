"""The public fused deformable-sampling op: a function and its nn.Module."""
from typing import Optional

from torch import Tensor, nn

from . import _autocast, _backends
from ._validation import check_inputs


def deformable_sample(
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    alpha: Optional[Tensor] = None,
    offset_scale: float = 1.0,
    *,
    backend: str = "auto",
) -> Tensor:
    """Stable-SAM's deformable sampling (paper eq. 3-6) in one fused pass.

    out[b, i, j, c] = alpha1[b] * amplitude[b, i, j, g] * bilinear(value[b], (j, i) + delta)[c]
                      + alpha2[b] * residual[b, i, j, c],
    delta = offset_scale * tanh(offset[b, i, j, g]) in pixels, zero padding, align_corners=True.

    Arguments:
      value (Tensor[B, H, W, C]): features to resample, channels-last (SAM's (B, H*W, C) tokens
        viewed as (B, H, W, C)).
      offset (Tensor[B, H, W, G, 2]): raw offsets before tanh, last dim (x, y); C % G == 0.
      amplitude (Tensor[B, H, W, G] or None): modulation per sampling point; None means 1.
      residual (Tensor[B, H, W, C] or None): regular-grid features for the routing blend.
      alpha (Tensor[B, 2] or None): routing weights [alpha1, alpha2]; None means [1, 1].
      offset_scale (float > 0): s_p, the largest offset in pixels.
      backend (str): "auto", "reference", "cpu", "cuda" or "triton"; see available_backends().

    Returns:
      Tensor[B, H, W, C] of value's dtype and device. Differentiable in all five tensors.

    Every backend computes in float32 (float64 for float64 inputs) and rounds the result to
    value's dtype; offset_scale must be finite in that precision. A sampling point whose
    coordinate is NaN, infinite or outside [-1, W] x [-1, H] contributes exactly 0 with zero
    gradients. Under torch.autocast the op is a lower-precision op: its floating inputs, float64
    excepted, are cast to the autocast dtype and the output has that dtype. Second-order
    gradients (a backward with create_graph=True) are exact on the reference, cpu and cuda
    backends: that backward differentiates the reference composition instead of running the
    fused backward kernel, so it runs at the reference's speed. The triton backend refuses it.
    """
    amp_dtype = _autocast.autocast_dtype(value)
    if amp_dtype is not None:
        value, offset, amplitude, residual, alpha = _autocast.cast_inputs(
            amp_dtype, value, offset, amplitude, residual, alpha
        )
    check_inputs(value, offset, amplitude, residual, alpha, offset_scale)
    fn = _backends.select(backend, value)
    with _autocast.disabled(value, amp_dtype):
        return fn(value, offset, amplitude, residual, alpha, float(offset_scale))


class DeformableSample(nn.Module):
    """`deformable_sample` as a module with a fixed offset_scale (s_p) and backend."""

    def __init__(self, offset_scale: float = 1.0, *, backend: str = "auto") -> None:
        super().__init__()
        self.offset_scale = float(offset_scale)
        self.backend = backend

    def forward(
        self,
        value: Tensor,
        offset: Tensor,
        amplitude: Optional[Tensor] = None,
        residual: Optional[Tensor] = None,
        alpha: Optional[Tensor] = None,
    ) -> Tensor:
        return deformable_sample(
            value, offset, amplitude, residual, alpha, self.offset_scale, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"offset_scale={self.offset_scale}, backend={self.backend!r}"
