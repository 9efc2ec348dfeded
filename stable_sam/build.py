"""Builders: `stable_sam_model_registry[model_type](...)` and `build_stable_sam`, over the base
families in `stable_sam.families`."""

import warnings
from functools import partial
from typing import Any, Callable, Dict, Mapping, Optional, Union

from torch import nn

from .checkpoint import load_plugins, read_plugin_metadata
from .families import MODEL_TYPES, RANDOM_MODEL_TYPES, family_of
from .plugins import PluginConfig


def build_stable_sam(
    model_type: str,
    sam_checkpoint: Optional[str] = None,
    plugin_checkpoint: Optional[str] = None,
    plugin_config: Union[None, PluginConfig, Mapping[str, Any]] = None,
    *,
    op_backend: str = "auto",
) -> nn.Module:
    """Builds Stable-SAM for a base model.

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
      plugin_config (PluginConfig, dict of its fields, or None): None takes the checkpoint's
        config, else the defaults.
      op_backend (str): stable_sam_ops backend for the deformable sampling.

    Returns the family's model class: StableSam (SAM, demo) or StableHQSam (HQ-SAM).
    """
    family = family_of(model_type)
    missing = family.missing_dependency()
    if missing is not None:
        raise ImportError(missing)
    package = family.load()
    embedded = model_type in family.embedded_model_types
    if embedded:
        sam_checkpoint, plugin_checkpoint = package.embedded_checkpoints(
            sam_checkpoint, plugin_checkpoint)
    if plugin_checkpoint is not None and plugin_config is None:
        plugin_config = read_plugin_metadata(plugin_checkpoint)["plugin_config"]
    sam = package.build_base(model_type)
    if sam_checkpoint is not None:
        package.load_base_weights(sam, sam_checkpoint)
    elif model_type not in RANDOM_MODEL_TYPES:
        warnings.warn(
            f"build_stable_sam: no sam_checkpoint given, SAM {model_type} is randomly initialised",
            UserWarning,
            stacklevel=2,
        )
    model_class = family.load_adapter().MODEL_CLASS
    model = model_class(sam, plugin_config, model_type=model_type, op_backend=op_backend)
    if plugin_checkpoint is not None:
        load_plugins(model, plugin_checkpoint)
    return model


stable_sam_model_registry: Dict[str, Callable[..., nn.Module]] = {
    name: partial(build_stable_sam, name) for name in MODEL_TYPES
}
