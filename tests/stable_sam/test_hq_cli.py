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


WITHOUT_HQ_PACKAGES = r"""
import contextlib, io, json, sys
sys.modules["segment_anything_hq"] = None  # as if not installed: find_spec and import fail
sys.modules["timm"] = None
from stable_sam import cli
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    results[name] = [rc, err.getvalue()]
print(json.dumps(results))
"""


def test_every_command_names_the_missing_hq_extra_before_any_work(image_path, tmp_path):
    import json
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    box = ["--box", "1", "1", "20", "20"]
    commands = {
        "segment": ["segment", image_path, *box, *HQ_TINY, "--out-dir", str(tmp_path / "seg")],
        "visualize": ["visualize", image_path, *box, *HQ_TINY,
                      "--out-dir", str(tmp_path / "vis")],
        "train": ["train", "--preset", "tiny", "--model-type", "hq_tiny",
                  "--out", str(tmp_path / "run")],
        "evaluate": ["evaluate", *HQ_TINY, "--data", "hqseg", str(tmp_path),
                     "--prompts", str(tmp_path / "p.json"), "--out", str(tmp_path / "ev")],
        "export-onnx": ["export-onnx", "--model-type", "hq_tiny",
                        "--output", str(tmp_path / "d.onnx")],
        "serve": ["serve", "--model-type", "hq_tiny", "--port", "0"],
    }
    env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HQ_PACKAGES, json.dumps(commands)],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (rc, err) in results.items():
        assert rc == 2, (name, err)
        assert err.strip().splitlines() == [
            f"stable-sam {name}: error: hq model types need segment_anything_hq, timm, not "
            "installed: pip install 'stable-sam[hq]'"], (name, err)
    assert os.listdir(tmp_path) == []  # train wrote nothing into --out, nothing else either
