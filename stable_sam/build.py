"""Builders: `stable_sam_model_registry[model_type](...)` and `build_stable_sam`."""

import warnings
from functools import partial
from typing import Callable, Dict, Optional

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from .checkpoint import load_plugins, load_sam_checkpoint, read_plugin_metadata
from .hq.build import HQ_SAM_BUILDERS, TINY_HQ_MODEL_TYPE
from .modeling import StableSam
from .modeling.plugins import PluginConfig
from .modeling.stable_hq_sam import StableHQSam
from .reproduction.demo_model import (
    DEMO_MODEL_TYPE,
    build_demo_sam,
    embedded_checkpoints,
    load_sam_weights,
)

TINY_SEED = 0  # the tiny SAM is random but the same on every build


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


SAM_BUILDERS: Dict[str, Callable[[], Sam]] = {
    "vit_b": lambda: sam_model_registry["vit_b"](checkpoint=None),
    "vit_l": lambda: sam_model_registry["vit_l"](checkpoint=None),
    "vit_h": lambda: sam_model_registry["vit_h"](checkpoint=None),
    "tiny": build_tiny_sam,
    DEMO_MODEL_TYPE: build_demo_sam,  # weights embedded in the package, see below
    **HQ_SAM_BUILDERS,  # hq_vit_b, hq_vit_l, hq_vit_h, hq_vit_tiny, hq_tiny
}
RANDOM_MODEL_TYPES = ("tiny", TINY_HQ_MODEL_TYPE)  # built random on purpose, no checkpoint


def build_stable_sam(
    model_type: str,
    sam_checkpoint: Optional[str] = None,
    plugin_checkpoint: Optional[str] = None,
    plugin_config: Optional[PluginConfig] = None,
    *,
    op_backend: str = "auto",
) -> StableSam:
    """Builds Stable-SAM for a SAM backbone.

    Arguments:
      model_type (str): "vit_b", "vit_l", "vit_h", "tiny" (random, for tests/demos) or "demo":
        a small model trained on generated scenes, to show the method, not a segmenter for
        photographs; its base and Stable-SAM plugin weights ship in the package and load when
        both checkpoints are None (a sam_checkpoint alone gives identity plugins). HQ-SAM:
        "hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny" (Light HQ-SAM) or "hq_tiny" (random).
      sam_checkpoint (str or None): official SAM weights (sam_vit_b_01ec64.pth, ...; for HQ-SAM
        sam_hq_vit_l.pth, ...), loaded with
        weights_only=True, strictly. None leaves SAM randomly initialised (with a warning).
      plugin_checkpoint (str or None): plugin weights from `save_plugins`. None: plugins at their
        identity initialisation (Stable-SAM == SAM until trained).
      plugin_config (PluginConfig or None): None takes the checkpoint's config, else the defaults.
      op_backend (str): stable_sam_ops backend for the deformable sampling.
    """
    if model_type not in SAM_BUILDERS:
        raise ValueError(f"model_type must be one of {sorted(SAM_BUILDERS)}, is {model_type!r}")
    if model_type == DEMO_MODEL_TYPE:
        sam_checkpoint, plugin_checkpoint = embedded_checkpoints(sam_checkpoint, plugin_checkpoint)
    if plugin_checkpoint is not None and plugin_config is None:
        plugin_config = read_plugin_metadata(plugin_checkpoint)["plugin_config"]
    sam = SAM_BUILDERS[model_type]()
    if model_type == DEMO_MODEL_TYPE:
        load_sam_weights(sam, sam_checkpoint)
    elif sam_checkpoint is not None:
        load_sam_checkpoint(sam, sam_checkpoint)
    elif model_type not in RANDOM_MODEL_TYPES:
        warnings.warn(
            f"build_stable_sam: no sam_checkpoint given, SAM {model_type} is randomly initialised",
            UserWarning,
            stacklevel=2,
        )
    model_class = StableHQSam if model_type in HQ_SAM_BUILDERS else StableSam
    model = model_class(sam, plugin_config, model_type=model_type, op_backend=op_backend)
    if plugin_checkpoint is not None:
        load_plugins(model, plugin_checkpoint)
    return model


stable_sam_model_registry: Dict[str, Callable[..., StableSam]] = {
    name: partial(build_stable_sam, name) for name in SAM_BUILDERS
}
