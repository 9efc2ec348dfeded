"""`stable-sam evaluate --worst-box` end to end on the demo model and a random SAM 2 (a few targets,
a few steps), the rows it writes, the pipeline's entry (`evaluate_worst_boxes`) on a list of
targets, and the one-line refusals of bad options before any work."""
import importlib.util
import json
import re

import pytest

from stable_sam import cli
from stable_sam.data import HQSegDataset, make_synthetic_dataset
from stable_sam.evaluation.report import results_table

SAM2 = pytest.mark.skipif(importlib.util.find_spec("sam2") is None,
                          reason="the sam2 extra is not installed")
METRICS = ("iou_min", "iou_base", "iou_max", "delta")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("worst_box_data")
    return str(make_synthetic_dataset(root / "toy", num_images=2, image_size=(64, 80)))


def evaluate(tmp_path, data, *extra):
    argv = ["evaluate", "--data", "hqseg", data, "--prompts", str(tmp_path / "prompts.json"),
            "--out", str(tmp_path / "out"), "--kinds", "box", "--prompts-per-image", "1",
            "--device", "cpu", *extra]
    return cli.main(argv)


@pytest.mark.parametrize("model, flags", [
    ("demo", []),
    pytest.param("sam2_tiny_random", ["--no-plugins"], marks=SAM2),
])
def test_evaluate_worst_box_writes_min_base_max_delta_per_tau(tmp_path, toy_data, model, flags,
                                                              capsys):
    rc = evaluate(tmp_path, toy_data, "--model-type", model, *flags, "--worst-box",
                  "--worst-box-steps", "2", "--worst-box-starts", "2")
    assert rc == 0, capsys.readouterr().err
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    search = row["worst_box"]
    assert search["config"]["steps"] == 2 and search["config"]["starts"] == 2
    assert list(search["taus"]) == ["0.5", "0.7"]
    for tau, numbers in search["taus"].items():
        assert numbers["count"] == 2  # one target per image
        for metric in METRICS:
            low, high = numbers[f"{metric}_ci"]
            assert low <= numbers[metric] + 1e-12 and numbers[metric] <= high + 1e-12
        assert numbers["iou_min"] <= numbers["iou_base"] <= numbers["iou_max"]
        assert numbers["delta"] == pytest.approx(numbers["iou_max"] - numbers["iou_min"])
        # IoU-Base is the GT box's IoU, which the table's "box" kind measures too
        box_miou = row["kinds"]["box"]["miou"]
        if flags:  # the base package's decoder there: the same masks up to float rounding
            assert numbers["iou_base"] == pytest.approx(box_miou, abs=0.01)
        else:
            assert numbers["iou_base"] == pytest.approx(box_miou, abs=1e-12)
    records = json.loads(next((tmp_path / "out" / "records").glob("*__worst_box.json"))
                         .read_text())
    assert sorted((r["image"], r["tau"]) for r in records) == [(0, 0.5), (0, 0.7), (1, 0.5),
                                                               (1, 0.7)]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| Model | Dataset | tau | IoU-Min | IoU-Base | IoU-Max | Delta |" in table
    assert table.count("2 steps x 2 starts") == 2
    assert "IoU-Min" in capsys.readouterr().out


def test_without_worst_box_the_table_is_as_before(tmp_path, toy_data):
    assert evaluate(tmp_path, toy_data, "--model-type", "demo") == 0
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert "worst_box" not in row
    assert "IoU-Min" not in (tmp_path / "out" / "results.md").read_text()


def test_the_pipelines_entry_takes_a_list_of_targets(toy_data):
    from stable_sam import build_stable_sam
    from stable_sam.evaluation.worst_box import WorstBoxConfig
    from stable_sam.evaluation.worst_box_rows import evaluate_worst_boxes
    from stable_sam.families import predictor_for

    dataset = HQSegDataset(toy_data, name="toy")
    predictor = predictor_for(build_stable_sam("demo").eval())
    config = WorstBoxConfig(steps=1, starts=1)
    one = evaluate_worst_boxes(predictor, dataset, [(1, 0)], taus=(0.6,), config=config)
    both = evaluate_worst_boxes(predictor, dataset, None, taus=(0.6,), config=config)
    assert [(r["image"], r["target"]) for r in one["records"]] == [(1, 0)]
    # a target's search does not depend on which others ran
    assert one["records"][0] == both["records"][1]
    assert one["taus"]["0.6"]["count"] == 1 and both["taus"]["0.6"]["count"] == 2
    assert one["taus"]["0.6"]["iou_min"] == one["records"][0]["iou_min"]
    with pytest.raises(ValueError, match="has images 0..1"):
        evaluate_worst_boxes(predictor, dataset, [(2, 0)], config=config)


def test_the_report_renders_intervals_and_truncation():
    row = {"model": "SAM demo", "dataset": "toy", "kinds": {}, "worst_box": {
        "config": {"steps": 10, "starts": 3}, "taus": {"0.5": {
            "iou_min": 0.457, "iou_base": 0.846, "iou_max": 0.901, "delta": 0.444,
            "iou_min_ci": [0.40, 0.51], "iou_base_ci": None, "iou_max_ci": [0.88, 0.92],
            "delta_ci": [0.37, 0.50], "count": 12, "truncated": 1}}}}
    table = results_table([row])
    assert ("| SAM demo | toy | 0.5 | 45.7 [40.0, 51.0] | 84.6 | 90.1 [88.0, 92.0] | "
            "44.4 [37.0, 50.0] | 12 | 10 steps x 3 starts, 1 cut by the time budget |") in table


def test_the_commands_defaults_are_the_searchs():
    from stable_sam.commands.evaluate import WORST_BOX_DEFAULTS
    from stable_sam.evaluation.worst_box import WorstBoxConfig

    config = WorstBoxConfig()
    assert WORST_BOX_DEFAULTS == {k: getattr(config, k) for k in WORST_BOX_DEFAULTS}


@pytest.mark.parametrize("flags, message", [
    (["--worst-box", "--worst-box-tau", "0.5", "1.5"],
     r"--worst-box-tau: every tau must be in \(0, 1\) \(the IoU with the GT box\), got \[1.5\]"),
    (["--worst-box", "--worst-box-tau", "0.7", "0.7"], "--worst-box-tau: a tau is given twice"),
    (["--worst-box", "--worst-box-steps", "-1"], r"--worst-box-steps must be in 0..1000, is -1"),
    (["--worst-box", "--worst-box-starts", "0"], r"--worst-box-starts must be in 1..64, is 0"),
    (["--worst-box", "--worst-box-time-budget", "inf"],
     "--worst-box-time-budget must be a finite number of seconds > 0, is inf"),
    (["--worst-box-tau", "0.5"], "--worst-box-tau needs --worst-box"),
    (["--worst-box-steps", "3"], "--worst-box-steps needs --worst-box"),
])
def test_bad_worst_box_options_are_one_line_before_any_work(tmp_path, toy_data, flags, message,
                                                            capsys):
    rc = evaluate(tmp_path, toy_data, "--model-type", "demo", *flags)
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stable-sam evaluate: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "prompts.json").exists()  # nothing was frozen, loaded or written
    assert not (tmp_path / "out").exists()
