"""The stable-sam CLI (segment, visualize) end to end on a generated image with the tiny model."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stable_sam import cli, save_plugins
from model_helpers import make_image, perturb_plugins, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--model-type", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(make_image()).save(path)  # 180 x 240
    return str(path)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "plugins.safetensors")
    save_plugins(perturb_plugins(tiny_model(), seed=5), path)
    return path


def _png(path):
    with Image.open(path) as im:
        return np.array(im)


@pytest.mark.parametrize(
    "prompt", [["--box", "60", "45", "180", "135"], ["--points", "120,90", "10,10,0"]]
)
def test_segment_writes_mask_and_overlay(image_path, tmp_path, prompt, capsys):
    rc = cli.main(["segment", image_path, *prompt, *TINY, "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    mask = _png(tmp_path / "out" / "scene_mask.png")
    overlay = _png(tmp_path / "out" / "scene_overlay.png")
    assert mask.shape == (180, 240) and set(np.unique(mask)) <= {0, 255}
    assert overlay.shape == (180, 240, 3)
    assert sorted(os.listdir(tmp_path / "out")) == ["scene_mask.png", "scene_overlay.png"]
    captured = capsys.readouterr()
    assert "RANDOMLY INITIALISED" in captured.err and "wrote" in captured.out


def test_segment_with_plugin_checkpoint_differs_from_sam(image_path, plugin_path, tmp_path):
    args = [
        "segment",
        image_path,
        "--box",
        "60",
        "45",
        "180",
        "135",
        *TINY,
        "--plugin-checkpoint",
        plugin_path,
    ]
    assert cli.main([*args, "--out-dir", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--no-plugins", "--out-dir", str(tmp_path / "b")]) == 0
    assert (
        cli.main(
            [
                "segment",
                image_path,
                "--box",
                "60",
                "45",
                "180",
                "135",
                *TINY,
                "--out-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    a, b, c = (_png(tmp_path / d / "scene_mask.png") for d in "abc")
    assert np.array_equal(b, c)  # --no-plugins is SAM, as are identity plugins
    assert not np.array_equal(a, b)


def test_visualize_side_by_side(image_path, plugin_path, tmp_path, capsys):
    rc = cli.main(
        [
            "visualize",
            image_path,
            "--box",
            "60",
            "45",
            "180",
            "135",
            *TINY,
            "--plugin-checkpoint",
            plugin_path,
            "--top-k",
            "10",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    figure = _png(tmp_path / "scene_sampling.png")
    assert figure.shape[0] == 180 and figure.shape[1] > 2 * 240 and figure.shape[2] == 3
    left, right = figure[:, :240], figure[:, -240:]
    assert not np.array_equal(left, right)  # deformed points and masks differ from SAM's
    assert "alpha (deformable, regular)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, match",
    [
        (["--box", "100", "40", "50", "150"], "--box must have X0 < X1 and Y0 < Y1"),
        (
            ["--box", "10", "10", "300", "100"],
            "reaches outside the 240x180 image; pass --clip-prompts",
        ),
        (["--points", "250,10"], "point \\(250, 10\\) lies outside the 240x180 image"),
        (["--points", "12"], "'12' is not X,Y or X,Y,LABEL"),
        (["--points", "12,13,2"], "label in '12,13,2' must be 0 or 1"),
        ([], "give a prompt"),
        (["--box", "-50", "-50", "-10", "-10", "--clip-prompts"], "is empty after clipping"),
    ],
)
def test_bad_prompts(image_path, tmp_path, capsys, args, match):
    rc = cli.main(["segment", image_path, *args, *TINY, "--out-dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stable-sam segment: error:" in err
    import re

    assert re.search(match, err), err
    assert os.listdir(tmp_path) == []  # nothing written


def test_clip_prompts_clips(image_path, tmp_path):
    rc = cli.main(
        [
            "segment",
            image_path,
            "--box",
            "-20",
            "10",
            "400",
            "150",
            "--points",
            "300,90",
            "--clip-prompts",
            *TINY,
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0 and os.path.exists(tmp_path / "scene_mask.png")


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_image", "image file not found: .*missing.png"),
        ("unreadable_image", "could not read image file .*text.png"),
        ("missing_checkpoint", "--sam-checkpoint .*nope.pth.*: no such file"),
        ("vit_b_without_checkpoint", "--sam-checkpoint is required for --model-type vit_b"),
        ("bad_plugin_file", "corrupt or truncated"),
    ],
)
def test_bad_files(image_path, tmp_path, capsys, case, match):
    text = tmp_path / "text.png"
    text.write_text("not an image")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    args = {
        "missing_image": [str(tmp_path / "missing.png"), *TINY],
        "unreadable_image": [str(text), *TINY],
        "missing_checkpoint": [image_path, *TINY, "--sam-checkpoint", str(tmp_path / "nope.pth")],
        "vit_b_without_checkpoint": [image_path, "--model-type", "vit_b"],
        "bad_plugin_file": [image_path, *TINY, "--plugin-checkpoint", str(bad)],
    }[case]
    rc = cli.main(
        ["segment", *args, "--box", "1", "1", "20", "20", "--out-dir", str(tmp_path / "out")]
    )
    assert rc == 2
    import re

    assert re.search(match, capsys.readouterr().err)


def test_missing_command_module_is_listed(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ("segment", "not_written_yet"))
    parser, commands = cli.build_parser()
    assert set(commands) == {"segment"}
    assert "not available in this installation: not_written_yet" in parser.format_help()
    assert cli.main([]) == 2  # no command: help on stderr, status 2


def test_console_entry_point_runs():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "stable_sam", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "segment" in result.stdout and "visualize" in result.stdout


@pytest.mark.parametrize("command", ["segment", "visualize"])
@pytest.mark.parametrize("size", [(3000, 2), (20, 20000)], ids=["3000x2", "20x20000"])
def test_too_elongated_image_is_one_line_before_the_model(tmp_path, capsys, monkeypatch,
                                                          command, size):
    from stable_sam.commands import _common

    def fail(args):
        raise AssertionError("the model was built before the image was checked")

    monkeypatch.setattr(_common, "build_model", fail)
    path = tmp_path / "strip.png"
    Image.fromarray(np.full(size[::-1], 128, np.uint8)).save(path)
    rc = cli.main([command, str(path), "--box", "0", "0", "2", "2", *TINY,
                   "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"stable-sam {command}: error: {path}: a {size[0]}x{size[1]} image is "
                          "too elongated for this model"), err
    assert "the long side may be at most 512x the short side" in err
    assert not (tmp_path / "out").exists()


def test_segment_takes_the_most_elongated_image_the_model_can(tmp_path):
    # 512x1 resizes to 256x1 for the 256 px tiny model: the limit, still accepted
    path = tmp_path / "strip.png"
    Image.fromarray(np.full((1, 512, 3), 200, np.uint8)).save(path)
    rc = cli.main(["segment", str(path), "--box", "0", "0", "512", "1", *TINY,
                   "--out-dir", str(tmp_path)])
    assert rc == 0 and _png(tmp_path / "strip_mask.png").shape == (1, 512)


@pytest.mark.parametrize("kind", ["fifo", "link-to-fifo", "device"])
def test_overwrite_replaces_only_a_regular_file(image_path, tmp_path, capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    mask = out / "scene_mask.png"
    if kind == "fifo":
        os.mkfifo(mask)
    elif kind == "link-to-fifo":
        os.mkfifo(tmp_path / "pipe")
        os.symlink(tmp_path / "pipe", mask)
    else:
        os.symlink("/dev/null", mask)
    before = os.lstat(mask)
    rc = cli.main(["segment", image_path, "--box", "60", "45", "180", "135", *TINY,
                   "--out-dir", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "is not a regular file" in err and err.count("\n") == 1, err
    after = os.lstat(mask)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(os.listdir(out)) == ["scene_mask.png"]  # no overlay written either


@pytest.mark.parametrize("model_type", ["tiny", "demo", "hq_tiny"])
def test_model_image_size_is_the_models(model_type):
    # the CLI checks images (and freezes coarse-mask prompts) for this size before any model
    from stable_sam import build_stable_sam
    from stable_sam.commands._common import model_image_size

    if model_type.startswith("hq_"):
        pytest.importorskip("segment_anything_hq")
    assert model_image_size(model_type) == build_stable_sam(model_type).image_encoder.img_size


def test_output_that_is_a_dangling_link_is_refused(image_path, tmp_path, capsys):
    os.symlink(tmp_path / "gone", tmp_path / "scene_mask.png")
    rc = cli.main(["segment", image_path, "--box", "60", "45", "180", "135", *TINY,
                   "--out-dir", str(tmp_path), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "scene_mask.png' is a link to a missing file" in err, err
    assert os.path.islink(tmp_path / "scene_mask.png")
