"""The grid ceiling (what a G x G mask bottleneck can reach) and the fill-the-GT-box rule."""
import numpy as np
import pytest

from stable_sam.data.scenes import VAL_SEED, make_scene, scene_targets
from stable_sam.evaluation.ceiling import (box_fill, box_fill_iou, grid_ceiling_iou,
                                           grid_ceiling_miou, grid_roundtrip)


def test_a_grid_aligned_square_survives_and_a_thin_line_does_not():
    square = np.zeros((256, 256), bool)
    square[64:128, 32:96] = True  # whole 16 px cells of a 16x16 grid
    back = grid_roundtrip(square, 16)
    assert np.array_equal(box_fill(back), square)  # bilinear rounds the corners, nothing more
    assert grid_ceiling_iou(square, 16) > 0.95
    line = np.zeros((256, 256), bool)
    line[100:102, 20:200] = True  # 2 px of a 16 px cell: averaged to 1/8, below one half
    assert grid_ceiling_iou(line, 16) == 0.0
    assert grid_ceiling_iou(line, 128) == 1.0


def test_the_ceiling_rises_with_the_grid_on_the_scenes():
    masks = [m for i in range(10) for m in scene_targets(make_scene(VAL_SEED, i, version=2))]
    ceilings = [grid_ceiling_miou(masks, g) for g in (16, 32, 64)]
    assert ceilings[0] < ceilings[1] < ceilings[2]
    # the point: a 16x16 grid already loses about half, a 64x64 one almost nothing
    assert ceilings[0] < 0.65 and ceilings[2] > 0.9


def test_ceiling_of_no_targets_is_nan_and_bad_input_is_refused():
    assert np.isnan(grid_ceiling_miou([], 16))
    with pytest.raises(ValueError, match="grid must be >= 1"):
        grid_roundtrip(np.zeros((8, 8), bool), 0)
    with pytest.raises(ValueError, match="2-D"):
        grid_roundtrip(np.zeros((2, 8, 8), bool), 4)


def test_box_fill():
    rect = np.zeros((40, 40), bool)
    rect[5:20, 10:30] = True
    assert box_fill_iou(rect) == 1.0
    diagonal = np.eye(40, dtype=bool)
    assert box_fill_iou(diagonal) == pytest.approx(40 / 1600)
    assert not box_fill(np.zeros((5, 5), bool)).any()
