"""Builders of HQ-SAM from segment_anything_hq's own classes (a dependency, not a copy)."""

import importlib
import warnings
from functools import partial
from types import ModuleType
from typing import Callable, Dict

import torch
from torch import nn

TINY_HQ_SEED = 0  # the tiny HQ-SAM is random but the same on every build
TINY_HQ_MODEL_TYPE = "hq_tiny"


def import_segment_anything_hq(name: str = "segment_anything_hq") -> ModuleType:
    """Imports segment_anything_hq (or a submodule), with a message naming the extra when it is
    missing. Its TinyViT module imports timm's deprecated paths and re-registers timm's TinyViT
    models; those import-time warnings say nothing about the user's code, so they are muted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"HQ-SAM model types need the segment-anything-hq package and timm ({exc}); "
            "install them with: pip install 'stable-sam[hq]'"
        ) from exc


def build_tiny_hq_sam() -> nn.Module:
    """A small randomly initialised HQ-SAM for tests and CPU demos, the HQ twin of
    stable_sam.build.build_tiny_sam: 256x256 input, a 2-block ViT (width 64, block 1 global, so
    it yields the early feature HQ-SAM's decoder reads), 16x16 grid; prompt encoder and HQ mask
    decoder at HQ-SAM's real widths (vit_dim 64)."""
    hq = import_segment_anything_hq("segment_anything_hq.modeling")
    image_size, patch_size, embed_dim, vit_dim = 256, 16, 256, 64
    grid = image_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_HQ_SEED)
        sam = hq.Sam(
            image_encoder=hq.ImageEncoderViT(
                img_size=image_size, patch_size=patch_size, embed_dim=vit_dim, depth=2,
                num_heads=2, mlp_ratio=4, out_chans=embed_dim, qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=8, global_attn_indexes=(1,),
            ),
            prompt_encoder=hq.PromptEncoder(
                embed_dim=embed_dim, image_embedding_size=(grid, grid),
                input_image_size=(image_size, image_size), mask_in_chans=16,
            ),
            mask_decoder=hq.MaskDecoderHQ(
                num_multimask_outputs=3,
                transformer=hq.TwoWayTransformer(
                    depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8
                ),
                transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim=256,
                vit_dim=vit_dim,
            ),
        )
    return sam.eval()


def _official(name: str) -> nn.Module:
    """HQ-SAM's own builder without a checkpoint: its loader reads with a bare torch.load and
    strict=False, so weights go through stable_sam.checkpoint.load_sam_checkpoint instead."""
    registry = import_segment_anything_hq("segment_anything_hq.build_sam").sam_model_registry
    return registry[name](checkpoint=None)


HQ_SAM_BUILDERS: Dict[str, Callable[[], nn.Module]] = {
    "hq_vit_b": partial(_official, "vit_b"),
    "hq_vit_l": partial(_official, "vit_l"),
    "hq_vit_h": partial(_official, "vit_h"),
    "hq_vit_tiny": partial(_official, "vit_tiny"),  # Light HQ-SAM (TinyViT encoder)
    TINY_HQ_MODEL_TYPE: build_tiny_hq_sam,
}
