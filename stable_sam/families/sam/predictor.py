"""StableSamPredictor: SamPredictor's interface over a StableSam model."""

from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..predictor_base import PluginPredictor
from .model import StableSam


class StableSamPredictor(PluginPredictor):
    """Drop-in for segment_anything.SamPredictor (same methods, arguments, defaults and
    returns). Masks come from Stable-SAM's decoder; trailing keyword-only switches:
    `use_plugins=False` gives plain SAM, `return_extras=True` appends the routing weights,
    sampling locations, amplitudes and attention (see StableSam.decode) as a 4th element.

    Arguments:
      sam_model (StableSam): the model.
    """

    model_class = StableSam
    base_hint = "use segment_anything.SamPredictor for a plain Sam"

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        use_plugins: bool = True,
        return_extras: bool = False,
    ) -> Union[
        Tuple[np.ndarray, np.ndarray, np.ndarray],
        Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, np.ndarray]],
    ]:
        """SamPredictor.predict: masks (CxHxW), scores (C), low-res logits (Cx256x256) as numpy;
        with return_extras also a dict of numpy arrays for this prompt (batch dim dropped)."""
        self._require_image()
        prompts = self._prompts_to_torch(point_coords, point_labels, box, mask_input)
        out = self.predict_torch(*prompts, multimask_output, return_logits=return_logits,
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
        *,
        use_plugins: bool = True,
        return_extras: bool = False,
    ):
        """SamPredictor.predict_torch: prompts already in the input frame, batched over B prompts
        (e.g. boxes Bx4 for several objects of one image). Returns masks BxCxHxW, scores BxC,
        low-res logits BxCx256x256 (+ extras dict of batch-B tensors with return_extras)."""
        self._require_image()
        sparse, dense = self._encode_prompts(point_coords, point_labels, boxes, mask_input)
        decoded = self.model.decode(
            self.features, self._dense_pe(), sparse, dense, multimask_output,
            use_plugins=use_plugins, return_extras=return_extras,
        )
        low_res_masks, iou_predictions = decoded[0], decoded[1]
        masks = self._masks_from_logits(low_res_masks, return_logits)
        return (masks, iou_predictions, low_res_masks) + tuple(decoded[2:])
