"""Scales where offset_scale * tanh(offset) overflows the input dtype: every backend computes in
float32 (float64 for float64 inputs), so each gives the float64 oracle's answer, NaN-free; a
scale that overflows that precision itself is refused with the same error by every path."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # As in test_triton_backend.py: settles interpreter vs compiler before the kernels import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from stable_sam_ops import available_backends, deformable_sample  # noqa: E402
from stable_sam_ops.reference import deformable_sample_reference  # noqa: E402

from op_cases import INPUT_NAMES, device_of, make_case, needs_cpu_kernel, on_device  # noqa: E402

BACKENDS = [b for b in ("reference", "cpu", "cuda", "triton") if b in available_backends()]

# (dtype, offset_scale): the scale times tanh overflows the dtype, but not float32 / float64.
OVERFLOWS = [
    (torch.float16, 1e5),
    (torch.bfloat16, 1e30),
    (torch.float32, 3e38),
    (torch.float64, 1e300),
]


def overflow_case(dtype):
    case = make_case(2, 4, 5, 6, 3, dtype=dtype, offset_std=1.5)
    offset = case["offset"]
    # tanh(0) = 0 exactly: these points sample their own pixel however large the scale (the
    # old reference computed scale * 0 = inf * 0 = NaN there); the others land far outside.
    offset[0, :, :, 0] = 0.0
    offset[1, 1, 2, 1, 0] = 0.0
    offset[1, 2, 3, 2] = float("nan")
    return {k: t.requires_grad_(True) for k, t in case.items()}


def run(backend, case, scale):
    names = list(INPUT_NAMES)
    out = deformable_sample(**case, offset_scale=scale, backend=backend)
    grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    grads = torch.autograd.grad(out, [case[n] for n in names], grad_out.to(out.device))
    return out.cpu(), {n: g.cpu() for n, g in zip(names, grads)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, scale", OVERFLOWS, ids=lambda p: str(p))
def test_overflowing_scale_gives_the_oracle_answer(backend, dtype, scale):
    case = overflow_case(dtype)
    out, grads = run(backend, on_device(case, device_of(backend)), scale)
    oracle = {k: t.detach().double().requires_grad_(True) for k, t in case.items()}
    want_out, want = run("reference", oracle, scale)
    assert not out.isnan().any()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), want_out, rtol=2 * eps, atol=4 * eps)
    for name in ("value", "amplitude", "residual", "alpha"):
        g = grads[name]
        tol = 4 * eps * max(1.0, want[name].abs().max().item())
        assert not g.isnan().any(), name
        torch.testing.assert_close(g.double(), want[name], rtol=tol, atol=tol, msg=name)
    # d(out)/d(offset) = scale * dS/dx: where it exceeds the dtype it is infinite on every
    # backend, elsewhere it is the oracle's.
    g, w = grads["offset"].double(), want["offset"].to(dtype).double()
    assert not g.isnan().any()
    finite = torch.isfinite(w)
    assert torch.equal(torch.isinf(g), ~finite)
    torch.testing.assert_close(g[finite], w[finite], rtol=4 * eps, atol=4 * eps * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_scale_that_overflows_float32_is_refused(backend, dtype):
    case = on_device(make_case(1, 2, 3, 2, 1, dtype=dtype), device_of(backend))
    with pytest.raises(ValueError, match=r"offset_scale \(1e\+39\) overflows float32, the dtype "
                                         r"the op computes in for torch\.\w+ inputs"):
        deformable_sample(**case, offset_scale=1e39, backend=backend)


def test_float64_inputs_take_any_finite_scale():
    case = make_case(1, 2, 3, 2, 1)
    out = deformable_sample(**case, offset_scale=1e39, backend="reference")
    assert torch.isfinite(out).all()


@needs_cpu_kernel
def test_compiled_op_refuses_the_same_scale():
    case = make_case(1, 2, 3, 2, 1, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"offset_scale \(1e\+39\) overflows float32"):
        torch.ops.stable_sam_ops.deformable_sample(*[case[n] for n in INPUT_NAMES], 1e39)
    case64 = make_case(1, 2, 3, 2, 1)
    out = torch.ops.stable_sam_ops.deformable_sample(*[case64[n] for n in INPUT_NAMES], 1e39)
    torch.testing.assert_close(out, deformable_sample_reference(**case64, offset_scale=1e39))
