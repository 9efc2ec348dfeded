"""`stable-sam export-onnx` on a SAM 2 type writes SAM 2's decoder and encoder interfaces, and
refuses SAM-only options before any model is built."""

import onnx
import pytest

from stable_sam import cli
from stable_sam.commands import _common
from stable_sam_ops import available_backends

pytestmark = pytest.mark.skipif(
    "cpu" not in available_backends(), reason="the export needs the compiled op (cpu backend)"
)


def test_sam2_type_gets_sam2s_interface(tmp_path):
    decoder, encoder = tmp_path / "decoder.onnx", tmp_path / "encoder.onnx"
    rc = cli.main(["export-onnx", "--model-type", "sam2_tiny_random", "--output", str(decoder),
                   "--encoder-output", str(encoder), "--return-single-mask"])
    assert rc == 0
    graph = onnx.load(str(decoder)).graph
    assert [i.name for i in graph.input] == ["image_embed", "high_res_feats_0",
                                             "high_res_feats_1", "point_coords", "point_labels",
                                             "mask_input", "has_mask_input"]
    assert [o.name for o in graph.output] == ["masks", "iou_predictions"]
    masks = graph.output[0].type.tensor_type.shape.dim
    assert masks[1].dim_value == 1  # --return-single-mask: SAM 2's single mask
    graph = onnx.load(str(encoder)).graph
    assert [o.name for o in graph.output] == ["high_res_feats_0", "high_res_feats_1",
                                              "image_embed"]


@pytest.mark.parametrize("flag", ["--use-stability-score", "--return-extra-metrics"])
def test_sam_only_options_are_refused_before_any_model(flag, tmp_path, capsys, monkeypatch):
    def no_model(args):
        raise AssertionError("a model was built")

    monkeypatch.setattr(_common, "build_model", no_model)
    rc = cli.main(["export-onnx", "--model-type", "sam2_tiny_random", "--output",
                   str(tmp_path / "d.onnx"), flag])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("stable-sam export-onnx: error: --use-stability-score and")
    assert err.count("\n") == 1
    assert not (tmp_path / "d.onnx").exists()
