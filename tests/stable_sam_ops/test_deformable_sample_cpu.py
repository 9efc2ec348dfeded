"""The cpu backend (C++ kernel) against the float64 reference: forward, backward, gradcheck,
non-finite offsets, out-of-bounds reads, strided inputs, reduced precision and determinism."""
import itertools

import pytest
import torch

from stable_sam_ops import deformable_sample
from stable_sam_ops.reference import deformable_sample_reference

from op_cases import INPUT_NAMES, OPTIONAL_NAMES, as_float64, make_case, needs_cpu_kernel, present

pytestmark = needs_cpu_kernel

# (B, H, W, C, G). Empty batch, one pixel, one row, one column, non-square, one channel, odd
# channel counts (a lane-block tail), groups of one channel, and one SAM-sized C = 256 case.
SHAPES = [
    (0, 3, 4, 4, 2),
    (1, 1, 1, 1, 1),
    (1, 1, 7, 3, 1),
    (3, 5, 1, 3, 3),
    (3, 6, 9, 3, 1),
    (1, 6, 9, 1, 1),
    (3, 4, 5, 2, 2),
    (1, 3, 4, 37, 1),
    (3, 5, 6, 6, 2),
    (1, 6, 9, 256, 2),
]
OFFSET_SCALES = [0.25, 1.0, 3.7, 50.0]
# Every subset of the optional inputs, named for the test ids.
OPTIONAL_SETS = [s for k in range(4) for s in itertools.combinations(OPTIONAL_NAMES, k)]
# Forward atol of each dtype against the float64 oracle (inputs ~ N(0, 1)).
ATOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def shape_id(s):
    return "B{}H{}W{}C{}G{}".format(*s)


def optional_id(s):
    return "+".join(n[:3] for n in s) or "bare"


def run_cpu(case, offset_scale):
    return deformable_sample(**case, offset_scale=offset_scale, backend="cpu")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("offset_scale", OFFSET_SCALES)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_matches_oracle(shape, offset_scale, dtype):
    case = make_case(*shape, dtype=dtype, offset_std=1.5)
    out = run_cpu(case, offset_scale)
    expected = deformable_sample_reference(**as_float64(case), offset_scale=offset_scale)
    assert out.dtype == dtype and out.shape == shape[:4]
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("optional", OPTIONAL_SETS, ids=optional_id)
def test_optional_inputs_match_oracle(optional, dtype):
    case = make_case(2, 5, 6, 8, 2, dtype=dtype, optional=optional)
    out = run_cpu(case, 2.0)
    expected = deformable_sample_reference(**as_float64(case), offset_scale=2.0)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 6, 8, 2), (1, 4, 7, 64, 1)], ids=shape_id)
def test_reduced_precision_within_twice_pytorch_error(shape, dtype):
    # Tolerance by rule: no more than twice the error of PyTorch's own composition run in the
    # same dtype (plus one rounding step of the output), both measured against float64.
    case = make_case(*shape, dtype=dtype)
    expected = deformable_sample_reference(**as_float64(case), offset_scale=3.0)
    ours = (run_cpu(case, 3.0).double() - expected).abs().max().item()
    theirs = (deformable_sample_reference(**case, offset_scale=3.0).double() - expected).abs().max()
    one_rounding = torch.finfo(dtype).eps * expected.abs().max().item()
    assert ours <= 2 * theirs.item() + one_rounding, (ours, theirs.item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("optional", OPTIONAL_SETS, ids=optional_id)
@pytest.mark.parametrize(
    "shape",
    # (2, 3, 5, 300, 1): 300 channels in one group = several channel blocks of the backward's
    # tasks; the last two are tall images with a single group of many channels
    [(2, 5, 6, 8, 2), (1, 1, 7, 3, 3), (2, 6, 4, 70, 1), (2, 3, 5, 300, 1), (1, 26, 3, 20, 2),
     (1, 45, 2, 300, 1)],
    ids=shape_id,
)
def test_backward_matches_reference_autograd(shape, optional, dtype):
    case = make_case(*shape, dtype=dtype, optional=optional, offset_std=1.5, requires_grad=True)
    names, tensors = present(case)
    grad_out = torch.randn(shape[:4], dtype=torch.float64)
    grads = torch.autograd.grad(run_cpu(case, 2.5), tensors, grad_out.to(dtype))
    ref_case = {k: (None if t is None else t.detach().double().requires_grad_()) for k, t in case.items()}
    _, ref_tensors = present(ref_case)
    expected = torch.autograd.grad(
        deformable_sample_reference(**ref_case, offset_scale=2.5), ref_tensors, grad_out
    )
    atol = 1e-11 if dtype == torch.float64 else 1e-4
    for name, got, want in zip(names, grads, expected):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=atol, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reduced_precision_backward_within_twice_pytorch_error(dtype):
    # Same rule as the forward: each gradient's error against float64 is at most twice that
    # of PyTorch's composition in the same dtype, plus one rounding of the gradient.
    case = make_case(2, 5, 6, 16, 2, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    names, tensors = present(case)
    ours = torch.autograd.grad(run_cpu(case, 3.0), tensors, grad_out.to(dtype))
    theirs = torch.autograd.grad(
        deformable_sample_reference(**case, offset_scale=3.0), tensors, grad_out.to(dtype)
    )
    exact_case = {k: t.detach().double().requires_grad_() for k, t in case.items()}
    exact = torch.autograd.grad(
        deformable_sample_reference(**exact_case, offset_scale=3.0), present(exact_case)[1],
        grad_out,
    )
    for name, o, t, e in zip(names, ours, theirs, exact):
        err_ours = (o.double() - e).abs().max().item()
        err_theirs = (t.double() - e).abs().max().item()
        one_rounding = torch.finfo(dtype).eps * e.abs().max().item()
        assert err_ours <= 2 * err_theirs + one_rounding, (name, err_ours, err_theirs)


def test_backward_empty_batch():
    case = make_case(0, 3, 4, 4, 2, requires_grad=True)
    names, tensors = present(case)
    grads = torch.autograd.grad(run_cpu(case, 1.0).sum(), tensors)
    for name, t, g in zip(names, tensors, grads):
        assert g.shape == t.shape, name


@pytest.mark.parametrize("optional", [(), OPTIONAL_NAMES], ids=optional_id)
@pytest.mark.parametrize("shape", [(2, 3, 4, 4, 2), (1, 1, 5, 3, 1)], ids=shape_id)
def test_gradcheck(shape, optional):
    case = make_case(*shape, optional=optional, requires_grad=True)
    names, tensors = present(case)

    def fn(*ts):
        return deformable_sample(**dict(zip(names, ts)), offset_scale=1.7, backend="cpu")

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


def embedded_in_nan(t: torch.Tensor, pad: int) -> torch.Tensor:
    """A contiguous copy of t whose storage is surrounded by `pad` NaNs on both sides: any read
    before or after the tensor shows up as NaN in the result."""
    buf = torch.full((t.numel() + 2 * pad,), float("nan"), dtype=t.dtype)
    view = buf[pad : pad + t.numel()].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous()
    return view


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(2, 4, 5, 6, 2), (1, 1, 1, 3, 1), (2, 1, 6, 4, 4)], ids=shape_id)
def test_non_finite_and_huge_offsets_sample_zero_without_reading_outside(shape, dtype):
    B, H, W, C, G = shape
    case = make_case(*shape, dtype=dtype, requires_grad=False)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.3],
                            dtype=dtype)
    pick = torch.randint(0, len(specials), case["offset"].shape)
    case["offset"] = specials[pick]
    case["offset"][0, 0, 0, 0] = torch.tensor([float("nan"), 0.0])  # NaN in x only
    pad = (W + 2) * C + 2 * 50 * C  # covers a whole row before and after, plus margin
    case["value"] = embedded_in_nan(case["value"], pad)
    for name in ("residual", "amplitude", "alpha", "offset"):
        case[name] = embedded_in_nan(case[name], 64)
    for offset_scale in (1.0, 50.0):
        out = run_cpu(case, offset_scale)
        assert torch.isfinite(out).all()
        expected = deformable_sample_reference(**as_float64(case), offset_scale=offset_scale)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=ATOL[dtype])
    # Gradients stay finite and match the reference (zero through NaN and saturated offsets).
    grad_case = {k: t.detach().clone().requires_grad_() for k, t in case.items()}
    names, tensors = present(grad_case)
    grads = torch.autograd.grad(run_cpu(grad_case, 50.0).sum(), tensors)
    ref_case = {k: t.detach().double().requires_grad_() for k, t in case.items()}
    expected = torch.autograd.grad(
        deformable_sample_reference(**ref_case, offset_scale=50.0).sum(), present(ref_case)[1]
    )
    for name, got, want in zip(names, grads, expected):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4, msg=name)


def test_points_at_the_border_read_no_neighbour_row():
    # A point just right of the last column must not read the next row's first pixel, which
    # is adjacent in memory: fill value so that such a read would change the result.
    B, H, W, C = 1, 3, 4, 2
    value = torch.arange(B * H * W * C, dtype=torch.float64).view(B, H, W, C) + 1
    offset = torch.zeros(B, H, W, 1, 2, dtype=torch.float64)
    offset[..., 0] = torch.atanh(torch.tensor(0.6))  # x + 0.6 * 1.5 = x + 0.9
    out = deformable_sample(value, offset, offset_scale=1.5, backend="cpu")
    expected = deformable_sample_reference(value, offset, offset_scale=1.5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, :, -1], 0.1 * value[:, :, -1])  # only 0.1 of itself


def strided(case):
    """The same values as strided views: channels-first storage, transposes and slices."""
    value = case["value"].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    G = case["offset"].shape[3]
    offset = torch.cat([case["offset"], case["offset"]], dim=3)[:, :, :, G:]
    big = torch.zeros(case["amplitude"].shape[:3] + (2 * case["amplitude"].shape[3],),
                      dtype=case["amplitude"].dtype)
    big[..., ::2] = case["amplitude"]
    amplitude = big[..., ::2]
    residual = torch.cat([case["residual"], case["residual"]], dim=-1)[..., : case["residual"].shape[-1]]
    alpha = case["alpha"].t().contiguous().t()
    views = dict(value=value, offset=offset, amplitude=amplitude, residual=residual, alpha=alpha)
    for name, t in views.items():
        assert not t.is_contiguous() or t.numel() <= 1, name
    return views


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_non_contiguous_inputs(dtype):
    case = make_case(2, 5, 6, 8, 2, dtype=dtype)
    views = strided(case)
    for name in INPUT_NAMES:
        torch.testing.assert_close(views[name], case[name], rtol=0, atol=0)
    torch.testing.assert_close(run_cpu(views, 2.0), run_cpu(case, 2.0), rtol=0, atol=0)
    # and the backward, with a non-contiguous incoming gradient
    grad_case = {k: t.detach().requires_grad_() for k, t in views.items()}
    grad_out = torch.randn(2, 6, 5, 8, dtype=dtype).transpose(1, 2)
    got = torch.autograd.grad(run_cpu(grad_case, 2.0), list(grad_case.values()), grad_out)
    plain = {k: t.detach().requires_grad_() for k, t in case.items()}
    want = torch.autograd.grad(run_cpu(plain, 2.0), list(plain.values()), grad_out.contiguous())
    for name, g, w in zip(INPUT_NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=name)


def cpu_grads(case, offset_scale, grad_out):
    leaves = {k: t.detach().requires_grad_() for k, t in case.items()}
    out = run_cpu(leaves, offset_scale)
    return torch.autograd.grad(out, list(leaves.values()), grad_out)


@pytest.mark.parametrize(
    "shape",
    # batch size 1 with one group: the passes split rows and queries, not batch items
    [(2, 16, 16, 64, 1), (2, 12, 10, 96, 3), (1, 9, 7, 12, 12), (3, 8, 8, 520, 2),
     (1, 24, 16, 40, 1)],
    ids=shape_id,
)
def test_backward_is_bit_identical_across_runs_and_thread_counts(shape):
    # Large offsets make many queries scatter into the same value pixels.
    case = make_case(*shape, dtype=torch.float32, offset_std=2.0)
    grad_out = torch.randn(shape[:4], dtype=torch.float32)
    first = cpu_grads(case, 6.0, grad_out)
    threads = torch.get_num_threads()
    try:
        for n in (threads, 1, 2, 3):
            torch.set_num_threads(n)
            again = cpu_grads(case, 6.0, grad_out)
            for name, a, b in zip(INPUT_NAMES, first, again):
                assert torch.equal(a, b), f"{name} differs with {n} threads"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "shape, offset_scale",
    # tall images, one group of 300 channels, and 24 channels in 3 groups
    [((1, 40, 6, 24, 3), 1.0), ((2, 33, 5, 300, 1), 2.0), ((3, 17, 4, 16, 4), 2.0)],
    ids=lambda v: shape_id(v) if isinstance(v, tuple) else f"scale{v}",
)
def test_backward_on_tall_images_is_bit_identical_across_thread_counts(shape, offset_scale):
    """Offsets saturate tanh so that many queries scatter at the farthest reach, onto pixels
    other queries (and other threads' tasks) also write."""
    case = make_case(*shape, dtype=torch.float32, offset_std=4.0)
    grad_out = torch.randn(shape[:4], dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = cpu_grads(case, offset_scale, grad_out)
        for n in (2, 3, 5, 8, 1):
            torch.set_num_threads(n)
            again = cpu_grads(case, offset_scale, grad_out)
            for name, a, b in zip(INPUT_NAMES, first, again):
                assert torch.equal(a, b), f"{name} differs with {n} threads"
    finally:
        torch.set_num_threads(threads)


def test_backward_scratch_from_earlier_calls_changes_nothing():
    """The backward keeps its scratch between calls: a larger call, one of another dtype and
    one with other optional inputs in between must leave a small call's gradients unchanged."""
    small = make_case(2, 5, 7, 12, 3, dtype=torch.float32, offset_std=2.0)
    grad_out = torch.randn(2, 5, 7, 12, dtype=torch.float32)
    first = cpu_grads(small, 3.0, grad_out)
    big = make_case(3, 30, 20, 48, 4, dtype=torch.float64, offset_std=2.0)
    cpu_grads(big, 5.0, torch.randn(3, 30, 20, 48, dtype=torch.float64))
    bare = {"value": small["value"] * 3, "offset": -small["offset"]}
    cpu_grads(bare, 1.0, grad_out)
    again = cpu_grads(small, 3.0, grad_out)
    for name, a, b in zip(INPUT_NAMES, first, again):
        assert torch.equal(a, b), f"{name} changed after other calls"
    leaves = {k: t.requires_grad_() for k, t in as_float64(small).items()}
    reference = torch.autograd.grad(deformable_sample_reference(**leaves, offset_scale=3.0),
                                    list(leaves.values()), grad_out.double())
    for name, a, b in zip(INPUT_NAMES, again, reference):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4, msg=name)


def test_backward_with_scratch_beyond_what_a_thread_keeps():
    """More than 64 MiB of scratch (about 100 bytes per query and group in float64) is the
    call's own, not the thread's workspace; it must give the reference's gradients."""
    # float64, so that the oracle's sampling points are the kernel's: ~100 MiB of scratch
    case = make_case(1, 128, 96, 80, 80, dtype=torch.float64, offset_std=2.0)
    grad_out = torch.randn(1, 128, 96, 80, dtype=torch.float64)
    got = cpu_grads(case, 3.0, grad_out)
    leaves = {k: t.requires_grad_() for k, t in as_float64(case).items()}
    want = torch.autograd.grad(deformable_sample_reference(**leaves, offset_scale=3.0),
                               list(leaves.values()), grad_out.double())
    for name, a, b in zip(INPUT_NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_module_matches_function():
    from stable_sam_ops import DeformableSample

    case = make_case(2, 4, 5, 6, 3)
    module = DeformableSample(offset_scale=2.5, backend="cpu")
    assert "offset_scale=2.5" in repr(module)
    torch.testing.assert_close(module(**case), run_cpu(case, 2.5), rtol=0, atol=0)
