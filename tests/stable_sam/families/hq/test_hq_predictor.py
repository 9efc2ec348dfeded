"""StableHQSamPredictor against segment_anything_hq.SamPredictor (the drop-in contract), the
predictor dispatch, and the automatic mask generator on HQ-SAM."""

import numpy as np
import pytest
import torch
from model_helpers import assert_masks_agree_where_decided, make_image, perturb_plugins

from stable_sam import StableSamAutomaticMaskGenerator, StableSamPredictor, build_stable_sam
from stable_sam.families.hq.build import import_segment_anything_hq
from stable_sam.families.hq.predictor import StableHQSamPredictor
from stable_sam.families import base_predictor_for, predictor_for

TOL = 1e-5
BOX = np.array([50.0, 40.0, 190.0, 150.0])
POINTS = (np.array([[120.0, 90.0], [30.0, 20.0]]), np.array([1, 0]))


@pytest.fixture(scope="module")
def image():
    return make_image()


@pytest.fixture(scope="module")
def hq():
    return import_segment_anything_hq()


@pytest.fixture(scope="module")
def predictors(image, hq):
    """(ours at the identity init, HQ-SAM's own over the same frozen HQ-SAM), image set."""
    model = build_stable_sam("hq_tiny").eval()
    ours, theirs = StableHQSamPredictor(model), hq.SamPredictor(model.sam)
    ours.set_image(image)
    theirs.set_image(image)
    return ours, theirs


@pytest.mark.parametrize("hq_token_only", [False, True])
@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("prompt", ["box", "points"])
def test_predict_matches_hq_sam_predictor(predictors, multimask, hq_token_only, prompt):
    ours, theirs = predictors
    kwargs = dict(box=BOX) if prompt == "box" else dict(point_coords=POINTS[0],
                                                          point_labels=POINTS[1])
    a = ours.predict(**kwargs, multimask_output=multimask, hq_token_only=hq_token_only)
    b = theirs.predict(**kwargs, multimask_output=multimask, hq_token_only=hq_token_only)
    b_logits = theirs.predict(**kwargs, multimask_output=multimask, hq_token_only=hq_token_only,
                              return_logits=True)[0]
    assert a[0].shape == b[0].shape == (1, 180, 240)
    assert_masks_agree_where_decided(a[0], b[0], b_logits, TOL)
    np.testing.assert_allclose(a[1], b[1], atol=TOL, rtol=0)
    np.testing.assert_allclose(a[2], b[2], atol=TOL, rtol=0)


def test_positional_arguments_follow_hq_sams_order(predictors):
    """predict(point_coords, point_labels, box, mask_input, multimask_output, return_logits,
    hq_token_only), as segment_anything_hq's."""
    ours, theirs = predictors
    a = ours.predict(None, None, BOX, None, True, True, True)
    b = theirs.predict(None, None, BOX, None, True, True, True)
    np.testing.assert_allclose(a[0], b[0], atol=TOL, rtol=0)
    c = ours.predict(None, None, BOX, None, True, True, False)
    assert np.abs(a[0] - c[0]).max() > 1e-3  # hq_token_only reached the decoder


@pytest.mark.parametrize("hq_token_only", [False, True])
def test_predict_torch_batched_boxes(predictors, hq_token_only):
    ours, theirs = predictors
    boxes = np.array([BOX, [10.0, 10.0, 100.0, 170.0], [120.0, 5.0, 235.0, 60.0]])
    boxes = torch.as_tensor(ours.transform.apply_boxes(boxes, ours.original_size))
    a = ours.predict_torch(None, None, boxes, multimask_output=False, hq_token_only=hq_token_only)
    b = theirs.predict_torch(None, None, boxes, multimask_output=False,
                             hq_token_only=hq_token_only)
    assert a[0].shape == (3, 1, 180, 240)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], atol=TOL, rtol=0)
    torch.testing.assert_close(a[2], b[2], atol=TOL, rtol=0)


def test_image_state_like_hq_sams_predictor(predictors):
    ours, theirs = predictors
    assert torch.equal(ours.features, theirs.features)
    assert len(ours.interm_features) == len(theirs.interm_features) == 1
    assert torch.equal(ours.interm_features[0], theirs.interm_features[0])


def test_trained_plugins_change_masks_and_use_plugins_off_is_hq_sam(image, hq):
    model = perturb_plugins(build_stable_sam("hq_tiny").eval())
    ours, theirs = StableHQSamPredictor(model), hq.SamPredictor(model.sam)
    ours.set_image(image)
    theirs.set_image(image)
    b = theirs.predict(box=BOX, multimask_output=False, return_logits=True)
    plain = ours.predict(box=BOX, multimask_output=False, return_logits=True, use_plugins=False)
    stable = ours.predict(box=BOX, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(plain[0], b[0], atol=TOL, rtol=0)
    assert np.abs(stable[0] - b[0]).max() > 1e-2
    *_, extras = ours.predict(box=BOX, multimask_output=False, return_extras=True)
    assert extras["alpha"].shape == (2,)
    assert extras["sampling_locations"].shape == (16, 16, 8, 2)
    assert extras["attention"].shape == (16, 16)


def test_predictor_dispatch(hq):
    hq_model, sam_model = build_stable_sam("hq_tiny"), build_stable_sam("tiny")
    assert type(predictor_for(hq_model)) is StableHQSamPredictor
    assert type(predictor_for(sam_model)) is StableSamPredictor
    assert type(base_predictor_for(hq_model)) is hq.SamPredictor
    assert base_predictor_for(hq_model).model is hq_model.sam
    with pytest.raises(TypeError, match="StableHQSam"):
        StableHQSamPredictor(sam_model)


def test_automatic_masks_at_init_are_hq_sams(image, hq):
    model = build_stable_sam("hq_tiny").eval()
    options = dict(points_per_side=4, pred_iou_thresh=-100.0, stability_score_thresh=-100.0,
                   box_nms_thresh=1.0)
    generator = StableSamAutomaticMaskGenerator(model, **options)
    assert type(generator.predictor) is StableHQSamPredictor
    ours = generator.generate(image)
    theirs = hq.SamAutomaticMaskGenerator(model.sam, **options).generate(image)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=TOL)


def test_checks_beyond_hq_sams_predictor(predictors, image):
    # the shared base's checks hold for HQ-SAM's predictor too (set_image and predict)
    from stable_sam.families.predictor_base import ImageSizeError

    ours, _ = predictors
    fresh = StableHQSamPredictor(ours.model)
    with pytest.raises(ImageSizeError, match="a 3000x2 image is too elongated"):
        fresh.set_image(np.zeros((2, 3000, 3), np.uint8))
    with pytest.raises(ValueError, match=r"float64 image must be in 0\.\.1"):
        fresh.set_image(image.astype(np.float64))
    with pytest.raises(ValueError, match="box holds NaN or infinite values"):
        ours.predict(box=np.array([np.nan, 40.0, 190.0, 150.0]))
