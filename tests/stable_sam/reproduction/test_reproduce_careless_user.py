"""`stable-sam reproduce` as a careless user drives it: a damaged or changed work folder, settings
that do not fit it, out-of-range flags. Each case must end with exit code 2, one line
`stable-sam reproduce: error: ...` on stderr, no traceback, and every file of the work folder
exactly as it was (the CLI's `main`, in process: one finished miniature run is copied per case).
"""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from stable_sam.cli import main

ARGS = ["--train-scenes", "8", "--test-scenes", "2", "--base-steps", "3",
        "--prompts-per-image", "2"]
# the training split is on disk, one pair per target; the held-out split is generated in memory
# and checked through its frozen prompts' mask fingerprints
TRAIN_IMAGE = "scenes_train/im/scene_1000_00001_t00.jpg"
TRAIN_MASK = "scenes_train/gt/scene_1000_00001_t00.png"
PROMPTS = "prompts_test_2x2.json"
HELD_OUT = "scenes_4000_v2"  # the held-out split's name in the prompts file


def _truncate(*names):
    def damage(run: Path):
        for name in names:
            path = run / name
            data = path.read_bytes()
            path.write_bytes(data[:len(data) // 2])
    return damage


def _delete(*names):
    def damage(run: Path):
        for name in names:
            for path in run.glob(name):
                path.unlink()
    return damage


def _both(*steps):
    def damage(run: Path):
        for step in steps:
            step(run)
    return damage


def _other_mask(run: Path):
    shutil.copyfile(run / "scenes_train/gt/scene_1000_00003_t00.png", run / TRAIN_MASK)


def _prompts_for_another_mask(run: Path):
    # the frozen prompts no longer match the split's masks (as if frozen for other data)
    prompts = json.loads((run / PROMPTS).read_text())
    prompts["datasets"][HELD_OUT]["images"][1]["targets"][0]["mask_sha256"] = "0" * 64
    (run / PROMPTS).write_text(json.dumps(prompts))


def _without_settings(run: Path):
    (run / "settings.json").unlink()


# name -> (damage to a copy of a finished run, extra argv, error regex)
CASES = {
    "deleted_training_image": (_delete(TRAIN_IMAGE), [], r"scene_1000_00001_t00\.jpg is missing"),
    "training_mask_of_another_scene": (_other_mask, [],
                                       r"scene_1000_00001_t00\.png changed since"),
    "truncated_training_image": (_truncate(TRAIN_IMAGE), [], r"changed since it was written"),
    "truncated_training_mask": (_both(_truncate(TRAIN_MASK),
                                      _delete("stable_sam/plugins.safetensors")), [],
                                r"scenes_train/gt/scene_1000_00001_t00\.png changed since"),
    "prompts_frozen_for_another_mask": (_prompts_for_another_mask, [],
                                        r"frozen for another mask than the dataset's"),
    "truncated_prompts": (_both(_truncate(PROMPTS), _delete("row_*")), [],
                          r"is not valid JSON.*delete .*prompts_test_2x2\.json"),
    "truncated_row": (_truncate("row_sam_prompts_test_2x2.json"), [],
                      r"the sam row .* cannot be read .*delete it to evaluate sam again"),
    "truncated_base": (_truncate("base_sam.safetensors"), [],
                       r"could not be read.*delete it to train it again"),
    "truncated_plugins": (_both(_truncate("stable_sam/plugins.safetensors"),
                                _delete("row_stable_sam_prompts*")), [],
                          r"plugins\.safetensors.*delete .* to train stable_sam again"),
    "truncated_baseline_weights": (_both(_truncate("pt_sam/pt_sam.safetensors"),
                                         _delete("row_pt_sam_prompts*")), [],
                                   r"could not read baseline weights.*to train pt_sam again"),
    "truncated_training_checkpoint": (_both(_truncate("stable_sam/checkpoint.pt"),
                                            _delete("stable_sam/plugins.safetensors")), [],
                                      r"training stable_sam: could not read training checkpoint"),
    "truncated_settings_record": (_truncate("settings.json"), [], r"settings record"),
    "truncated_scene_hashes": (_truncate("scenes_train.sha256.json"), [], r"the scenes' hashes"),
    "scene_hashes_not_an_object": (lambda run: (run / "scenes_train.sha256.json").write_text("[]"),
                                   [], r"the scenes' hashes .* holds a list, not an object"),
    "other_settings_than_the_run": (None, ["--base-steps", "4"],
                                    r"made with other settings \(--base-steps 3 -> 4\)"),
    "a_folder_that_is_no_reproduction": (_without_settings, [], r"holds no settings\.json"),
    "too_many_threads": (None, ["--threads", "100000"], r"--threads must be in 1\.\.\d+"),
    "one_prompt_per_image": (None, ["--prompts-per-image", "1"],
                             r"--prompts-per-image must be in 2\.\.1000 \(mSF"),
    "publish_a_quick_run": (None, ["--publish"], r"--publish .* not the full recipe: "
                            r"--train-scenes 8 \(the recipe's is 3000\)"),
    "any_recipe_without_publish": (None, ["--publish-any-recipe"], r"only applies with"),
}


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "r"
    assert main(["reproduce", "--out", str(run), *ARGS]) == 0
    return run


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_careless_reproduce_gets_one_clear_line(finished_run, tmp_path, monkeypatch, capsys,
                                                   case):
    damage, extra, message = CASES[case]
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    if damage is not None:
        damage(run)
    monkeypatch.chdir(tmp_path)  # nothing may be written where the command stands either
    before = _files(tmp_path)
    capsys.readouterr()
    code = main(["reproduce", "--out", str(run), *ARGS, *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "%|" not in line]  # progress bars
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("stable-sam reproduce: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert _files(tmp_path) == before


def test_a_quick_run_is_refused_before_its_folder_is_made(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["reproduce", "--out", str(out), *ARGS, "--publish"]) == 2
    assert "not the full recipe" in capsys.readouterr().err
    assert not out.exists()
