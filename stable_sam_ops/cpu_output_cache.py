"""The buffers the CPU kernels keep from freed outputs (see csrc/cpu/output_cache.h).

Outputs of 2 MiB or more come from buffers kept when earlier outputs were freed, so repeated
calls of one shape (decoder inference prompt after prompt, training step after step) skip the
page faults and zeroing of fresh memory. At most STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB MiB (default
256; 0 keeps nothing) are kept while unused.
"""
from . import _extension


def kept_bytes() -> int:
    """Bytes kept for reuse and not in use now (0 without the compiled extension)."""
    if not _extension.load():
        return 0
    from . import _C

    return int(_C.cpu_output_cache_kept_bytes())


def empty() -> None:
    """Frees every kept buffer; buffers still in use are freed when their tensors are."""
    if _extension.load():
        from . import _C

        _C.empty_cpu_output_cache()


def check_setting() -> None:
    """Raises ValueError, naming STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB, when it is malformed.

    The kernels read it at their first output of 2 MiB or more, which may be deep into a run;
    a command line calls this first, so that a bad value stops it before any work."""
    if not _extension.load():
        return
    from . import _C

    try:
        _C.cpu_output_cache_kept_bytes()
    except RuntimeError as exc:
        raise ValueError(str(exc).strip().splitlines()[0]) from None
