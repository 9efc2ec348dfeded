"""The CLI as a careless user drives it: every case runs `python -m stable_sam.cli` in a
subprocess (tiny model, generated data) and must end with exit code 2, one line
`stable-sam <command>: error: ...` on stderr, no traceback, and every file that existed before
exactly as it was.

Importing torch and segment-anything costs seconds per interpreter, so the cases share one:
a runner process imports the CLI once, then forks one child per case. Each child is a process
of its own from there on: its own stdout/stderr files, environment and argv, `cli.main` run as
the `stable-sam` entry point runs it (an uncaught exception prints its traceback, exit 1), and
a normal interpreter exit (atexit handlers included: that is where loader workers that ignore
SIGTERM used to hang). The children run concurrently; each has its own output paths.

The demo server's careless and hostile clients (slow senders, foreign pages, huge shakes and
bodies) are the same kind of cases over HTTP: tests/stable_sam/serve/test_serve_careless_user.py.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CASE_TIMEOUT_S = 120  # a hang (e.g. loader workers that never exit) fails instead of blocking
TINY = ["--model-type", "tiny", "--device", "cpu"]


def _fingerprint(paths):
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns,
                     p.stat().st_mode) for p in paths}


def _cases(base: Path) -> dict:
    """name -> (argv after `stable-sam`, extra environment, protected files, error regex)."""
    data, bad, image = base / "data", base / "baddata", base / "data" / "im" / "synthetic_0000.jpg"
    afile = base / "afile.txt"
    eval_common = ["evaluate", *TINY, "--data", "hqseg", str(data), "--kinds", "box", "points1",
                   "--prompts-per-image", "2"]
    seg = ["segment", str(image), "--box", "4", "4", "40", "30", *TINY]
    return {
        "segment_bad_device": (
            ["segment", str(image), "--box", "4", "4", "40", "30", "--model-type", "tiny",
             "--device", "gpu9", "--out-dir", str(base / "s1")], {}, [], "is not a torch device"),
        "segment_missing_cuda_device": (
            ["segment", str(image), "--box", "4", "4", "40", "30", "--model-type", "tiny",
             "--device", "cuda:99", "--out-dir", str(base / "s2")], {}, [],
            "CUDA is not available|CUDA device"),
        "segment_malformed_op_cache_setting": (
            seg + ["--out-dir", str(base / "s9")], {"STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB": "lots"},
            [], "STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB must be a whole number of MiB"),
        "segment_out_dir_is_a_file": (
            seg + ["--out-dir", str(afile)], {}, [afile], "is a file, not a folder"),
        "segment_would_replace_an_output": (
            seg + ["--out-dir", str(base / "seg_done")], {},
            [base / "seg_done" / "synthetic_0000_mask.png"], "exists; pass --overwrite"),
        "segment_decompression_bomb": (
            ["segment", str(base / "bomb.png"), "--box", "1", "1", "5", "5", *TINY,
             "--out-dir", str(base / "s3")], {"STABLE_SAM_MAX_IMAGE_PIXELS": "1000"}, [],
            r"bomb\.png is 300x200 = 60000 pixels, over the limit"),
        "segment_text_as_image": (
            ["segment", str(afile), "--box", "1", "1", "5", "5", *TINY,
             "--out-dir", str(base / "s4")], {}, [afile], "could not read image file"),
        "segment_nan_plugin_weights": (
            seg + ["--plugin-checkpoint", str(base / "nan.safetensors"),
                   "--out-dir", str(base / "s5")], {}, [base / "nan.safetensors"],
            "NaN or infinite values in"),
        "train_over_an_existing_run": (
            ["train", *TINY, "--data", str(data), "--out", str(base / "run"), "--steps", "1"],
            {}, [base / "run" / "checkpoint.pt", base / "run" / "log.csv"],
            "already holds a run .*--resume.*--overwrite"),
        "train_out_is_a_file": (
            ["train", *TINY, "--data", str(data), "--out", str(afile), "--steps", "1"], {},
            [afile], "is a file, not a folder"),
        "train_bad_device_in_config": (
            ["train", "--model-type", "tiny", "--data", str(data), "--out", str(base / "t3"),
             "--config", '{"device": "cuda:99"}'], {}, [], "CUDA is not available|CUDA device"),
        "train_unbounded_config": (
            ["train", *TINY, "--data", str(data), "--out", str(base / "t1"), "--config",
             '{"num_points": 1000000000}'], {}, [], r"num_points must be <= \d+"),
        "train_bad_samples_with_workers": (
            ["train", *TINY, "--data", str(bad), "--out", str(base / "t2"), "--steps", "1",
             "--batch-size", "1", "--num-workers", "2"], {}, [],
            r"2 training sample\(s\) cannot be used: .*synthetic_0001\.png is empty.*"
            r"synthetic_0002\.png is 8x8.*--skip-bad-samples"),
        "train_sample_fails_in_a_loader_worker": (  # past the data check: the worker raises
            ["train", *TINY, "--data", str(base / "vanishing"), "--out", str(base / "t4"),
             "--steps", "4", "--batch-size", "1", "--num-workers", "2", "--no-lsj"], {}, [],
            r"the mask of training image 'synthetic_0001' .* vanished when resized"),
        "evaluate_out_is_a_file": (
            eval_common + ["--prompts", str(base / "prompts_ok.json"), "--out", str(afile)], {},
            [afile, base / "prompts_ok.json"], "is a file, not a folder"),
        "evaluate_corrupt_results": (
            eval_common + ["--prompts", str(base / "prompts_ok.json"),
                           "--out", str(base / "eval_corrupt")], {},
            [base / "eval_corrupt" / "results.json"], "results.json exists but cannot be read"),
        "evaluate_bad_kind": (
            ["evaluate", *TINY, "--data", "hqseg", str(data), "--kinds", "box", "scribble",
             "--prompts", str(base / "p_new.json"), "--out", str(base / "e1")], {}, [],
            "--kinds: unknown prompt kind 'scribble'"),
        "evaluate_malformed_prompts": (
            eval_common + ["--prompts", str(base / "prompts_bad.json"),
                           "--out", str(base / "e2")], {}, [base / "prompts_bad.json"],
            "is not valid JSON"),
        "evaluate_nan_box_prompt": (
            eval_common + ["--prompts", str(base / "prompts_nan.json"),
                           "--out", str(base / "e3")], {}, [base / "prompts_nan.json"],
            r"target 0 box\[0\] box: holds NaN"),
        "evaluate_prompts_of_other_masks": (
            eval_common + ["--prompts", str(base / "prompts_other.json"),
                           "--out", str(base / "e4")], {}, [base / "prompts_other.json"],
            "frozen for another mask"),
        "segment_overwrite_onto_a_fifo": (
            seg + ["--out-dir", str(base / "fifo_out"), "--overwrite"], {}, [],
            "synthetic_0000_mask.png' is not a regular file"),
        "segment_image_too_elongated": (
            ["segment", str(base / "strip.png"), "--box", "0", "0", "3", "2", *TINY,
             "--out-dir", str(base / "s6")], {}, [],
            r"a 3000x2 image is too elongated for this model"),
        "export_onnx_overwrite_onto_a_device_link": (
            # a link to the device: were the check broken, the link is replaced, not /dev/null
            ["export-onnx", *TINY, "--output", str(base / "null.onnx"), "--overwrite"], {}, [],
            "null.onnx' is not a regular file"),
        "evaluate_prompts_is_a_fifo": (
            eval_common + ["--prompts", str(base / "prompts.fifo"), "--out", str(base / "e6")],
            {}, [], "--prompts .* is not a regular file"),
        "evaluate_coco_file_name_escapes": (
            ["evaluate", *TINY, "--data", "coco", str(base / "coco" / "images"),
             str(base / "coco" / "annotations.json"), "--prompts", str(base / "p_coco.json"),
             "--out", str(base / "e5")], {}, [base / "coco" / "annotations.json"],
            "leaves the image folder"),
    }


def _prepare(base: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from stable_sam import build_stable_sam, save_plugins
    from stable_sam.data import HQSegDataset, make_synthetic_dataset
    from stable_sam.evaluation import freeze_prompts, save_prompts
    from stable_sam.evaluation.prompts_check import fingerprinted

    data = make_synthetic_dataset(base / "data", num_images=2, image_size=(48, 64), seed=1)
    bad = make_synthetic_dataset(base / "baddata", num_images=3, image_size=(48, 64), seed=1)
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(bad / "gt" / "synthetic_0001.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(bad / "gt" / "synthetic_0002.png")
    vanishing = make_synthetic_dataset(base / "vanishing", num_images=2, image_size=(48, 64),
                                       seed=1)
    Image.new("RGB", (1024, 1024)).save(vanishing / "im" / "synthetic_0001.jpg")
    speck = np.zeros((1024, 1024), np.uint8)
    speck[501, 501] = 255  # one pixel: it passes the data check, then vanishes at 256 px
    Image.fromarray(speck).save(vanishing / "gt" / "synthetic_0001.png")
    (base / "afile.txt").write_text("a user's notes\n")
    (base / "fifo_out").mkdir()
    os.mkfifo(base / "fifo_out" / "synthetic_0000_mask.png")  # replaced, it would be lost
    Image.new("RGB", (3000, 2)).save(base / "strip.png")
    os.symlink(os.devnull, base / "null.onnx")
    os.mkfifo(base / "prompts.fifo")
    Image.new("L", (300, 200)).save(base / "bomb.png")
    (base / "seg_done").mkdir()
    Image.new("L", (64, 48)).save(base / "seg_done" / "synthetic_0000_mask.png")
    (base / "run").mkdir()
    (base / "run" / "checkpoint.pt").write_bytes(b"a run's checkpoint")
    (base / "run" / "log.csv").write_text("step\n1\n")
    (base / "eval_corrupt").mkdir()
    (base / "eval_corrupt" / "results.json").write_text('{"format": "stable-sam-res')

    model = build_stable_sam("tiny")
    save_plugins(model, str(base / "nan.safetensors"))
    tensors = load_file(base / "nan.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    with open(base / "nan.safetensors", "rb") as f:  # keep the metadata, replace the tensors
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    save_file(tensors, base / "nan.safetensors", metadata=header["__metadata__"])

    frozen = fingerprinted(freeze_prompts, HQSegDataset(data, name="data"), ["box", "points1"],
                           2, 0, model_image_size=256)
    save_prompts(base / "prompts_ok.json", frozen)
    frozen["images"][0]["targets"][0]["prompts"]["box"][0]["box"][0] = float("nan")
    (base / "prompts_nan.json").write_text(json.dumps(
        {"format": "stable-sam-prompts/1", "datasets": {"data": frozen}}))
    (base / "prompts_bad.json").write_text('{"format": "stable-sam-prompts/1", "datasets": ')
    other = make_synthetic_dataset(base / "other" / "data", num_images=2, image_size=(48, 64),
                                   seed=7)
    save_prompts(base / "prompts_other.json",
                 fingerprinted(freeze_prompts, HQSegDataset(other, name="data"),
                               ["box", "points1"], 2, 0, model_image_size=256))

    coco = make_synthetic_dataset(base / "coco", num_images=2, image_size=(48, 64), seed=1,
                                  layout="coco")
    ann = json.loads((coco / "annotations.json").read_text())
    ann["images"][1]["file_name"] = "../../data/im/synthetic_0000.jpg"
    (coco / "annotations.json").write_text(json.dumps(ann))


RUNNER = r"""
import json, os, signal, sys, time, traceback
import stable_sam.cli as cli
from stable_sam.commands import COMMANDS
import importlib
for name in COMMANDS:
    importlib.import_module("stable_sam.commands." + name.replace("-", "_"))
cases, out_dir, limit, parallel = json.loads(sys.stdin.read())
running, results = {}, {}

def start(name, argv, env):
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid:
        running[pid] = (name, time.monotonic())
        return
    os.setpgrp()  # the runner can stop this case and its loader workers together
    for fd, suffix in ((1, "out"), (2, "err")):
        target = os.open(os.path.join(out_dir, name + "." + suffix),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
    os.environ.update(env)
    sys.argv = ["stable-sam", *argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.exit(code)

def reap(block):
    for pid, (name, began) in list(running.items()):
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if done:
            results[name] = os.waitstatus_to_exitcode(status)
            del running[pid]
        elif time.monotonic() - began > limit:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            results[name] = "timeout"
            del running[pid]

for name, (argv, env) in cases.items():
    while len(running) >= parallel:
        reap(False)
        time.sleep(0.05)
    start(name, argv, env)
while running:
    reap(False)
    time.sleep(0.05)
print(json.dumps(results))
"""


def _run_all(cases: dict, out_dir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    request = {name: [case[0], case[1]] for name, case in cases.items()}
    parallel = max(2, min(4, os.cpu_count() or 2))
    proc = subprocess.run([sys.executable, "-c", RUNNER], cwd=REPO, env=env, text=True,
                          input=json.dumps([request, str(out_dir), CASE_TIMEOUT_S, parallel]),
                          capture_output=True, timeout=CASE_TIMEOUT_S * len(cases))
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: {"rc": codes[name],
                   "stdout": (out_dir / f"{name}.out").read_text(),
                   "stderr": (out_dir / f"{name}.err").read_text()} for name in cases}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    base = tmp_path_factory.mktemp("careless")
    _prepare(base)
    cases = _cases(base)
    before = {name: _fingerprint(case[2]) for name, case in cases.items()}
    logs = base / "logs"
    logs.mkdir()
    results = _run_all(cases, logs)
    for name, case in cases.items():
        results[name]["before"] = before[name]
        results[name]["after"] = _fingerprint(p for p in case[2] if p.exists())
        results[name]["expected"] = case[3]
        results[name]["command"] = case[0][0]
    return results


CASE_NAMES = sorted(_cases(Path("/nonexistent")))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_a_careless_command_gets_one_clear_line(outcomes, case):
    out = outcomes[case]
    stderr_lines = out["stderr"].strip().splitlines()
    assert out["rc"] == 2, f"exit {out['rc']}; stderr:\n{out['stderr']}"
    assert "Traceback" not in out["stderr"], out["stderr"]
    assert len(stderr_lines) == 1, out["stderr"]
    assert stderr_lines[0].startswith(f"stable-sam {out['command']}: error: "), out["stderr"]
    assert re.search(out["expected"], stderr_lines[0]), stderr_lines[0]
    assert out["after"] == out["before"], "a file that existed before was changed or removed"
