"""Metrics against hand-counted cases."""
import math

import numpy as np
import pytest

from stable_sam.evaluation.metrics import (
    boundary_dilation,
    boundary_iou,
    mask_boundary,
    mask_iou,
    mean_or_nan,
    stability_score,
    summarise,
)


def rect(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_mask_iou_overlapping_squares():
    a = rect((8, 8), (0, 4), (0, 4))  # 16 px
    b = rect((8, 8), (2, 6), (0, 4))  # 16 px, 8 shared
    assert mask_iou(a, b) == pytest.approx(8 / 24)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32])
def test_mask_iou_accepts_numeric_masks(dtype):
    a = rect((5, 7), (1, 3), (1, 6)).astype(dtype)
    b = rect((5, 7), (1, 3), (1, 4)).astype(dtype)
    assert mask_iou(a, b) == pytest.approx(6 / 10)


def test_mask_iou_empty_cases():
    empty = np.zeros((4, 4), bool)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(empty, rect((4, 4), (0, 1), (0, 1))) == 0.0


def test_mask_iou_rejects_size_mismatch():
    with pytest.raises(ValueError, match="same size"):
        mask_iou(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        mask_iou(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))


@pytest.mark.parametrize("shape,ratio,expected", [
    ((100, 100), 0.02, 3),  # 0.02 * 141.4 = 2.83
    ((10, 10), 0.05, 1),  # 0.71 rounds to 1
    ((10, 10), 0.001, 1),  # never below 1
    ((300, 400), 0.02, 10),  # 0.02 * 500
])
def test_boundary_dilation(shape, ratio, expected):
    assert boundary_dilation(shape, ratio) == expected


def test_boundary_of_square_is_its_ring():
    square = rect((100, 100), (40, 60), (40, 60))  # d = 3: 20x20 minus inner 14x14
    boundary = mask_boundary(square)
    assert boundary.sum() == 400 - 14 * 14
    assert not boundary[43:57, 43:57].any()


def test_boundary_along_image_border():
    # Outside the image is background: a full mask has a d-wide frame as boundary.
    full = np.ones((10, 10), bool)
    assert mask_boundary(full, 0.05).sum() == 100 - 8 * 8


def test_boundary_iou_hand_counted_rectangles():
    # d = 1. Square rows 2-5, cols 2-5: ring of 12. Rect rows 2-5, cols 2-6: ring of 14.
    # Shared: rows 2 and 5 (8 px) and column 2 at rows 3-4 (2 px) -> 10 / (12 + 14 - 10).
    square = rect((10, 10), (2, 6), (2, 6))
    wider = rect((10, 10), (2, 6), (2, 7))
    assert mask_boundary(square, 0.05).sum() == 12
    assert mask_boundary(wider, 0.05).sum() == 14
    assert boundary_iou(square, wider, 0.05) == pytest.approx(10 / 16)
    assert mask_iou(square, wider) == pytest.approx(16 / 20)


def test_boundary_iou_empty_cases():
    empty = np.zeros((10, 10), bool)
    assert boundary_iou(empty, empty) == 1.0
    assert boundary_iou(empty, rect((10, 10), (2, 6), (2, 6))) == 0.0


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_stability_identical_masks_is_one(k):
    mask = rect((12, 9), (2, 7), (1, 8))
    assert stability_score([mask] * k) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_stability_disjoint_equal_masks_is_one_over_k(k):
    masks = np.zeros((k, 4, 4 * k), bool)
    for i in range(k):
        masks[i, :, 4 * i:4 * i + 4] = True
    assert stability_score(masks) == pytest.approx(1 / k)


def test_stability_nested_masks():
    big = rect((10, 10), (0, 10), (0, 10))
    small = rect((10, 10), (0, 5), (0, 10))
    assert stability_score([big, small]) == pytest.approx((1.0 + 0.5) / 2)


def test_stability_empty_cases():
    empty = np.zeros((3, 6, 6), bool)
    assert stability_score(empty) == 1.0  # all prompts agree on "nothing"
    one = empty.copy()
    one[0, 0, 0] = True
    assert stability_score(one) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="K >= 1"):
        stability_score(np.zeros((0, 4, 4), bool))


def test_summarise_skips_undefined_stability():
    records = [{"iou": 0.5, "biou": 0.25, "sf": float("nan")},
               {"iou": 1.0, "biou": 0.75, "sf": 0.5}]
    out = summarise(records)
    assert out == {"miou": 0.75, "mbiou": 0.5, "msf": 0.5, "count": 2}
    assert math.isnan(mean_or_nan([float("nan"), None]))


@pytest.mark.parametrize("shape,sigma", [((57, 91), 3), ((120, 160), 8), ((64, 64), 2)])
def test_boundary_matches_iterated_3x3_erosion(shape, sigma):
    # The definition (Boundary IoU's reference code): zero-pad by 1, erode d times with 3x3.
    import cv2

    rng = np.random.default_rng(sum(shape))
    mask = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), sigma) > 0.5
    mask[0, :7] = True  # touch the border
    d = boundary_dilation(shape)
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
    np.testing.assert_array_equal(mask_boundary(mask), mask & ~eroded.astype(bool))
