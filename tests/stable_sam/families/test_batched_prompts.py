"""Prompts on several images in one decoder pass (predict_across_images) against the loop of
per-image predict_torch calls, on every SAM-style family: SAM (tiny), the demo model and HQ-SAM
(hq_tiny); images with different numbers of boxes and clicks, none at all, and mask inputs."""

import warnings

import numpy as np
import pytest
import torch

from stable_sam import build_stable_sam
from stable_sam.families import predictor_for
from stable_sam.families.batched_prompts import (
    EmbeddedImages,
    ImagePrompts,
    predictor_image,
)
from model_helpers import make_image, perturb_plugins

TOL = 1e-4  # batch-N against batch-1 matrix products: float32 rounding only


def _build(model_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HQ-SAM's import-time timm warnings
        return perturb_plugins(build_stable_sam(model_type), seed=3).eval()


@pytest.fixture(scope="module", params=["tiny", "demo", "hq_tiny"])
def predictor(request):
    return predictor_for(_build(request.param))


def _images():
    return [make_image(180, 240, seed=0), make_image(300, 200, seed=1),
            make_image(256, 256, seed=2), make_image(120, 310, seed=3),
            make_image(200, 150, seed=4)]


def _prompts(images, low_res_size):
    """Per image: 3 boxes / none / 2 prompts of 2 clicks / 2 box+click prompts with mask inputs /
    1 box (grouped with image 0's boxes)."""
    rng = np.random.default_rng(0)

    def boxes(image, k):
        h, w = image.shape[:2]
        xy0 = rng.uniform(0, 0.5, (k, 2)) * (w, h)
        return np.concatenate([xy0, xy0 + rng.uniform(8, 0.5 * min(h, w), (k, 2))], axis=1)

    def clicks(image, k, p):
        h, w = image.shape[:2]
        return rng.uniform(0, 1, (k, p, 2)) * (w, h), rng.integers(0, 2, (k, p))

    c2, l2 = clicks(images[2], 2, 2)
    c3, l3 = clicks(images[3], 2, 1)
    return [
        ImagePrompts(boxes=boxes(images[0], 3)),
        ImagePrompts(),
        ImagePrompts(point_coords=c2, point_labels=l2),
        ImagePrompts(point_coords=c3, point_labels=l3, boxes=boxes(images[3], 2),
                     mask_input=rng.normal(0, 4, (2, 1, *low_res_size)).astype(np.float32)),
        ImagePrompts(boxes=boxes(images[4], 1)),
    ]


def _loop(predictor, images, prompts, multimask, **options):
    """What a tool does today: one set_image and one predict_torch per image."""
    out = []
    for image, p in zip(images, prompts):
        predictor.set_image(image)
        if p.checked(0).count == 0:
            out.append(None)
            continue
        t = predictor.transform
        coords = labels = boxes = masks = None
        if p.point_coords is not None:
            coords = torch.as_tensor(t.apply_coords(p.point_coords, predictor.original_size),
                                     dtype=torch.float)
            labels = torch.as_tensor(p.point_labels)
        if p.boxes is not None:
            boxes = torch.as_tensor(t.apply_boxes(p.boxes, predictor.original_size),
                                    dtype=torch.float)
        if p.mask_input is not None:
            masks = torch.as_tensor(p.mask_input)
        masks_, scores, low_res = predictor.predict_torch(
            coords, labels, boxes, masks, multimask, return_logits=True, **options)[:3]
        out.append((masks_.numpy(), scores.numpy(), low_res.numpy()))
    return out


def _low_res_size(predictor):
    grid = predictor.model.prompt_encoder.image_embedding_size
    return 4 * grid[0], 4 * grid[1]


def _options(predictor):
    return [{}] if "HQ" not in type(predictor).__name__ else [{"hq_token_only": False},
                                                              {"hq_token_only": True}]


@pytest.mark.parametrize("multimask", [True, False])
def test_one_pass_equals_the_per_image_loop(predictor, multimask):
    images = _images()
    prompts = _prompts(images, _low_res_size(predictor))
    embedded = predictor.embed_images(images)
    for options in _options(predictor):
        expected = _loop(predictor, images, prompts, multimask, **options)
        logits, scores, low_res = predictor.predict_across_images(
            embedded, prompts, multimask, return_logits=True, **options)
        binary = predictor.predict_across_images(embedded, prompts, multimask, **options)[0]
        m = 1 if ("HQ" in type(predictor).__name__ or not multimask) else 3
        for i, image in enumerate(images):
            k = prompts[i].checked(i).count
            assert logits[i].shape == (k, m, *image.shape[:2])
            assert scores[i].shape == (k, m)
            assert low_res[i].shape == (k, m, *_low_res_size(predictor))
            assert binary[i].dtype == bool and binary[i].shape == logits[i].shape
            if expected[i] is None:
                continue
            np.testing.assert_allclose(low_res[i], expected[i][2], atol=TOL, rtol=0)
            np.testing.assert_allclose(scores[i], expected[i][1], atol=TOL, rtol=0)
            np.testing.assert_allclose(logits[i], expected[i][0], atol=TOL, rtol=0)
            assert np.array_equal(binary[i], logits[i] > predictor.model.mask_threshold)


def test_decoder_runs_once_per_prompt_structure(predictor, monkeypatch):
    """Five images, four prompt structures (boxes on images 0 and 4, clicks, box + click +
    mask, and image 1 without prompts): four decoder calls, two of them over two images."""
    images = _images()
    prompts = _prompts(images, _low_res_size(predictor))
    embedded = predictor.embed_images(images)
    model = predictor.model
    calls = []
    decode = model.decode

    def counting(*args, **kwargs):
        calls.append(args[2].shape[0])  # prompts in this call
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "decode", counting)
    predictor.predict_across_images(embedded, prompts)
    assert sorted(calls) == [2, 2, 4]


def test_images_set_one_at_a_time_give_the_same_embeddings(predictor):
    images = _images()[:3]
    embedded = predictor.embed_images(images)
    parts = []
    for image in images:
        predictor.set_image(image)
        parts.append(predictor_image(predictor))
    joined = EmbeddedImages.cat(parts)
    assert joined.input_sizes == embedded.input_sizes
    assert joined.original_sizes == embedded.original_sizes
    assert set(joined.tensors) == set(embedded.tensors)
    for name, t in joined.tensors.items():
        torch.testing.assert_close(t, embedded.tensors[name], atol=1e-4, rtol=1e-4)


def test_no_prompts_anywhere_gives_empty_outputs(predictor):
    images = _images()[:2]
    masks, scores, low_res = predictor.predict_across_images(
        predictor.embed_images(images), [ImagePrompts(), ImagePrompts(boxes=np.zeros((0, 4)))])
    m = 1 if "HQ" in type(predictor).__name__ else 3
    assert [a.shape for a in masks] == [(0, m, 180, 240), (0, m, 300, 200)]
    assert [a.shape for a in scores] == [(0, m), (0, m)]


@pytest.mark.parametrize("bad, match", [
    (ImagePrompts(boxes=np.zeros((2, 4)), point_coords=np.zeros((3, 1, 2)),
                  point_labels=np.zeros((3, 1))), "different prompt counts"),
    (ImagePrompts(point_coords=np.zeros((2, 2))), "go together"),
    (ImagePrompts(point_coords=np.zeros((2, 3, 2)), point_labels=np.zeros((2, 2))),
     r"\(K, P, 2\)"),
    (ImagePrompts(boxes=np.zeros((2, 3))), r"boxes must be \(K, 4\)"),
    (ImagePrompts(boxes=np.array([[0, 0, np.nan, 4]])), "NaN"),
    (ImagePrompts(boxes=np.zeros((1, 4)), mask_input=np.zeros((1, 1, 32, 32))),
     "mask_input must be"),
])
def test_bad_prompts_name_the_image(predictor, bad, match):
    embedded = predictor.embed_images(_images()[:2])
    with pytest.raises(ValueError, match=f"prompts of image 1: .*{match}"):
        predictor.predict_across_images(embedded, [ImagePrompts(), bad])


def test_one_prompt_set_per_image(predictor):
    embedded = predictor.embed_images(_images()[:2])
    with pytest.raises(ValueError, match="2 images but prompts for 1"):
        predictor.predict_across_images(embedded, [ImagePrompts()])


def test_images_are_checked_as_set_image_checks_them(predictor):
    with pytest.raises(ValueError, match="must be in 0..1"):
        predictor.embed_images([_images()[0], _images()[1].astype(np.float32)])


def test_one_box_on_each_image_after_an_empty_one(predictor):
    """Images 1-4 with one box each: their rows 1..4 are taken as a view of the embeddings."""
    images = _images()
    rng = np.random.default_rng(5)
    prompts = [ImagePrompts()] + [
        ImagePrompts(boxes=np.concatenate([xy, xy + 30], axis=1))
        for xy in (rng.uniform(0, 100, (1, 2)) for _ in images[1:])]
    expected = _loop(predictor, images, prompts, False)
    got = predictor.predict_across_images(predictor.embed_images(images), prompts, False,
                                          return_logits=True)
    for i in range(1, len(images)):
        np.testing.assert_allclose(got[2][i], expected[i][2], atol=TOL, rtol=0)
        np.testing.assert_allclose(got[0][i], expected[i][0], atol=TOL, rtol=0)
