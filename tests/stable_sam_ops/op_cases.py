"""Shared inputs of the op's tests: random cases of the contract's shapes, the cpu backend mark."""
from typing import Dict, Iterable, Optional

import pytest
import torch

from stable_sam_ops import available_backends

INPUT_NAMES = ("value", "offset", "amplitude", "residual", "alpha")
OPTIONAL_NAMES = ("amplitude", "residual", "alpha")

needs_cpu_kernel = pytest.mark.skipif(
    "cpu" not in available_backends(), reason="the compiled extension (cpu backend) is not built"
)


def make_case(
    B: int,
    H: int,
    W: int,
    C: int,
    G: int,
    dtype: torch.dtype = torch.float64,
    optional: Iterable[str] = OPTIONAL_NAMES,
    offset_std: float = 1.0,
    requires_grad: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Optional[torch.Tensor]]:
    """Random inputs; the optional tensors not named in `optional` are None."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def randn(*shape, std=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * std
        return t.to(dtype).requires_grad_(requires_grad)

    optional = set(optional)
    unknown = optional - set(OPTIONAL_NAMES)
    assert not unknown, f"unknown optional inputs {unknown}"
    return {
        "value": randn(B, H, W, C),
        "offset": randn(B, H, W, G, 2, std=offset_std),
        "amplitude": randn(B, H, W, G) if "amplitude" in optional else None,
        "residual": randn(B, H, W, C) if "residual" in optional else None,
        "alpha": randn(B, 2) if "alpha" in optional else None,
    }


def as_float64(case: Dict[str, Optional[torch.Tensor]]) -> Dict[str, Optional[torch.Tensor]]:
    """The same inputs in float64, detached: the oracle's inputs."""
    return {k: (None if t is None else t.detach().to(torch.float64)) for k, t in case.items()}


def present(case: Dict[str, Optional[torch.Tensor]]):
    """(names, tensors) of the inputs that are not None, in signature order."""
    names = [n for n in INPUT_NAMES if case[n] is not None]
    return names, [case[n] for n in names]


def device_of(backend: str) -> str:
    """The device whose tensors `backend` is tested with (triton: the interpreter's CPU without
    a GPU)."""
    on_gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return "cuda" if on_gpu else "cpu"


def on_device(case: Dict[str, Optional[torch.Tensor]], device: str):
    """The same inputs on `device`, as leaves that require grad where the originals did."""
    return {
        k: (None if t is None else t.detach().to(device).requires_grad_(t.requires_grad))
        for k, t in case.items()
    }
