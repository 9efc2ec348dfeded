"""Builders of SAM 2.1 from the sam2 package's own configs and classes (a dependency, not a
copy), and the loader of its official checkpoints (strict, weights_only)."""

import importlib
from types import ModuleType
from typing import Dict, List, Mapping

import torch
from torch import nn

from ...checkpoint import CheckpointError, check_state_dict

SMALL_RANDOM_SEED = 0  # the small random SAM 2 is random but the same on every build
SMALL_RANDOM_MODEL_TYPE = "sam2_tiny_random"

# model type -> the sam2 package's hydra config (the files the official checkpoints go with)
SAM2_CONFIGS: Dict[str, str] = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# The small random type: SAM 2.1 hiera-tiny's config (every decoder, prompt-encoder and memory
# setting as in the real model: object-score token, high-res features, no_mem_embed) with a
# 256-pixel input (a 16x16 embedding grid, like `tiny`) and a 5-block (1, 1, 2, 1), 16-wide
# Hiera whose global-attention block sits in stage 3, as hiera-tiny's do.
_SMALL_RANDOM_OVERRIDES: List[str] = [
    "model.image_size=256",
    "model.image_encoder.trunk.embed_dim=16",
    "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",
    "model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
]


def import_sam2(name: str = "sam2") -> ModuleType:
    """Imports sam2 (or a submodule), with a message naming the extra when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"SAM 2 model types need the sam2 package, hydra-core and iopath ({exc}); "
            "install them with: pip install 'stable-sam[sam2]'"
        ) from exc


def build_sam2_base(config: str, overrides: List[str] = ()) -> nn.Module:
    """sam2.build_sam.build_sam2 without a checkpoint, on the CPU, in eval mode: its defaults,
    so dynamic_multimask_via_stability is on, as for every user of build_sam2 (weights come
    from `load_sam2_checkpoint`)."""
    build_sam = import_sam2("sam2.build_sam")
    return build_sam.build_sam2(config, ckpt_path=None, device="cpu",
                                hydra_overrides_extra=list(overrides))


def build_small_random_sam2() -> nn.Module:
    """A small randomly initialised SAM 2.1 for tests and CPU demos (see _SMALL_RANDOM_OVERRIDES).
    Its masks are meaningless; it exercises every code path of the SAM 2 family quickly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMALL_RANDOM_SEED)
        return build_sam2_base(SAM2_CONFIGS["sam2.1_hiera_tiny"], _SMALL_RANDOM_OVERRIDES)


def build_sam2_model_type(model_type: str) -> nn.Module:
    """The model type's SAM2Base, randomly initialised."""
    if model_type == SMALL_RANDOM_MODEL_TYPE:
        return build_small_random_sam2()
    return build_sam2_base(SAM2_CONFIGS[model_type])


def load_sam2_checkpoint(sam2_model: nn.Module, path: str) -> None:
    """Loads an official SAM 2.1 checkpoint ({"model": state_dict}, as Meta ships
    sam2.1_hiera_*.pt) strictly into a SAM2Base, with weights_only=True."""
    from ...checkpoint import _require_file

    _require_file(path, "SAM 2 checkpoint")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "unusable file"
        raise CheckpointError(f"SAM 2 checkpoint {path!r} could not be read: {exc}") from exc
    if not isinstance(content, Mapping) or not isinstance(content.get("model"), Mapping):
        raise CheckpointError(
            f"SAM 2 checkpoint {path!r} must hold {{'model': state_dict}} as the official "
            f"sam2.1_hiera_*.pt do, holds {type(content).__name__}"
            + (f" with keys {sorted(content)[:5]}" if isinstance(content, Mapping) else "")
        )
    state_dict = content["model"]
    check_state_dict(sam2_model, state_dict, path, "SAM 2 checkpoint")
    sam2_model.load_state_dict(state_dict, strict=True)
