"""The CUDA kernels themselves, run on CPU: csrc/cuda/emulation/host_emulation.cpp compiles the
exact device code of csrc/cuda/deformable_sample_kernel.cuh against an emulated CUDA model
(thread indices, grid-stride launches, atomics, warp shuffles), so CI without a GPU still checks
the kernels' indexing, both load paths, both index widths, the lane segments of the backward and
the deterministic gather against the float64 oracle. test_cuda_backend.py runs them on a GPU.
"""
import os
import shutil

import pytest
import torch

from stable_sam_ops.reference import deformable_sample_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ("value", "offset", "amplitude", "residual", "alpha")

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")


@pytest.fixture(scope="module")
def emu():
    from torch.utils.cpp_extension import load

    return load(
        name="sso_cuda_kernel_emulation",
        sources=[os.path.join(ROOT, "csrc", "cuda", "emulation", "host_emulation.cpp")],
        extra_include_paths=[os.path.join(ROOT, "csrc")],
        extra_cflags=["-O1", "-std=c++20", "-Wno-unknown-pragmas"],
        verbose=False,
    )


# (B, H, W, C, G)
SHAPES = [
    (2, 5, 6, 16, 2),   # Cg = 8: packs in every dtype
    (1, 1, 7, 3, 1),    # one row, Cg = 3
    (2, 4, 1, 10, 2),   # one column, Cg = 5
    (1, 3, 3, 64, 1),   # Cg = 64: 16 float32 packs, 16 lanes per group
    (1, 3, 4, 264, 2),  # Cg = 132: 33 float32 packs, 32 lanes that wrap
]
# (vectorize, index64, max_blocks): one block of the launchers' 256 threads makes the
# grid-stride loops wrap wherever a launch has more threads (every path has such shapes above).
PATHS = [(False, False, 10**6), (True, False, 10**6), (True, True, 1), (False, True, 1)]


def shape_id(s):
    return "x".join(map(str, s))


def path_id(p):
    return f"{'pack' if p[0] else 'scalar'}-{'i64' if p[1] else 'i32'}-blocks{p[2]}"


def packable(C, G, dtype):
    return (C // G) % (16 // torch.empty((), dtype=dtype).element_size()) == 0


def make_inputs(B, H, W, C, G, dtype, seed=0, offset_std=1.5):
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    return {
        "value": draw(B, H, W, C),
        "offset": draw(B, H, W, G, 2, scale=offset_std),
        "amplitude": draw(B, H, W, G),
        "residual": draw(B, H, W, C),
        "alpha": draw(B, 2),
    }


def oracle(inputs, offset_scale, grad_out):
    leaves = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    out = deformable_sample_reference(**leaves, offset_scale=offset_scale)
    grads = torch.autograd.grad(out, [leaves[k] for k in NAMES], grad_out.double())
    return out.detach(), dict(zip(NAMES, grads))


def run(emu, inputs, offset_scale, grad_out, deterministic, path):
    args = [inputs[k] for k in NAMES]
    out = emu.forward(*args, offset_scale, *path)
    grads = emu.backward(grad_out.to(out.dtype), *args, offset_scale, deterministic, *path)
    return out, dict(zip(NAMES, grads))


TOL = {torch.float64: 1e-10, torch.float32: 3e-5}


# Packed paths only where the channels per group fill whole 16-byte packs (as the launcher).
CASES = [
    pytest.param(shape, dtype, path, id=f"{shape_id(shape)}-{str(dtype)[6:]}-{path_id(path)}")
    for shape in SHAPES
    for dtype in (torch.float32, torch.float64)
    for path in PATHS
    if not path[0] or packable(shape[3], shape[4], dtype)
]


@pytest.mark.parametrize("shape, dtype, path", CASES)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "gather"])
def test_kernels_match_float64_oracle(emu, shape, dtype, path, deterministic):
    inputs = make_inputs(*shape, dtype, seed=1)
    grad_out = torch.randn(shape[:4], generator=torch.Generator().manual_seed(2),
                           dtype=torch.float64)
    want_out, want = oracle(inputs, 2.5, grad_out)
    out, got = run(emu, inputs, 2.5, grad_out, deterministic, path)
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), want_out, atol=tol, rtol=tol)
    for name in NAMES:
        torch.testing.assert_close(got[name].double(), want[name], atol=10 * tol, rtol=10 * tol,
                                   msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", PATHS[:2], ids=path_id)
def test_half_precision_within_twice_the_reference_error(emu, dtype, path):
    inputs = make_inputs(2, 6, 7, 32, 2, dtype, seed=3, offset_std=1.0)
    grad_out = torch.randn(2, 6, 7, 32, generator=torch.Generator().manual_seed(4),
                           dtype=torch.float64)
    want_out, want = oracle(inputs, 3.0, grad_out)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref_out = deformable_sample_reference(**leaves, offset_scale=3.0)
    ref = dict(zip(NAMES, torch.autograd.grad(ref_out, [leaves[k] for k in NAMES],
                                              grad_out.to(dtype))))
    out, got = run(emu, inputs, 3.0, grad_out, False, path)
    eps = torch.finfo(dtype).eps

    def err(a, b):
        return (a.double() - b).abs().max().item()

    assert err(out, want_out) <= 2 * err(ref_out.detach(), want_out) + eps
    for name in NAMES:
        scale = want[name].abs().max().item()
        assert err(got[name], want[name]) <= 2 * err(ref[name], want[name]) + eps * scale, name


@pytest.mark.parametrize("path", PATHS, ids=path_id)
def test_nan_inf_huge_offsets_read_nothing_outside_value(emu, path):
    B, H, W, C, G = 2, 3, 4, 16, 2
    inputs = make_inputs(B, H, W, C, G, torch.float32, seed=5)
    offset = inputs["offset"]
    offset[0, 0, 0, 0] = float("nan")
    offset[0, 1, 2, 1, 0] = float("inf")
    offset[1, 2, 3, 0, 1] = float("-inf")
    offset[1, 0, 1, 1] = 1e4
    offset[0, 2, 0, 0, 1] = -1e4
    offset[1, 1, 1, 0, 0] = float("nan")
    # value inside a NaN-filled buffer: a read past either end poisons the result.
    n = inputs["value"].numel()
    buf = torch.full((n + 64,), float("nan"))
    buf[32:32 + n] = inputs["value"].reshape(-1)
    guarded = dict(inputs, value=buf[32:32 + n].view(B, H, W, C))
    grad_out = torch.ones(B, H, W, C, dtype=torch.float64)
    want_out, want = oracle(inputs, 3.0, grad_out)
    for deterministic in (False, True):
        out, got = run(emu, guarded, 3.0, grad_out, deterministic, path)
        torch.testing.assert_close(out.double(), want_out, atol=3e-5, rtol=3e-5)
        for name in NAMES:
            torch.testing.assert_close(got[name].double(), want[name], atol=3e-4, rtol=3e-4)
        assert got["offset"][0, 0, 0, 0].eq(0).all() and got["offset"][1, 1, 1, 0].eq(0).all()


# (offset_scale, raw offset std): 40 and 1000 on a 6 x 7 image cap the gather radius by the
# image; the raw offsets are scaled so that points land a few pixels away, inside the image.
@pytest.mark.parametrize("offset_scale, offset_std", [(0.5, 0.8), (4.0, 0.8), (40.0, 0.08),
                                                       (1000.0, 0.003)],
                         ids=lambda v: f"{v}")
def test_gather_and_atomic_value_gradients_agree(emu, offset_scale, offset_std):
    inputs = make_inputs(2, 6, 7, 24, 3, torch.float32, seed=6, offset_std=offset_std)
    grad_out = torch.randn(2, 6, 7, 24, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64)
    _, want = oracle(inputs, offset_scale, grad_out)
    _, atomic = run(emu, inputs, offset_scale, grad_out, False, PATHS[1])
    _, gather = run(emu, inputs, offset_scale, grad_out, True, PATHS[1])
    torch.testing.assert_close(gather["value"], atomic["value"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gather["value"].double(), want["value"], atol=1e-4, rtol=1e-4)
    assert want["value"].count_nonzero() > want["value"].numel() // 4  # the points land inside


INT32_MAX = 2**31 - 1


def meta(*shape):
    return torch.empty(shape, device="meta")


# (B, H, W, C, G), vectorize, (forward int32, backward int32). One channel per group makes
# offset (2 per query and group) twice value: 2^30 queries put offset's last index 2 * qg + 1
# past int32 while value's numel and the thread count still fit. With wide groups the backward
# runs 32 lanes per group, few threads, and value's numel is its boundary; the forward runs one
# thread per element, so its thread count (plus the last grid-stride step) passes first.
BOUNDARY = [
    ((1, 1, 2**30 - 1, 1, 1), False, (True, True)),
    ((1, 1, 2**30, 1, 1), False, (False, False)),
    ((1, 3, 5, 2**27, 64), True, (False, True)),
    ((1, 3, 5, 2**27 + 2**25, 64), True, (False, False)),
    ((1, 3, 5, 2**27 + 2**25, 64), False, (False, False)),
]


@pytest.mark.parametrize("shape, vectorize, want", BOUNDARY,
                         ids=[f"{shape_id(s)}-{'pack' if v else 'scalar'}" for s, v, _ in BOUNDARY])
def test_int32_indices_only_where_every_index_fits(emu, shape, vectorize, want):
    B, H, W, C, G = shape
    value, offset = meta(B, H, W, C), meta(B, H, W, G, 2)
    got = emu.launch_plan_index32(value, offset, vectorize)
    assert tuple(got) == want
    if got[1]:  # the largest element index the backward query kernel forms in index_t
        assert max(value.numel(), offset.numel()) <= INT32_MAX
