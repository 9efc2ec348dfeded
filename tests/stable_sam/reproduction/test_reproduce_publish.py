"""`stable-sam reproduce --publish` writes only into the source checkout the package runs from:
refused (one line, exit 2, nothing written) for an installed package, and a deliberate publish
of a quick run lands in the checkout, never in the folder the command was started from.

Each case runs `python -m stable_sam.cli` in a subprocess on a copy of the package: an
"installed" copy (the package folder alone) or a checkout (the package beside pyproject.toml,
benchmarks/ and tests/), put first on PYTHONPATH.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ARGS = ["--train-scenes", "8", "--test-scenes", "2", "--base-steps", "3",
        "--prompts-per-image", "2"]
WEIGHTS = ("stable_sam/weights/demo_sam.safetensors",
           "stable_sam/weights/demo_stable_sam_plugins.safetensors")
PUBLISHED = ("benchmarks/reproduction.json", "benchmarks/RESULTS.md",
             "tests/stable_sam/families/demo/shipped_weights_records.json") + WEIGHTS + (
                 "docs/demo_grid.png",)  # drawn with the weights just published


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _copy_package(dest: Path) -> None:
    shutil.copytree(REPO / "stable_sam", dest / "stable_sam",
                    ignore=shutil.ignore_patterns("__pycache__"))


def _reproduce(package_root: Path, cwd: Path, *argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(package_root))
    return subprocess.run([sys.executable, "-m", "stable_sam.cli", "reproduce", *argv],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_publishing_from_an_installed_package_is_refused(tmp_path):
    site, here = tmp_path / "site-packages", tmp_path / "elsewhere"
    _copy_package(site)
    here.mkdir()
    before = _files(site)
    done = _reproduce(site, here, "--out", str(here / "r"), *ARGS, "--publish",
                      "--publish-any-recipe")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stable-sam reproduce: error: --publish "
                                                   "writes into a source checkout"), lines
    assert str(site) in lines[0]
    assert _files(site) == before
    assert list(here.iterdir()) == []  # not even the work folder


def test_a_deliberate_publish_lands_in_the_checkout_and_nowhere_else(tmp_path):
    checkout, here = tmp_path / "checkout", tmp_path / "elsewhere"
    _copy_package(checkout)
    shutil.copyfile(REPO / "pyproject.toml", checkout / "pyproject.toml")
    for name in PUBLISHED[:3]:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, checkout / name)
    here.mkdir()
    shipped = _files(REPO / "stable_sam" / "weights")
    before = _files(checkout)
    out = tmp_path / "r"
    done = _reproduce(checkout, here, "--out", str(out), *ARGS, "--publish",
                      "--publish-any-recipe")
    assert done.returncode == 0, done.stderr[-2000:]
    after = _files(checkout)
    assert sorted(k for k in after if after[k] != before.get(k)) == sorted(PUBLISHED)
    for name in WEIGHTS:
        assert (checkout / name).read_bytes() == (
            out / ("base_sam.safetensors" if "demo_sam" in name
                   else "stable_sam/plugins.safetensors")).read_bytes()
    assert list(here.iterdir()) == []
    assert _files(REPO / "stable_sam" / "weights") == shipped  # this checkout's are untouched
