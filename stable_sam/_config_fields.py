"""Strict reading of config dataclasses from dicts (checkpoint metadata, --config JSON)."""
import dataclasses
from typing import Any, Mapping


def check_known_fields(cls: type, values: Any, what: str) -> None:
    """Raises if `values` is not a dict or names a field `cls` does not have: a typo in a
    config must fail loudly, not be dropped. `what` names the config in the message."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} expects a dict, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{what}: unknown fields {unknown}; known are {sorted(known)}")
