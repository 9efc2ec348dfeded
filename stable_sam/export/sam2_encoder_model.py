"""SAM 2's image encoding as its own ONNX file, in the interface of the tools that load SAM 2
encoders: input image (1, 3, S, S), the image resized to the square input and normalised as
SAM2Transforms does (ImageNet mean and std on 0..1 values); outputs high_res_feats_0
(1, 32, S/4, S/4), high_res_feats_1 (1, 64, S/8, S/8) and image_embed (1, 256, S/16, S/16),
exactly what StableSam2ImagePredictor.set_image keeps: SAM 2's image encoder, the decoder's
conv_s0 / conv_s1 on the first two levels (folded in here, so the decoder file takes their
output), and no_mem_embed added to the embedding when the model does so. The plugins are in the
decoder; the encoder is SAM 2's own.
"""

from typing import Tuple

from torch import Tensor, nn

from ..families.sam2 import StableSam2

SAM2_ENCODER_INPUT_NAMES = ("image",)
SAM2_ENCODER_OUTPUT_NAMES = ("high_res_feats_0", "high_res_feats_1", "image_embed")


class StableSam2OnnxEncoder(nn.Module):
    """image (1, 3, S, S) normalised -> (high_res_feats_0, high_res_feats_1, image_embed)."""

    def __init__(self, model: StableSam2) -> None:
        super().__init__()
        self.sam = model.sam  # registered, so the export sees its weights
        self.encoding = model.image_encoder

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        features = self.encoding(image)
        feat_s0, feat_s1 = features["high_res_feats"]
        return feat_s0, feat_s1, features["image_embed"]
