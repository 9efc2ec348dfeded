"""The `demo` model: a small SAM (segment-anything's PromptEncoder, MaskDecoder and
TwoWayTransformer at embedding width 256, a conv image encoder, 256 px input, 16x16 embedding)
and the weights shipped in `stable_sam/weights/`.

A small model trained on generated scenes (`stable_sam.data.scenes`) by
`stable_sam.reproduction`, to show the method; it is not a segmenter for photographs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .encoder import ConvImageEncoder, FoldedDetailEncoder

# the weights file names its encoder (safetensors metadata "architecture"); files written before
# the name existed hold demo-sam/1
ENCODERS = {cls.ARCHITECTURE: cls for cls in (ConvImageEncoder, FoldedDetailEncoder)}
LEGACY_ARCHITECTURE = ConvImageEncoder.ARCHITECTURE
SHIPPED_ARCHITECTURE = FoldedDetailEncoder.ARCHITECTURE  # of stable_sam/weights/demo_sam.safetensors
TRAINED_ARCHITECTURE = FoldedDetailEncoder.ARCHITECTURE  # what a new base trains (issue 24)

DEMO_MODEL_TYPE = "demo"
DEMO_IMAGE_SIZE = 256
EMBED_DIM = 256  # the paper's plugins are built for SAM's width
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEMO_SAM_WEIGHTS = WEIGHTS_DIR / "demo_sam.safetensors"
DEMO_PLUGIN_WEIGHTS = WEIGHTS_DIR / "demo_stable_sam_plugins.safetensors"


def _encoder(architecture: str):
    if architecture not in ENCODERS:
        raise ValueError(f"architecture must be one of {sorted(ENCODERS)}, is {architecture!r}")
    # width 24 keeps base + plugins small shipped with SAM's own decoder (10.0 MB with demo-sam/2)
    return ENCODERS[architecture](DEMO_IMAGE_SIZE, EMBED_DIM, width=24)


def build_demo_sam(architecture: str = SHIPPED_ARCHITECTURE) -> Sam:
    """The demo SAM's architecture, randomly initialised (the weights are loaded separately);
    `architecture` names the image encoder (one of ENCODERS), the rest is SAM's own."""
    grid = DEMO_IMAGE_SIZE // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = Sam(
            image_encoder=_encoder(architecture),
            prompt_encoder=PromptEncoder(
                embed_dim=EMBED_DIM, image_embedding_size=(grid, grid),
                input_image_size=(DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                # SAM's own decoder (its MLP runs on the few prompt tokens only, so its
                # width costs size, not time): DT-SAM's 4.06 M parameters are the paper's
                transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048,
                                              num_heads=8),
                transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256,
            ),
        )
    return sam.eval()


def save_sam_weights(sam: Sam, path) -> Path:
    """Writes SAM's state dict as float16 safetensors, atomically (float16 halves the shipped
    size; every user of the file, the reproduction's own evaluation included, loads these
    rounded values)."""
    from safetensors.torch import save_file

    from ...data._io import write_atomic

    state = {k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v
             for k, v in sam.state_dict().items()}
    metadata = {"format": "demo-sam", "architecture": sam.image_encoder.ARCHITECTURE}
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return Path(path)


def read_architecture(path) -> str:
    """The encoder architecture a `save_sam_weights` file was written for."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return metadata.get("architecture", LEGACY_ARCHITECTURE)


def load_sam_weights(sam: Sam, path) -> None:
    """Loads a `save_sam_weights` file strictly into `sam`, in `sam`'s dtype. When the file
    names another encoder architecture than `sam`'s, `sam.image_encoder` is replaced by that
    one first: the file, not the caller, says which demo model it is."""
    from safetensors.torch import load_file

    from ...checkpoint import CheckpointError, check_state_dict

    if not Path(path).is_file():
        raise FileNotFoundError(f"demo SAM weights not found: {path}")
    try:
        state: Dict[str, torch.Tensor] = load_file(str(path))
        architecture = read_architecture(path)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"demo SAM weights {str(path)!r} could not be read: {exc}") from exc
    if architecture not in ENCODERS:
        raise CheckpointError(f"demo SAM weights {str(path)!r} are for architecture "
                              f"{architecture!r}; this version knows {sorted(ENCODERS)}")
    if sam.image_encoder.ARCHITECTURE != architecture:
        sam.image_encoder = _encoder(architecture).to(next(sam.parameters()).dtype).eval()
    check_state_dict(sam, state, str(path), "demo SAM weights")
    own = sam.state_dict()
    sam.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def embedded_checkpoints(sam_checkpoint, plugin_checkpoint):
    """The (sam, plugin) files `build_stable_sam("demo", ...)` loads: with neither given, the
    shipped base and Stable-SAM plugins; with a base given (the reproduction trains plugins on
    its own base), that base and the given plugins or none (identity plugins)."""
    if sam_checkpoint is None:
        if not DEMO_SAM_WEIGHTS.is_file():
            raise FileNotFoundError(f"the demo model's weights are missing: {DEMO_SAM_WEIGHTS}")
        sam_checkpoint = str(DEMO_SAM_WEIGHTS)
        if plugin_checkpoint is None and DEMO_PLUGIN_WEIGHTS.is_file():
            plugin_checkpoint = str(DEMO_PLUGIN_WEIGHTS)
    return sam_checkpoint, plugin_checkpoint
