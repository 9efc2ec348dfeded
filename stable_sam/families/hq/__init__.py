"""The HQ-SAM family (paper Table 6; segment_anything_hq's `Sam`: hq_vit_b, hq_vit_l, hq_vit_h,
hq_vit_tiny and the random `hq_tiny`): its builders over the segment-anything-hq package
(`build`), HQ-SAM's decoder adapter (`decoder`), `StableHQSam` (`model`) and
`StableHQSamPredictor` (`predictor`), a drop-in for segment_anything_hq.SamPredictor. Needs the
`hq` extra (segment-anything-hq, timm); importing this package does not import
segment_anything_hq until a model is built."""
from ...checkpoint import load_sam_checkpoint as load_base_weights
from .build import HQ_SAM_BUILDERS, import_segment_anything_hq
from .model import StableHQSam
from .predictor import StableHQSamPredictor

MODEL_CLASS = StableHQSam
PREDICTOR_CLASS = StableHQSamPredictor


def build_base(model_type: str):
    """The model type's HQ-SAM, randomly initialised (weights come from `load_base_weights`)."""
    return HQ_SAM_BUILDERS[model_type]()


def base_predictor(model: StableHQSam):
    """segment_anything_hq's own predictor over the model's frozen HQ-SAM."""
    return import_segment_anything_hq().SamPredictor(model.sam)


__all__ = ["StableHQSam", "StableHQSamPredictor", "build_base", "base_predictor",
           "load_base_weights"]
