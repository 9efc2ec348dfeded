"""Loads the compiled extension once and remembers why it failed, if it did."""
import importlib
from typing import Optional

_loaded = False
_error: Optional[str] = None


def load() -> bool:
    """Imports stable_sam_ops._C (which registers torch.ops.stable_sam_ops.*); True on success."""
    global _loaded, _error
    if _loaded or _error is not None:
        return _loaded
    try:
        importlib.import_module("stable_sam_ops._C")
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        _error = f"{type(exc).__name__}: {exc}"
        return False
    _loaded = True
    return True


def load_error() -> Optional[str]:
    load()
    return _error


def compiled_with_cuda() -> bool:
    if not load():
        return False
    from stable_sam_ops import _C

    return bool(_C.compiled_with_cuda())
