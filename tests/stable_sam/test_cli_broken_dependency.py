"""An optional package that is installed but fails to import (an incompatible version raises on
import: ImportError, or anything else) is one line from every command that needs it: exit 2,
naming the package and its error, before any output file or folder exists.

A stand-in package that raises is put ahead of the real one on PYTHONPATH, and the CLI runs in
a subprocess with it, as a user runs it: the packages are imported there, not in this process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple

import pytest
from PIL import Image

from model_helpers import make_image
from stable_sam.optional_imports import failing_imports

REPO = Path(__file__).resolve().parents[2]
BOX = ["--box", "1", "1", "20", "20"]
# a reproduction that gets past its checks by mistake runs for seconds, not an hour
SMALL_REPRODUCTION = ["--train-scenes", "4", "--test-scenes", "1", "--base-steps", "1",
                      "--prompts-per-image", "2"]
MODEL_COMMANDS = ("segment", "visualize", "train", "evaluate", "export-onnx", "serve")


class Case(NamedTuple):
    command: str
    package: str  # the stand-in: installed, and its import raises
    exception: str
    argv: Callable[[str, Path], List[str]]  # (image, work folder) -> the arguments
    name: str


def model_command(command: str, model_type: str, image: str, work: Path) -> List[str]:
    """`command` on `model_type`, every output inside `work`."""
    model = ["--model-type", model_type]
    return {
        "segment": ["segment", image, *BOX, *model, "--device", "cpu",
                    "--out-dir", str(work / "out")],
        "visualize": ["visualize", image, *BOX, *model, "--device", "cpu",
                      "--out-dir", str(work / "out")],
        "train": ["train", "--preset", "tiny", *model, "--out", str(work / "run")],
        "evaluate": ["evaluate", *model, "--device", "cpu", "--data", "hqseg", str(work),
                     "--prompts", str(work / "prompts.json"), "--out", str(work / "eval")],
        "export-onnx": ["export-onnx", *model, "--output", str(work / "decoder.onnx")],
        "serve": ["serve", *model, "--port", "0"],
    }[command]


def on_model(command: str, model_type: str) -> Callable[[str, Path], List[str]]:
    return lambda image, work: model_command(command, model_type, image, work)


# Each family's stand-in is a package its main package imports (segment_anything_hq imports
# timm, sam2 imports hydra): the line must name the one that raised, not the one importing it.
FAMILY_CASES = [
    Case(command, package, exception, on_model(command, model_type), f"{family}-{command}")
    for family, model_type, package, exception in (
        ("hq", "hq_tiny", "timm", "ImportError"),
        ("sam2", "sam2_tiny_random", "hydra", "RuntimeError"),
    )
    for command in MODEL_COMMANDS
]
# the optional packages of commands rather than of a family: the onnx extra (export-onnx), the
# serve extra (serve) and tensorboard, which training logs to where it is installed
COMMAND_CASES = [
    Case("export-onnx", "onnx", "ImportError", on_model("export-onnx", "tiny"), "onnx"),
    Case("export-onnx", "onnxruntime", "RuntimeError", on_model("export-onnx", "tiny"),
         "onnxruntime"),
    Case("serve", "fastapi", "ImportError", lambda image, work: ["serve", "--port", "0"],
         "fastapi"),
    Case("serve", "h11", "AttributeError", lambda image, work: ["serve", "--port", "0"], "h11"),
    Case("train", "tensorboard", "ImportError", on_model("train", "tiny"), "tensorboard-train"),
    Case("reproduce", "tensorboard", "ImportError",
         lambda image, work: ["reproduce", *SMALL_REPRODUCTION, "--out", str(work / "repro")],
         "tensorboard-reproduce"),
]
CASES = FAMILY_CASES + COMMAND_CASES

# Runs the CLI on each argv in one process (one Python start per stand-in, not per command:
# each costs seconds), with each command's exit status and stderr; a traceback is kept too.
RUNNER = r"""
import contextlib, io, json, sys, traceback
from stable_sam import cli
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except BaseException:
            traceback.print_exc()
            rc = "raised"
    results.append([rc, err.getvalue()])
print(json.dumps(results))
"""


def stand_in_message(package: str) -> str:
    return f"stand-in {package} is broken"


def make_stand_in(folder: Path, package: str, exception: str) -> Path:
    """A package `package` in `folder` whose import raises `exception` (a two-line message:
    the error line carries the first)."""
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text(
        f"raise {exception}({stand_in_message(package) + chr(10) + 'second line'!r})\n")
    return folder


def run_cli(argvs: List[List[str]], stand_ins: Path) -> List[Tuple[object, str]]:
    """(exit status, stderr) of each argv, with `stand_ins` ahead of every installed package."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stand_ins), str(REPO)]),
               OMP_NUM_THREADS="1")
    # a serve that got past its checks would serve until the timeout
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argvs)], capture_output=True,
                          text=True, env=env, cwd=str(stand_ins), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [tuple(result) for result in json.loads(proc.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("image") / "scene.png"
    Image.fromarray(make_image()).save(path)
    return str(path)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, image_path):
    """case -> (exit status, stderr, its work folder); the cases of one stand-in run together."""
    done: Dict[str, Tuple[object, str, Path]] = {}

    def run(case: Case) -> Tuple[object, str, Path]:
        if case.name not in done:
            root = tmp_path_factory.mktemp(case.package)
            stand_ins = make_stand_in(root / "stand_ins", case.package, case.exception)
            group = [c for c in CASES if (c.package, c.exception) == (case.package, case.exception)]
            works = [root / c.name for c in group]
            for work in works:
                work.mkdir()
            results = run_cli([c.argv(image_path, w) for c, w in zip(group, works)], stand_ins)
            done.update({c.name: (*result, w) for c, result, w in zip(group, results, works)})
        return done[case.name]

    return run


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_broken_optional_package_is_one_line_before_any_output(outcome, case):
    rc, stderr, work = outcome(case)
    lines = stderr.strip().splitlines()
    assert rc == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"stable-sam {case.command}: error: "), lines[0]
    assert (f"{case.package} is installed but fails to import "
            f"({case.exception}: {stand_in_message(case.package)})") in lines[0], lines[0]
    assert list(work.iterdir()) == []  # no --out-dir, --out or --output, nothing else either


def test_a_failing_import_is_tried_once_per_process(tmp_path, monkeypatch):
    """The check is cheap to ask again: a failing package's code runs once, not per check."""
    package = "stable_sam_stand_in_counted"
    runs = tmp_path / "runs.txt"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(
        f"open({str(runs)!r}, 'a').write('ran\\n')\nraise KeyError('stand-in')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = failing_imports((package,))
    assert failing_imports((package,)) == first == {package: "KeyError: 'stand-in'"}
    assert runs.read_text() == "ran\n"
