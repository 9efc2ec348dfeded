"""Pure-PyTorch deformable sampling: the test oracle and the fallback of every backend.

It composes grid_sample exactly as shared/design/deformable_sample.md states; run it in float64
to get the oracle. Autograd differentiates it, so it needs no backward of its own.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Normalised grid coordinate that lands every bilinear corner outside any image: NaN sampling
# coordinates are moved here so that grid_sample returns exact zeros for them.
_FAR_OUTSIDE = -8.0


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

    nan = torch.isnan(offset)
    delta = offset_scale * torch.tanh(torch.where(nan, 0.0, offset))  # (B, H, W, G, 2) pixels
    cols = torch.arange(W, device=value.device, dtype=delta.dtype).view(1, 1, W, 1)
    rows = torch.arange(H, device=value.device, dtype=delta.dtype).view(1, H, 1, 1)
    x = cols + delta[..., 0]  # (B, H, W, G) value-pixel column
    y = rows + delta[..., 1]  # (B, H, W, G) value-pixel row

    v = value.view(B, H, W, G, Cg).permute(0, 3, 4, 1, 2).reshape(B * G, Cg, H, W)
    Hp, Wp = H, W
    if H == 1 or W == 1:
        # align_corners=True normalisation divides by (size - 1): pad one zero pixel on every
        # side and shift the coordinates, which keeps zero padding exact.
        v = F.pad(v, (1, 1, 1, 1))
        x, y = x + 1, y + 1
        Hp, Wp = H + 2, W + 2
    gx = 2 * x / (Wp - 1) - 1
    gy = 2 * y / (Hp - 1) - 1
    point_nan = nan.any(dim=-1)  # (B, H, W, G)
    gx = torch.where(point_nan, _FAR_OUTSIDE, gx)
    gy = torch.where(point_nan, _FAR_OUTSIDE, gy)
    grid = torch.stack([gx, gy], dim=-1).permute(0, 3, 1, 2, 4).reshape(B * G, H, W, 2)
    sampled = F.grid_sample(
        v, grid.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
    )  # (B*G, Cg, H, W)
    sampled = sampled.view(B, G, Cg, H, W).permute(0, 3, 4, 1, 2)  # (B, H, W, G, Cg)
    if amplitude is not None:
        sampled = sampled * amplitude.unsqueeze(-1)
    if alpha is not None:
        sampled = sampled * alpha[:, 0].view(B, 1, 1, 1, 1)
    out = sampled.reshape(B, H, W, C)
    if residual is not None:
        out = out + (residual if alpha is None else residual * alpha[:, 1].view(B, 1, 1, 1))
    return out
