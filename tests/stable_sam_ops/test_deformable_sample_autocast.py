"""The op under torch.autocast (bfloat16; CPU here, CUDA too on a GPU machine): a lower-precision
op on every backend. Floating
inputs are cast to the autocast dtype, the output has that dtype, and gradients reach the inputs
in their own dtypes."""
import pytest
import torch

from stable_sam_ops import available_backends, deformable_sample
from stable_sam_ops.reference import deformable_sample_reference

from op_cases import INPUT_NAMES, as_float64, device_of, make_case, needs_cpu_kernel

BACKENDS = [b for b in ("reference", "cpu", "cuda") if b in available_backends()]
AMP = torch.bfloat16


def mixed_case(device="cpu", requires_grad=False):
    """What autocast hands the op in the model: linear outputs (value, offset, amplitude) in
    bfloat16, the incoming tokens (residual) and the softmax (alpha) in float32."""
    case = make_case(2, 5, 6, 8, 2, dtype=torch.float32, offset_std=1.5)
    for name in ("value", "offset", "amplitude"):
        case[name] = case[name].to(AMP)
    return {k: t.to(device).requires_grad_(requires_grad) for k, t in case.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_run_in_the_autocast_dtype(backend):
    device = device_of(backend)
    case = mixed_case(device)
    with torch.autocast(device, dtype=AMP):
        out = deformable_sample(**case, offset_scale=2.0, backend=backend)
    assert out.dtype == AMP
    # The same as the op on inputs cast by hand, outside autocast.
    cast = {k: t.to(AMP) for k, t in case.items()}
    torch.testing.assert_close(out, deformable_sample(**cast, offset_scale=2.0, backend=backend),
                               rtol=0, atol=0)
    # And within one bfloat16 rounding of the float64 oracle on those inputs.
    expected = deformable_sample_reference(**as_float64(cast), offset_scale=2.0)
    one_rounding = torch.finfo(AMP).eps * expected.abs().max().item()
    assert (out.double() - expected).abs().max().item() <= one_rounding
    # The casts really happened: value's dtype alone would have been refused.
    assert {t.dtype for t in case.values()} == {AMP, torch.float32}


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_the_inputs_in_their_dtypes(backend):
    device = device_of(backend)
    case = mixed_case(device, requires_grad=True)
    with torch.autocast(device, dtype=AMP):
        out = deformable_sample(**case, offset_scale=2.0, backend=backend)
    grads = torch.autograd.grad(out.float().square().sum(), [case[n] for n in INPUT_NAMES])
    for name, g in zip(INPUT_NAMES, grads):
        assert g.dtype == case[name].dtype, name
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_float64_inputs_are_left_alone():
    # autocast never casts float64: the op computes in float64 as it would without autocast.
    case = make_case(1, 3, 4, 4, 2)
    with torch.autocast("cpu", dtype=AMP):
        out = deformable_sample(**case, offset_scale=2.0, backend="reference")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, deformable_sample_reference(**case, offset_scale=2.0))


@needs_cpu_kernel
@pytest.mark.parametrize("backend", [b for b in ("cpu", "cuda") if b in BACKENDS])
def test_compiled_op_has_its_own_autocast_kernel(backend):
    # Callers of torch.ops skip the public function: the C++ AutocastCPU / AutocastCUDA kernel
    # casts for them.
    device = device_of(backend)
    case = mixed_case(device)
    args = [case[n] for n in INPUT_NAMES]
    with torch.autocast(device, dtype=AMP):
        out = torch.ops.stable_sam_ops.deformable_sample(*args, 2.0)
    assert out.dtype == AMP
    expected = deformable_sample(*[t.to(AMP) for t in args], offset_scale=2.0, backend=backend)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
