"""The worst-case box search on every base family (SAM, the demo model, HQ-SAM, SAM 2), plugins on
and off: the box gets a gradient and no weight does, the masks it scores are the evaluation's own
(IoU-Base is the evaluation's GT-box IoU), and every reported box is feasible."""
import importlib.util

import numpy as np
import pytest
import torch

from model_helpers import make_image, perturb_plugins
from stable_sam import build_stable_sam
from stable_sam.data.prompts import Prompt, gt_box
from stable_sam.evaluation.box_constraint import feasible
from stable_sam.evaluation.box_decoding import PredictorBoxDecoder
from stable_sam.evaluation.metrics import mask_iou
from stable_sam.evaluation.protocol import predict_prompts
from stable_sam.evaluation.worst_box import (WorstBoxConfig, area_fraction, search_worst_boxes,
                                             soft_ious)
from stable_sam.families import base_predictor_for, predictor_for


def _installed(*names):
    return all(importlib.util.find_spec(n) is not None for n in names)


MODEL_TYPES = [
    "demo",
    "tiny",
    pytest.param("hq_tiny", marks=pytest.mark.skipif(
        not _installed("segment_anything_hq", "timm"), reason="the hq extra is not installed")),
    pytest.param("sam2_tiny_random", marks=pytest.mark.skipif(
        not _installed("sam2", "hydra", "iopath"), reason="the sam2 extra is not installed")),
]
CONFIG = WorstBoxConfig(steps=2, starts=2, time_budget_s=None)


@pytest.fixture(scope="module", params=MODEL_TYPES)
def family_case(request):
    """(model, its predictor with a 90x120 image set, the image's target) per model type; the
    plugins moved off their identity init so that plugins on and off differ."""
    torch.manual_seed(0)
    model = build_stable_sam(request.param).eval()
    if request.param != "demo":  # the demo's plugins are trained already
        perturb_plugins(model, seed=1, scale=0.2)
    image = make_image(90, 120, seed=2)
    target = np.zeros(image.shape[:2], bool)
    target[22:68, 30:90] = True  # make_image's bright rectangle
    predictor = predictor_for(model)
    with torch.inference_mode():  # as the demo server embeds: the search must copy it out
        predictor.set_image(image)
    return model, predictor, image, target


@pytest.mark.parametrize("use_plugins", [True, False])
def test_the_box_gets_a_gradient_and_no_weight_does(family_case, use_plugins):
    model, predictor, _, target = family_case
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    decoder = PredictorBoxDecoder(predictor, use_plugins=use_plugins)
    boxes = torch.tensor((gt_box(target) + [3, -2, 5, 4])[None], dtype=torch.float32,
                         requires_grad=True)
    soft = soft_ious(decoder.resize(decoder.low_res(boxes), decoder.low_res_size),
                     torch.as_tensor(area_fraction(target, decoder.low_res_size)),
                     decoder.mask_threshold, 1.0)
    (grad,) = torch.autograd.grad(soft.sum(), boxes)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    records = search_worst_boxes(decoder, target, config=CONFIG, seed=0)
    assert all(p.grad is None for p in model.parameters()), "a weight got a gradient"
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed"
    assert len(records) == 2


@pytest.mark.parametrize("use_plugins", [True, False])
def test_iou_base_is_the_evaluations_gt_box_iou_and_boxes_are_feasible(family_case, use_plugins):
    model, predictor, image, target = family_case
    records = search_worst_boxes(PredictorBoxDecoder(predictor, use_plugins=use_plugins), target,
                                 config=CONFIG, seed=0)
    gt = gt_box(target)
    evaluator = predictor if use_plugins else base_predictor_for(model)
    evaluator.set_image(image)
    for record in records:
        for key in ("box_min", "box_max", None):
            box = gt if key is None else np.array(record[key], np.float32)
            mask = predict_prompts(evaluator, [Prompt("box", box=box)])[0][0]
            expected = record["iou_base"] if key is None else record[f"iou_{key[4:]}"]
            if use_plugins:  # the very masks the evaluation makes
                assert mask_iou(mask, target) == expected
            else:  # the base package's own decoder: the same masks up to float rounding
                assert mask_iou(mask, target) == pytest.approx(expected, abs=0.01)
            if key is not None:
                assert feasible(np.array([record[key]]), gt, record["tau"], target.shape)[0]
        assert record["iou_min"] <= record["iou_base"] <= record["iou_max"]
        assert record["steps"] == 2 and record["visited"] >= 2


def test_plugins_on_and_off_search_different_models(family_case):
    _, predictor, _, target = family_case
    boxes = np.array([gt_box(target), gt_box(target) + [6, 4, -5, 3]])
    on = PredictorBoxDecoder(predictor, use_plugins=True).masks(boxes, target.shape)
    off = PredictorBoxDecoder(predictor, use_plugins=False).masks(boxes, target.shape)
    assert on.shape == off.shape == (2,) + target.shape
    assert (on != off).any()


def test_a_base_packages_own_predictor_is_refused():
    from segment_anything import SamPredictor

    model = build_stable_sam("tiny").eval()
    predictor = SamPredictor(model.sam)
    predictor.set_image(make_image(40, 50))
    with pytest.raises(TypeError, match="needs a Stable-SAM predictor"):
        PredictorBoxDecoder(predictor)
