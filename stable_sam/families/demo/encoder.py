"""Small convolutional image encoders with the interface SAM's `Sam` expects of its encoder.

segment-anything's ViT learns slowly from scratch on a 2-core CPU; a conv net with a 16x16
output of width 256 gives the decoder (and the plugins, which need width 256) the same
embedding shape at a fraction of the cost.

Two architectures, named in the weights file (`ARCHITECTURE`):
- `ConvImageEncoder` ("demo-sam/1"): stride-16 features only. A 16x16 grid caps the mask: the
  GT scaled down to 16x16 and back keeps 58 % mIoU (`stable_sam.evaluation.ceiling`, 100
  scenes of VAL_SEED), so no decoder on it can segment.
- `FoldedDetailEncoder` ("demo-sam/2"): stride-4 features folded 4x4 into the embedding's
  channels. SAM's output_upscaling (two 2x2 stride-2 transposed convs) turns each embedding
  token into the 4x4 block of low-res mask pixels below it with a separate kernel per pixel,
  so channels can carry where inside the token the boundary runs: the cap becomes the 64x64
  grid's, 95 % on the same targets, with SAM's decoder unchanged.
"""
from __future__ import annotations

from segment_anything.modeling.common import LayerNorm2d
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(in_ch: int, out_ch: int, stride: int, dilation: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: the trainers keep the model in eval mode.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation),
        nn.GroupNorm(8, out_ch),
        nn.GELU(),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(_block(channels, channels, 1, dilation),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvImageEncoder(nn.Module):
    """(B, 3, img_size, img_size) -> (B, out_chans, img_size / 16, img_size / 16)."""

    ARCHITECTURE = "demo-sam/1"

    def __init__(self, img_size: int = 256, out_chans: int = 256, width: int = 32):
        super().__init__()
        self.img_size = img_size  # read by Sam.preprocess and the predictor's resize
        self.layers = nn.Sequential(
            _block(3, width, 2),
            _block(width, width * 2, 2),
            _Residual(width * 2, 1),
            _block(width * 2, width * 4, 2),
            _Residual(width * 4, 1),
            _block(width * 4, width * 4, 2),
            _Residual(width * 4, 2),  # dilated: each cell sees its neighbours' objects
            _Residual(width * 4, 4),
            nn.Conv2d(width * 4, out_chans, 1),
            # SAM's neck ends in LayerNorm2d too. Without it the embedding grew to about 4x the
            # dense positional encoding's scale, which the decoder's attention adds to it, and
            # the prompt-to-image matching learned slower (GT-box IoU 0.34 against 0.37 after
            # 600 steps, on a validation seed that is neither split's)
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class FoldedDetailEncoder(nn.Module):
    """(B, 3, img_size, img_size) -> (B, out_chans, img_size / 16, img_size / 16), each token
    holding its 16x16-pixel context and the stride-4 detail of its own 4x4 sub-cells."""

    ARCHITECTURE = "demo-sam/2"
    FOLD = 4  # stride-4 cells per token side: 16 / 4

    def __init__(self, img_size: int = 256, out_chans: int = 256, width: int = 24,
                 detail_chans: int = 8):
        super().__init__()
        self.img_size = img_size
        self.stem = nn.Sequential(  # stride 4
            _block(3, width, 2),
            _block(width, width * 2, 2),
            _Residual(width * 2, 1),
        )
        self.context = nn.Sequential(  # stride 4 -> 16, as ConvImageEncoder
            _block(width * 2, width * 4, 2),
            _Residual(width * 4, 1),
            _block(width * 4, width * 4, 2),
            _Residual(width * 4, 2),
            _Residual(width * 4, 4),
        )
        # a few channels per stride-4 cell: 16 cells x detail_chans fit beside the context
        self.detail = nn.Conv2d(width * 2, detail_chans, 1)
        self.fuse = nn.Sequential(
            nn.Conv2d(width * 4 + detail_chans * self.FOLD ** 2, out_chans, 1),
            LayerNorm2d(out_chans),  # as ConvImageEncoder: the scale of the dense PE
        )

    def forward(self, x: Tensor) -> Tensor:
        fine = self.stem(x)
        folded = F.pixel_unshuffle(self.detail(fine), self.FOLD)
        return self.fuse(torch.cat([self.context(fine), folded], dim=1))
