"""Large-scale jitter and SAM's resize-longest-side frame."""
import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from stable_sam.data import (
    Prompt,
    image_to_sam_input,
    large_scale_jitter,
    pad_bottom_right,
    prompt_rng,
    resize_longest_side,
    transform_prompt,
)


def sample(shape=(60, 90)):
    image = np.zeros(shape + (3,), np.uint8)
    mask = np.zeros(shape, bool)
    mask[10:40, 20:70] = True
    image[mask] = 200
    return image, mask


@pytest.mark.parametrize("p", range(8))
@pytest.mark.parametrize("out_size", [64, 96])
def test_jitter_canvas_and_valid_region(p, out_size):
    image, mask = sample()
    out = large_scale_jitter(image, mask, prompt_rng("lsj", 0, p), out_size=out_size)
    assert out.image.shape == (out_size, out_size, 3) and out.mask.shape == (out_size, out_size)
    h, w = out.valid_size
    assert out.valid[:h, :w].all() and out.valid.sum() == h * w
    assert not out.image[~out.valid].any() and not out.mask[~out.valid].any()
    assert 0.1 * out_size / 90 <= out.scale <= 2.0 * out_size / 90
    # Mask and image move together: masked pixels are the bright ones.
    bright = out.image[..., 0] > 100
    assert (bright == out.mask).mean() > 0.95


def test_jitter_is_seeded_and_scale_one_fits_exactly():
    image, mask = sample((90, 90))
    a = large_scale_jitter(image, mask, prompt_rng("lsj", 1, 0), out_size=45)
    b = large_scale_jitter(image, mask, prompt_rng("lsj", 1, 0), out_size=45)
    np.testing.assert_array_equal(a.image, b.image)
    exact = large_scale_jitter(image, mask, prompt_rng("lsj", 1, 0), out_size=45,
                               scale_range=(1.0, 1.0))
    assert exact.valid_size == (45, 45) and exact.crop_offset == (0, 0)
    big = large_scale_jitter(image, mask, prompt_rng("lsj", 1, 0), out_size=45,
                             scale_range=(2.0, 2.0))
    assert big.valid_size == (45, 45) and big.valid.all()
    with pytest.raises(ValueError, match="scale_range"):
        large_scale_jitter(image, mask, prompt_rng("lsj", 1, 0), scale_range=(0.0, 1.0))


def test_resize_and_pad_follow_sam():
    image, mask = sample((60, 90))
    resized = resize_longest_side(image, 64)
    assert resized.shape == (*ResizeLongestSide.get_preprocess_shape(60, 90, 64), 3)
    resized_mask = resize_longest_side(mask, 64)
    assert resized_mask.dtype == bool and resized_mask.shape == resized.shape[:2]
    padded = pad_bottom_right(resized_mask, 64)
    assert padded.shape == (64, 64) and not padded[resized.shape[0]:].any()
    tensor = image_to_sam_input(image, 64)
    assert tuple(tensor.shape) == (3, *resized.shape[:2])
    with pytest.raises(ValueError, match="does not fit"):
        pad_bottom_right(image, 32)


def test_transform_prompt_scales_coordinates():
    prompt = Prompt("points1", point_coords=np.array([[45.0, 30.0]]))
    moved = transform_prompt(prompt, (60, 90), 180)  # long side 90 -> 180: x2
    np.testing.assert_allclose(moved.point_coords, [[90.0, 60.0]])
    box = transform_prompt(Prompt("box", box=np.array([10, 20, 30, 40])), (60, 90), 45)
    np.testing.assert_allclose(box.box, [5, 10, 15, 20])
