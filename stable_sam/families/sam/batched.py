"""SAM's part of prompts across images (`stable_sam.families.batched_prompts`), also the demo
model's: the encoder gives the embeddings only, and StableSam.decode takes one per prompt."""
from typing import Dict

from torch import Tensor

from ..batched_prompts import SamStyleBatching


class SamBatching(SamStyleBatching):
    @staticmethod
    def encoder_tensors(encoded: Tensor) -> Dict[str, Tensor]:
        """The decoder's per-image inputs from the image encoder's output (B, C, h, w)."""
        return {"image_embeddings": encoded}

    @staticmethod
    def predictor_tensors(predictor) -> Dict[str, Tensor]:
        """The same, from a predictor after set_image (batch 1)."""
        return {"image_embeddings": predictor.features}

    @staticmethod
    def decode(model, tensors: Dict[str, Tensor], image_pe: Tensor, sparse: Tensor,
               dense: Tensor, multimask_output: bool, *, use_plugins: bool):
        """StableSam.decode with each prompt's own image row (or one row shared by all)."""
        return model.decode(tensors["image_embeddings"], image_pe, sparse, dense,
                            multimask_output, use_plugins=use_plugins)


BATCHING = SamBatching()
