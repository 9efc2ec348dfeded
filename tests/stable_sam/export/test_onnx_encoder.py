"""The exported image encoder (preprocessing inside, dynamic H and W) against PyTorch.

The tiny model only: exporting vit_b's encoder took 78 s on the shared 2-core machine (its
embeddings matched PyTorch's within 1.4e-5 there), too slow for every CI run."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from stable_sam.export import export_encoder_onnx
from stable_sam_ops import available_backends

from model_helpers import make_image, tiny_model

pytestmark = pytest.mark.skipif(
    "cpu" not in available_backends(), reason="the export needs the compiled op (cpu backend)"
)


def test_encoder_matches_pytorch_for_any_aspect_ratio(tmp_path):
    model = tiny_model().eval()
    path = tmp_path / "encoder.onnx"
    export_encoder_onnx(model, str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_image"]
    assert [o.name for o in graph.output] == ["image_embeddings"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    transform = ResizeLongestSide(model.image_encoder.img_size)
    for height, width in [(180, 240), (300, 120), (64, 64)]:
        image = transform.apply_image(make_image(height, width))
        (got,) = session.run(None, {"input_image": image.astype(np.float32)})
        with torch.no_grad():
            x = torch.as_tensor(image).permute(2, 0, 1)[None].float()
            expected = model.image_encoder(model.preprocess(x))
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
