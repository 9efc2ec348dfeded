"""Stable-SAM on SAM 2.1 at its identity initialisation is SAM 2: StableSam2ImagePredictor against
sam2's own SAM2ImagePredictor over the same frozen SAM 2 (the small random type), for every
prompt kind, single and multimask, dynamic_multimask_via_stability on and off, normalize_coords
both ways, and set_image_batch + predict_batch. Equality is exact (np.array_equal): the decoder
adapter runs SAM 2's own modules in SAM 2's order on tensors of the same shapes (the plugin
site calls SAM 2's attention modules, `module_attention`), so not even the rounding differs.
Then moved plugins must change the masks, and t_o must be the single-mask token."""

import numpy as np
import pytest
import torch
from model_helpers import make_image, perturb_plugins

from stable_sam import build_stable_sam
from stable_sam.families import base_predictor_for, predictor_for
from stable_sam.families.sam2 import decoder as sam2_decoder
from stable_sam.families.sam2.predictor import StableSam2ImagePredictor

H, W = 180, 240
BOX = np.array([50.0, 40.0, 190.0, 150.0])
POINTS = (np.array([[120.0, 90.0], [30.0, 20.0]]), np.array([1, 0]))

PROMPTS = {
    "point": dict(point_coords=POINTS[0][:1], point_labels=POINTS[1][:1]),
    "points": dict(point_coords=POINTS[0], point_labels=POINTS[1]),
    "box": dict(box=BOX),
    "box+points": dict(box=BOX, point_coords=POINTS[0], point_labels=POINTS[1]),
    "boxes": dict(box=np.stack([BOX, np.array([0.0, 0.0, 100.0, 90.0])])),
}


def normalized(prompt: dict) -> dict:
    """The prompt in [0, 1] image coordinates, for normalize_coords=False."""
    out = dict(prompt)
    if "point_coords" in out:
        out["point_coords"] = out["point_coords"] / np.array([W, H])
    if "box" in out:
        out["box"] = out["box"] / np.array([W, H, W, H])
    return out


def make_model(dynamic: bool):
    model = build_stable_sam("sam2_tiny_random").eval()
    model.sam.sam_mask_decoder.dynamic_multimask_via_stability = dynamic
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["dynamic", "static"])
def predictors(request):
    """(ours at the identity init, SAM2ImagePredictor over the same frozen SAM 2), image set."""
    model = make_model(request.param)
    ours, theirs = predictor_for(model), base_predictor_for(model)
    image = make_image(H, W)
    ours.set_image(image)
    theirs.set_image(image)
    return ours, theirs


def assert_same(ours, theirs):
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_predict_is_sam2s(predictors, kind, multimask, normalize):
    ours, theirs = predictors
    prompt = PROMPTS[kind] if normalize else normalized(PROMPTS[kind])
    args = dict(prompt, multimask_output=multimask, normalize_coords=normalize)
    assert_same(ours.predict(**args), theirs.predict(**args))
    assert_same(ours.predict(**args, return_logits=True),
                theirs.predict(**args, return_logits=True))


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_input_is_sam2s(predictors, multimask):
    ours, theirs = predictors
    _, scores, logits = theirs.predict(**PROMPTS["points"], multimask_output=True)
    mask_input = logits[np.argmax(scores)][None]
    args = dict(PROMPTS["points"], mask_input=mask_input, multimask_output=multimask)
    assert_same(ours.predict(**args), theirs.predict(**args))


def test_the_dynamic_fallback_is_exercised():
    """On the random SAM 2 the single-mask token is unstable for the prompts above, so the
    `dynamic` runs compare SAM 2's fallback, not the plain single mask."""
    model = make_model(True)
    predictor = predictor_for(model)
    predictor.set_image(make_image(H, W))
    features = predictor.features
    sparse, dense = model.prompt_encoder(points=(torch.tensor([[[150.0, 128.0]]]),
                                                 torch.tensor([[1]])), boxes=None, masks=None)
    with torch.no_grad():
        args = (features["image_embed"], model.prompt_encoder.get_dense_pe(), sparse, dense,
                False, features["high_res_feats"])
        dynamic, _ = model.decode(*args)
        single, _ = model.decode(*args, dynamic_multimask=False)
    assert not torch.equal(dynamic, single)


@pytest.mark.parametrize("multimask", [False, True])
def test_predict_batch_is_sam2s(multimask):
    model = make_model(True)
    ours, theirs = predictor_for(model), base_predictor_for(model)
    images = [make_image(H, W, seed=0), make_image(120, 200, seed=1)]
    ours.set_image_batch(images)
    theirs.set_image_batch(images)
    args = dict(box_batch=[BOX, np.array([[10.0, 10.0, 90.0, 80.0], [0.0, 0.0, 60.0, 60.0]])],
                point_coords_batch=[POINTS[0], None], point_labels_batch=[POINTS[1], None],
                multimask_output=multimask)
    mine, sam2s = ours.predict_batch(**args), theirs.predict_batch(**args)
    assert len(mine) == len(sam2s) == 3
    for a_list, b_list in zip(mine, sam2s):
        assert len(a_list) == len(b_list) == 2
        for a, b in zip(a_list, b_list):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_use_plugins_false_is_sam2_after_training():
    model = make_model(True)
    with torch.no_grad():
        perturb_plugins(model, scale=0.2)
    ours, theirs = predictor_for(model), base_predictor_for(model)
    image = make_image(H, W)
    ours.set_image(image)
    theirs.set_image(image)
    for kind in ("box", "points", "boxes"):
        args = dict(PROMPTS[kind], multimask_output=False)
        assert_same(ours.predict(**args, use_plugins=False), theirs.predict(**args))
        moved = ours.predict(**args)
        assert not np.array_equal(moved[2], theirs.predict(**args)[2])


def test_return_extras_shapes_and_identity_values(predictors):
    ours, _ = predictors
    masks, scores, logits, extras = ours.predict(box=BOX, multimask_output=False,
                                                 return_extras=True)
    grid = ours.model.sam.sam_image_embedding_size
    assert extras["alpha"].shape == (2,)
    np.testing.assert_allclose(extras["alpha"], [0.5, 0.5])
    assert extras["sampling_locations"].shape == (grid, grid, 8, 2)
    assert extras["attention"].shape == (grid, grid)
    np.testing.assert_allclose(extras["attention"].sum(), 1.0, rtol=1e-5)


def test_t_o_is_the_single_mask_token_after_the_object_score_token():
    """SAM 2.1 puts the object-score token first, so the single-mask token (t_o) is token 2: the
    routing plugin must read that token's query at the plugin site."""
    model = make_model(True)
    decoder = model.sam.sam_mask_decoder
    assert decoder.pred_obj_scores and sam2_decoder.output_mask_token(decoder) == 2
    seen = {}
    original = model.plugins.forward

    def spy(x_p, output_mask_token):
        seen["t_o"] = output_mask_token
        return original(x_p, output_mask_token)

    model.plugins.forward = spy
    queries_at_site = {}
    original_keys_fn_call = sam2_decoder.transformer_forward

    def spy_transformer(transformer, src, pe, tokens, keys_fn, record, record_token, **kw):
        def keys(x_p, queries):
            queries_at_site["q"] = queries
            return keys_fn(x_p, queries)
        return original_keys_fn_call(transformer, src, pe, tokens, keys, record, record_token,
                                     **kw)

    sam2_decoder.transformer_forward = spy_transformer
    try:
        predictor = predictor_for(model)
        predictor.set_image(make_image(H, W))
        predictor.predict(box=BOX, multimask_output=False)
    finally:
        sam2_decoder.transformer_forward = original_keys_fn_call
    q = queries_at_site["q"]
    assert torch.equal(seen["t_o"], q[:, 2])
    assert not torch.equal(seen["t_o"], q[:, 1])


def test_predictor_refuses_other_models():
    sam = build_stable_sam("tiny")
    with pytest.raises(TypeError, match="StableSam2"):
        StableSam2ImagePredictor(sam)


def test_predict_torch_through_transform_is_predict(predictors):
    """The SamPredictor-style path the evaluation and the demo server take (prompts mapped by
    `transform`, then predict_torch) gives predict's masks, scores and logits exactly."""
    ours, _ = predictors
    boxes = PROMPTS["boxes"]["box"]
    frame = torch.as_tensor(ours.transform.apply_boxes(boxes, ours.original_size),
                            dtype=torch.float)
    masks, scores, logits = ours.predict_torch(None, None, frame, multimask_output=False)
    assert_same(tuple(t.float().numpy() for t in (masks, scores, logits)),
                ours.predict(box=boxes, multimask_output=False))
    coords, labels = POINTS
    frame = torch.as_tensor(ours.transform.apply_coords(coords, ours.original_size)[None],
                            dtype=torch.float)
    masks, scores, logits = ours.predict_torch(frame, torch.as_tensor(labels[None]),
                                               multimask_output=True)
    assert_same(tuple(t[0].float().numpy() for t in (masks, scores, logits)),
                ours.predict(point_coords=coords, point_labels=labels))
