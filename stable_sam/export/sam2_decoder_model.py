"""Stable-SAM's decoder on SAM 2 in the form that tools loading SAM 2 decoders take (the interface
of samexporter's and AnyLabeling's SAM 2 decoder files).

Inputs, in order: image_embed (1, 256, h, w), high_res_feats_0 (1, 32, 4h, 4w) and
high_res_feats_1 (1, 64, 2h, 2w) (the encoder file's outputs, conv_s0 / conv_s1 already
applied), point_coords (B, P, 2) in the model's input frame (pixels of the square S x S input;
a box is two points labelled 2 and 3, put first, as SAM2ImagePredictor does), point_labels
(B, P) float (1 foreground, 0 background, 2 / 3 box corners, -1 padding), mask_input
(B, 1, 4h, 4w) low-res logits, has_mask_input (1,) 1 or 0. Outputs: masks (B, M, 4h, 4w) low-res
logits clamped to +-32, as SAM2ImagePredictor returns them (the tool resizes them to the image),
iou_predictions (B, M); M = 3 with multimask_output, else 1.

The B prompts share the one image. Prompt encoding is SAM 2's own `_embed_points` (with the
padding point SAM2ImagePredictor always appends) and its mask downscaling; the mask decoder is
`stable_sam.families.sam2.decoder.predict_masks` with the plugins on layer 2's keys, then SAM 2's
mask selection (with multimask_output off, dynamic_multimask_via_stability when the decoder has
it on, as StableSam2.decode applies it).
"""

from typing import Tuple

import torch
from torch import Tensor, nn

from ..families.sam2 import StableSam2
from ..families.sam2 import decoder as sam2_decoder

SAM2_DECODER_INPUT_NAMES = (
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
SAM2_DECODER_OUTPUT_NAMES = ("masks", "iou_predictions")
LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns


class StableSam2OnnxDecoder(nn.Module):
    """SAM 2's prompt encoder + Stable-SAM's mask decoder on SAM 2, for ONNX export.

    Arguments:
      model (StableSam2): the model whose SAM 2 decoder and plugins are exported.
      multimask_output (bool): the three multimask outputs (the tools' default) or one mask.
      use_plugins (bool): False exports plain SAM 2 through the same decoder pass (a baseline).
    """

    def __init__(self, model: StableSam2, multimask_output: bool = True, *,
                 use_plugins: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.plugins = model.plugins if use_plugins else None
        self.multimask_output = multimask_output
        self.dynamic_multimask = bool(self.mask_decoder.dynamic_multimask_via_stability)
        self.output_mask_token = sam2_decoder.output_mask_token(self.mask_decoder)
        self.grid = tuple(self.prompt_encoder.image_embedding_size)

    def _plugin_keys(self, x_p: Tensor, queries: Tensor) -> Tensor:
        # as in StableSam2.decode: (N, HW, C) tokens are the (N, H, W, C) memory the plugins take
        n = queries.shape[0]
        c = x_p.shape[-1]
        keys, _ = self.plugins(x_p.reshape(-1, *self.grid, c), queries[:, self.output_mask_token])
        return keys.reshape(n, -1, c)

    def _dense_embedding(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """SAM 2's dense prompt: the downscaled mask, or no_mask_embed everywhere without one."""
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks = self.prompt_encoder.mask_downscaling(mask_input)
        return has_mask_input * masks + (1 - has_mask_input) * no_mask

    def forward(
        self,
        image_embed: Tensor,
        high_res_feats_0: Tensor,
        high_res_feats_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        sparse = self.prompt_encoder._embed_points(point_coords, point_labels, pad=True)
        dense = self._dense_embedding(mask_input, has_mask_input)
        masks, iou_pred, _ = sam2_decoder.predict_masks(
            self.mask_decoder,
            image_embed,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            [high_res_feats_0, high_res_feats_1],
            keys_fn=self._plugin_keys if self.plugins is not None else None,
        )
        masks, iou_pred = sam2_decoder.select_masks(
            self.mask_decoder, masks, iou_pred, self.multimask_output, self.dynamic_multimask)
        return torch.clamp(masks, -LOW_RES_CLAMP, LOW_RES_CLAMP), iou_pred
