"""The SAM 2 family (sam2's SAM 2.1: sam2.1_hiera_tiny, sam2.1_hiera_small,
sam2.1_hiera_base_plus, sam2.1_hiera_large and the random `sam2_tiny_random`): its builders over
the sam2 package's own configs (`build`), SAM 2's decoder adapter (`decoder`), `StableSam2`
(`model`), `StableSam2ImagePredictor` (`predictor`), a drop-in for sam2's SAM2ImagePredictor,
and `StableSam2AutomaticMaskGenerator` (`automatic_mask_generator`). Needs the `sam2` extra
(sam2, hydra-core, iopath); importing this package does not import sam2 until a model is built
or the predictor is asked for."""
from .build import SAM2_CONFIGS, build_sam2_model_type as build_base
from .build import load_sam2_checkpoint as load_base_weights
from .model import StableSam2

MODEL_CLASS = StableSam2


def base_predictor(model: StableSam2):
    """sam2's own SAM2ImagePredictor over the model's frozen SAM 2 (plain SAM 2's masks), its
    feature sizes set from the model's input size (it assumes 1024)."""
    from .predictor import SAM2ImagePredictor, quiet_sam2_transforms

    with quiet_sam2_transforms():
        predictor = SAM2ImagePredictor(model.sam)
    predictor._bb_feat_sizes = model.image_encoder.feature_sizes()
    return predictor


def __getattr__(name: str):
    # the predictor subclasses sam2's, so it is imported (with sam2) on first use
    if name in ("PREDICTOR_CLASS", "StableSam2ImagePredictor"):
        from .predictor import StableSam2ImagePredictor

        return StableSam2ImagePredictor
    if name == "StableSam2AutomaticMaskGenerator":
        from .automatic_mask_generator import StableSam2AutomaticMaskGenerator

        return StableSam2AutomaticMaskGenerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SAM2_CONFIGS", "StableSam2", "StableSam2AutomaticMaskGenerator",
           "StableSam2ImagePredictor", "base_predictor", "build_base", "load_base_weights"]
