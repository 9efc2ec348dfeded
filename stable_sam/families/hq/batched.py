"""HQ-SAM's part of prompts across images (`stable_sam.families.batched_prompts`): its encoder
also returns the early ViT features, which its decoder reads per image, and it gives one mask
per prompt either way."""
from typing import Dict, Sequence, Tuple

from torch import Tensor

from ..batched_prompts import SamStyleBatching


class HQSamBatching(SamStyleBatching):
    @staticmethod
    def encoder_tensors(encoded: Tuple[Tensor, Sequence[Tensor]]) -> Dict[str, Tensor]:
        """The decoder's per-image inputs from the image encoder's (embeddings (B, C, h, w),
        interm_embeddings [(B, h, w, vit_dim), ...]); the decoder reads the first of those."""
        embeddings, interm = encoded
        return {"image_embeddings": embeddings, "interm_embeddings": interm[0]}

    @staticmethod
    def predictor_tensors(predictor) -> Dict[str, Tensor]:
        """The same, from a StableHQSamPredictor after set_image (batch 1)."""
        return {"image_embeddings": predictor.features,
                "interm_embeddings": predictor.interm_features[0]}

    @staticmethod
    def decode(model, tensors: Dict[str, Tensor], image_pe: Tensor, sparse: Tensor,
               dense: Tensor, multimask_output: bool, *, use_plugins: bool,
               hq_token_only: bool = False):
        """StableHQSam.decode with each prompt's own image rows (or one row shared by all)."""
        return model.decode(tensors["image_embeddings"], image_pe, sparse, dense,
                            multimask_output, hq_token_only, [tensors["interm_embeddings"]],
                            use_plugins=use_plugins)

    @staticmethod
    def masks_per_prompt(multimask_output: bool, hq_token_only: bool = False) -> int:
        return 1  # HQ-SAM returns one mask either way


BATCHING = HQSamBatching()
