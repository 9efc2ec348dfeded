"""The compiled op as PyTorch sees it: torch.library.opcheck (schema, fake kernel, autograd
registration) and torch.compile(fullgraph=True) of the public function, forward and backward."""
import pytest
import torch

import stable_sam_ops
from stable_sam_ops.reference import deformable_sample_reference

from op_cases import INPUT_NAMES, OPTIONAL_NAMES, make_case, needs_cpu_kernel

pytestmark = needs_cpu_kernel


@pytest.mark.parametrize("optional", [(), OPTIONAL_NAMES, ("residual",)],
                         ids=["bare", "all", "residual"])
def test_opcheck(optional):
    case = make_case(2, 3, 4, 6, 3, dtype=torch.float32, optional=optional, requires_grad=True)
    args = tuple(case[n] for n in INPUT_NAMES) + (1.5,)
    torch.library.opcheck(torch.ops.stable_sam_ops.deformable_sample.default, args)


def test_opcheck_empty_batch():
    case = make_case(0, 3, 4, 6, 3, dtype=torch.float32, requires_grad=True)
    args = tuple(case[n] for n in INPUT_NAMES) + (1.5,)
    torch.library.opcheck(torch.ops.stable_sam_ops.deformable_sample.default, args)


def fused(value, offset, amplitude, residual, alpha):
    out = stable_sam_ops.deformable_sample(
        value, offset, amplitude, residual, alpha, offset_scale=2.0, backend="cpu"
    )
    return out.relu()  # a neighbour for inductor to generate code around the op


@pytest.fixture(scope="module")
def compiled_fused():
    torch._dynamo.reset()
    return torch.compile(fused, fullgraph=True)


def test_compile_fullgraph_matches_eager(compiled_fused):
    case = make_case(2, 5, 6, 8, 2, dtype=torch.float32, requires_grad=True)
    tensors = [case[n] for n in INPUT_NAMES]
    grad_out = torch.randn(2, 5, 6, 8)

    eager = fused(*tensors)
    eager_grads = torch.autograd.grad(eager, tensors, grad_out)
    out = compiled_fused(*tensors)
    grads = torch.autograd.grad(out, tensors, grad_out)

    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    expected = deformable_sample_reference(
        *[t.detach().double() for t in tensors], offset_scale=2.0
    ).relu()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5)
    for name, g, e in zip(INPUT_NAMES, grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6, msg=name)
