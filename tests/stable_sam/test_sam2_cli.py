"""The stable-sam CLI with SAM 2.1 model types: segment, visualize, train and evaluate run on the
small random SAM 2 (train's plugin file then drives segment); a real SAM 2.1 backbone without
its checkpoint is a one-line error; without the sam2 extra every command says so in one line,
before any work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from model_helpers import make_image
from stable_sam import cli
from stable_sam.data.synthetic import make_synthetic_dataset

SMALL = ["--model-type", "sam2_tiny_random", "--device", "cpu"]
BOX = ["--box", "60", "45", "180", "135"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(make_image()).save(path)  # 180 x 240
    return str(path)


def _mask(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def test_segment_and_visualize_with_sam2(image_path, tmp_path, capsys):
    assert cli.main(["segment", image_path, *BOX, *SMALL, "--out-dir", str(tmp_path)]) == 0
    mask = _mask(tmp_path / "scene_mask.png")
    assert mask.shape == (180, 240) and set(np.unique(mask)) <= {0, 255}
    assert "--model-type sam2_tiny_random without --sam-checkpoint" in capsys.readouterr().err
    assert cli.main(["visualize", image_path, *BOX, *SMALL, "--out-dir", str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["scene_mask.png", "scene_overlay.png",
                                            "scene_sampling.png"]


def test_train_then_segment_with_the_trained_plugins(image_path, tmp_path):
    data = make_synthetic_dataset(tmp_path / "shapes", num_images=4, image_size=(96, 128),
                                  seed=3)
    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny", *SMALL, "--data", str(data), "--out",
                     str(run), "--steps", "2", "--batch-size", "2", "--num-workers", "0"]) == 0
    weights = [name for name in os.listdir(run) if name.endswith(".safetensors")]
    assert len(weights) == 1
    out = tmp_path / "seg"
    assert cli.main(["segment", image_path, *BOX, *SMALL, "--plugin-checkpoint",
                     str(run / weights[0]), "--out-dir", str(out)]) == 0
    assert _mask(out / "scene_mask.png").shape == (180, 240)


def test_evaluate_sam2_at_init_scores_as_sam2(tmp_path):
    data = str(make_synthetic_dataset(tmp_path / "toy", num_images=2, image_size=(48, 64)))
    common = ["evaluate", *SMALL, "--data", "hqseg", data, "--prompts",
              str(tmp_path / "prompts.json"), "--out", str(tmp_path / "out"), "--kinds", "box",
              "points1", "--prompts-per-image", "2"]
    assert cli.main(common) == 0
    assert cli.main(common + ["--no-plugins"]) == 0  # through sam2's own SAM2ImagePredictor
    stable, plain = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert (stable["model"], plain["model"]) == ("Stable-SAM sam2_tiny_random",
                                                 "SAM sam2_tiny_random")
    assert stable["kinds"] == plain["kinds"]  # an untrained Stable-SAM 2 is SAM 2
    assert stable["kinds"]["box"]["count"] == 2


@pytest.mark.parametrize("command", ["segment", "train"])
def test_sam2_backbone_needs_its_checkpoint(image_path, tmp_path, capsys, command):
    args = ([image_path, "--box", "1", "1", "20", "20"] if command == "segment"
            else ["--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert cli.main([command, *args, "--model-type", "sam2.1_hiera_large"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stable-sam {command}: error: --sam-checkpoint is required for "
                   "--model-type sam2.1_hiera_large"]


WITHOUT_SAM2 = r"""
import contextlib, io, json, sys
for name in ("sam2", "hydra", "iopath"):
    sys.modules[name] = None  # as if not installed: find_spec and import fail
from stable_sam import cli
import stable_sam
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    results[name] = [rc, err.getvalue()]
try:
    stable_sam.StableSam2ImagePredictor
except ImportError as exc:
    results["import"] = str(exc)
print(json.dumps(results))
"""


def test_every_command_names_the_missing_sam2_extra_before_any_work(image_path, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    box = ["--box", "1", "1", "20", "20"]
    commands = {
        "segment": ["segment", image_path, *box, *SMALL, "--out-dir", str(tmp_path / "seg")],
        "visualize": ["visualize", image_path, *box, *SMALL,
                      "--out-dir", str(tmp_path / "vis")],
        "train": ["train", "--preset", "tiny", "--model-type", "sam2_tiny_random",
                  "--out", str(tmp_path / "run")],
        "evaluate": ["evaluate", *SMALL, "--data", "hqseg", str(tmp_path),
                     "--prompts", str(tmp_path / "p.json"), "--out", str(tmp_path / "ev")],
        "serve": ["serve", "--model-type", "sam2_tiny_random", "--port", "0"],
    }
    env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", WITHOUT_SAM2, json.dumps(commands)],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    line = ("sam2 model types need sam2, hydra, iopath, not installed: "
            "pip install 'stable-sam[sam2]'")
    assert "install them with: pip install 'stable-sam[sam2]'" in results.pop("import")
    for name, (rc, err) in results.items():
        assert rc == 2, (name, err)
        assert err.strip().splitlines() == [f"stable-sam {name}: error: {line}"], (name, err)
    assert os.listdir(tmp_path) == []  # nothing written
