"""Whether the optional packages a command or a base family needs can be used here.

A package can be missing (no importer finds it) or installed but failing to import (an
incompatible version, a broken install: it may raise ImportError or anything else). Asking
`importlib.util.find_spec` alone passes the second kind, and the failure then comes as a
traceback in the middle of the work, after the output folder exists. So the check imports the
package, once per process, and says in one line which package failed and how.
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Mapping, Optional, Sequence, Tuple


def is_installed(name: str) -> bool:
    """Whether an importer finds the top-level package `name` (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a __spec__: it was imported, so it is there
        return True


def not_installed(names: Sequence[str]) -> List[str]:
    """The names no importer finds, in order. Asked anew each time: find_spec is cheap, and an
    install made while the process runs (or a test that fakes one) is seen."""
    return [name for name in names if not is_installed(name)]


@dataclass(frozen=True)
class ImportFailure:
    error: str  # the exception's type and the first line of its message
    frame_packages: Tuple[str, ...]  # top-level package of each traceback frame, innermost last

    def raised_in(self, candidates: Sequence[str], default: str) -> str:
        """The innermost of `candidates` whose code raised, else `default`: segment_anything_hq
        fails to import when the timm it imports does, and the one to name is timm."""
        inner = [name for name in self.frame_packages if name in candidates]
        return inner[-1] if inner else default


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _frame_packages(exc: BaseException) -> Tuple[str, ...]:
    packages = []
    tb = exc.__traceback__
    while tb is not None:
        packages.append(str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0])
        tb = tb.tb_next
    return tuple(packages)


@lru_cache(maxsize=None)
def import_failure(module: str) -> Optional[ImportFailure]:
    """None when `module` imports, else how it failed. Cached: a failing import runs the
    package's code again on every try, and a working one is asked about by several checks."""
    try:
        with warnings.catch_warnings():
            # import-time warnings (timm's deprecated paths under segment_anything_hq) say
            # nothing about the user's code
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as exc:  # a broken package raises anything, not only ImportError
        return ImportFailure(_first_line(exc), _frame_packages(exc))
    return None


def failing_imports(packages: Sequence[str],
                    modules: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """{package: error} for each installed one of `packages` that fails to import (through
    `modules[package]` where that is what the code imports, else the package itself). A
    failure raised inside another of `packages` is put on that one."""
    failures: Dict[str, str] = {}
    for package in packages:
        if not is_installed(package):
            continue
        failure = import_failure((modules or {}).get(package, package))
        if failure is not None:
            failures.setdefault(failure.raised_in(packages, package), failure.error)
    return failures


def describe_failures(failures: Mapping[str, str]) -> str:
    """'timm is installed but fails to import (ImportError: ...)', for one or several."""
    if len(failures) == 1:
        ((name, error),) = failures.items()
        return f"{name} is installed but fails to import ({error})"
    errors = "; ".join(f"{name}: {error}" for name, error in failures.items())
    return f"{', '.join(failures)} are installed but fail to import ({errors})"
