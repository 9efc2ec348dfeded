"""The SAM family (segment_anything's `Sam`: vit_b, vit_l, vit_h and the random `tiny`): its
builders (`build`), its decoder adapter (`decoder`), `StableSam` (`model`) and
`StableSamPredictor` (`predictor`). The registry in `stable_sam.families` reads the names below.
"""
from segment_anything import SamPredictor

from ...checkpoint import load_sam_checkpoint as load_base_weights
from .build import SAM_BUILDERS
from .model import StableSam
from .predictor import StableSamPredictor

MODEL_CLASS = StableSam
PREDICTOR_CLASS = StableSamPredictor


def build_base(model_type: str):
    """The model type's SAM, randomly initialised (weights come from `load_base_weights`)."""
    return SAM_BUILDERS[model_type]()


def base_predictor(model: StableSam) -> SamPredictor:
    """segment_anything's own predictor over the model's frozen SAM (plain SAM's masks)."""
    return SamPredictor(model.sam)


__all__ = ["StableSam", "StableSamPredictor", "build_base", "base_predictor", "load_base_weights"]
