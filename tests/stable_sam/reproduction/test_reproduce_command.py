"""`stable-sam reproduce` end to end in miniature (8 training scenes, 3 base steps, 2 held-out
scenes): every stage runs, the table has exactly the issue's schema, and a rerun reuses what
the work folder holds."""
import json

from stable_sam.cli import main
from stable_sam.reproduction.pipeline import ALL_METHODS, KINDS

ARGS = ["--train-scenes", "8", "--test-scenes", "2", "--base-steps", "3",
        "--prompts-per-image", "2"]


def test_reproduce_in_miniature(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "--out", str(out), *ARGS]) == 0
    table = json.loads((out / "reproduction.json").read_text())
    assert set(table) == {"methods"} and set(table["methods"]) == set(ALL_METHODS)
    for method, row in table["methods"].items():
        assert set(row) == {"trainable_params", "kinds"} and set(row["kinds"]) == set(KINDS)
        assert isinstance(row["trainable_params"], int)
        for kind, metrics in row["kinds"].items():
            assert set(metrics) == {"mIoU", "mBIoU", "mSF"}
            assert all(0 <= metrics[m] <= 100 for m in ("mIoU", "mBIoU"))
            assert (metrics["mSF"] is None) == (kind == "box")
    assert table["methods"]["sam"]["trainable_params"] == 0
    assert table["methods"]["stable_sam"]["trainable_params"] == 83_307
    assert "### Targets" in (out / "results.md").read_text()
    weights = out / "stable_sam" / "plugins.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["reproduce", "--out", str(out), *ARGS]) == 0
    assert weights.stat().st_mtime_ns == stamp  # reused, not retrained
