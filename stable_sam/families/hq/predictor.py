"""StableHQSamPredictor: segment_anything_hq.SamPredictor's interface over a StableHQSam."""

from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..predictor_base import PluginPredictor
from .model import StableHQSam


class StableHQSamPredictor(PluginPredictor):
    """Drop-in for segment_anything_hq.SamPredictor: the same methods, arguments (`predict` and
    `predict_torch` take `hq_token_only` after `return_logits`), defaults and returns, and
    `interm_features` beside `features` after `set_image`. Masks come from Stable-HQ-SAM's
    decoder; the keyword-only `use_plugins` and `return_extras` work as in StableSamPredictor.

    Arguments:
      sam_model (StableHQSam): the model.
    """

    model_class = StableHQSam
    base_hint = "use StableSamPredictor for Stable-SAM on SAM"

    @torch.no_grad()
    def set_torch_image(self, transformed_image: Tensor,
                        original_image_size: Tuple[int, ...]) -> None:
        """SamPredictor.set_torch_image; HQ-SAM's encoder also returns its early features."""
        super().set_torch_image(transformed_image, original_image_size)
        self.features, self.interm_features = self.features

    def reset_image(self) -> None:
        super().reset_image()
        self.interm_features = None

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        *,
        use_plugins: bool = True,
        return_extras: bool = False,
    ) -> Union[
        Tuple[np.ndarray, np.ndarray, np.ndarray],
        Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, np.ndarray]],
    ]:
        """segment_anything_hq's SamPredictor.predict: masks (1xHxW: HQ-SAM gives one mask
        either way), scores (1), low-res logits (1x256x256) as numpy; with return_extras also
        a dict of numpy arrays for this prompt."""
        self._require_image()
        prompts = self._prompts_to_torch(point_coords, point_labels, box, mask_input)
        out = self.predict_torch(*prompts, multimask_output, return_logits, hq_token_only,
                                 use_plugins=use_plugins, return_extras=return_extras)
        return self._first_as_numpy(out, return_extras)

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Optional[Tensor],
        point_labels: Optional[Tensor],
        boxes: Optional[Tensor] = None,
        mask_input: Optional[Tensor] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        *,
        use_plugins: bool = True,
        return_extras: bool = False,
    ):
        """segment_anything_hq's SamPredictor.predict_torch: prompts in the input frame, batched
        over B prompts. Returns masks Bx1xHxW, scores Bx1, low-res logits Bx1x256x256 (+ the
        extras dict with return_extras)."""
        self._require_image()
        sparse, dense = self._encode_prompts(point_coords, point_labels, boxes, mask_input)
        decoded = self.model.decode(
            self.features, self._dense_pe(), sparse, dense,
            multimask_output, hq_token_only, self.interm_features,
            use_plugins=use_plugins, return_extras=return_extras,
        )
        low_res_masks, iou_predictions = decoded[0], decoded[1]
        masks = self._masks_from_logits(low_res_masks, return_logits)
        return (masks, iou_predictions, low_res_masks) + tuple(decoded[2:])
