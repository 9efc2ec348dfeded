"""Second-order gradients: exact on every backend (gradgradcheck in float64), and the fused
backends give the reference's value, not zero."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # As in test_triton_backend.py: settles interpreter vs compiler before the kernels import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from stable_sam_ops import available_backends, deformable_sample  # noqa: E402

from op_cases import OPTIONAL_NAMES, device_of, make_case, on_device, present  # noqa: E402

BACKENDS = [b for b in ("reference", "cpu", "cuda", "triton") if b in available_backends()]
FUSED = [b for b in ("cpu", "cuda", "triton") if b in available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optional", [(), OPTIONAL_NAMES], ids=["bare", "all"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4, 2), (1, 1, 5, 3, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gradgradcheck(backend, optional, shape):
    case = on_device(make_case(*shape, optional=optional, requires_grad=True, offset_std=0.7),
                     device_of(backend))
    names, tensors = present(case)

    def fn(*ts):
        return deformable_sample(**dict(zip(names, ts)), offset_scale=1.3, backend=backend)

    assert torch.autograd.gradgradcheck(fn, tensors, eps=1e-6, atol=1e-5, rtol=1e-4)


def _gradient_penalty_grads(backend, case):
    """d/dinputs of sum(grad^2), grad = d(sum(out^2))/dinputs: a gradient penalty."""
    names, tensors = present(case)
    out = deformable_sample(**case, offset_scale=1.5, backend=backend)
    grads = torch.autograd.grad(out.square().sum(), tensors, create_graph=True)
    penalty = sum(g.square().sum() for g in grads)
    return torch.autograd.grad(penalty, tensors)


@pytest.mark.parametrize("backend", FUSED)
def test_fused_second_order_equals_reference(backend):
    case = make_case(2, 4, 5, 6, 3, requires_grad=True, offset_std=1.2)
    want = _gradient_penalty_grads("reference", case)
    got = _gradient_penalty_grads(backend, on_device(case, device_of(backend)))
    for name, g, w in zip(present(case)[0], got, want):
        assert w.abs().sum() > 0, name
        torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled extension is not built")
def test_first_order_backward_still_runs_the_fused_kernel(monkeypatch):
    # Without create_graph the reference composition must not be differentiated.
    from stable_sam_ops import _double_backward

    def refuse(*args, **kwargs):
        raise AssertionError("differentiable_backward called without create_graph")

    monkeypatch.setattr(_double_backward, "differentiable_backward", refuse)
    case = make_case(1, 3, 4, 4, 2, requires_grad=True)
    out = deformable_sample(**case, offset_scale=1.5, backend="cpu")
    out.sum().backward()
    assert case["offset"].grad is not None
