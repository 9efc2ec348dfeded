"""Deformable sampling plugin (DSP, paper §4.2): the offset network on channels-last tokens."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DeformableSamplingPlugin(nn.Module):
    """x*_p = Conv1x1(x_p); offsets, amplitudes = Conv1x1(GELU(LN(DWConv(x*_p)))).

    The 1x1 convolutions are nn.Linear on (N, H, W, C) tokens: the same map without an
    NCHW round trip. Offsets are returned raw; the fused op applies s_p * tanh itself.
    """

    def __init__(
        self, embed_dim: int, num_groups: int, kernel_size: int = 5, *, use_amplitude: bool = True
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.input_proj = nn.Linear(embed_dim, embed_dim)
        self.dwconv = nn.Conv2d(
            embed_dim, embed_dim, kernel_size, padding=kernel_size // 2, groups=embed_dim
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.offset_proj = nn.Linear(embed_dim, 2 * num_groups)
        self.amplitude_proj = nn.Linear(embed_dim, num_groups) if use_amplitude else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Start as the identity on SAM: x* = x_p, offsets 0 (exact integer sampling), amplitude 1.
        # The zero output weights still get gradients (their input is not zero), so training moves.
        nn.init.eye_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        nn.init.zeros_(self.offset_proj.weight)
        nn.init.zeros_(self.offset_proj.bias)
        if self.amplitude_proj is not None:
            nn.init.zeros_(self.amplitude_proj.weight)
            nn.init.ones_(self.amplitude_proj.bias)

    def forward(self, x_p: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """
        Arguments:
          x_p (Tensor[N, H, W, C]): image tokens on the regular grid.

        Returns:
          x_star (Tensor[N, H, W, C]), offset (Tensor[N, H, W, G, 2], raw, (x, y)),
          amplitude (Tensor[N, H, W, G] or None).
        """
        n, h, w, _ = x_p.shape
        x_star = self.input_proj(x_p)
        # permute is a view: conv2d reads the channels-last memory as is
        hidden = self.dwconv(x_star.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        hidden = F.gelu(self.norm(hidden))
        offset = self.offset_proj(hidden).view(n, h, w, self.num_groups, 2)
        amplitude = self.amplitude_proj(hidden) if self.amplitude_proj is not None else None
        return x_star, offset, amplitude
