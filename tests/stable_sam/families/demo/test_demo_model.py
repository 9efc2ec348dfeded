"""The embedded default (`demo`): it loads with no checkpoint path, segments a held-out scene,
reproduces the published table's records, and every command takes it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_sam import StableSamPredictor, build_stable_sam
from stable_sam.cli import main
from stable_sam.data._io import write_image_atomic
from stable_sam.data.prompts import gt_box
from stable_sam.data.scenes import (FRESH_TEST_SEED, TEST_SEED, SceneTargets, make_scene,
                                    scene_targets)
from stable_sam.evaluation import evaluate_masks, freeze_prompts
from stable_sam.families.demo.build import DEMO_PLUGIN_WEIGHTS, DEMO_SAM_WEIGHTS
from stable_sam.reproduction.pipeline import KINDS

RECORDS = Path(__file__).with_name("shipped_weights_records.json")
# the shipped base: 71.5 % against 55.9 % for filling the box on these 19 targets (71.0 against
# 58.0 on the whole split); the earlier base (demo-sam/1) was below the rule
MARGIN_OVER_BOX_FILL = 0.10


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return build_stable_sam("demo").eval()


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_shipped_weights_fit_the_budget():
    size = DEMO_SAM_WEIGHTS.stat().st_size + DEMO_PLUGIN_WEIGHTS.stat().st_size
    assert size <= 20_000_000  # issue 24: at most 20 MB together


def test_loads_without_checkpoint_and_segments_a_held_out_scene(demo):
    # The shipped base segments every target of the first held-out scenes from its GT box
    # better than filling the box does (benchmarks/reproduction.json has the whole split); a
    # random build's mask is mostly empty or mostly full.
    from stable_sam.evaluation.ceiling import box_fill_iou
    from stable_sam.families import base_predictor_for

    predictor = base_predictor_for(demo)
    ious, fills = [], []
    for index in range(5):
        scene = make_scene(FRESH_TEST_SEED, index, version=2)
        predictor.set_image(scene.image)
        for target in scene_targets(scene):
            masks, _, _ = predictor.predict(box=gt_box(target), multimask_output=False)
            ious.append(_iou(masks[0], target))
            fills.append(box_fill_iou(target))
    assert len(ious) >= 15 and np.mean(ious) > np.mean(fills) + MARGIN_OVER_BOX_FILL, (
        np.mean(ious), np.mean(fills))
    predictor = StableSamPredictor(demo)
    scene = make_scene(TEST_SEED, 1)
    target = scene.masks[scene.target]
    predictor.set_image(scene.image)
    # the plugins are the trained ones, not their identity initialisation
    with_plugins, _, _ = predictor.predict(box=gt_box(target) + np.array([-25, -25, 25, 25]),
                                           multimask_output=False)
    without, _, _ = predictor.predict(box=gt_box(target) + np.array([-25, -25, 25, 25]),
                                      multimask_output=False, use_plugins=False)
    assert not np.array_equal(with_plugins, without)


def test_a_given_base_gets_identity_plugins(demo):
    model = build_stable_sam("demo", sam_checkpoint=str(DEMO_SAM_WEIGHTS))
    trained = dict(demo.plugins.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in model.plugins.named_parameters())


def test_shipped_weights_reproduce_the_table_records(demo, tmp_path):
    """The published run's per-target records of the first held-out scenes (sam and
    stable_sam rows of benchmarks/reproduction.json), re-evaluated with the same prompts."""
    expected = json.loads(RECORDS.read_text())
    # the published table's split: the fresh seed's version-2 scenes, every target
    assert (expected["seed"], expected["version"]) == (FRESH_TEST_SEED, 2)
    dataset = SceneTargets(FRESH_TEST_SEED, expected["scenes"], 2)
    prompts = freeze_prompts(dataset, KINDS, expected["prompts_per_image"],
                             model_image_size=256)
    from stable_sam.families import base_predictor_for, predictor_for

    for method, predictor in (("sam", base_predictor_for(demo)), ("stable_sam", predictor_for(demo))):
        with torch.no_grad():
            records = evaluate_masks(predictor, dataset, prompts, list(KINDS))["records"]
        want = expected["records"][method]
        assert ([(r["image"], r["target"], r["kind"]) for r in records]
                == [(r["image"], r["target"], r["kind"]) for r in want])
        for got, ref in zip(records, want):
            assert got["iou"] == pytest.approx(ref["iou"], abs=5e-3), (method, ref)
            assert got["biou"] == pytest.approx(ref["biou"], abs=5e-3), (method, ref)


def test_commands_take_the_demo_model_without_a_checkpoint(tmp_path, capsys):
    scene = make_scene(TEST_SEED, 2)
    image = tmp_path / "scene.png"
    write_image_atomic(image, scene.image)
    x0, y0, x1, y1 = gt_box(scene.masks[scene.target])
    assert main(["segment", str(image), "--model-type", "demo", "--box", str(x0), str(y0),
                 str(x1), str(y1), "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "scene_mask.png").is_file()
    assert main(["demo", "--out-dir", str(tmp_path / "demo"), "--scene", "3"]) == 0
    out = capsys.readouterr().out
    assert "casual box" in out and (tmp_path / "demo" / "demo_scene_3.png").is_file()
    assert main(["demo", "--scene", "-1"]) == 2
    assert "stable-sam demo: error: --scene must be >= 0" in capsys.readouterr().err
