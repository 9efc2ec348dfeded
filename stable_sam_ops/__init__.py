"""stable_sam_ops: Stable-SAM's fused deformable-sampling op (CPU, CUDA and Triton kernels).

    from stable_sam_ops import deformable_sample
    out = deformable_sample(value, offset, amplitude, residual, alpha, offset_scale=4.0)

The contract (shapes, forward, backward) is documented in deformable_sample's docstring and in
the project's design notes; `reference.deformable_sample_reference` is its pure-PyTorch oracle.
"""
from . import _extension, cpu_output_cache
from ._backends import BACKENDS, available_backends
from .deformable_sample import DeformableSample, deformable_sample
from .reference import deformable_sample_reference

if _extension.load():
    from . import _meta_registrations

    _meta_registrations.register()

__all__ = [
    "BACKENDS",
    "DeformableSample",
    "available_backends",
    "cpu_output_cache",
    "deformable_sample",
    "deformable_sample_reference",
]
__version__ = "0.1.0"
