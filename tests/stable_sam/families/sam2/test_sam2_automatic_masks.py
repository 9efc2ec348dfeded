"""StableSam2AutomaticMaskGenerator against sam2's SAM2AutomaticMaskGenerator over the same frozen
SAM 2: at the identity init the same masks, scores and boxes (exactly, as the predictors are);
with moved plugins other masks."""

import numpy as np
import pytest
import torch

from model_helpers import make_image, perturb_plugins
from stable_sam import build_stable_sam
from stable_sam.families.sam2.automatic_mask_generator import (
    SAM2AutomaticMaskGenerator, StableSam2AutomaticMaskGenerator)

SETTINGS = dict(points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0,
                stability_score_thresh=0.0, box_nms_thresh=1.0)


def sam2s_generator(model, **kwargs):
    """sam2's own generator over the model's SAM 2, told the small type's feature sizes (its
    predictor assumes a 1024 input)."""
    generator = SAM2AutomaticMaskGenerator(model.sam, **kwargs)
    generator.predictor._bb_feat_sizes = model.image_encoder.feature_sizes()
    return generator


def _records(generator, image):
    return sorted(((m["bbox"], float(m["predicted_iou"]), m["segmentation"].tobytes())
                   for m in generator.generate(image)), key=lambda r: (r[0], r[1]))


@pytest.mark.parametrize("use_m2m", [False, True])
def test_untrained_is_sam2s_generator(use_m2m):
    model = build_stable_sam("sam2_tiny_random").eval()
    image = make_image()
    ours = _records(StableSam2AutomaticMaskGenerator(model, use_m2m=use_m2m, **SETTINGS), image)
    theirs = _records(sam2s_generator(model, use_m2m=use_m2m, **SETTINGS), image)
    assert len(ours) == len(theirs) > 0
    assert ours == theirs


def test_moved_plugins_change_the_masks():
    model = build_stable_sam("sam2_tiny_random").eval()
    with torch.no_grad():
        perturb_plugins(model, scale=0.2)
    image = make_image()
    ours = _records(StableSam2AutomaticMaskGenerator(model, **SETTINGS), image)
    theirs = _records(sam2s_generator(model, **SETTINGS), image)
    assert ours != theirs


def test_refuses_other_models():
    with pytest.raises(TypeError, match="StableSam2"):
        StableSam2AutomaticMaskGenerator(build_stable_sam("tiny"))


def test_sams_generator_class_points_a_sam2_model_to_its_own():
    from stable_sam import StableSamAutomaticMaskGenerator

    model = build_stable_sam("sam2_tiny_random").eval()
    with pytest.raises(TypeError, match="use stable_sam.StableSam2AutomaticMaskGenerator"):
        StableSamAutomaticMaskGenerator(model)
