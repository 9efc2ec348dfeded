"""`stable-sam demo`: the grid of the first eight held-out scenes with prompts from a fixed seed
taken as drawn, the published table's numbers in its caption, and the careless user's mistakes
(a bad or missing device, a scene past the held-out split, a rerun over the picture) as one
line, exit 2, nothing touched."""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_sam import build_stable_sam
from stable_sam.cli import main
from stable_sam.data.prompts import noisy_box, positive_points
from stable_sam.data.scenes import FRESH_TEST_SEED, make_scene
from stable_sam.families import predictor_for
from stable_sam.prompting import Prompts, predict_best

REPO = Path(__file__).resolve().parents[2]


def test_the_grid_shows_the_first_eight_scenes_as_drawn_and_the_published_numbers(tmp_path,
                                                                                  capsys):
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "demo_grid.png").is_file()
    printed = {int(m[0]): [float(v) for v in m[1:]] for m in re.findall(
        r"scene (\d+): IoU casual box SAM ([\d.]+), Stable-SAM ([\d.]+); one click SAM "
        r"([\d.]+), Stable-SAM ([\d.]+)", out)}
    assert sorted(printed) == list(range(8))  # the first eight, whatever their results
    # each scene's prompts are the first draws of default_rng((0, scene)), none redrawn
    predictor = predictor_for(build_stable_sam("demo").eval())
    for index in range(8):
        scene = make_scene(FRESH_TEST_SEED, index, version=2)  # the published table's split
        mask = scene.masks[scene.target]
        rng = np.random.default_rng((0, index))
        box = noisy_box(mask, rng)
        coords, labels = positive_points(mask, 1, rng)
        expected = []
        with torch.inference_mode():
            predictor.set_image(scene.image)
            for prompts in (Prompts(None, None, box), Prompts(coords, labels, None)):
                for use_plugins in (False, True):
                    predicted, _, _ = predict_best(predictor, prompts, False,
                                                   use_plugins=use_plugins)
                    expected.append((predicted & mask).sum() / max((predicted | mask).sum(), 1))
        assert printed[index] == pytest.approx(expected, abs=6e-4), index
    methods = json.loads((REPO / "benchmarks" / "reproduction.json").read_text())["methods"]
    for kind, title in (("noisy_box", "casual box"), ("points1", "one click")):
        sam, ours = (methods[m]["kinds"][kind] for m in ("sam", "stable_sam"))
        assert (f"{title}: SAM mIoU {sam['mIoU']:.1f}, mSF {sam['mSF']:.1f}; Stable-SAM mIoU "
                f"{ours['mIoU']:.1f}, mSF {ours['mSF']:.1f}") in out


def test_overwrite_replaces_the_picture(tmp_path, capsys):
    picture = tmp_path / "demo_scene_5.png"
    picture.write_bytes(b"an older picture")
    assert main(["demo", "--scene", "5", "--out-dir", str(tmp_path), "--overwrite"]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fingerprint(folder: Path) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_careless_demo_commands_get_one_clear_line(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "demo_grid.png").write_bytes(b"a picture made before")
    (taken / "demo_scene_2.png").write_bytes(b"another one")
    cuda = "cuda:99" if torch.cuda.is_available() else "cuda"
    cases = {  # argv after `stable-sam demo` -> error
        ("--device", "banana", "--out-dir", str(tmp_path / "a")): "is not a torch device",
        ("--device", cuda, "--out-dir", str(tmp_path / "b")): "CUDA",
        ("--scene", "50", "--out-dir", str(tmp_path / "c")): r"--scene must be >= 0 and <= 49",
        ("--scene", "-1", "--out-dir", str(tmp_path / "c")): r"--scene must be >= 0 and <= 49",
        ("--out-dir", str(taken)): r"demo_grid\.png' exists; pass --overwrite",
        ("--scene", "2", "--out-dir", str(taken)): r"demo_scene_2\.png' exists; pass --overwrite",
    }
    before = _fingerprint(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running = {argv: subprocess.Popen([sys.executable, "-m", "stable_sam.cli", "demo", *argv],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env, cwd=tmp_path)
               for argv in cases}
    for argv, process in running.items():
        _, err = process.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert process.returncode == 2, (argv, err)
        assert len(lines) == 1 and lines[0].startswith("stable-sam demo: error: "), (argv, err)
        assert re.search(cases[argv], lines[0]), (argv, lines[0])
    assert _fingerprint(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
