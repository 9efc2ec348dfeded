"""`stable-sam reproduce` end to end in miniature (8 training scenes, 3 base steps, 2 held-out
scenes): every stage runs, the table has exactly the issue's schema, and a rerun reuses what
the work folder holds."""
import json

from stable_sam.cli import main
from stable_sam.reproduction.pipeline import ALL_METHODS, KINDS, held_out_split

ARGS = ["--train-scenes", "8", "--test-scenes", "2", "--base-steps", "3",
        "--prompts-per-image", "2"]


def test_reproduce_in_miniature(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "--out", str(out), *ARGS]) == 0
    table = json.loads((out / "reproduction.json").read_text())
    assert set(table) == {"methods", "box_fill_mIoU", "test_targets", "site_reliance",
                          "worst_box"}
    for method in ("sam", "stable_sam"):
        for tau in ("0.5", "0.7"):
            row = table["worst_box"][method][tau]
            assert row["count"] == table["test_targets"]
            assert row["iou_min"] <= row["iou_base"] <= row["iou_max"]
            assert abs(row["delta"] - (row["iou_max"] - row["iou_min"])) < 0.02
    # the base's GT-box IoU is the same whether searched or evaluated
    assert abs(table["worst_box"]["sam"]["0.5"]["iou_base"]
               - table["methods"]["sam"]["kinds"]["box"]["mIoU"]) < 0.02
    reliance = table["site_reliance"]
    assert reliance["site"] == "layers[1].token_to_image" and len(reliance["routes"]) == 5
    # with every route, the base's mIoU is its row's (the first five noisy boxes of 2 = both)
    assert reliance["full"]["box"] == table["methods"]["sam"]["kinds"]["box"]["mIoU"]
    assert reliance["full"]["noisy_box"] == table["methods"]["sam"]["kinds"]["noisy_box"]["mIoU"]
    assert set(table["methods"]) == set(ALL_METHODS)
    # every target of the two held-out scenes (version 2, the fresh seed), not one per scene
    split = held_out_split(2)
    assert table["test_targets"] == sum(len(split[i]["masks"]) for i in range(2)) > 2
    for method, row in table["methods"].items():
        assert set(row) == {"trainable_params", "kinds", "follow", "background_box"}
        assert set(row["kinds"]) == set(KINDS) == set(row["follow"])
        assert isinstance(row["trainable_params"], int)
        for kind, metrics in row["kinds"].items():
            assert set(metrics) == {"mIoU", "mBIoU", "mSF", "mIoU_ci", "mSF_ci"}
            assert all(0 <= metrics[m] <= 100 for m in ("mIoU", "mBIoU"))
            assert (metrics["mSF"] is None) == (kind == "box")
            low, high = metrics["mIoU_ci"]
            assert low <= metrics["mIoU"] <= high
            assert set(row["follow"][kind]) == {"cross_agreement", "stable_but_wrong"}
    assert table["methods"]["sam"]["trainable_params"] == 0
    assert table["methods"]["stable_sam"]["trainable_params"] == 83_307
    assert "### Targets" in (out / "results.md").read_text()
    assert "**layers[1].token_to_image (plugin site)**" in (out / "results.md").read_text()
    assert "| SAM (base, frozen) | 0.7 |" in (out / "results.md").read_text()
    weights = out / "stable_sam" / "plugins.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["reproduce", "--out", str(out), *ARGS]) == 0
    assert weights.stat().st_mtime_ns == stamp  # reused, not retrained


def test_sigterm_stops_the_reproduction_and_a_rerun_continues_the_cut_training(tmp_path,
                                                                               monkeypatch):
    import pytest

    from stable_sam.data.scenes import TRAIN_SEED, write_scenes
    from stable_sam.reproduction import pipeline
    from stable_sam.families.demo.build import DEMO_SAM_WEIGHTS
    from stable_sam.training import loop

    class SigtermAtOnce(loop.StopRequest):
        def __enter__(self):
            super().__enter__()
            self.requested = True  # as if SIGTERM came during the first step
            return self

    train_dir = write_scenes(tmp_path / "train", 8, TRAIN_SEED)
    out = tmp_path / "r"
    methods = ("stable_sam", "pt_sam")
    monkeypatch.setattr(loop, "StopRequest", SigtermAtOnce)
    with pytest.raises(pipeline.ReproductionStopped, match="stable_sam"):
        pipeline.train_methods(out, DEMO_SAM_WEIGHTS, train_dir, methods=methods, threads=1)
    assert (out / "stable_sam" / "checkpoint.pt").is_file()
    assert not pipeline.weights_path(out, "stable_sam").is_file()
    assert not (out / "pt_sam").exists()  # the next method did not start
    monkeypatch.undo()
    paths = pipeline.train_methods(out, DEMO_SAM_WEIGHTS, train_dir, methods=methods, threads=1)
    assert all(path.is_file() for path in paths.values())


def test_a_method_killed_before_its_first_checkpoint_is_trained_again(tmp_path):
    from stable_sam.data.scenes import TRAIN_SEED, write_scenes
    from stable_sam.reproduction import pipeline
    from stable_sam.families.demo.build import DEMO_SAM_WEIGHTS

    train_dir = write_scenes(tmp_path / "train", 4, TRAIN_SEED)
    out = tmp_path / "r"
    (out / "pt_sam").mkdir(parents=True)
    (out / "pt_sam" / "log.csv").write_text("step,loss\n1,0.5\n")  # kill -9 during step 2
    paths = pipeline.train_methods(out, DEMO_SAM_WEIGHTS, train_dir, methods=("pt_sam",),
                                   threads=1)
    assert paths["pt_sam"].is_file()


def test_a_base_of_another_architecture_is_refused_before_any_work(tmp_path, capsys):
    # a work folder from an older version (its encoder without the final LayerNorm2d): one line,
    # exit 2, before the scenes are written, and the old base is left as it was
    from torch import nn

    from stable_sam.families.demo.build import build_demo_sam, save_sam_weights

    sam = build_demo_sam("demo-sam/1")
    sam.image_encoder.layers = nn.Sequential(*list(sam.image_encoder.layers)[:-1])
    out = tmp_path / "r"
    base = save_sam_weights(sam, out / "base_sam.safetensors")
    (out / "settings.json").write_text(json.dumps(  # a run of these settings
        {"train_scenes": 8, "test_scenes": 2, "base_steps": 3, "prompts_per_image": 2}))
    before = base.read_bytes()
    assert main(["reproduce", "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stable-sam reproduce: error:") and "of another version" in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["base_sam.safetensors", "settings.json"]
    assert base.read_bytes() == before
