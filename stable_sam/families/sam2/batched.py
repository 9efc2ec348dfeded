"""SAM 2's part of prompts across images (`stable_sam.families.batched_prompts`).

SAM 2's predictor differs from SamPredictor in every step around the decoder: its images are
stretched to the square input (SAM2Transforms), a box enters the prompt encoder as two points
labelled 2 and 3 ahead of the clicks, the decoder also reads two high-resolution feature maps
per image, and the low-res logits come back clamped to +-32. This part does each step as
StableSam2ImagePredictor does it for one image.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..batched_prompts import EmbeddedImages, ImagePrompts, PromptTensors

LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns


class Sam2Batching:
    @staticmethod
    def encoder_tensors(encoded: Dict) -> Dict[str, Tensor]:
        """The decoder's per-image inputs from Sam2ImageEncoding's output on B images."""
        feat_s0, feat_s1 = encoded["high_res_feats"]
        return {"image_embeddings": encoded["image_embed"], "high_res_feats_0": feat_s0,
                "high_res_feats_1": feat_s1}

    def predictor_image(self, predictor) -> EmbeddedImages:
        """Every image the predictor holds (set_image: one; set_image_batch: all of them)."""
        if not predictor._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) or "
                               ".set_image_batch(...) first.")
        tensors = self.encoder_tensors(predictor._features)
        size = predictor.model.image_encoder.img_size
        return EmbeddedImages(tensors, [(size, size)] * len(predictor._orig_hw),
                              [tuple(hw) for hw in predictor._orig_hw])

    @torch.no_grad()
    def embed_images(self, predictor, images: Sequence[np.ndarray]) -> EmbeddedImages:
        """set_image_batch's encoding (one encoder call on all images), without changing the
        predictor's own images."""
        if not isinstance(images, (list, tuple)) or not images or not all(
                isinstance(image, np.ndarray) for image in images):
            raise TypeError("embed_images takes a non-empty list of HxWx3 RGB np.ndarray images")
        batch = predictor._transforms.forward_batch(list(images)).to(predictor.device)
        encoded = predictor.model.image_encoder(batch)
        size = predictor.model.image_encoder.img_size
        return EmbeddedImages(self.encoder_tensors(encoded), [(size, size)] * len(images),
                              [tuple(image.shape[:2]) for image in images])

    @staticmethod
    def prompt_tensors(predictor, prompts: ImagePrompts, original_size,
                       normalize_coords: bool = True) -> PromptTensors:
        """SAM2ImagePredictor._prep_prompts for K prompts of one image."""
        transforms, device = predictor._transforms, predictor.device
        out = PromptTensors()
        if prompts.point_coords is not None:
            coords = torch.as_tensor(prompts.point_coords, dtype=torch.float, device=device)
            out.point_coords = transforms.transform_coords(coords, normalize=normalize_coords,
                                                           orig_hw=original_size)
            out.point_labels = torch.as_tensor(prompts.point_labels, dtype=torch.int,
                                               device=device)
        if prompts.boxes is not None:
            boxes = torch.as_tensor(prompts.boxes, dtype=torch.float, device=device)
            boxes = transforms.transform_boxes(boxes, normalize=normalize_coords,
                                               orig_hw=original_size)
            out.boxes = boxes.reshape(-1, 4)
        if prompts.mask_input is not None:
            out.mask_input = torch.as_tensor(prompts.mask_input, dtype=torch.float,
                                             device=device)
        return out

    @staticmethod
    def encode(model, prompts: PromptTensors) -> Tuple[Tensor, Tensor]:
        """SAM 2's prompt encoding: box corners as points labelled 2 and 3 before the clicks."""
        points = None if prompts.point_coords is None else (prompts.point_coords,
                                                              prompts.point_labels)
        if prompts.boxes is not None:
            corners = prompts.boxes.reshape(-1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int,
                                  device=corners.device).repeat(corners.shape[0], 1)
            points = (corners, labels) if points is None else (
                torch.cat([corners, points[0]], dim=1), torch.cat([labels, points[1]], dim=1))
        return model.prompt_encoder(points=points, boxes=None, masks=prompts.mask_input)

    @staticmethod
    def decode(model, tensors: Dict[str, Tensor], image_pe: Tensor, sparse: Tensor,
               dense: Tensor, multimask_output: bool, *, use_plugins: bool):
        """StableSam2.decode with each prompt's own image rows (or one row shared by all)."""
        high_res: List[Tensor] = [tensors["high_res_feats_0"], tensors["high_res_feats_1"]]
        return model.decode(tensors["image_embeddings"], image_pe, sparse, dense,
                            multimask_output, high_res, use_plugins=use_plugins)

    @staticmethod
    def masks_per_prompt(multimask_output: bool) -> int:
        return 3 if multimask_output else 1

    @staticmethod
    def postprocess(predictor, low_res: Tensor, input_size, original_size,
                    return_logits: bool) -> Tuple[Tensor, Tensor]:
        """(masks at the original size, low-res logits) as SAM2ImagePredictor returns them."""
        masks = predictor._transforms.postprocess_masks(low_res, tuple(original_size))
        low_res = torch.clamp(low_res, -LOW_RES_CLAMP, LOW_RES_CLAMP)
        return (masks if return_logits else masks > predictor.mask_threshold), low_res


BATCHING = Sam2Batching()
