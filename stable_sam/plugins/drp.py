"""Dynamic routing plugin (DRP, paper §4.3): alpha = softmax(MLP(t_o)) * s."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DynamicRoutingPlugin(nn.Module):
    """Routing weights [alpha1 (deformable), alpha2 (regular grid)] from the output mask token."""

    def __init__(self, embed_dim: int, hidden_dim: int = 16) -> None:
        super().__init__()
        self.hidden = nn.Linear(embed_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim, 2)
        self.scale = nn.Parameter(torch.ones(()))  # s, learnable
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Zero logits: alpha = [0.5, 0.5] * s, and with s = 1 the blend of two equal features
        # is the identity. Any logits keep that identity; zeros also make the start symmetric.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.ones_(self.scale)

    def forward(self, output_mask_token: Tensor) -> Tensor:
        """Tensor[N, C] -> alpha Tensor[N, 2]."""
        logits = self.out(F.gelu(self.norm(self.hidden(output_mask_token))))
        return torch.softmax(logits, dim=-1) * self.scale
