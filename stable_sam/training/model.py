"""The model a run trains (a StableSam built from the config) and `PromptedDecoder`, its
trainable forward pass for a batch of image embeddings with one prompt each."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import baselines
from .config import TrainConfig

__all__ = ["build_model", "model_input_size", "PromptedDecoder"]


def _plugin_config(config: TrainConfig, spec: baselines.MethodSpec):
    from ..plugins import PluginConfig

    fields = dict(config.plugin)
    if not spec.use_routing:
        fields["use_routing"] = False
    return PluginConfig.from_dict(fields)


def build_model(config: TrainConfig) -> nn.Module:
    from ..build import build_stable_sam

    spec = baselines.get_method(config.method)
    return build_stable_sam(
        config.model_type,
        sam_checkpoint=config.sam_checkpoint,
        plugin_checkpoint=config.plugin_checkpoint,
        plugin_config=_plugin_config(config, spec),
    )


def model_input_size(model: nn.Module) -> int:
    return int(model.image_encoder.img_size)


class PromptedDecoder(nn.Module):
    """Prompt encoding + (plugin) mask decoding for a batch of images with one prompt each.

    Prompts of different types have different numbers of sparse tokens, so they are decoded in
    groups of equal structure; each prompt gets its own image's embedding (batch N decode), which
    avoids SAM's repeat of one embedding per prompt. One forward per step, so DDP can wrap it.
    """

    def __init__(self, model: nn.Module, uses_plugins: bool):
        super().__init__()
        self.model = model
        self.uses_plugins = uses_plugins

    def forward(self, image_embeddings, prompts: List[Dict[str, Optional[Tensor]]]) -> Tensor:
        """image_embeddings: the image encoder's output, (N, C, h, w), for HQ-SAM the tuple
        (embeddings, interm_embeddings), for SAM 2 the dict {"image_embed", "high_res_feats"};
        prompts: one per image. Returns (N, 1, 4h, 4w) logits."""
        model = self.model
        early_features = high_res_features = None
        if isinstance(image_embeddings, tuple):  # HQ-SAM's encoder: (embeddings, interm list)
            image_embeddings, early_features = image_embeddings[0], image_embeddings[1][0]
        if isinstance(image_embeddings, dict):  # SAM 2's encoding
            high_res_features = image_embeddings["high_res_feats"]
            image_embeddings = image_embeddings["image_embed"]
        # SAM 2 encodes a box as two points ahead of the clicks, as its predictor does
        encode_prompts = getattr(model, "encode_prompts", model.prompt_encoder)
        n = image_embeddings.shape[0]
        image_pe = model.prompt_encoder.get_dense_pe()
        groups: Dict[Tuple, List[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(_prompt_signature(p), []).append(i)
        out: List[Optional[Tensor]] = [None] * n
        for indices in groups.values():
            points, boxes, masks = _stack_prompts([prompts[i] for i in indices],
                                                  image_embeddings.device)
            with torch.no_grad():  # the prompt encoder never trains
                sparse, dense = encode_prompts(points=points, boxes=boxes, masks=masks)
            # HQ-SAM trains on its default output, SAM's mask + the HQ token's (hq_token_only off)
            family_inputs = {} if early_features is None else {
                "hq_token_only": False, "interm_embeddings": [early_features[indices]]}
            if high_res_features is not None:
                # SAM 2 trains its single-mask token: no fallback to a multimask output
                family_inputs = {"high_res_features": [f[indices] for f in high_res_features],
                                 "dynamic_multimask": False}
            low_res, _ = model.decode(
                image_embeddings[indices], image_pe, sparse, dense, multimask_output=False,
                use_plugins=self.uses_plugins, **family_inputs,
            )
            for j, i in enumerate(indices):
                out[i] = low_res[j]
        return torch.stack(out)  # (N, 1, h, w)


def _prompt_signature(p: Dict[str, Optional[Tensor]]) -> Tuple:
    coords = p.get("point_coords")
    return (
        None if coords is None else int(coords.shape[0]),
        p.get("box") is not None,
        p.get("mask_input") is not None,
    )


def _stack_prompts(prompts: List[Dict[str, Optional[Tensor]]], device: torch.device):
    first = prompts[0]
    points = boxes = masks = None
    if first.get("point_coords") is not None:
        points = (torch.stack([p["point_coords"] for p in prompts]).to(device, torch.float32),
                  torch.stack([p["point_labels"] for p in prompts]).to(device, torch.int64))
    if first.get("box") is not None:
        boxes = torch.stack([p["box"] for p in prompts]).to(device, torch.float32)
    if first.get("mask_input") is not None:
        masks = torch.stack([p["mask_input"] for p in prompts]).to(device, torch.float32)
    return points, boxes, masks
