"""Stable-SAM's decoder in the form of segment_anything's ONNX decoder (`SamOnnxModel`).

`SamOnnxModel` is used as it is (prompt embedding, mask prediction, mask selection and
post-processing, the export options); it is handed a view of the model whose mask decoder
predicts masks through `stable_sam.families.sam.decoder.predict_masks`, with the plugins on layer
2's token-to-image keys. So the exported file has exactly SAM's inputs and outputs.

Two of `SamOnnxModel`'s methods are re-expressed for the dynamo-based exporter, which traces
with `torch.export` instead of TorchScript: the crop to the pre-padded size reads its bounds from
a tensor (`int(tensor)` cannot be traced; `.item()` with bounds can), and the mask selection
multiplies by the number of points as a tensor (a symbolic Python number cannot be exported).
"""

from types import SimpleNamespace
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from segment_anything.utils.onnx import SamOnnxModel

from ..families.sam import StableSam, decoder

# The names a tool built for segment_anything's exported decoder looks for, in order.
DECODER_INPUT_NAMES = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")
DECODER_EXTRA_OUTPUT_NAMES = (
    "masks",
    "iou_predictions",
    "stability_scores",
    "areas",
    "low_res_masks",
)


class PluginMaskDecoder(nn.Module):
    """SAM's `MaskDecoder.predict_masks` interface over Stable-SAM's decoder pass."""

    def __init__(self, model: StableSam, use_plugins: bool = True) -> None:
        super().__init__()
        self.sam_decoder = model.sam.mask_decoder
        self.plugins = model.plugins if use_plugins else None
        self.num_mask_tokens = self.sam_decoder.num_mask_tokens
        self.grid = tuple(model.prompt_encoder.image_embedding_size)

    def _plugin_keys(self, x_p: Tensor, queries: Tensor) -> Tensor:
        # as in StableSam.decode: (N, HW, C) tokens are the (N, H, W, C) memory the plugins take
        n, hw, c = x_p.shape
        keys, _ = self.plugins(x_p.reshape(n, *self.grid, c), queries[:, decoder.OUTPUT_MASK_TOKEN])
        return keys.reshape(n, hw, c)

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        return decoder.predict_masks(
            self.sam_decoder,
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            keys_fn=self._plugin_keys if self.plugins is not None else None,
        )


class _SamView(nn.Module):
    """What `SamOnnxModel` reads from its SAM, without the image encoder's weights (the
    decoder file must not carry them): its input size is all the decoder needs of it."""

    def __init__(self, model: StableSam, use_plugins: bool) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = PluginMaskDecoder(model, use_plugins)
        self.image_encoder = SimpleNamespace(img_size=model.image_encoder.img_size)
        self.mask_threshold = model.mask_threshold


class StableSamOnnxModel(SamOnnxModel):
    """Prompt encoder + Stable-SAM mask decoder + mask post-processing, for ONNX export.

    Inputs and outputs are those of `SamOnnxModel` (see `DECODER_INPUT_NAMES`,
    `DECODER_OUTPUT_NAMES`; with return_extra_metrics `DECODER_EXTRA_OUTPUT_NAMES`).

    Arguments:
      model (StableSam): the model whose SAM and plugins are exported.
      return_single_mask, use_stability_score, return_extra_metrics: as in `SamOnnxModel`.
      use_plugins (bool): False exports plain SAM through the same decoder pass (a baseline).
    """

    def __init__(
        self,
        model: StableSam,
        return_single_mask: bool,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
        *,
        use_plugins: bool = True,
    ) -> None:
        super().__init__(
            _SamView(model, use_plugins),
            return_single_mask=return_single_mask,
            use_stability_score=use_stability_score,
            return_extra_metrics=return_extra_metrics,
        )

    def mask_postprocessing(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
        """SamOnnxModel.mask_postprocessing: upscale to the input size, crop the padding, resize
        to orig_im_size (h, w); the crop and output sizes are data-dependent."""
        size = self.img_size
        masks = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)
        prepadded = self.resize_longest_image_size(orig_im_size, size)
        crop_h, crop_w = prepadded[0].item(), prepadded[1].item()
        orig = orig_im_size.to(torch.int64)
        out_h, out_w = orig[0].item(), orig[1].item()
        for length in (crop_h, crop_w, out_h, out_w):
            torch._check(length >= 1)  # the tracer needs the bounds of data-dependent sizes
        torch._check(crop_h <= size)
        torch._check(crop_w <= size)
        masks = masks[..., :crop_h, :crop_w]
        return F.interpolate(masks, size=(out_h, out_w), mode="bilinear", align_corners=False)

    def select_masks(
        self, masks: Tensor, iou_preds: Tensor, num_points: int
    ) -> Tuple[Tensor, Tensor]:
        """SamOnnxModel.select_masks with the (symbolic) number of points as a 0-d tensor."""
        count = torch.scalar_tensor(num_points, dtype=iou_preds.dtype, device=iou_preds.device)
        return super().select_masks(masks, iou_preds, count)
