"""StableSamPredictor as a drop-in SamPredictor, and the automatic mask generator."""

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from stable_sam import StableSamAutomaticMaskGenerator, StableSamPredictor
from model_helpers import make_image, perturb_plugins, tiny_model

BOX = np.array([50.0, 40.0, 190.0, 150.0])
POINTS = (np.array([[120.0, 90.0], [20.0, 20.0]]), np.array([1, 0]))


@pytest.fixture(scope="module")
def image():
    return make_image()


@pytest.fixture(scope="module")
def predictors(image):
    model = perturb_plugins(tiny_model(), seed=4)
    sam_predictor, stable = SamPredictor(model.sam), StableSamPredictor(model)
    sam_predictor.set_image(image)
    stable.set_image(image)
    return sam_predictor, stable


PROMPTS = {
    "box": dict(box=BOX),
    "points": dict(point_coords=POINTS[0], point_labels=POINTS[1]),
    "box+points": dict(box=BOX, point_coords=POINTS[0], point_labels=POINTS[1]),
}


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("return_logits", [False, True])
def test_parity_with_sam_predictor_without_plugins(predictors, prompt, multimask, return_logits):
    sam_predictor, stable = predictors
    kw = dict(PROMPTS[prompt], multimask_output=multimask, return_logits=return_logits)
    expected = sam_predictor.predict(**kw)
    got = stable.predict(**kw, use_plugins=False)
    assert len(got) == 3
    for e, g in zip(expected, got):
        assert type(g) is type(e) and g.dtype == e.dtype and g.shape == e.shape
        if g.dtype == bool:
            assert (g != e).mean() < 1e-4  # logits agree to 1e-5; a pixel on the threshold may flip
        else:
            np.testing.assert_allclose(g, e, atol=1e-5, rtol=0)


def test_plugins_are_used_by_default(predictors):
    sam_predictor, stable = predictors
    _, _, sam_logits = sam_predictor.predict(box=BOX)
    _, _, logits = stable.predict(box=BOX)
    assert np.abs(logits - sam_logits).max() > 1e-2


def test_image_embedding_and_state(predictors, image):
    sam_predictor, stable = predictors
    torch.testing.assert_close(stable.get_image_embedding(), sam_predictor.get_image_embedding())
    assert stable.original_size == image.shape[:2] and stable.device == torch.device("cpu")
    fresh = StableSamPredictor(stable.model)
    with pytest.raises(RuntimeError, match="An image must be set"):
        fresh.predict(box=BOX)
    with pytest.raises(RuntimeError, match="An image must be set"):
        fresh.get_image_embedding()


def test_several_boxes_in_one_call(predictors):
    _, stable = predictors
    boxes = np.array([BOX, [10.0, 10.0, 100.0, 80.0], [120.0, 30.0, 230.0, 170.0]])
    boxes_t = torch.as_tensor(
        stable.transform.apply_boxes(boxes, stable.original_size), dtype=torch.float
    )
    masks, scores, logits, extras = stable.predict_torch(
        None, None, boxes_t, multimask_output=False, return_extras=True
    )
    assert masks.shape == (3, 1, 180, 240) and masks.dtype == torch.bool
    assert scores.shape == (3, 1) and logits.shape == (3, 1, 64, 64)
    assert extras["alpha"].shape == (3, 2)
    for i, box in enumerate(boxes):
        _, single_scores, single_logits = stable.predict(box=box, multimask_output=False)
        np.testing.assert_allclose(logits[i].numpy(), single_logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores[i].numpy(), single_scores, atol=1e-5, rtol=0)


def test_predict_return_extras(predictors):
    _, stable = predictors
    masks, scores, logits, extras = stable.predict(box=BOX, return_extras=True)
    assert masks.shape == (3, 180, 240) and scores.shape == (3,)
    assert extras["alpha"].shape == (2,)
    assert extras["sampling_locations"].shape == (16, 16, 8, 2)
    assert all(isinstance(v, np.ndarray) for v in extras.values())


def test_needs_a_stable_sam(predictors):
    sam_predictor, _ = predictors
    with pytest.raises(TypeError, match="needs a StableSam model, got Sam"):
        StableSamPredictor(sam_predictor.model)


def test_automatic_mask_generator(predictors, image):
    _, stable = predictors
    kw = dict(
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    generator = StableSamAutomaticMaskGenerator(stable.model, **kw)
    assert isinstance(generator.predictor, StableSamPredictor)
    records = generator.generate(image)
    assert records and {"segmentation", "predicted_iou", "bbox"} <= set(records[0])
    assert records[0]["segmentation"].shape == image.shape[:2]
    # segment_anything's own generator over the same model gives plain SAM: scores differ
    plain = SamAutomaticMaskGenerator(stable.model, **kw).generate(image)
    assert plain and sorted(r["predicted_iou"] for r in plain) != sorted(
        r["predicted_iou"] for r in records
    )


# -- the checks the predictor makes beyond SamPredictor's (README: "What the predictors check") --

def test_float_image_in_0_to_1_is_sams_and_in_0_to_255_is_refused(predictors, image):
    _, stable = predictors
    fresh = StableSamPredictor(stable.model)
    fresh.set_image(image.astype(np.float64) / 255)  # SAM's own convention for floats: 0..1
    reference = SamPredictor(stable.model.sam)
    reference.set_image(image.astype(np.float64) / 255)
    torch.testing.assert_close(fresh.get_image_embedding(), reference.get_image_embedding())
    with pytest.raises(ValueError, match=r"float64 image must be in 0\.\.1 .* spans 0\.\.220.*"
                                         r"image\.astype\(np\.uint8\)"):
        fresh.set_image(image.astype(np.float64))
    with pytest.raises(ValueError, match="image holds NaN"):
        fresh.set_image(np.full(image.shape, np.nan))
    with pytest.raises(ValueError, match=r"uint8 \(0\.\.255\) or floating point \(0\.\.1\), "
                                         "is int64"):
        fresh.set_image(image.astype(np.int64))
    with pytest.raises(ValueError, match=r"HxWx3 .*shape \(180, 240\)"):
        fresh.set_image(image[..., 0])
    # the refused images left the embedding of the accepted one in place
    torch.testing.assert_close(fresh.get_image_embedding(), reference.get_image_embedding())


@pytest.mark.parametrize("prompt, name", [
    (dict(box=np.array([50.0, np.nan, 190.0, 150.0])), "box"),
    (dict(box=np.array([50.0, 40.0, np.inf, 150.0])), "box"),
    (dict(point_coords=np.array([[np.nan, 90.0]]), point_labels=np.array([1])), "point_coords"),
    (dict(box=BOX, mask_input=np.full((1, 64, 64), np.nan, np.float32)), "mask_input"),
])
def test_non_finite_prompts_are_refused(predictors, prompt, name):
    # SamPredictor answers them with a NaN score and an empty mask
    _, stable = predictors
    with pytest.raises(ValueError, match=f"{name} holds NaN or infinite values"):
        stable.predict(**prompt)


@pytest.mark.parametrize("shape, accepted", [((2, 3000), False), ((20000, 20), False),
                                             ((1, 512), True), ((1, 513), False)])
def test_too_elongated_image_is_refused_at_set_image(predictors, shape, accepted):
    from stable_sam.families.predictor_base import ImageSizeError

    _, stable = predictors
    fresh = StableSamPredictor(stable.model)  # img_size 256
    image = np.full((*shape, 3), 100, np.uint8)
    if accepted:
        fresh.set_image(image)
        masks, _, _ = fresh.predict(box=np.array([0.0, 0.0, shape[1], shape[0]]))
        assert masks.shape[1:] == shape
        return
    with pytest.raises(ImageSizeError, match=rf"a {shape[1]}x{shape[0]} image is too elongated "
                                             "for this model"):
        fresh.set_image(image)
    assert not fresh.is_image_set


def test_refuses_a_model_of_another_family():
    # StableHQSam subclasses StableSam, so the class check alone lets it through
    pytest.importorskip("segment_anything_hq")
    from stable_sam import build_stable_sam

    with pytest.raises(TypeError, match="StableSamPredictor cannot drive a StableHQSam \\(the hq "
                                        "family\\); use StableHQSamPredictor"):
        StableSamPredictor(build_stable_sam("hq_tiny"))
