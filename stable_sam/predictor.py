"""StableSamPredictor: SamPredictor's interface over a StableSam model."""

from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from segment_anything import SamPredictor

from .modeling import StableSam
from .modeling.stable_hq_sam import StableHQSam


class StableSamPredictor(SamPredictor):
    """Drop-in for segment_anything.SamPredictor (same methods, arguments, defaults and
    returns). Masks come from Stable-SAM's decoder; trailing keyword-only switches:
    `use_plugins=False` gives plain SAM, `return_extras=True` appends the routing weights,
    sampling locations, amplitudes and attention (see StableSam.decode) as a 4th element.

    Arguments:
      sam_model (StableSam): the model.
    """

    def __init__(self, sam_model: StableSam) -> None:
        if not isinstance(sam_model, StableSam):
            raise TypeError(
                f"StableSamPredictor needs a StableSam model, got {type(sam_model).__name__}; "
                "use segment_anything.SamPredictor for a plain Sam"
            )
        super().__init__(sam_model)

    def _prompts_to_torch(self, point_coords, point_labels, box, mask_input):
        """numpy prompts in original-image pixels -> batch-1 tensors in the model's input frame."""
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            coords = self.transform.apply_coords(np.asarray(point_coords), self.original_size)
            coords = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            boxes = self.transform.apply_boxes(np.asarray(box), self.original_size)
            boxes = torch.as_tensor(boxes, dtype=torch.float, device=self.device)[None]
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        return coords, labels, boxes, masks

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
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        coords, labels, boxes, masks_in = self._prompts_to_torch(
            point_coords, point_labels, box, mask_input
        )
        out = self.predict_torch(
            coords,
            labels,
            boxes,
            masks_in,
            multimask_output,
            return_logits=return_logits,
            use_plugins=use_plugins,
            return_extras=return_extras,
        )
        arrays = tuple(t[0].detach().cpu().numpy() for t in out[:3])
        if not return_extras:
            return arrays
        return arrays + ({k: v[0].detach().cpu().numpy() for k, v in out[3].items()},)

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
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        decoded = self.model.decode(
            self.features,
            self.model.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output,
            use_plugins=use_plugins,
            return_extras=return_extras,
        )
        low_res_masks, iou_predictions = decoded[0], decoded[1]
        masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        if return_extras:
            return masks, iou_predictions, low_res_masks, decoded[2]
        return masks, iou_predictions, low_res_masks


def predictor_for(model: StableSam) -> StableSamPredictor:
    """The model's predictor: StableHQSamPredictor for Stable-SAM on HQ-SAM (its decoder also
    reads the encoder's early features), StableSamPredictor otherwise."""
    if isinstance(model, StableHQSam):
        from .hq.predictor import StableHQSamPredictor

        return StableHQSamPredictor(model)
    return StableSamPredictor(model)


def sam_predictor_for(model: StableSam) -> SamPredictor:
    """A plain predictor over the model's own frozen SAM (HQ-SAM's for an HQ model)."""
    if isinstance(model, StableHQSam):
        from .hq.build import import_segment_anything_hq

        return import_segment_anything_hq().SamPredictor(model.sam)
    return SamPredictor(model.sam)
