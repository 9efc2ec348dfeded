"""Stable-SAM (arXiv 2311.15776): SAM made robust to casual prompts by two small plugins in its
mask decoder (deformable sampling, dynamic routing), computed by stable_sam_ops' fused op.

    from stable_sam import build_stable_sam, StableSamPredictor
    model = build_stable_sam("vit_b", "sam_vit_b_01ec64.pth", "stable_sam_vit_b.safetensors")
    predictor = StableSamPredictor(model)
"""

__version__ = "0.1.0"

from .build import build_stable_sam, stable_sam_model_registry
from .checkpoint import CheckpointError, load_plugins, read_plugin_metadata, save_plugins
from .plugins import PluginConfig, StableSamPlugins
from .families.sam import StableSam, StableSamPredictor
from .families.hq import StableHQSam, StableHQSamPredictor
from .automatic_mask_generator import StableSamAutomaticMaskGenerator



def __getattr__(name: str):
    # SAM 2's predictor subclasses sam2's, so importing stable_sam does not import sam2: the
    # SAM 2 names load on first use (ImportError naming the extra when sam2 is missing)
    if name in ("StableSam2", "StableSam2ImagePredictor", "StableSam2AutomaticMaskGenerator"):
        from .families.sam2.build import import_sam2

        import_sam2()
        from .families import sam2 as sam2_family

        return getattr(sam2_family, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "PluginConfig",
    "StableHQSam",
    "StableHQSamPredictor",
    "StableSam",
    "StableSam2",
    "StableSam2AutomaticMaskGenerator",
    "StableSam2ImagePredictor",
    "StableSamAutomaticMaskGenerator",
    "StableSamPlugins",
    "StableSamPredictor",
    "build_stable_sam",
    "load_plugins",
    "read_plugin_metadata",
    "save_plugins",
    "stable_sam_model_registry",
]
