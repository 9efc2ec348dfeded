"""The compiled op's CUDA kernels against the float64 oracle.

Every case is parametrised over the backend that runs it: "cuda" (skipped without a GPU) and
"cpu" (the C++ kernel). The CPU variant runs the same test logic on machines without a GPU, so
the checks themselves are exercised in CI; the CUDA variant is what they are written for.
Shapes pick both load paths of the CUDA kernel: channels per group a multiple of the 16-byte
pack (4 x float32, 2 x float64, 8 x half) and odd ones, and groups wider than a warp's lanes.
"""
import pytest
import torch

from stable_sam_ops import available_backends, deformable_sample
from stable_sam_ops.reference import deformable_sample_reference

NAMES = ("value", "offset", "amplitude", "residual", "alpha")
HAS_CUDA = torch.cuda.is_available() and "cuda" in available_backends()

BACKENDS = [
    pytest.param("cuda", marks=pytest.mark.skipif(
        not HAS_CUDA, reason="needs a CUDA GPU and the extension built with its CUDA kernels")),
    pytest.param("cpu", marks=pytest.mark.skipif(
        "cpu" not in available_backends(), reason="the compiled extension is not built")),
]

# (B, H, W, C, G)
SHAPES = [
    (2, 5, 6, 16, 2),   # Cg = 8: packed loads in every dtype
    (1, 1, 7, 3, 1),    # one row (the oracle's padded path), Cg = 3: scalar loads
    (2, 4, 1, 10, 2),   # one column, Cg = 5: scalar loads
    (3, 6, 5, 32, 1),   # Cg = 32: several lanes share a group
    (1, 3, 4, 264, 2),  # Cg = 132: 33 float32 packs, more than 32 lanes: lanes stride
]
OPTIONALS = {
    "none": (),
    "all": ("amplitude", "residual", "alpha"),
    "amplitude_alpha": ("amplitude", "alpha"),
    "residual": ("residual",),
}
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def shape_id(s):
    return "x".join(map(str, s))


def make_inputs(B, H, W, C, G, dtype, device, optional=("amplitude", "residual", "alpha"),
                seed=0, offset_std=1.5):
    """Inputs drawn in float64 on CPU (identical on every device), then cast and moved."""
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return t.to(device=device, dtype=dtype)

    inputs = {
        "value": draw(B, H, W, C),
        "offset": draw(B, H, W, G, 2, scale=offset_std),
        "amplitude": draw(B, H, W, G),
        "residual": draw(B, H, W, C),
        "alpha": draw(B, 2),
    }
    return {k: (v if k in ("value", "offset") or k in optional else None) for k, v in inputs.items()}


def as_float64(inputs):
    return {k: (v.double() if v is not None else None) for k, v in inputs.items()}


def run(backend, inputs, offset_scale):
    return deformable_sample(**inputs, offset_scale=offset_scale, backend=backend)


def reference(inputs, offset_scale):
    return deformable_sample_reference(**inputs, offset_scale=offset_scale)


def grads(fn, inputs, offset_scale, grad_out):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    out = fn({k: leaves.get(k) for k in NAMES}, offset_scale)
    out.backward(grad_out.to(device=out.device, dtype=out.dtype))
    return {k: t.grad for k, t in leaves.items()}


def random_like(t, seed):
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).to(t.device)


def embed_in_nan(t, pad=40):
    """t's values in a contiguous view inside a NaN-filled buffer: a kernel that reads past
    either end of t picks up NaN. pad is a multiple of 8 so packed loads stay aligned."""
    buf = torch.full((t.numel() + 2 * pad,), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[pad:pad + t.numel()].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("optional", list(OPTIONALS), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_matches_float64_oracle(backend, shape, optional, dtype):
    inputs = make_inputs(*shape, dtype, backend, OPTIONALS[optional])
    out = run(backend, inputs, 2.5)
    assert out.shape == inputs["value"].shape and out.dtype == dtype
    assert out.device.type == backend
    torch.testing.assert_close(out.double(), reference(as_float64(inputs), 2.5),
                               atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_all_five_gradients_match_reference_autograd(backend, shape, dtype):
    inputs = make_inputs(*shape, dtype, backend, seed=1)
    grad_out = random_like(inputs["value"], seed=2)
    got = grads(lambda x, s: run(backend, x, s), inputs, 1.5, grad_out)
    want = grads(reference, as_float64(inputs), 1.5, grad_out)
    tol = 20 * TOL[dtype]
    for name in NAMES:
        torch.testing.assert_close(got[name].double(), want[name], atol=tol, rtol=tol,
                                   msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 3, 4, 4, 2), (2, 2, 3, 6, 3)], ids=shape_id)
def test_gradcheck_float64(backend, shape):
    inputs = make_inputs(*shape, torch.float64, backend, seed=3)
    leaves = [inputs[k].clone().requires_grad_(True) for k in NAMES]
    # nondet_tol: the CUDA value gradient is summed by atomics in a varying order.
    assert torch.autograd.gradcheck(lambda *t: run(backend, dict(zip(NAMES, t)), 1.7), leaves,
                                    fast_mode=True, nondet_tol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 8, 8, 64, 4), (1, 5, 7, 12, 4)], ids=shape_id)
def test_half_precision_within_twice_the_reference_error(backend, dtype, shape):
    inputs = make_inputs(*shape, dtype, backend, seed=4, offset_std=1.0)
    exact = as_float64(inputs)
    grad_out = random_like(inputs["value"], seed=5)
    want_out = reference(exact, 3.0)
    want = grads(reference, exact, 3.0, grad_out)
    ref_out = reference(inputs, 3.0)
    ref = grads(reference, inputs, 3.0, grad_out)
    out = run(backend, inputs, 3.0)
    got = grads(lambda x, s: run(backend, x, s), inputs, 3.0, grad_out)
    eps = torch.finfo(dtype).eps

    def err(a, b):
        return (a.double() - b).abs().max().item()

    # Rule: no more than twice the error of the reference computed in the same dtype (plus one
    # ulp at 1, for results the reference happens to get exact).
    assert err(out, want_out) <= 2 * err(ref_out, want_out) + eps
    for name in NAMES:
        scale = want[name].abs().max().item()
        assert err(got[name], want[name]) <= 2 * err(ref[name], want[name]) + eps * scale, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_nan_inf_huge_offsets_read_nothing_outside_the_inputs(backend, dtype):
    B, H, W, C, G = 2, 3, 4, 16, 2
    inputs = make_inputs(B, H, W, C, G, dtype, backend, seed=6)
    offset = inputs["offset"]
    offset[0, 0, 0, 0] = float("nan")
    offset[0, 1, 2, 1, 0] = float("inf")
    offset[1, 2, 3, 0, 1] = float("-inf")
    offset[1, 0, 1, 1] = 1e4
    offset[0, 2, 0, 0, 1] = -1e4
    offset[1, 1, 1, 0, 0] = float("nan")  # x NaN, y finite
    exact = as_float64(inputs)
    guarded = {k: embed_in_nan(v) if v is not None else None for k, v in inputs.items()}
    tol = TOL[torch.float32] if dtype == torch.float32 else 1e-2
    out = run(backend, guarded, 3.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference(exact, 3.0), atol=tol, rtol=tol)
    grad_out = embed_in_nan(torch.ones_like(inputs["value"]))
    got = grads(lambda x, s: run(backend, x, s), guarded, 3.0, grad_out)
    want = grads(reference, exact, 3.0, grad_out.double())
    for name in NAMES:
        assert torch.isfinite(got[name]).all(), name
        torch.testing.assert_close(got[name].double(), want[name], atol=10 * tol, rtol=10 * tol)
    assert got["offset"][0, 0, 0, 0].eq(0).all() and got["offset"][1, 1, 1, 0].eq(0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offset_scale", [1.5, 40.0], ids=lambda s: f"scale{s}")
def test_deterministic_mode_is_bit_identical_over_runs(backend, dtype, offset_scale):
    # offset_scale 40 on a 6 x 7 image: the gather radius is capped by the image.
    inputs = make_inputs(2, 6, 7, 24, 3, dtype, backend, seed=7, offset_std=0.6)
    grad_out = random_like(inputs["value"], seed=8)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [grads(lambda x, s: run(backend, x, s), inputs, offset_scale, grad_out)
                for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(was)
    for other in runs[1:]:
        for name in NAMES:
            assert torch.equal(runs[0][name], other[name]), name
    want = grads(reference, as_float64(inputs), offset_scale, grad_out)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for name in NAMES:
        torch.testing.assert_close(runs[0][name].double(), want[name], atol=tol, rtol=tol)


@pytest.mark.skipif(not HAS_CUDA, reason="compares the CUDA kernels with the CPU kernel")
@pytest.mark.skipif("cpu" not in available_backends(), reason="needs the CPU kernel too")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cuda_gradients_match_cpu_gradients(dtype):
    inputs = make_inputs(2, 9, 11, 48, 3, dtype, "cpu", seed=9)
    grad_out = random_like(inputs["value"], seed=10)
    on_cpu = grads(lambda x, s: run("cpu", x, s), inputs, 2.0, grad_out)
    on_cuda = grads(lambda x, s: run("cuda", x, s),
                    {k: v.cuda() if v is not None else None for k, v in inputs.items()}, 2.0,
                    grad_out.cuda())
    for name in NAMES:
        torch.testing.assert_close(on_cuda[name].cpu(), on_cpu[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    inputs = make_inputs(0, 3, 4, 8, 2, torch.float32, backend)
    got = grads(lambda x, s: run(backend, x, s), inputs, 1.0, torch.empty(0, 3, 4, 8))
    assert run(backend, inputs, 1.0).shape == (0, 3, 4, 8)
    assert {k: tuple(g.shape) for k, g in got.items()} == {k: tuple(inputs[k].shape) for k in NAMES}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_non_contiguous_and_misaligned_inputs(backend, dtype):
    inputs = make_inputs(2, 4, 5, 32, 4, dtype, backend, seed=11)
    grad_out = random_like(inputs["value"], seed=12)
    odd = dict(inputs)
    odd["value"] = inputs["value"].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    odd["offset"] = inputs["offset"].transpose(0, 1).contiguous().transpose(0, 1)
    odd["alpha"] = inputs["alpha"].t().contiguous().t()
    # One element past a 16-byte boundary: contiguous but unaligned, so the packed path is off.
    buf = torch.empty(inputs["residual"].numel() + 1, dtype=dtype, device=backend)
    odd["residual"] = buf[1:].view(inputs["residual"].shape).copy_(inputs["residual"])
    assert not odd["value"].is_contiguous() and not odd["offset"].is_contiguous()
    torch.testing.assert_close(run(backend, odd, 2.0), run(backend, inputs, 2.0))
    got = grads(lambda x, s: run(backend, x, s), odd, 2.0, grad_out)
    want = grads(lambda x, s: run(backend, x, s), inputs, 2.0, grad_out)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name in NAMES:
        torch.testing.assert_close(got[name], want[name], atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_op_returns_empty_gradients_for_absent_inputs(backend):
    inputs = make_inputs(1, 3, 4, 8, 2, torch.float32, backend, optional=())
    g = torch.ones_like(inputs["value"])
    out = torch.ops.stable_sam_ops._deformable_sample_backward.default(
        g, inputs["value"], inputs["offset"], None, None, None, 1.0)
    assert [tuple(t.shape) for t in out] == [(1, 3, 4, 8), (1, 3, 4, 2, 2), (0,), (0,), (0,)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    inputs = make_inputs(1, 3, 4, 8, 2, torch.float32, backend, seed=13)
    args = tuple(inputs[k] for k in NAMES) + (1.5,)
    torch.library.opcheck(torch.ops.stable_sam_ops.deformable_sample.default, args)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU with about 32 GiB free")
def test_64_bit_indexing_matches_the_32_bit_path():
    # 2**31 elements: the kernels switch to 64-bit indices. Each batch item is independent, so
    # the last one computed alone (32-bit indices) must match its slice of the full call.
    B, H, W, C, G = 2, 1024, 1024, 1024, 8
    if torch.cuda.mem_get_info()[0] < 32 * 2**30:
        pytest.skip("needs about 32 GiB of free GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(14)
    value = torch.randn(B, H, W, C, device="cuda", dtype=torch.bfloat16, generator=gen)
    offset = torch.randn(B, H, W, G, 2, device="cuda", dtype=torch.bfloat16, generator=gen)
    alpha = torch.randn(B, 2, device="cuda", dtype=torch.bfloat16, generator=gen)
    value.requires_grad_(True)
    offset.requires_grad_(True)
    alpha.requires_grad_(True)
    out = deformable_sample(value, offset, alpha=alpha, offset_scale=2.0, backend="cuda")
    g_value, g_offset, g_alpha = torch.autograd.grad(out, (value, offset, alpha), out.detach())
    last = [t.detach()[1:].clone().requires_grad_(True) for t in (value, offset, alpha)]
    out1 = deformable_sample(last[0], last[1], alpha=last[2], offset_scale=2.0, backend="cuda")
    g1 = torch.autograd.grad(out1, last, out1.detach())
    assert torch.equal(out[1:], out1)
    # Same sums, but atomics may add them in another order.
    for full, alone in zip((g_value, g_offset, g_alpha), g1):
        torch.testing.assert_close(full[1:], alone, atol=2e-2, rtol=2e-2)
