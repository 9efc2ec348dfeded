"""The exported SAM 2 decoder (the interface of the tools that load SAM 2 decoders) in
onnxruntime against PyTorch's Stable-SAM on SAM 2 (SAM 2's prompt encoder, StableSam2.decode,
SAM 2's clamp) on random prompts: 1 to 3 prompts sharing the image, 1 to 6 clicks, with and
without a box and a mask input, multimask and single mask (with
dynamic_multimask_via_stability, on in build_sam2)."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stable_sam import build_stable_sam
from stable_sam.export.sam2_onnx_export import export_sam2_decoder_onnx
from stable_sam_ops import available_backends

from model_helpers import perturb_plugins

pytestmark = pytest.mark.skipif(
    "cpu" not in available_backends(), reason="the export needs the compiled op (cpu backend)"
)

# onnxruntime against PyTorch, float32 on the CPU: low-res logits and IoU predictions (largest
# seen on the small random SAM 2: 1.5e-6 logits, 6e-8 IoU)
LOGIT_TOL = 1e-4
IOU_TOL = 1e-5

SAM2_INPUTS = ["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords",
               "point_labels", "mask_input", "has_mask_input"]
SAM2_OUTPUTS = ["masks", "iou_predictions"]


@pytest.fixture(scope="module")
def model():
    return perturb_plugins(build_stable_sam("sam2_tiny_random"), seed=2).eval()


@pytest.fixture(scope="module", params=[True, False], ids=["multimask", "single"])
def exported(request, model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "sam2_decoder.onnx"
    export_sam2_decoder_onnx(model, str(path), multimask_output=request.param)
    return request.param, path


def _random_feeds(model, num_prompts, num_points, with_box, with_mask, seed):
    """Decoder inputs as a tool builds them: box corners first, labelled 2 and 3."""
    gen = torch.Generator().manual_seed(seed)
    s0, s1, grid = model.image_encoder.feature_sizes()
    size = model.image_encoder.img_size
    coords = torch.rand(num_prompts, num_points, 2, generator=gen) * size
    labels = torch.randint(0, 2, (num_prompts, num_points), generator=gen).float()
    if with_box:
        xy0 = torch.rand(num_prompts, 1, 2, generator=gen) * size * 0.5
        corners = torch.cat([xy0, xy0 + 8 + torch.rand(num_prompts, 1, 2, generator=gen) * 100],
                            dim=1)
        coords = torch.cat([corners, coords], dim=1)
        labels = torch.cat([torch.tensor([[2.0, 3.0]]).expand(num_prompts, 2), labels], dim=1)
    return {
        "image_embed": torch.randn(1, 256, *grid, generator=gen),
        "high_res_feats_0": torch.randn(1, 32, *s0, generator=gen),
        "high_res_feats_1": torch.randn(1, 64, *s1, generator=gen),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": torch.randn(num_prompts, 1, 4 * grid[0], 4 * grid[1], generator=gen) * 4,
        "has_mask_input": torch.tensor([1.0 if with_mask else 0.0]),
    }


@torch.no_grad()
def _pytorch(model, feeds, multimask, use_plugins=True):
    """StableSam2's own path, as StableSam2ImagePredictor runs it."""
    sparse, dense = model.prompt_encoder(
        points=(feeds["point_coords"], feeds["point_labels"].int()), boxes=None,
        masks=feeds["mask_input"] if feeds["has_mask_input"].item() else None)
    masks, iou = model.decode(
        feeds["image_embed"], model.prompt_encoder.get_dense_pe(), sparse, dense, multimask,
        [feeds["high_res_feats_0"], feeds["high_res_feats_1"]], use_plugins=use_plugins)
    return torch.clamp(masks, -32.0, 32.0), iou


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_interface_is_the_sam2_tools(exported):
    multimask, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == SAM2_INPUTS
    assert [o.name for o in graph.output] == SAM2_OUTPUTS
    dims = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    prompts, points = dims["point_coords"][0].dim_param, dims["point_coords"][1].dim_param
    assert prompts and points and prompts != points
    assert [d.dim_param for d in dims["point_labels"]] == [prompts, points]
    assert dims["mask_input"][0].dim_param == prompts
    assert [d.dim_value for d in dims["image_embed"]] == [1, 256, 16, 16]
    assert [d.dim_value for d in dims["high_res_feats_0"]] == [1, 32, 64, 64]
    assert [d.dim_value for d in dims["high_res_feats_1"]] == [1, 64, 32, 32]
    assert "GridSample" not in {n.op_type for n in graph.node}  # the default gather form


@pytest.mark.parametrize("num_prompts, num_points", [(1, 1), (3, 2), (2, 6)])
@pytest.mark.parametrize("with_box", [False, True], ids=["no_box", "box"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
def test_decoder_matches_pytorch(model, exported, num_prompts, num_points, with_box, with_mask):
    multimask, path = exported
    seed = 8 * num_points + 4 * num_prompts + 2 * with_box + with_mask
    feeds = _random_feeds(model, num_prompts, num_points, with_box, with_mask, seed)
    masks, iou = _run(path, feeds)
    expected_masks, expected_iou = _pytorch(model, feeds, multimask)
    m = 3 if multimask else 1
    assert masks.shape == (num_prompts, m, 64, 64) and iou.shape == (num_prompts, m)
    np.testing.assert_allclose(masks, expected_masks.numpy(), atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(iou, expected_iou.numpy(), atol=IOU_TOL, rtol=0)
    # the plugins move the masks far more than the tolerance: dropping them would show
    plain, _ = _pytorch(model, feeds, multimask, use_plugins=False)
    assert (plain - expected_masks).abs().max() > 100 * LOGIT_TOL


def test_single_mask_falls_back_as_sam2_does(model, tmp_path):
    """With dynamic_multimask_via_stability on, prompts whose single mask is less stable than
    the decoder's threshold get the best multimask output, in the export as in PyTorch. The
    threshold is set between these prompts' stability scores, so that both cases occur."""
    decoder = model.mask_decoder
    feeds = _random_feeds(model, 16, 2, True, False, seed=11)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(
            points=(feeds["point_coords"], feeds["point_labels"].int()), boxes=None, masks=None)
        args = (feeds["image_embed"], model.prompt_encoder.get_dense_pe(), sparse, dense, False,
                [feeds["high_res_feats_0"], feeds["high_res_feats_1"]])
        single, _ = model.decode(*args, dynamic_multimask=False)
    stability = decoder._get_stability_scores(single)[:, 0]
    threshold = decoder.dynamic_multimask_stability_thresh
    decoder.dynamic_multimask_stability_thresh = float(stability.median())
    try:
        path = tmp_path / "single.onnx"
        export_sam2_decoder_onnx(model, str(path), multimask_output=False)
        masks, iou = _run(path, feeds)
        expected_masks, expected_iou = _pytorch(model, feeds, False)
    finally:
        decoder.dynamic_multimask_stability_thresh = threshold
    fell_back = np.abs(masks - single.clamp(-32, 32).numpy()).max(axis=(1, 2, 3)) > LOGIT_TOL
    assert 0 < fell_back.sum() < len(fell_back)
    np.testing.assert_allclose(masks, expected_masks.numpy(), atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(iou, expected_iou.numpy(), atol=IOU_TOL, rtol=0)


@pytest.mark.slow
def test_hiera_small_decoder_matches_pytorch(tmp_path):
    """The real decoder size (1024 px input: 64 x 64 grid, 256 x 256 high-res features), random
    weights (the real checkpoints cannot be downloaded here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no checkpoint: random SAM 2
        model = perturb_plugins(build_stable_sam("sam2.1_hiera_small"), seed=2).eval()
    path = tmp_path / "decoder.onnx"
    export_sam2_decoder_onnx(model, str(path))
    for seed, (num_prompts, num_points, with_box, with_mask) in enumerate(
            [(1, 1, False, False), (3, 4, True, True)]):
        feeds = _random_feeds(model, num_prompts, num_points, with_box, with_mask, seed)
        masks, iou = _run(path, feeds)
        expected_masks, expected_iou = _pytorch(model, feeds, True)
        assert masks.shape == (num_prompts, 3, 256, 256)
        np.testing.assert_allclose(masks, expected_masks.numpy(), atol=LOGIT_TOL, rtol=0)
        np.testing.assert_allclose(iou, expected_iou.numpy(), atol=IOU_TOL, rtol=0)
