"""The cpu backend's kept output buffers (csrc/cpu/output_cache.h): a freed output's buffer
serves the next output of its size, never one still in use, holds nothing stale, and the cap
and the Python controls do what they say."""
import os
import subprocess
import sys
import threading

import pytest
import torch

from stable_sam_ops import cpu_output_cache, deformable_sample
from stable_sam_ops.reference import deformable_sample_reference

from op_cases import make_case, needs_cpu_kernel, present

pytestmark = needs_cpu_kernel

MIB = 1 << 20
# float64 (1, 32, 32, 256): value-shaped outputs of exactly 2 MiB, the smallest that are kept.
SHAPE = (1, 32, 32, 256, 4)


def cpu_forward(case, offset_scale=3.0):
    with torch.no_grad():
        return deformable_sample(**case, offset_scale=offset_scale, backend="cpu")


def cpu_grads(case, grad_out, offset_scale=3.0):
    names, leaves = present(case)
    leaves = [t.detach().requires_grad_() for t in leaves]
    out = deformable_sample(**dict(zip(names, leaves)), offset_scale=offset_scale, backend="cpu")
    return dict(zip(names, torch.autograd.grad(out, leaves, grad_out)))


def reference_grads(case, grad_out, offset_scale=3.0):
    names, leaves = present(case)
    leaves = [t.detach().double().requires_grad_() for t in leaves]
    out = deformable_sample_reference(**dict(zip(names, leaves)), offset_scale=offset_scale)
    return dict(zip(names, torch.autograd.grad(out, leaves, grad_out.double())))


def test_a_freed_output_is_reused_and_a_live_one_is_not():
    cpu_output_cache.empty()
    case = make_case(*SHAPE)
    first = cpu_forward(case)
    second = cpu_forward(case)
    assert first.data_ptr() != second.data_ptr()
    assert cpu_output_cache.kept_bytes() == 0
    kept_ptr = first.data_ptr()
    del first
    assert cpu_output_cache.kept_bytes() == 2 * MIB
    third = cpu_forward(case)
    assert third.data_ptr() == kept_ptr
    assert cpu_output_cache.kept_bytes() == 0
    torch.testing.assert_close(third, second, rtol=0, atol=0)


def test_outputs_from_kept_buffers_hold_no_stale_values():
    """Every output element is written by the kernels: buffers filled with NaN and freed must
    give the reference's values. The offsets push every sample 3 pixels down and right, so the
    top rows and left columns of grad_value receive no term and must still come back 0."""
    cpu_output_cache.empty()
    case = make_case(*SHAPE)
    case["offset"] = torch.full_like(case["offset"], 20.0)
    grad_out = torch.randn(SHAPE[:4], dtype=torch.float64)
    for _ in range(2):  # the second round reads buffers the first one poisoned
        out = cpu_forward(case)
        torch.testing.assert_close(out, deformable_sample_reference(**case, offset_scale=3.0),
                                   rtol=1e-9, atol=1e-9)
        grads = cpu_grads(case, grad_out)
        want = reference_grads(case, grad_out)
        for name in want:
            torch.testing.assert_close(grads[name], want[name], rtol=1e-9, atol=1e-9, msg=name)
        assert torch.count_nonzero(grads["value"][:, :3]) == 0
        assert torch.count_nonzero(grads["value"][:, :, :3]) == 0
        for t in [out, *grads.values()]:
            t.fill_(float("nan"))
        del out, grads
        assert cpu_output_cache.kept_bytes() >= 3 * 2 * MIB  # out, grad_value, grad_residual


def test_resized_output_keeps_its_values_and_empty_frees_what_is_kept():
    cpu_output_cache.empty()
    case = make_case(*SHAPE)
    out = cpu_forward(case)
    before = out.clone()
    out.resize_(2, *SHAPE[1:4])  # grows: the data moves to a new buffer of the new size
    torch.testing.assert_close(out[:1], before, rtol=0, atol=0)
    assert cpu_output_cache.kept_bytes() == 2 * MIB  # the old buffer
    del out
    assert cpu_output_cache.kept_bytes() == 6 * MIB
    cpu_output_cache.empty()
    assert cpu_output_cache.kept_bytes() == 0


def test_outputs_made_and_freed_on_many_threads_stay_correct():
    cpu_output_cache.empty()
    case = make_case(*SHAPE)
    want = deformable_sample_reference(**case, offset_scale=3.0)
    failures = []

    def work():
        try:
            for _ in range(6):
                out = cpu_forward(case)
                torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)
                out.fill_(float("nan"))
        except Exception as exc:  # noqa: BLE001 - reported to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    # Each thread holds at most two outputs at once (the next is made before the last is
    # dropped): 24 calls that reused nothing would leave 48 MiB.
    assert 0 < cpu_output_cache.kept_bytes() <= 4 * 2 * 2 * MIB


CAP_SCRIPT = """
import torch, stable_sam_ops
from stable_sam_ops import cpu_output_cache
def run(H):
    case = dict(value=torch.randn(1, H, 32, 256, dtype=torch.float64),
                offset=torch.randn(1, H, 32, 4, 2, dtype=torch.float64))
    return stable_sam_ops.deformable_sample(**case, offset_scale=2.0, backend="cpu")
out = run(32); del out                     # 2 MiB
small = cpu_output_cache.kept_bytes()
out = run(64); del out                     # 4 MiB
print(small, cpu_output_cache.kept_bytes())
"""


@pytest.mark.parametrize("cap_mib, want", [("0", "0 0"), ("3", "2097152 2097152"),
                                           ("5", "2097152 4194304"), ("", "2097152 6291456")])
def test_the_cap_limits_what_is_kept(cap_mib, want):
    """0 keeps nothing; a buffer over the cap is freed at once and leaves the kept ones kept;
    past the cap the least recently freed buffer goes first; unset, the default (256 MiB) keeps
    both."""
    env = dict(os.environ, STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB=cap_mib)
    done = subprocess.run([sys.executable, "-c", CAP_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == want.split()


def test_a_malformed_cap_is_an_error_naming_the_variable():
    env = dict(os.environ, STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB="lots")
    done = subprocess.run([sys.executable, "-c", CAP_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert "STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB must be a whole number of MiB" in done.stderr
    assert "'lots'" in done.stderr


def test_small_outputs_come_from_the_heap():
    cpu_output_cache.empty()
    out = cpu_forward(make_case(1, 8, 8, 64, 2))
    del out
    assert cpu_output_cache.kept_bytes() == 0
