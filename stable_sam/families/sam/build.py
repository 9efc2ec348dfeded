"""SAM's builders: the official backbones from segment_anything's own registry (weights are
loaded separately, strictly and safely, by `stable_sam.checkpoint.load_sam_checkpoint`) and
`tiny`, a small random SAM for tests and CPU demos."""

from functools import partial
from typing import Callable, Dict

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

TINY_SEED = 0  # the tiny SAM is random but the same on every build
TINY_MODEL_TYPE = "tiny"


def build_tiny_sam() -> Sam:
    """A small randomly initialised SAM for tests and CPU demos: 256x256 input, a 2-block ViT
    (width 64), 16x16 embedding grid; prompt encoder and mask decoder at SAM's real widths.
    Its masks are meaningless; it exercises every code path quickly."""
    image_size, patch_size, embed_dim = 256, 16, 256
    grid = image_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=image_size,
                patch_size=patch_size,
                embed_dim=64,
                depth=2,
                num_heads=2,
                mlp_ratio=4,
                out_chans=embed_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=8,
                global_attn_indexes=(1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=embed_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(image_size, image_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8
                ),
                transformer_dim=embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
        )
    return sam.eval()


def _official(name: str) -> Sam:
    return sam_model_registry[name](checkpoint=None)


SAM_BUILDERS: Dict[str, Callable[[], Sam]] = {
    "vit_b": partial(_official, "vit_b"),
    "vit_l": partial(_official, "vit_l"),
    "vit_h": partial(_official, "vit_h"),
    TINY_MODEL_TYPE: build_tiny_sam,
}
