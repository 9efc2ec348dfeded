"""StableSam2ImagePredictor.predict_across_images (prompts of several images, one decoder call per
prompt structure) against predict_batch and against predict image by image, on the small random
SAM 2 with moved plugins: boxes, clicks, box + clicks, mask inputs, images without prompts,
dynamic_multimask_via_stability on and off, normalize_coords both ways."""

import numpy as np
import pytest
from model_helpers import assert_masks_agree_where_decided, make_image, perturb_plugins

from stable_sam import build_stable_sam
from stable_sam.families import predictor_for
from stable_sam.families.batched_prompts import ImagePrompts, predictor_image

TOL = 1e-4  # batch-N against batch-1 products: float32 rounding only
SIZES = [(180, 240), (300, 200), (256, 256), (120, 310)]


@pytest.fixture(scope="module", params=[True, False], ids=["dynamic", "static"])
def predictor(request):
    model = perturb_plugins(build_stable_sam("sam2_tiny_random"), seed=5).eval()
    model.sam.sam_mask_decoder.dynamic_multimask_via_stability = request.param
    return predictor_for(model)


@pytest.fixture(scope="module")
def images():
    return [make_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]


def _boxes(rng, size, k):
    h, w = size
    xy0 = rng.uniform(0, 0.5, (k, 2)) * (w, h)
    return np.concatenate([xy0, xy0 + rng.uniform(8, 0.5 * min(h, w), (k, 2))], axis=1)


def _mixed_prompts(low_res):
    """3 boxes / none / 2 prompts of 2 clicks / 2 box + click prompts with mask inputs."""
    rng = np.random.default_rng(1)
    clicks = [rng.uniform(0, 1, (k, p, 2)) * (w, h) for (h, w), k, p in
              ((SIZES[2], 2, 2), (SIZES[3], 2, 1))]
    return [
        ImagePrompts(boxes=_boxes(rng, SIZES[0], 3)),
        ImagePrompts(),
        ImagePrompts(point_coords=clicks[0], point_labels=rng.integers(0, 2, (2, 2))),
        ImagePrompts(point_coords=clicks[1], point_labels=np.ones((2, 1), int),
                     boxes=_boxes(rng, SIZES[3], 2),
                     mask_input=rng.normal(0, 4, (2, 1, low_res, low_res)).astype(np.float32)),
    ]


def _low_res(predictor):
    return 4 * predictor.model.image_encoder.feature_sizes()[-1][0]


def _assert_close(got, expected):
    masks, scores, low_res = got
    np.testing.assert_allclose(low_res, expected[2], atol=TOL, rtol=0)
    np.testing.assert_allclose(scores, expected[1], atol=TOL, rtol=0)
    np.testing.assert_allclose(masks, expected[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("multimask", [True, False])
def test_one_pass_equals_predict_image_by_image(predictor, images, multimask):
    prompts = _mixed_prompts(_low_res(predictor))
    got = predictor.predict_across_images(predictor.embed_images(images), prompts, multimask,
                                          return_logits=True)
    m = 3 if multimask else 1
    for i, (image, p) in enumerate(zip(images, prompts)):
        k = p.checked(i).count
        assert got[0][i].shape == (k, m, *image.shape[:2])
        assert got[1][i].shape == (k, m) and got[2][i].shape == (k, m, 64, 64)
        if k == 0:
            continue
        predictor.set_image(image)
        expected = predictor.predict(p.point_coords, p.point_labels, p.boxes, p.mask_input,
                                     multimask, return_logits=True)
        # predict drops the prompt axis for one prompt; every image here has K = 2 or 3
        _assert_close([a[i] for a in got], expected)


@pytest.mark.parametrize("normalize", [True, False])
def test_boxes_equal_predict_batch(predictor, images, normalize):
    """The drop-in's own batch call (a decoder call per image) on the same set_image_batch
    embeddings, every image with its own number of boxes."""
    rng = np.random.default_rng(2)
    boxes = [_boxes(rng, size, k) for size, k in zip(SIZES, (3, 1, 2, 4))]
    if not normalize:
        boxes = [b / np.array([w, h, w, h]) for b, (h, w) in zip(boxes, SIZES)]
    predictor.set_image_batch(images)
    expected = predictor.predict_batch(box_batch=boxes, normalize_coords=normalize)
    expected_logits = predictor.predict_batch(box_batch=boxes, normalize_coords=normalize,
                                              return_logits=True)[0]
    got = predictor.predict_across_images(predictor_image(predictor),
                                          [ImagePrompts(boxes=b) for b in boxes],
                                          normalize_coords=normalize)
    for i in range(len(images)):
        one = [a[i] for a in got]
        if boxes[i].shape[0] == 1:  # predict_batch drops the prompt axis of one prompt
            one = [a[0] for a in one]
        assert_masks_agree_where_decided(one[0], expected[0][i], expected_logits[i], TOL)
        np.testing.assert_allclose(one[1], expected[1][i], atol=TOL, rtol=0)
        np.testing.assert_allclose(one[2], expected[2][i], atol=TOL, rtol=0)


def test_decoder_runs_once_per_prompt_structure(predictor, images, monkeypatch):
    model = predictor.model
    calls = []
    decode = model.decode

    def counting(*args, **kwargs):
        calls.append(args[2].shape[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "decode", counting)
    rng = np.random.default_rng(3)
    prompts = [ImagePrompts(boxes=_boxes(rng, s, k)) for s, k in zip(SIZES, (3, 0, 2, 1))]
    predictor.predict_across_images(predictor.embed_images(images), prompts)
    assert calls == [6]
    calls.clear()
    predictor.predict_across_images(predictor.embed_images(images), _mixed_prompts(64))
    assert sorted(calls) == [2, 2, 3]
