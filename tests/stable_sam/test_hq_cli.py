"""The stable-sam CLI with HQ-SAM model types: segment and evaluate accept them, a real HQ-SAM
backbone without its checkpoint is a one-line error before any model is built."""

import os

import numpy as np
import pytest
from PIL import Image

from model_helpers import make_image
from stable_sam import cli

HQ_TINY = ["--model-type", "hq_tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(make_image()).save(path)  # 180 x 240
    return str(path)


def test_segment_with_hq_model(image_path, tmp_path, capsys):
    rc = cli.main(["segment", image_path, "--box", "60", "45", "180", "135", *HQ_TINY,
                   "--out-dir", str(tmp_path)])
    assert rc == 0
    with Image.open(tmp_path / "scene_mask.png") as im:
        mask = np.array(im)
    assert mask.shape == (180, 240) and set(np.unique(mask)) <= {0, 255}
    assert sorted(os.listdir(tmp_path)) == ["scene_mask.png", "scene_overlay.png"]
    assert "--model-type hq_tiny without --sam-checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["segment", "train"])
def test_hq_backbone_needs_its_checkpoint(image_path, tmp_path, capsys, command):
    args = ([image_path, "--box", "1", "1", "20", "20"] if command == "segment"
            else ["--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert cli.main([command, *args, "--model-type", "hq_vit_l"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stable-sam {command}: error: --sam-checkpoint is required for "
                   "--model-type hq_vit_l"]
