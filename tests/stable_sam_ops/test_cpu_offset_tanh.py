"""The CPU kernels' own tanh of the raw offsets (csrc/cpu/offset_tanh.cpp) against float64
tanh: within a few float32 ulps everywhere, exact special values, and the same bits whatever the
thread count."""
import pytest
import torch

from op_cases import needs_cpu_kernel

pytestmark = needs_cpu_kernel

MAX_ULPS = 4


def offset_tanh(x):
    from stable_sam_ops import _C

    return _C._cpu_offset_tanh(x)


def wide_range_of_offsets():
    tiny = torch.logspace(-38, 1, 20001)
    return torch.cat([torch.linspace(-12, 12, 240001), tiny, -tiny,
                      torch.tensor([1e-45, -1e-45, 3e38, -3e38, 0.3465, -0.3466, 9.0, 8.99])])


def ulps_off(got, want64):
    """|got - want| in float32 ulps of want."""
    magnitude = want64.float().abs()
    ulp = (torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude).double()
    return (got.double() - want64).abs() / ulp


def test_float32_within_a_few_ulps_of_float64_tanh():
    x = wide_range_of_offsets()
    off = ulps_off(offset_tanh(x), torch.tanh(x.double()))
    assert off.max().item() <= MAX_ULPS, f"{off.max().item():.1f} ulps at x = {x[off.argmax()]}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision_offsets_are_converted_then_taken_in_float32(dtype):
    x = (torch.randn(4099) * 3).to(dtype)
    got = offset_tanh(x)
    assert got.dtype == torch.float32
    assert ulps_off(got, torch.tanh(x.double())).max().item() <= MAX_ULPS


def test_float64_is_torch_tanh():
    x = torch.randn(1001, dtype=torch.float64) * 4
    got = offset_tanh(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tanh(x), rtol=0, atol=0)


def test_special_values():
    x = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 20.0, -20.0])
    got = offset_tanh(x)
    assert got[:4].tolist() == [0.0, 0.0, 1.0, -1.0] and got[5:].tolist() == [1.0, -1.0]
    assert torch.signbit(got[:2]).tolist() == [False, True]
    assert torch.isnan(got[4])


@pytest.mark.parametrize("n", [5, 8, 3 * 65536 + 5])
def test_same_bits_whatever_the_thread_count(n):
    x = torch.randn(n) * 3
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = offset_tanh(x)
        for k in (2, 3, 5):
            torch.set_num_threads(k)
            assert torch.equal(offset_tanh(x), one), f"differs with {k} threads"
    finally:
        torch.set_num_threads(threads)
    assert ulps_off(one, torch.tanh(x.double())).max().item() <= MAX_ULPS
