"""Prompt sampler: seeding, noisy boxes, points, coarse masks, RTS mixing, JSON round trip."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

import stable_sam.data.prompts as prompts_module
from stable_sam.data.prompts import (
    POINT_KINDS,
    PROMPT_KINDS,
    Prompt,
    RTSConfig,
    box_iou,
    coarse_mask,
    gt_box,
    make_prompt,
    mask_to_low_res_logits,
    noisy_box,
    positive_points,
    prompt_rng,
    sample_training_prompt,
)


def ellipse_mask(shape=(96, 128), centre=(70, 40), axes=(30, 18)):
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, 20, 0, 360, 1, -1)
    return mask.astype(bool)


def test_prompt_rng_is_a_function_of_the_key_only():
    keys = [("dis", i, p) for i in range(3) for p in range(4)]
    forward = {k: prompt_rng(*k).random(3) for k in keys}
    backward = {k: prompt_rng(*k).random(3) for k in reversed(keys)}
    for k in keys:
        np.testing.assert_array_equal(forward[k], backward[k])
    draws = [tuple(v) for v in forward.values()]
    assert len(set(draws)) == len(draws)
    assert not np.array_equal(prompt_rng("dis", 0, 0).random(3),
                              prompt_rng("coift", 0, 0).random(3))
    assert not np.array_equal(prompt_rng("dis", 0, 0, seed=1).random(3),
                              prompt_rng("dis", 0, 0).random(3))
    assert not np.array_equal(prompt_rng("dis", 0, 0, stream="a").random(3),
                              prompt_rng("dis", 0, 0, stream="b").random(3))


def test_prompt_rng_does_not_depend_on_the_process():
    # A fresh interpreter with another hash seed must draw the same numbers.
    code = ("from stable_sam.data.prompts import prompt_rng;"
            "print(repr(prompt_rng('dis', 7, 3, 2, stream='x').random(2).tolist()))")
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(prompts_module.__file__)))
    env = dict(os.environ, PYTHONHASHSEED="12345",
               PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert eval(out.stdout) == prompt_rng("dis", 7, 3, 2, stream="x").random(2).tolist()


def test_gt_box_is_inclusive_and_tight():
    mask = np.zeros((20, 30), bool)
    mask[3:8, 10:25] = True
    np.testing.assert_array_equal(gt_box(mask), [10, 3, 24, 7])
    with pytest.raises(ValueError, match="empty"):
        gt_box(np.zeros((4, 4), bool))


def test_box_iou():
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 1.0
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


@pytest.mark.parametrize("iou_range", [(0.5, 1.0), (0.5, 0.6), (0.6, 0.7)])
@pytest.mark.parametrize("shape", [(96, 128), (61, 47)])
def test_noisy_box_in_iou_range_and_inside_image(iou_range, shape):
    mask = ellipse_mask(shape, centre=(shape[1] // 2, shape[0] // 2),
                        axes=(shape[1] // 3, shape[0] // 4))
    box = gt_box(mask)
    for p in range(40):
        noisy = noisy_box(mask, prompt_rng("t", 0, p), 0.4, iou_range)
        iou = box_iou(noisy, box)
        assert iou_range[0] <= iou and (iou < iou_range[1] or iou == iou_range[1] == 1.0)
        assert noisy.dtype == np.float32
        assert 0 <= noisy[0] <= noisy[2] <= shape[1] - 1
        assert 0 <= noisy[1] <= noisy[3] <= shape[0] - 1


def test_noisy_box_moves_the_box():
    mask = ellipse_mask()
    boxes = np.stack([noisy_box(mask, prompt_rng("t", 0, p)) for p in range(20)])
    assert len(np.unique(boxes, axis=0)) == 20
    assert not np.any(np.all(boxes == gt_box(mask), axis=1))


def test_noisy_box_near_the_border_is_clipped():
    mask = np.zeros((50, 50), bool)
    mask[0:20, 35:50] = True
    for p in range(30):
        b = noisy_box(mask, prompt_rng("edge", 0, p))
        assert b.min() >= 0 and b[2] <= 49 and b[3] <= 49


def test_noisy_box_unreachable_range_falls_back_deterministically():
    # With no noise the IoU is always 1, outside [0.5, 0.6): the fallback shrinks the box.
    mask = ellipse_mask()
    a = noisy_box(mask, prompt_rng("t", 0, 0), noise_scale=0.0, iou_range=(0.5, 0.6),
                  max_tries=5)
    b = noisy_box(mask, prompt_rng("t", 1, 1), noise_scale=0.0, iou_range=(0.5, 0.6),
                  max_tries=5)
    np.testing.assert_array_equal(a, b)
    assert box_iou(a, gt_box(mask)) == pytest.approx(0.55, abs=1e-4)


@pytest.mark.parametrize("pixels", [1, 2])
def test_noisy_box_of_tiny_masks(pixels):
    mask = np.zeros((10, 10), bool)
    mask[4, 4:4 + pixels] = True
    b = noisy_box(mask, prompt_rng("tiny", 0, 0))
    assert 0.5 <= box_iou(b, gt_box(mask)) <= 1.0


def test_noisy_box_argument_errors():
    mask = ellipse_mask()
    with pytest.raises(ValueError, match="iou_range"):
        noisy_box(mask, prompt_rng("t", 0, 0), iou_range=(0.7, 0.6))
    with pytest.raises(ValueError, match="image_size"):
        noisy_box(gt_box(mask), prompt_rng("t", 0, 0))
    with pytest.raises(ValueError, match="empty"):
        noisy_box(np.zeros((5, 5), bool), prompt_rng("t", 0, 0))


@pytest.mark.parametrize("n", [1, 3, 5, 10])
def test_positive_points_are_distinct_foreground_pixels(n):
    mask = ellipse_mask()
    coords, labels = positive_points(mask, n, prompt_rng("p", 0, n))
    assert coords.shape == (n, 2) and coords.dtype == np.float32
    assert labels.dtype == np.int64 and np.all(labels == 1)
    xs, ys = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert np.all(mask[ys, xs])
    assert len({(x, y) for x, y in zip(xs, ys)}) == n


@pytest.mark.parametrize("pixels", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_positive_points_on_tiny_masks(pixels, n):
    mask = np.zeros((7, 9), bool)
    mask.flat[[5, 40][:pixels]] = True
    coords, labels = positive_points(mask, n, prompt_rng("tiny", pixels, n))
    assert coords.shape == (min(n, pixels), 2) and labels.shape == (min(n, pixels),)
    if pixels:
        assert np.all(mask[coords[:, 1].astype(int), coords[:, 0].astype(int)])


def test_positive_points_take_every_pixel_of_a_mask_with_exactly_n():
    mask = np.zeros((6, 6), bool)
    mask.flat[np.arange(0, 36, 4)] = True
    assert mask.sum() == 9
    coords, _ = positive_points(mask, 9, prompt_rng("exact", 0, 0))
    assert {(int(x), int(y)) for x, y in coords} == {(c, r) for r, c in zip(*np.nonzero(mask))}


def test_coarse_mask_changes_only_the_boundary_band():
    mask = ellipse_mask()
    coarse = coarse_mask(mask, prompt_rng("c", 0, 0), band_ratio=0.02)
    width = max(1, round(0.02 * np.hypot(*mask.shape)))  # 3 px
    changed = coarse != mask
    assert changed.any()
    # Every changed pixel is within `width` (chessboard) of a pixel of the other class.
    for side in (mask, ~mask):
        dist = cv2.distanceTransform(side.astype(np.uint8), cv2.DIST_C, 3)
        assert np.all(dist[changed & side] <= width)
    assert not changed[np.where(mask)[0].mean().astype(int), np.where(mask)[1].mean().astype(int)]


def test_coarse_mask_is_seeded():
    mask = ellipse_mask()
    np.testing.assert_array_equal(coarse_mask(mask, prompt_rng("c", 0, 0)),
                                  coarse_mask(mask, prompt_rng("c", 0, 0)))


@pytest.mark.parametrize("model_image_size", [1024, 256])
def test_low_res_logits_follow_sams_frame(model_image_size):
    mask = np.ones((192, 256), bool)  # landscape: SAM pads at the bottom
    logits = mask_to_low_res_logits(mask, model_image_size)
    side = model_image_size // 4
    assert logits.shape == (side, side) and logits.dtype == np.float32
    valid_h, _ = ResizeLongestSide.get_preprocess_shape(192, 256, model_image_size)
    valid_rows = valid_h // 4
    assert np.all(logits[:valid_rows - 1] > 0)
    assert np.all(logits[valid_rows + 1:] < 0)
    assert np.abs(logits).max() <= 8.0


def test_low_res_logits_of_a_left_half_mask():
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True
    logits = mask_to_low_res_logits(mask, 1024)
    assert np.all(logits[:, :120] > 0) and np.all(logits[:, 136:] < 0)


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_prompt_json_round_trip(kind):
    prompt = make_prompt(kind, ellipse_mask(), prompt_rng("j", 0, 0, stream=kind),
                         model_image_size=256)
    back = Prompt.from_json(json.loads(json.dumps(prompt.to_json())))
    assert back.kind == kind
    for field in ("box", "point_coords", "point_labels", "mask_input"):
        a, b = getattr(prompt, field), getattr(back, field)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    if kind in POINT_KINDS:
        assert len(prompt.point_coords) == POINT_KINDS[kind]


def test_prompt_validation():
    with pytest.raises(ValueError, match="kind"):
        Prompt("lasso")
    with pytest.raises(ValueError, match="point_labels"):
        Prompt("points3", point_coords=np.zeros((3, 2)), point_labels=np.ones(2))
    with pytest.raises(ValueError, match="mask_input"):
        Prompt("coarse_mask", mask_input=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="not a Prompt"):
        Prompt.from_json({"kind": "box", "colour": 1})


def test_rts_config_switches_kinds():
    mask = ellipse_mask()
    only = RTSConfig(weights={"points3": 1.0, "box": 0.0})
    kinds = {sample_training_prompt(mask, prompt_rng("r", i, 0), only).kind for i in range(20)}
    assert kinds == {"points3"}
    hq = RTSConfig.hq_sam(model_image_size=256)
    kinds = {sample_training_prompt(mask, prompt_rng("r", i, 0), hq).kind for i in range(60)}
    assert kinds == {"box", "points10", "coarse_mask"}
    default = RTSConfig(model_image_size=256)
    kinds = {sample_training_prompt(mask, prompt_rng("r", i, 0), default).kind
             for i in range(200)}
    assert kinds == set(PROMPT_KINDS)


def test_rts_config_errors():
    with pytest.raises(ValueError, match="unknown kinds"):
        RTSConfig(weights={"scribble": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        RTSConfig(weights={"box": 0.0})
    with pytest.raises(ValueError, match="occlusion_probability"):
        RTSConfig(occlusion_probability=1.5)
    with pytest.raises(ValueError, match="empty"):
        sample_training_prompt(np.zeros((8, 8), bool), prompt_rng("r", 0, 0), RTSConfig())


def test_sample_training_prompt_is_deterministic_per_key():
    mask = ellipse_mask()
    cfg = RTSConfig(model_image_size=256)
    a = sample_training_prompt(mask, prompt_rng("r", 5, 2), cfg)
    b = sample_training_prompt(mask, prompt_rng("r", 5, 2), cfg)
    assert a.to_json() == b.to_json()


# ---------------------------------------------------------------------------- noise distribution

UNIFORM_SD = 0.4 / np.sqrt(3)  # sd of U(-s, s) at the paper's s = 0.4


def _relative_noise(boxes, gt):
    """Per box: centre shifts in half-widths/heights and size changes in widths/heights."""
    boxes = np.asarray(boxes, np.float64)
    w, h = gt[2] - gt[0], gt[3] - gt[1]
    centre = (gt[:2] + gt[2:]) / 2
    shift = ((boxes[:, :2] + boxes[:, 2:]) / 2 - centre) / (np.array([w, h]) / 2)
    size = (boxes[:, 2:] - boxes[:, :2]) / np.array([w, h]) - 1
    return shift, size


def _rect_mask():
    mask = np.zeros((400, 500), bool)  # far from the border: no clipping at scale 0.4
    mask[150:251, 200:301] = True
    return mask


def test_noisy_box_noise_is_uniform_at_scale_0_4():
    mask = _rect_mask()
    boxes = [noisy_box(mask, prompt_rng("n", i, 0), 0.4, iou_range=(0.0, 1.0))
             for i in range(3000)]
    shift, size = _relative_noise(boxes, gt_box(mask))
    for values in (shift, size):
        assert np.abs(values.mean(0)).max() < 0.015  # 3.5 standard errors
        np.testing.assert_allclose(values.std(0), UNIFORM_SD, atol=0.01)
        assert np.abs(values).max() <= 0.4 + 1e-6 and np.abs(values).max(0).min() > 0.39
    # the four draws are independent
    corr = np.corrcoef(np.concatenate([shift, size], 1).T)
    assert np.abs(corr - np.eye(4)).max() < 0.08


def test_evaluation_noisy_boxes_have_no_iou_filter_and_nbox_keeps_its_range():
    from stable_sam.evaluation import freeze_prompts

    class One:
        name = "one"

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"mask": _rect_mask(), "name": "rect"}

    frozen = freeze_prompts(One(), ["noisy_box", "nbox_0.5-0.6"], prompts_per_image=1500)
    target = frozen["images"][0]["targets"][0]["prompts"]
    assert frozen["noise_scale"] == 0.4 and frozen["noisy_box_iou_range"] == [0.0, 1.0]
    gt = gt_box(_rect_mask())
    boxes = [p["box"] for p in target["noisy_box"]]
    ious = np.array([box_iou(b, gt) for b in boxes])
    # every box the noise makes is kept: the same moments as the unfiltered generator, and
    # the boxes below IoU 0.5 that training would have redrawn
    shift, size = _relative_noise(boxes, gt)
    np.testing.assert_allclose(np.concatenate([shift, size], 1).std(0), UNIFORM_SD, atol=0.012)
    assert 0.06 < (ious < 0.5).mean() < 0.13  # 9.4% at scale 0.4 on this box, 0% if filtered
    nbox = np.array([box_iou(p["box"], gt) for p in target["nbox_0.5-0.6"]])
    assert nbox.min() >= 0.5 and nbox.max() < 0.6
