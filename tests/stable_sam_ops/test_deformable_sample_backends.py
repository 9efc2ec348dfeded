"""Backend choice: what 'auto' picks, the switch-off variable, the fallback warning."""
import dataclasses
import warnings

import pytest
import torch

from stable_sam_ops import _backends, available_backends, deformable_sample
from stable_sam_ops.reference import deformable_sample_reference

from op_cases import make_case, needs_cpu_kernel


@pytest.fixture
def fresh_warning(monkeypatch):
    """Lets the once-per-process fallback warning fire again inside the test."""
    monkeypatch.setattr(_backends, "_warned_fallback", False)


def test_reference_is_always_available():
    assert "reference" in available_backends()


@needs_cpu_kernel
def test_cpu_is_listed_and_picked_by_auto():
    assert "cpu" in available_backends()
    value = torch.zeros(1, 2, 2, 2)
    assert _backends.select("auto", value) is torch.ops.stable_sam_ops.deformable_sample.default


@needs_cpu_kernel
def test_disable_variable_makes_auto_fall_back_to_reference(monkeypatch, fresh_warning):
    monkeypatch.setenv(_backends.DISABLE_ENV, "cpu, triton")
    assert "cpu" not in available_backends()
    case = make_case(2, 3, 4, 4, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched off on purpose: no warning
        assert _backends.select("auto", case["value"]) is deformable_sample_reference
        out = deformable_sample(**case, offset_scale=1.0)
    torch.testing.assert_close(out, deformable_sample_reference(**case, offset_scale=1.0))
    with pytest.raises(RuntimeError, match=r"switched off by STABLE_SAM_OPS_DISABLE"):
        deformable_sample(**case, backend="cpu")


def test_missing_extension_warns_once_and_falls_back(monkeypatch, fresh_warning):
    broken = dataclasses.replace(
        _backends.BACKENDS["cpu"], unavailable_reason=lambda: "extension not built (test)"
    )
    monkeypatch.setitem(_backends.BACKENDS, "cpu", broken)
    case = make_case(2, 3, 4, 4, 2)
    with pytest.warns(RuntimeWarning, match=r"'cpu' unavailable \(extension not built \(test\)\)"):
        out = deformable_sample(**case, offset_scale=1.0)
    torch.testing.assert_close(out, deformable_sample_reference(**case, offset_scale=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is quiet
        deformable_sample(**case, offset_scale=1.0)
    assert "cpu" not in available_backends()


def test_no_backend_for_device_lists_every_reason(monkeypatch):
    monkeypatch.setenv(_backends.DISABLE_ENV, "cpu,reference")
    with pytest.raises(RuntimeError, match=r"no backend can serve this call: cpu: .*reference: "):
        deformable_sample(**make_case(1, 2, 2, 2, 1))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"backend 'triton' cannot serve this call"):
        deformable_sample(**make_case(1, 2, 2, 2, 1), backend="triton")


@needs_cpu_kernel
def test_cpu_backend_declares_itself_deterministic():
    # The backward is bit-identical over runs (tested in test_deformable_sample_cpu.py), so it
    # stays selectable under torch.use_deterministic_algorithms.
    assert _backends.BACKENDS["cpu"].deterministic
    value = torch.zeros(1, 2, 2, 2)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert _backends.BACKENDS["cpu"].not_supported_reasons(value) == []
    finally:
        torch.use_deterministic_algorithms(before)
