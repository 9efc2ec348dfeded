"""paste_occluder: covered pixels leave the target mask, never all of it."""
import numpy as np
import pytest

from stable_sam.data import paste_occluder, prompt_rng

RED, BLUE = (255, 0, 0), (0, 0, 255)


def scene(shape=(60, 80)):
    image = np.zeros(shape + (3,), np.uint8)
    image[:] = BLUE
    mask = np.zeros(shape, bool)
    mask[15:45, 20:60] = True
    return image, mask


def occluder(size=(30, 20)):
    image = np.zeros(size + (3,), np.uint8)
    image[:] = RED
    mask = np.zeros(size, bool)
    mask[2:-2, 2:-2] = True
    return image, mask


@pytest.mark.parametrize("p", range(6))
def test_covered_pixels_are_removed(p):
    image, mask = scene()
    before_image, before_mask = image.copy(), mask.copy()
    occ_image, occ_mask = occluder()
    out_image, out_mask = paste_occluder(image, mask, occ_image, occ_mask, prompt_rng("o", 0, p))
    np.testing.assert_array_equal(image, before_image)  # inputs untouched
    np.testing.assert_array_equal(mask, before_mask)
    pasted = np.all(out_image == RED, axis=-1)
    assert pasted.any()
    assert np.all(out_image[~pasted] == BLUE)
    np.testing.assert_array_equal(out_mask, mask & ~pasted)
    assert out_mask.any() and out_mask.sum() < mask.sum()


@pytest.mark.parametrize("p", range(10))
def test_never_covers_the_whole_target(p):
    image, _ = scene()
    mask = np.zeros((60, 80), bool)
    mask[30:34, 40:44] = True  # small target, huge occluder
    occ_image, occ_mask = np.full((200, 200, 3), 255, np.uint8), np.ones((200, 200), bool)
    out_image, out_mask = paste_occluder(image, mask, occ_image, occ_mask, prompt_rng("o", 1, p),
                                         max_covered=0.7)
    assert out_mask.sum() >= 0.3 * mask.sum()
    assert np.all(out_mask <= mask)


def test_empty_inputs_are_returned_unchanged():
    image, mask = scene()
    occ_image, occ_mask = occluder()
    out_image, out_mask = paste_occluder(image, mask, occ_image, np.zeros_like(occ_mask),
                                         prompt_rng("o", 2, 0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    with pytest.raises(ValueError, match="differ in size"):
        paste_occluder(image, mask[:-1], occ_image, occ_mask, prompt_rng("o", 2, 0))


@pytest.mark.parametrize("p", range(6))
def test_pasted_behind_the_target_shows_only_around_it(p):
    from stable_sam.data import paste_behind

    image, mask = scene()
    image[mask] = (0, 255, 0)  # the target in green, so what is in front is visible
    before_image, before_mask = image.copy(), mask.copy()
    occ_image, occ_mask = occluder()
    out_image, out_mask = paste_behind(image, mask, occ_image, occ_mask, prompt_rng("b", 0, p))
    np.testing.assert_array_equal(image, before_image)  # inputs untouched
    np.testing.assert_array_equal(mask, before_mask)
    np.testing.assert_array_equal(out_mask, mask)  # the target is the occluder: still whole
    np.testing.assert_array_equal(out_image[mask], image[mask])  # and still in front
    pasted = np.all(out_image == RED, axis=-1)
    assert pasted.any() and not (pasted & mask).any()
    assert np.all(out_image[~pasted] == image[~pasted])
    # it is pasted where the target hides part of it: it touches the target
    grown = np.zeros_like(mask)
    grown[14:46, 19:61] = True
    assert (pasted & grown).any()


def test_synthesize_occlusion_uses_both_relations():
    from stable_sam.data import synthesize_occlusion

    image, mask = scene()
    occ_image, occ_mask = occluder()
    occludee = [not np.array_equal(
        synthesize_occlusion(image, mask, occ_image, occ_mask, prompt_rng("s", 0, p))[1], mask)
        for p in range(200)]
    assert 70 < sum(occludee) < 130  # even odds: 100 +- 3.5 sd
    with pytest.raises(ValueError, match="occludee_probability"):
        synthesize_occlusion(image, mask, occ_image, occ_mask, prompt_rng("s", 0, 0), 1.5)
