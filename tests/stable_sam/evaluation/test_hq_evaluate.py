"""`stable-sam evaluate` with an HQ-SAM model type: Stable-HQ-SAM through StableHQSamPredictor,
`--no-plugins` through segment_anything_hq's own predictor; untrained, both score the same."""

import argparse
import json

from stable_sam.data.synthetic import make_synthetic_dataset


def _run(argv) -> int:
    from stable_sam.commands import evaluate as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    return command.run(parser.parse_args(["evaluate"] + argv))


def test_evaluate_hq_model_at_init_scores_as_hq_sam(tmp_path):
    data = str(make_synthetic_dataset(tmp_path / "toy", num_images=2, image_size=(48, 64)))
    common = ["--model-type", "hq_tiny", "--data", "hqseg", data, "--prompts",
              str(tmp_path / "prompts.json"), "--out", str(tmp_path / "out"), "--kinds", "box",
              "points1", "--prompts-per-image", "2", "--device", "cpu"]
    assert _run(common) == 0
    assert _run(common + ["--no-plugins"]) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| Stable-SAM hq_tiny | toy |" in table and "| SAM hq_tiny | toy |" in table
    stable, plain = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert (stable["model"], plain["model"]) == ("Stable-SAM hq_tiny", "SAM hq_tiny")
    # an untrained Stable-HQ-SAM is HQ-SAM: the same masks, the same numbers
    assert stable["kinds"] == plain["kinds"]
    assert stable["kinds"]["box"]["count"] == 2
