"""The plug-in configuration and the container of Stable-SAM's two plugins (paper §4.2-4.3).

`StableSamPlugins` turns layer 2's image tokens x_p and its output mask token t_o into the keys
and values of that layer's token-to-image attention:

    keys = alpha1 * amplitude * x*_{p+dp} + alpha2 * x_p        (eq. 3-6, one fused op)
"""

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple, Union

import torch
from torch import Tensor, nn

from stable_sam_ops import deformable_sample

from .._config_fields import check_known_fields
from .drp import DynamicRoutingPlugin
from .dsp import DeformableSamplingPlugin


@dataclass(frozen=True)
class PluginConfig:
    """Hyper-parameters of the plugins; saved inside every plugin checkpoint."""

    # G: sampling groups; each owns C/G channels and its own offset (256 / 8 = 32 channels).
    num_groups: int = 8
    # s_p in eq. (3), in pixels of the 64x64 embedding grid (1 px = 16 input pixels): offsets
    # reach +-64 input pixels, enough to leave a loose box or a thin structure's blurred rim,
    # while tanh keeps the sampling inside the neighbourhood that the 5x5 offset net sees.
    offset_scale: float = 4.0
    # Modulate each sampling point by a learned amplitude (the paper's "feature amplitudes").
    use_amplitude: bool = True
    # DRP on; False is the paper's "without DRP" ablation (keys = DSP features only).
    use_routing: bool = True
    # Hidden width of the DRP MLP (the paper's "small MLP").
    routing_hidden_dim: int = 16
    # Kernel of the depthwise conv of the offset network (the paper's 5x5).
    dwconv_kernel_size: int = 5
    # Channel dimension of SAM's decoder tokens (256 for every SAM backbone).
    embed_dim: int = 256

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.embed_dim % self.num_groups != 0:
            raise ValueError(
                f"PluginConfig.num_groups must divide embed_dim ({self.embed_dim}), "
                f"is {self.num_groups}"
            )
        if not (self.offset_scale > 0 and self.offset_scale < float("inf")):
            raise ValueError(
                f"PluginConfig.offset_scale must be finite and > 0, is {self.offset_scale}"
            )
        if self.routing_hidden_dim < 1:
            raise ValueError(
                f"PluginConfig.routing_hidden_dim must be >= 1, is {self.routing_hidden_dim}"
            )
        if self.dwconv_kernel_size < 1 or self.dwconv_kernel_size % 2 == 0:
            raise ValueError(
                f"PluginConfig.dwconv_kernel_size must be odd and >= 1, is {self.dwconv_kernel_size}"
            )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PluginConfig":
        check_known_fields(cls, d, "PluginConfig.from_dict")
        values = {}
        for name, value in d.items():
            expected = type(getattr(cls, name))  # the type of the field's default
            if expected is float and type(value) in (int, float):
                value = float(value)
            if type(value) is not expected:
                raise TypeError(f"PluginConfig.{name} must be {expected.__name__}, got {value!r}")
            values[name] = value
        return cls(**values)

    @classmethod
    def of(cls, value: Union[None, "PluginConfig", Mapping[str, Any]]) -> "PluginConfig":
        """A PluginConfig from None (the defaults), a PluginConfig, or a dict of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(dict(value))
        raise TypeError(f"plugin_config must be a PluginConfig, a dict of its fields or None, "
                        f"got {type(value).__name__}")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PluginConfig":
        return cls.from_dict(json.loads(text))


class StableSamPlugins(nn.Module):
    """DSP (+ DRP) for one token-to-image attention of SAM's mask decoder.

    At initialisation the keys it returns equal x_p exactly (identity input projection, zero
    offsets sample integer positions, amplitudes 1, alpha1 + alpha2 = s = 1), so Stable-SAM
    starts as SAM.
    """

    def __init__(self, config: Union[None, PluginConfig, Mapping[str, Any]] = None, *,
                 op_backend: str = "auto") -> None:
        super().__init__()
        self.config = PluginConfig.of(config)
        self.op_backend = op_backend  # stable_sam_ops backend; a runtime choice, not saved
        c = self.config
        self.dsp = DeformableSamplingPlugin(
            c.embed_dim, c.num_groups, c.dwconv_kernel_size, use_amplitude=c.use_amplitude
        )
        self.drp = (
            DynamicRoutingPlugin(c.embed_dim, c.routing_hidden_dim) if c.use_routing else None
        )

    def forward(self, x_p: Tensor, output_mask_token: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """
        Arguments:
          x_p (Tensor[N, H, W, C]): layer 2's image tokens on the regular grid.
          output_mask_token (Tensor[N, C]): t_o, after layer 2's self-attention.

        Returns:
          keys (Tensor[N, H, W, C]): keys/values for layer 2's token-to-image attention.
          extras (dict): "alpha" (N, 2), "offset" (N, H, W, G, 2) raw, "amplitude" (N, H, W, G).
        """
        x_star, offset, amplitude = self.dsp(x_p)
        alpha = self.drp(output_mask_token) if self.drp is not None else None
        keys = deformable_sample(
            x_star,
            offset,
            amplitude,
            residual=x_p if alpha is not None else None,
            alpha=alpha,
            offset_scale=self.config.offset_scale,
            backend=self.op_backend,
        )
        n = x_p.shape[0]
        if alpha is None:  # without DRP all weight is on the deformable features
            alpha = torch.tensor([1.0, 0.0], dtype=x_p.dtype, device=x_p.device).expand(n, 2)
        if amplitude is None:
            amplitude = x_p.new_ones(offset.shape[:-1])
        return keys, {"alpha": alpha, "offset": offset, "amplitude": amplitude}

    def sampling_locations(self, offset: Tensor) -> Tensor:
        """(x, y) positions in embedding-grid pixels sampled for raw offsets (N, H, W, G, 2)."""
        _, h, w, _, _ = offset.shape
        ys, xs = torch.meshgrid(
            torch.arange(h, device=offset.device, dtype=offset.dtype),
            torch.arange(w, device=offset.device, dtype=offset.dtype),
            indexing="ij",
        )
        grid = torch.stack([xs, ys], dim=-1).view(1, h, w, 1, 2)
        return grid + self.config.offset_scale * torch.tanh(offset)

    def extra_repr(self) -> str:
        return f"config={self.config}, op_backend={self.op_backend!r}"
