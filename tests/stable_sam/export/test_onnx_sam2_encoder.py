"""The exported SAM 2 image encoding (conv_s0 / conv_s1 folded in) against PyTorch, and the two
files together as a SAM 2 tool runs them against StableSam2ImagePredictor.predict."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from stable_sam import build_stable_sam
from stable_sam.export.sam2_onnx_export import export_sam2_decoder_onnx, export_sam2_encoder_onnx
from stable_sam.families import predictor_for
from stable_sam_ops import available_backends

from model_helpers import make_image, perturb_plugins

pytestmark = pytest.mark.skipif(
    "cpu" not in available_backends(), reason="the export needs the compiled op (cpu backend)"
)

# onnxruntime against PyTorch, float32 on the CPU (largest seen on the small random SAM 2: 9.5e-7
# features, 4.5e-7 low-res logits and scores end to end)
FEATURE_TOL = 1e-4
END_TO_END_TOL = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    model = perturb_plugins(build_stable_sam("sam2_tiny_random"), seed=6).eval()
    folder = tmp_path_factory.mktemp("sam2_onnx")
    encoder, decoder = folder / "encoder.onnx", folder / "decoder.onnx"
    export_sam2_encoder_onnx(model, str(encoder))
    export_sam2_decoder_onnx(model, str(decoder))
    session = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
               for name, path in (("encoder", encoder), ("decoder", decoder))}
    return model, encoder, session


def test_encoder_outputs_what_set_image_keeps(files):
    model, path, session = files
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["high_res_feats_0", "high_res_feats_1",
                                              "image_embed"]
    predictor = predictor_for(model)
    image = make_image(180, 240)
    predictor.set_image(image)
    got = session["encoder"].run(None, {"image": predictor._transforms(image)[None].numpy()})
    kept = predictor.features
    for g, e in zip(got, [*kept["high_res_feats"], kept["image_embed"]]):
        np.testing.assert_allclose(g, e.numpy(), atol=FEATURE_TOL, rtol=0)


def test_the_two_files_give_the_predictors_masks(files):
    """What a SAM 2 tool does: resize + normalise, encoder file, prompts scaled to the square
    input with the box corners first (labels 2, 3), decoder file; its low-res logits and scores
    against StableSam2ImagePredictor.predict(box, clicks)."""
    model, _, session = files
    predictor = predictor_for(model)
    h, w = 180, 240
    image = make_image(h, w, seed=3)
    box = np.array([50.0, 40.0, 190.0, 150.0])
    clicks, labels = np.array([[120.0, 90.0], [30.0, 20.0]]), np.array([1, 0])
    predictor.set_image(image)
    _, scores, low_res = predictor.predict(point_coords=clicks, point_labels=labels, box=box)

    feats = session["encoder"].run(None, {"image": predictor._transforms(image)[None].numpy()})
    size = model.image_encoder.img_size
    points = np.concatenate([box.reshape(2, 2), clicks]) * (size / w, size / h)
    masks, iou = session["decoder"].run(None, {
        "image_embed": feats[2], "high_res_feats_0": feats[0], "high_res_feats_1": feats[1],
        "point_coords": points[None].astype(np.float32),
        "point_labels": np.array([[2, 3, *labels]], np.float32),
        "mask_input": np.zeros((1, 1, 64, 64), np.float32),
        "has_mask_input": np.array([0.0], np.float32),
    })
    np.testing.assert_allclose(masks[0], low_res, atol=END_TO_END_TOL, rtol=0)
    np.testing.assert_allclose(iou[0], scores, atol=END_TO_END_TOL, rtol=0)
