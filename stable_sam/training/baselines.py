"""Which parameters each training method updates and with which prompts (the paper's Table 2,
5 and 6 variants).

  stable_sam                DSP + DRP plugins only (SAM frozen), robust training strategy (RTS)
  stable_sam_no_drp         the plugins without dynamic routing (PluginConfig.use_routing = False)
  stable_sam_no_rts         the plugins, trained without RTS
  stable_sam_no_drp_no_rts  DSP alone, without RTS (Table 5's "+ DSP" row)
  dt_sam, dt_sam_no_rts     SAM's whole mask decoder (decoder tuning), no plugins
  pt_sam, pt_sam_no_rts     SAM's output mask token and its hypernetwork MLP (prompt tuning)

"Without RTS" is training as SAM and HQ-SAM are, on high-quality prompts only: GT boxes, 10
points and coarse masks, nothing occluded (`stable_sam.data.prompts.WITHOUT_RTS`). Table 2's
DT-SAM and PT-SAM rows are the `*_no_rts` trainings at 12 epochs (its PT-SAM row is Table 6's
"without RTS" PT-SAM); Table 6's "with RTS" PT-SAM is `pt_sam` at 12 epochs.

The image and prompt encoders never train. Parameters are picked by name from
`StableSam.named_parameters()`, so the same selection names the tensors saved in checkpoints.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

__all__ = ["MethodSpec", "METHODS", "get_method", "trainable_named_parameters",
           "freeze_all_but_trainable", "trainable_state_dict", "load_trainable_state_dict",
           "save_baseline_weights", "load_baseline_weights"]

BASELINE_FORMAT = "stable-sam-baseline"  # safetensors metadata "format" of a DT-SAM/PT-SAM file


@dataclass(frozen=True)
class MethodSpec:
    name: str
    uses_plugins: bool  # decode with the plugins (False: plain SAM decoder)
    use_routing: bool  # PluginConfig.use_routing for the plugin methods
    robust_prompts: bool  # False: high-quality prompts only (stable_sam.data.prompts.WITHOUT_RTS)
    sam_prefixes: Tuple[str, ...]  # SAM parameter name prefixes that train (besides plugins)
    description: str


# The single-mask output (multimask_output=False, what the loss sees) comes from mask token 0
# and its hypernetwork MLP 0. All four mask tokens train: the other three attend with token 0 in
# the decoder's self-attention, so they shape its output too (1024 numbers in all).
_PT_SAM_PREFIXES = (
    "sam.mask_decoder.mask_tokens.",
    "sam.mask_decoder.output_hypernetworks_mlps.0.",
    # SAM 2's decoder is `sam_mask_decoder`, its single-mask output the same token and MLP
    "sam.sam_mask_decoder.mask_tokens.",
    "sam.sam_mask_decoder.output_hypernetworks_mlps.0.",
)

METHODS: Dict[str, MethodSpec] = {
    "stable_sam": MethodSpec("stable_sam", True, True, True, (), "DSP + DRP plugins, RTS"),
    "stable_sam_no_drp": MethodSpec(
        "stable_sam_no_drp", True, False, True, (), "DSP plugin without routing, RTS"
    ),
    "stable_sam_no_rts": MethodSpec(
        "stable_sam_no_rts", True, True, False, (), "DSP + DRP plugins, high-quality prompts"
    ),
    "stable_sam_no_drp_no_rts": MethodSpec(
        "stable_sam_no_drp_no_rts", True, False, False, (),
        "DSP plugin without routing, high-quality prompts"
    ),
}
for _robust, _suffix, _prompts in ((True, "", "RTS"), (False, "_no_rts", "high-quality prompts")):
    METHODS["dt_sam" + _suffix] = MethodSpec(
        "dt_sam" + _suffix, False, True, _robust, ("sam.mask_decoder.", "sam.sam_mask_decoder."),
        f"SAM mask decoder tuning, {_prompts}")
    METHODS["pt_sam" + _suffix] = MethodSpec(
        "pt_sam" + _suffix, False, True, _robust, _PT_SAM_PREFIXES,
        f"SAM output token + its hypernetwork MLP (prompt tuning), {_prompts}")


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def _plugin_parameter_ids(model: nn.Module) -> set:
    return {id(p) for p in model.plugin_parameters()}


def trainable_named_parameters(model: nn.Module, method: str) -> List[Tuple[str, nn.Parameter]]:
    """(name, parameter) pairs that `method` trains, in `named_parameters()` order."""
    spec = get_method(method)
    plugin_ids = _plugin_parameter_ids(model) if spec.uses_plugins else set()
    picked = [
        (name, p) for name, p in model.named_parameters()
        if id(p) in plugin_ids or name.startswith(spec.sam_prefixes)
    ]
    if not picked:
        raise RuntimeError(
            f"method {method!r} selected no parameters: the model's parameter names do not match "
            f"prefixes {spec.sam_prefixes} (plugins used: {spec.uses_plugins})"
        )
    return picked


def freeze_all_but_trainable(model: nn.Module, method: str) -> List[Tuple[str, nn.Parameter]]:
    """Sets requires_grad on exactly the method's parameters; returns them."""
    picked = trainable_named_parameters(model, method)
    keep = {id(p) for _, p in picked}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return picked


def trainable_state_dict(model: nn.Module, method: str) -> Dict[str, Tensor]:
    """Detached copies of the trained tensors, keyed by their `named_parameters()` names."""
    return {name: p.detach().clone() for name, p in trainable_named_parameters(model, method)}


def load_trainable_state_dict(model: nn.Module, method: str, state: Dict[str, Tensor]) -> None:
    """Copies `state` into the method's parameters; names and shapes must match exactly."""
    params = dict(trainable_named_parameters(model, method))
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"trainable state for method {method!r} does not match the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, p in params.items():
        value = state[name]
        if value.shape != p.shape:
            raise ValueError(
                f"trainable state {name!r}: expected shape {tuple(p.shape)}, got {tuple(value.shape)}"
            )
        p.data.copy_(value)


def save_baseline_weights(model: nn.Module, method: str, path, *,
                          extra_metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes the tensors `method` trained to a safetensors file (atomically), with the method
    name in its metadata. Plugin methods should use `stable_sam.checkpoint.save_plugins`."""
    from safetensors.torch import save_file

    from stable_sam.data._io import write_atomic

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in trainable_state_dict(model, method).items()}
    metadata = {"format": BASELINE_FORMAT, "method": method, **(extra_metadata or {})}
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=metadata), durable=True)


def load_baseline_weights(model: nn.Module, path) -> str:
    """Loads a `save_baseline_weights` file into `model` (a StableSam); returns its method.
    Decode such a model with use_plugins=False: the baselines are SAM without plugins."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"could not read baseline weights {path}: corrupt or not a "
                         f"safetensors file ({exc})") from exc
    if metadata.get("format") != BASELINE_FORMAT or metadata.get("method") not in METHODS:
        raise ValueError(f"{path} is not a DT-SAM/PT-SAM weights file (metadata {metadata})")
    load_trainable_state_dict(model, metadata["method"], state)
    return metadata["method"]
