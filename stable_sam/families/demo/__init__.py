"""The demo family: one model type, `demo`, a small SAM trained on generated scenes to show the
method (not a segmenter for photographs), with its base and plugin weights shipped in
`stable_sam/weights/`. Its builder and weight files live here (`build`, and its conv image
encoder in `encoder`); training it is `stable_sam.reproduction`'s job.

It is a segment_anything `Sam` (a conv encoder, SAM's own prompt encoder and mask decoder), so
the registry pairs it with the SAM family's decoder adapter, model class and predictor.
"""
from .build import (
    build_demo_sam,
    embedded_checkpoints,
    load_sam_weights as load_base_weights,
)



def build_base(model_type: str):
    """The demo SAM's architecture, randomly initialised (weights from `load_base_weights`)."""
    return build_demo_sam()


__all__ = ["build_base", "embedded_checkpoints", "load_base_weights"]
