"""The op's ONNX forms (stable_sam_ops._onnx): the gather form against the reference oracle in
PyTorch, and both forms exported through torch.onnx (dynamo) and run in onnxruntime."""
import numpy as np
import pytest
import torch

from stable_sam_ops import deformable_sample
from stable_sam_ops._onnx import (
    ONNX_SAMPLING_FORMS,
    decompose_for_onnx,
    decomposition_table,
    deformable_sample_gather,
)
from stable_sam_ops.reference import deformable_sample_reference

from op_cases import OPTIONAL_NAMES, as_float64, make_case, needs_cpu_kernel

SHAPES = [(2, 5, 7, 8, 2), (1, 1, 6, 4, 1), (3, 4, 1, 6, 3), (1, 16, 16, 256, 8)]
OPTIONALS = [OPTIONAL_NAMES, (), ("amplitude",), ("residual",), ("residual", "alpha")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("optional", OPTIONALS, ids=lambda o: "+".join(o) or "none")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gather_form_matches_reference(shape, optional, dtype):
    # offsets of std 2 with s_p = 3 push many corners outside the image: zero padding is tested
    case = make_case(*shape, dtype=dtype, optional=optional, offset_std=2.0)
    case["offset"][0, 0, 0, 0, 0] = float("nan")
    case["offset"][-1, -1, -1, -1, 1] = float("nan")
    got = deformable_sample_gather(**case, offset_scale=3.0)
    expected = deformable_sample_reference(**as_float64(case), offset_scale=3.0)
    assert got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.to(torch.float64), expected, atol=tol, rtol=tol)


def test_unknown_sampling_form_is_refused():
    with pytest.raises(ValueError, match="sampling must be one of"):
        decomposition_table("bicubic")


class _Sample(torch.nn.Module):
    def forward(self, value, offset, amplitude, residual, alpha):
        return deformable_sample(value, offset, amplitude, residual, alpha, 2.5, backend="cpu")


def _export_op(sampling, case, path):
    import onnx

    args = tuple(case[name] for name in ("value", "offset", "amplitude", "residual", "alpha"))
    program = torch.export.export(_Sample(), args, strict=False)
    assert any("stable_sam_ops" in str(n.target) for n in program.graph.nodes)
    program = decompose_for_onnx(program, sampling)
    assert not any("stable_sam_ops" in str(n.target) for n in program.graph.nodes)
    onnx_program = torch.onnx.export(program, args, dynamo=True, verbose=False, opset_version=18)
    onnx_program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model, args


@needs_cpu_kernel
@pytest.mark.parametrize("sampling", sorted(ONNX_SAMPLING_FORMS))
def test_exported_op_runs_in_onnxruntime(sampling, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    case = make_case(2, 9, 11, 16, 4, dtype=torch.float32, offset_std=2.0)
    case["offset"][1, 3, 4, 2, 0] = float("nan")
    model, args = _export_op(sampling, case, tmp_path / "op.onnx")
    op_types = {node.op_type for node in model.graph.node}
    # the gather form must not fall back to GridSample, which some runtimes miscompile
    assert ("GridSample" in op_types) == (sampling == "grid_sample")
    session = ort.InferenceSession(str(tmp_path / "op.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    (got,) = session.run(None, feeds)
    expected = deformable_sample_reference(**as_float64(case), offset_scale=2.5)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-5)
