"""The demo server's model side against the predictor used directly: masks, scores, routing,
sampling points, the shake's boxes and mSF, the embedding cache and the prompt checks."""
import numpy as np
import pytest
from serve_helpers import png_array

from stable_sam.data.prompts import noisy_box
from stable_sam.data.scenes import FRESH_TEST_SEED, TEST_SEED, make_scene
from stable_sam.evaluation.metrics import stability_score
from stable_sam.families.sam import StableSamPredictor
from stable_sam.serve.prompts import MAX_POINTS, PromptError, validate_prompts
from stable_sam.serve.session import UnknownImageError, scene_image


def scene(index, size=256):
    return make_scene(TEST_SEED, index, size).image


def direct(model, image, **prompt):
    predictor = StableSamPredictor(model)
    predictor.set_image(image)
    return {name: predictor.predict(**prompt, multimask_output=False, use_plugins=use,
                                    return_extras=True)
            for name, use in (("sam", False), ("stable_sam", True))}


@pytest.mark.parametrize("size", [256, 200])
@pytest.mark.parametrize("prompt", [
    {"box": [40, 50, 190, 200]},
    {"points": [[120, 130, 1], [30, 30, 0]]},
    {"box": [60, 60, 180, 170], "points": [[100, 100, 1]]},
])
def test_predict_gives_the_predictors_masks_scores_and_routing(demo_model, session, size, prompt):
    from pycocotools import mask as mask_utils

    image = scene(1, size)
    image_id = session.add_image(image)["image_id"]
    out = session.predict(image_id, prompt.get("box"), prompt.get("points"))
    points = prompt.get("points")
    expected = direct(demo_model, image,
                      box=None if "box" not in prompt else np.array(prompt["box"], float),
                      point_coords=None if points is None else np.array(points)[:, :2],
                      point_labels=None if points is None else np.array(points)[:, 2])
    for name, (masks, scores, _, extras) in expected.items():
        got = out["models"][name]
        assert np.array_equal(png_array(got["mask_png"]) > 0, masks[0])
        rle = {"size": got["rle"]["size"], "counts": got["rle"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), masks[0])
        assert got["score"] == pytest.approx(float(scores[0]), abs=1e-6)
        assert got["area"] == masks[0].sum()
    assert out["models"]["stable_sam"]["alpha"] == pytest.approx(
        expected["stable_sam"][3]["alpha"].tolist(), abs=1e-6)
    # the plugins took part (the shipped ones move the masks little: their scores tell them apart)
    assert out["models"]["sam"]["score"] != out["models"]["stable_sam"]["score"]


def test_sampling_view_is_the_top_k_tokens_and_sams_regular_grid(demo_model, session):
    image = scene(2, 200)
    image_id = session.add_image(image)["image_id"]
    out = session.predict(image_id, [30, 40, 170, 160])
    extras = direct(demo_model, image, box=np.array([30, 40, 170, 160.]))
    for name in ("sam", "stable_sam"):
        attention = extras[name][3]["attention"]
        view = out["models"][name]["sampling"]
        assert view["weights"] == pytest.approx(np.sort(attention, axis=None)[::-1][:16])
    # Without plugins each token reads its own cell: its centre, 16 input px = 12.5 image px.
    attention = extras["sam"][3]["attention"]
    rows, cols = np.unravel_index(np.argsort(-attention, axis=None)[:16], attention.shape)
    centres = np.stack([(cols + 0.5) * 12.5, (rows + 0.5) * 12.5], -1)
    points = np.array(out["models"]["sam"]["sampling"]["points"])
    assert np.allclose(points, centres[:, None, :], atol=0.01)
    moved = np.array(out["models"]["stable_sam"]["sampling"]["points"])
    assert np.abs(moved - centres[:, None, :]).max() > 5  # Stable-SAM's points are deformed


def test_shake_draws_the_papers_noisy_boxes_and_scores_their_masks(demo_model, session):
    image = scene(3)
    image_id = session.add_image(image)["image_id"]
    box = [60.0, 50.0, 200.0, 190.0]
    out = session.shake(image_id, box, seed=7)
    rng = np.random.default_rng(7)
    boxes = np.stack([noisy_box(np.array(box), rng, 0.4, (0.0, 1.0), (256, 256))
                      for _ in range(20)])
    assert np.allclose(out["boxes"], boxes, atol=0.01)
    assert out["noise_scale"] == 0.4 and len(out["boxes"]) == 20
    predictor = StableSamPredictor(demo_model)
    predictor.set_image(image)
    for name, use in (("sam", False), ("stable_sam", True)):
        masks = np.stack([predictor.predict(box=b, multimask_output=False, use_plugins=use)[0][0]
                          for b in boxes])
        assert out["models"][name]["stability"] == pytest.approx(stability_score(masks), abs=1e-9)
        share = png_array(out["models"][name]["frequency_png"])
        assert np.array_equal(share, np.round(masks.mean(0) * 255).astype(np.uint8))
    again = session.shake(image_id, box, seed=7)
    assert again["boxes"] == out["boxes"]
    assert session.shake(image_id, box, seed=8)["boxes"] != out["boxes"]


def test_the_embedding_is_computed_once_per_image_and_the_cache_is_lru(demo_model, session,
                                                                       monkeypatch):
    calls = []
    original = session.predictor.set_image
    monkeypatch.setattr(session.predictor, "set_image",
                        lambda image, *a, **k: calls.append(1) or original(image, *a, **k))
    a, b, c = scene(4), scene(5), scene(6, 200)
    id_a = session.add_image(a)["image_id"]
    assert session.add_image(a.copy())["image_id"] == id_a  # same pixels: no new embedding
    id_b = session.add_image(b)["image_id"]
    assert len(calls) == 2
    for _ in range(3):  # alternating images: each prompt runs on its own image's embedding
        for image, image_id in ((a, id_a), (b, id_b)):
            out = session.predict(image_id, [50, 50, 200, 200])
            expected = direct(demo_model, image, box=np.array([50, 50, 200, 200.]))
            for name in ("sam", "stable_sam"):
                assert np.array_equal(png_array(out["models"][name]["mask_png"]) > 0,
                                      expected[name][0][0])
    assert len(calls) == 2
    session.predict(id_a, [10, 10, 100, 100])  # a is now the most recently used
    session.add_image(c)  # the cache holds 2: b, the least recently used, goes
    assert session.cached_ids() == [id_a, session.add_image(c)["image_id"]]
    with pytest.raises(UnknownImageError, match="upload it or pick the scene again"):
        session.predict(id_b, [10, 10, 100, 100])
    assert len(calls) == 3


def test_scene_image_is_the_held_out_scene_with_the_demo_commands_casual_box():
    from stable_sam.commands.demo import casual_prompts

    image, box = scene_image(4, 50)
    held_out = make_scene(FRESH_TEST_SEED, 4, version=2)  # the published table's split
    assert np.array_equal(image, held_out.image)
    expected, _ = casual_prompts(held_out.masks[held_out.target])
    assert box == pytest.approx(expected.tolist(), abs=0.05)
    with pytest.raises(PromptError, match="scene 50 does not exist: pick 0 to 49"):
        scene_image(50, 50)


@pytest.mark.parametrize("box, points, message", [
    (None, [], "give a prompt"),
    ([10, 10, 300, 90], None, "reaches outside the 256x200 image"),
    ([-1, 10, 30, 90], None, "reaches outside"),
    ([50, 10, 30, 90], None, "is empty"),
    ([10, 10, 30], None, r"a box is \[x0, y0, x1, y1\]"),
    ([10, float("nan"), 30, 40], None, "finite number"),
    ([10, "a", 30, 40], None, "finite number"),
    (None, [[10, 10, 2]], "label is 1"),
    (None, [[10, 10, True]], "label is 1"),
    (None, [[10, 201, 1]], r"the click \(10, 201\) lies outside"),
    (None, [[10, 10]], r"a click is \[x, y, label\]"),
    (None, [[1, 1, 1]] * (MAX_POINTS + 1), "more than the 64 allowed"),
    (None, "10,10", "points must be a list"),
])
def test_bad_prompts_are_refused_with_a_message(box, points, message):
    with pytest.raises(PromptError, match=message):
        validate_prompts(box, points, (200, 256, 3))


def test_prompts_on_the_far_edges_are_inside():
    prompts = validate_prompts([0, 0, 256, 200], [[256, 200, 0], [0, 0, 1]], (200, 256, 3))
    assert prompts.box.tolist() == [0, 0, 256, 200]
    assert prompts.point_labels.tolist() == [0, 1]


@pytest.mark.parametrize("model_type", ["tiny", "hq_tiny"])
def test_other_model_types_get_their_own_embedding_back(model_type):
    """Real weights take the same path: a ViT SAM, and HQ-SAM whose decoder also reads the
    encoder's early features (put back with the embedding when another image came between)."""
    from stable_sam.build import build_stable_sam
    from stable_sam.families import predictor_for
    from stable_sam.serve.session import DemoSession

    model = build_stable_sam(model_type).eval()
    session = DemoSession(model)
    first, second = scene(1, 300), scene(2, 200)
    image_id = session.add_image(first)["image_id"]
    session.add_image(second)
    out = session.predict(image_id, [10, 10, 200, 200])
    predictor = predictor_for(model)
    predictor.set_image(first)
    for name, use in (("sam", False), ("stable_sam", True)):
        mask = predictor.predict(box=np.array([10, 10, 200, 200.]), multimask_output=False,
                                 use_plugins=use)[0][0]
        assert np.array_equal(png_array(out["models"][name]["mask_png"]) > 0, mask)
