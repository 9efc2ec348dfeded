"""Pure-PyTorch deformable sampling: the test oracle and the fallback of every backend.

It composes grid_sample exactly as shared/design/deformable_sample.md states; run it in float64
to get the oracle. Autograd differentiates it, so it needs no backward of its own.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Normalised grid coordinate that lands every bilinear corner outside any image: dropped points
# (NaN, infinite or far-out coordinates) are moved here so that grid_sample returns exact zeros.
_FAR_OUTSIDE = -8.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend computes in for inputs of `dtype` (ATen's opmath type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def deformable_sample_reference(
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    alpha: Optional[Tensor] = None,
    offset_scale: float = 1.0,
) -> Tensor:
    """Reference of `stable_sam_ops.deformable_sample` (same arguments, no validation)."""
    B, H, W, C = value.shape
    G = offset.shape[3]
    Cg = C // G
    if B == 0:
        return value.new_empty(value.shape) + value  # keeps autograd edges for empty batches

    # Everything is computed in the kernels' accumulation dtype (float32 for half and bfloat16),
    # so that offset_scale * tanh(offset) cannot overflow where the kernels' does not.
    acc = compute_dtype(value.dtype)
    nan = torch.isnan(offset)
    delta = offset_scale * torch.tanh(torch.where(nan, 0.0, offset).to(acc))  # (B,H,W,G,2) px
    cols = torch.arange(W, device=value.device, dtype=acc).view(1, 1, W, 1)
    rows = torch.arange(H, device=value.device, dtype=acc).view(1, H, 1, 1)
    x = cols + delta[..., 0]  # (B, H, W, G) value-pixel column
    y = rows + delta[..., 1]  # (B, H, W, G) value-pixel row
    # The kernels' test: a point outside [-1, W] x [-1, H] has no corner in range. Dropping it
    # here too keeps its term an exact zero with zero gradients, however far out it lies.
    dropped = nan.any(dim=-1) | ~((x >= -1) & (x <= W) & (y >= -1) & (y <= H))

    v = value.to(acc).view(B, H, W, G, Cg).permute(0, 3, 4, 1, 2).reshape(B * G, Cg, H, W)
    Hp, Wp = H, W
    if H == 1 or W == 1:
        # align_corners=True normalisation divides by (size - 1): pad one zero pixel on every
        # side and shift the coordinates, which keeps zero padding exact.
        v = F.pad(v, (1, 1, 1, 1))
        x, y = x + 1, y + 1
        Hp, Wp = H + 2, W + 2
    gx = torch.where(dropped, _FAR_OUTSIDE, 2 * x / (Wp - 1) - 1)
    gy = torch.where(dropped, _FAR_OUTSIDE, 2 * y / (Hp - 1) - 1)
    grid = torch.stack([gx, gy], dim=-1).permute(0, 3, 1, 2, 4).reshape(B * G, H, W, 2)
    sampled = F.grid_sample(
        v, grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )  # (B*G, Cg, H, W)
    sampled = sampled.view(B, G, Cg, H, W).permute(0, 3, 4, 1, 2)  # (B, H, W, G, Cg)
    if amplitude is not None:
        sampled = sampled * amplitude.to(acc).unsqueeze(-1)
    if alpha is not None:
        alpha = alpha.to(acc)
        sampled = sampled * alpha[:, 0].view(B, 1, 1, 1, 1)
    out = sampled.reshape(B, H, W, C)
    if residual is not None:
        residual = residual.to(acc)
        out = out + (residual if alpha is None else residual * alpha[:, 1].view(B, 1, 1, 1))
    return out.to(value.dtype)
