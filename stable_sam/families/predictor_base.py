"""What every family's predictor shares: the type check of its model, numpy prompts turned into
the model's input frame, and outputs turned back into numpy. Each family's predictor subclasses
this and keeps its base package's own `predict` signature; none imports another family's."""

from typing import Dict, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch import Tensor, nn
from segment_anything import SamPredictor


class PluginPredictor(SamPredictor):
    """SamPredictor over a Stable-SAM model; subclasses set `model_class` and `base_hint` (which
    plain predictor to use for a model of another class)."""

    model_class: Type[nn.Module] = nn.Module
    base_hint = "segment_anything.SamPredictor"

    def __init__(self, sam_model: nn.Module) -> None:
        if not isinstance(sam_model, self.model_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.model_class.__name__} model, got "
                f"{type(sam_model).__name__}; {self.base_hint}"
            )
        super().__init__(sam_model)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

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

    @staticmethod
    def _first_as_numpy(
        out: Sequence, return_extras: bool
    ) -> Tuple:
        """predict_torch's batch-1 output -> predict's numpy arrays (batch dim dropped), with the
        extras dict's arrays appended when asked for."""
        arrays = tuple(t[0].detach().cpu().numpy() for t in out[:3])
        if not return_extras:
            return arrays
        extras: Dict[str, np.ndarray] = {k: v[0].detach().cpu().numpy() for k, v in out[3].items()}
        return arrays + (extras,)

    def _masks_from_logits(self, low_res_masks: Tensor, return_logits: bool) -> Tensor:
        masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        return masks if return_logits else masks > self.model.mask_threshold

    def _dense_pe(self) -> Tensor:
        return self.model.prompt_encoder.get_dense_pe()

    def _encode_prompts(self, point_coords: Optional[Tensor], point_labels: Optional[Tensor],
                        boxes: Optional[Tensor], mask_input: Optional[Tensor]):
        points = (point_coords, point_labels) if point_coords is not None else None
        return self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
