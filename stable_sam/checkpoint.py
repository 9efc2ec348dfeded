"""Checkpoints: SAM's official .pth (loaded safely and strictly into `model.sam`) and the plugin
weights, saved on their own as safetensors with metadata."""

import os
from typing import Any, Dict, Mapping

import torch
from torch import Tensor, nn

from .data._io import write_atomic
from .plugins import PluginConfig

PLUGIN_FORMAT = "stable-sam-plugins"
PLUGIN_FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def _package_version() -> str:
    from . import __version__

    return __version__


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r} is not a file")


def check_state_dict(
    module: nn.Module, state_dict: Mapping[str, Any], path: str, what: str
) -> None:
    """Raises CheckpointError listing missing and unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and isinstance(state_dict[k], Tensor) and state_dict[k].shape != v.shape
    ]
    not_tensors = sorted(
        k for k in state_dict if k in expected and not isinstance(state_dict[k], Tensor)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_short(wrong)}")
    if not_tensors:
        problems.append(f"entries that are not tensors {_short(not_tensors)}")
    if problems:
        raise CheckpointError(f"{what} {path!r} does not match the model: " + "; ".join(problems))


def check_plugin_values(tensors: Mapping[str, Tensor], path: str) -> None:
    """Refuses what load_state_dict would accept silently: another kind of number (an integer
    or boolean tensor would be cast to float; every plugin weight is floating point) and NaN or
    infinite weights (they load, then every mask comes out empty)."""
    not_float = [f"{k} ({t.dtype})" for k, t in tensors.items() if not t.is_floating_point()]
    if not_float:
        raise CheckpointError(f"plugin checkpoint {path!r} holds tensors of another kind than "
                              f"the model's floating-point weights: {_short(not_float)}")
    non_finite = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if non_finite:
        raise CheckpointError(
            f"plugin checkpoint {path!r} holds NaN or infinite values in {_short(non_finite)}")


def _short(items, limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def load_sam_checkpoint(sam: nn.Module, path: str) -> None:
    """Loads an official SAM checkpoint (a state-dict .pth) strictly into `sam`."""
    _require_file(path, "SAM checkpoint")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "unusable file"
        raise CheckpointError(f"SAM checkpoint {path!r} could not be read: {exc}") from exc
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"SAM checkpoint {path!r} must hold a state dict, holds {type(state_dict).__name__}"
        )
    check_state_dict(sam, state_dict, path, "SAM checkpoint")
    sam.load_state_dict(state_dict, strict=True)


def save_plugins(model: nn.Module, path: str) -> None:
    """Writes model.plugins' weights and metadata to a safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.plugins.state_dict().items()}
    metadata = {
        "format": PLUGIN_FORMAT,
        "format_version": PLUGIN_FORMAT_VERSION,
        "model_type": model.model_type or "",
        "plugin_config": model.plugins.config.to_json(),
        "package_version": _package_version(),
    }
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), durable=True)


def read_plugin_metadata(path: str) -> Dict[str, Any]:
    """Metadata of a plugin file: format_version, model_type (or None), plugin_config
    (PluginConfig), package_version. Raises CheckpointError for unusable files."""
    from safetensors import safe_open

    _require_file(path, "plugin checkpoint")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
    except Exception as exc:
        raise CheckpointError(
            f"plugin checkpoint {path!r} is not a readable safetensors file "
            f"(corrupt or truncated?): {exc}"
        ) from exc
    if not metadata or metadata.get("format") != PLUGIN_FORMAT:
        raise CheckpointError(
            f"plugin checkpoint {path!r} is not a Stable-SAM plugin file (metadata format is "
            f"{(metadata or {}).get('format')!r}, expected {PLUGIN_FORMAT!r})"
        )
    if metadata.get("format_version") != PLUGIN_FORMAT_VERSION:
        raise CheckpointError(
            f"plugin checkpoint {path!r} has format version {metadata.get('format_version')!r}; "
            f"this package reads version {PLUGIN_FORMAT_VERSION!r}"
        )
    try:
        config = PluginConfig.from_json(metadata["plugin_config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"plugin checkpoint {path!r} has no valid plugin_config: {exc}"
        ) from exc
    return {
        "format_version": metadata["format_version"],
        "model_type": metadata.get("model_type") or None,
        "plugin_config": config,
        "package_version": metadata.get("package_version"),
    }


def _read_plugin_tensors(path: str) -> Dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"plugin checkpoint {path!r} could not be read (corrupt or truncated?): {exc}"
        ) from exc


def check_plugin_file(path: str) -> Dict[str, Any]:
    """Reads a plugin file's metadata and checks its tensors (floating point and finite: every
    plugin weight is) without a model; returns the metadata. For commands that check their
    arguments before they build anything."""
    meta = read_plugin_metadata(path)
    tensors = _read_plugin_tensors(path)
    check_plugin_values(tensors, path)
    return meta


def load_plugins(model: nn.Module, path: str) -> Dict[str, Any]:
    """Loads plugin weights saved by `save_plugins` into model.plugins; returns the metadata.

    The file's model type and plugin config must match the model's (the plugins are trained on
    one backbone's features; a file without a model type loads only into a model without one),
    and its tensors must match model.plugins' keys and shapes.
    """
    meta = read_plugin_metadata(path)
    if model.model_type and not meta["model_type"]:
        # such a file was saved from a model built without a model type: nothing says which
        # backbone's features its plugins were trained on
        raise CheckpointError(
            f"plugin checkpoint {path!r} records no model type, the model is "
            f"{model.model_type!r}; load it into a model built without model_type, or save it "
            "again from a model built with one (build_stable_sam sets it)"
        )
    if meta["model_type"] and model.model_type and meta["model_type"] != model.model_type:
        raise CheckpointError(
            f"plugin checkpoint {path!r} was trained for model type {meta['model_type']!r}, "
            f"the model is {model.model_type!r}"
        )
    ours: PluginConfig = model.plugins.config
    if meta["plugin_config"] != ours:
        theirs = meta["plugin_config"].to_dict()
        diff = [
            f"{k}: file {theirs[k]!r} vs model {v!r}"
            for k, v in ours.to_dict().items()
            if theirs[k] != v
        ]
        raise CheckpointError(
            f"plugin checkpoint {path!r} has another plugin config: {'; '.join(diff)}"
        )
    tensors = _read_plugin_tensors(path)
    check_state_dict(model.plugins, tensors, path, "plugin checkpoint")
    check_plugin_values(tensors, path)
    model.plugins.load_state_dict(tensors, strict=True)
    return meta
