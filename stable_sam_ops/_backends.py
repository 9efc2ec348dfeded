"""Which backend computes a call: each declares its devices and dtypes, whether it honours
torch's deterministic mode, and why it cannot serve a given call (as xformers does)."""
import os
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from . import _extension
from .reference import deformable_sample_reference

DISABLE_ENV = "STABLE_SAM_OPS_DISABLE"  # comma-separated backend names to switch off

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Backend:
    name: str
    devices: Tuple[str, ...]
    dtypes: Tuple[torch.dtype, ...]
    deterministic: bool  # bit-identical backward over runs when torch asks for determinism
    unavailable_reason: Callable[[], Optional[str]]  # None when built and importable
    load_fn: Callable[[], Callable[..., Tensor]]

    def not_supported_reasons(self, value: Tensor) -> List[str]:
        reasons = []
        if self.name in disabled_backends():
            reasons.append(f"switched off by {DISABLE_ENV}")
        why = self.unavailable_reason()
        if why is not None:
            reasons.append(why)
        if value.device.type not in self.devices:
            reasons.append(f"device {value.device.type} not in {self.devices}")
        if value.dtype not in self.dtypes:
            reasons.append(f"dtype {value.dtype} not supported")
        if torch.are_deterministic_algorithms_enabled() and not self.deterministic:
            reasons.append("not deterministic, and torch.use_deterministic_algorithms is on")
        return reasons


def disabled_backends() -> Tuple[str, ...]:
    return tuple(n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip())


def _compiled_op() -> Callable[..., Tensor]:
    return torch.ops.stable_sam_ops.deformable_sample.default


def _extension_reason() -> Optional[str]:
    if _extension.load():
        return None
    return f"extension stable_sam_ops._C not loaded ({_extension.load_error()})"


def _cuda_reason() -> Optional[str]:
    why = _extension_reason()
    if why is not None:
        return why
    if not _extension.compiled_with_cuda():
        return "extension built without CUDA kernels"
    if not torch.cuda.is_available():
        return "no CUDA device visible"
    return None


def _triton_reason() -> Optional[str]:
    try:
        from ._triton import unavailable_reason
    except ImportError as exc:
        return f"triton backend not importable ({exc})"
    return unavailable_reason()


def _triton_fn() -> Callable[..., Tensor]:
    from ._triton import deformable_sample_triton

    return deformable_sample_triton


def _triton_devices() -> Tuple[str, ...]:
    # The interpreter runs Triton kernels on CPU tensors: for tests, never picked by "auto".
    return ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)


BACKENDS = {
    "reference": Backend(
        "reference", ("cpu", "cuda", "meta"), _FLOATS, True, lambda: None,
        lambda: deformable_sample_reference,
    ),
    "cpu": Backend("cpu", ("cpu",), _FLOATS, True, _extension_reason, _compiled_op),
    "cuda": Backend("cuda", ("cuda",), _FLOATS, True, _cuda_reason, _compiled_op),
    "triton": Backend(
        "triton", ("cuda", "cpu"), (torch.float32, torch.float16, torch.bfloat16, torch.float64),
        False, _triton_reason, _triton_fn,
    ),
}

# Fastest first, per device type; "auto" takes the first that can serve the call.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}

_warned_fallback = False


def available_backends() -> List[str]:
    """Names of the backends that are built, importable and not switched off on this machine."""
    off = disabled_backends()
    return [n for n, b in BACKENDS.items() if n not in off and b.unavailable_reason() is None]


def select(backend: str, value: Tensor) -> Callable[..., Tensor]:
    """Returns the function that computes this call, or raises listing every backend's reason."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(
                f"deformable_sample: backend must be 'auto' or one of {sorted(BACKENDS)}, "
                f"got {backend!r}"
            )
        b = BACKENDS[backend]
        reasons = b.not_supported_reasons(value)
        if b.name == "triton" and value.device.type not in _triton_devices():
            reasons.append("CPU tensors need TRITON_INTERPRET=1")
        if reasons:
            raise RuntimeError(
                f"deformable_sample: backend {backend!r} cannot serve this call: "
                + "; ".join(reasons)
            )
        return b.load_fn()
    order = _AUTO_ORDER.get(value.device.type, ("reference",))
    all_reasons = {}
    for name in order:
        reasons = BACKENDS[name].not_supported_reasons(value)
        if not reasons:
            if name == "reference" and order[0] != "reference":
                _warn_fallback(order[0], all_reasons.get(order[0], []))
            return BACKENDS[name].load_fn()
        all_reasons[name] = reasons
    raise RuntimeError(
        "deformable_sample: no backend can serve this call: "
        + "; ".join(f"{n}: {', '.join(r)}" for n, r in all_reasons.items())
    )


def _warn_fallback(preferred: str, reasons: List[str]) -> None:
    global _warned_fallback
    if _warned_fallback or any("switched off" in r for r in reasons):
        return
    _warned_fallback = True
    warnings.warn(
        f"stable_sam_ops: backend {preferred!r} unavailable ({'; '.join(reasons)}); falling back "
        "to the pure-PyTorch reference backend, which is correct but several times slower. "
        "Build the extension with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=4,
    )
