"""Route reliance: how much a model's masks depend on each attention route of its two-way
transformer, measured by removing the route and evaluating again.

A route is one attention of SAM's `TwoWayTransformer` (which HQ-SAM and SAM 2 reuse): each
layer's token-to-image and image-to-token cross-attention, and the final token-to-image
attention. Removing it zeroes its output projection, so the attention adds nothing to its
residual stream and everything else runs as before. The mIoU lost is what that route carries.

Why this exists: Stable-SAM's plugins change only the keys/values of `layers[1]`'s
token-to-image attention (the plugin site). On a base whose masks do not depend on that route,
no plugin there can move them; `site` names the route to look at first.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Sequence

import torch
from torch import nn

from ..plugins.two_way_site import PLUGIN_LAYER
from .protocol import evaluate_masks

SITE = f"layers[{PLUGIN_LAYER}].token_to_image"


def decoder_transformer(model: nn.Module) -> nn.Module:
    """The two-way transformer of a model's mask decoder: SAM's and HQ-SAM's `mask_decoder`,
    SAM 2's `sam_mask_decoder` (a Stable-SAM wrapper exposes its base's as `mask_decoder`)."""
    decoder = getattr(model, "mask_decoder", None) or getattr(model, "sam_mask_decoder", None)
    transformer = getattr(decoder, "transformer", None)
    if transformer is None or not hasattr(transformer, "layers"):
        raise TypeError(f"{type(model).__name__} has no two-way transformer in its mask decoder")
    return transformer


def transformer_routes(transformer: nn.Module) -> Dict[str, nn.Module]:
    """{route name: its attention module}, in the transformer's order."""
    routes = {}
    for index, layer in enumerate(transformer.layers):
        routes[f"layers[{index}].token_to_image"] = layer.cross_attn_token_to_image
        routes[f"layers[{index}].image_to_token"] = layer.cross_attn_image_to_token
    routes["final.token_to_image"] = transformer.final_attn_token_to_image
    return routes


@contextlib.contextmanager
def route_removed(attention: nn.Module) -> Iterator[None]:
    """Within the context, `attention` outputs zeros (its out_proj weight and bias zeroed);
    its parameters are restored bit for bit on the way out, also after an error."""
    proj = attention.out_proj
    saved = [p.detach().clone() for p in proj.parameters()]
    try:
        with torch.no_grad():
            for p in proj.parameters():
                p.zero_()
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(proj.parameters(), saved):
                p.copy_(original)


def _miou(predictor, dataset, prompts, kinds: Sequence[str]) -> Dict[str, float]:
    with torch.no_grad():
        results = evaluate_masks(predictor, dataset, prompts, list(kinds))
    return {k: 100.0 * float(results["kinds"][k]["miou"]) for k in kinds}


def route_reliance(predictor, dataset, prompts, kinds: Sequence[str],
                   routes: Sequence[str] | None = None) -> dict:
    """mIoU (in %) of `predictor` with all routes, and with each route removed in turn.

    Arguments:
      predictor: any family's predictor (its `.model` holds the decoder); plugins, if the
        model has them, stay as they are (removing the site removes them with it).
      dataset, prompts, kinds: as `evaluate_masks` takes them (frozen prompts).
      routes: names from `transformer_routes` (default: all).

    Returns:
      {"full": {kind: mIoU}, "routes": {name: {"mIoU": {kind: ...}, "drop": {kind: full -
      removed}}}, "site": SITE}. Percentages, rounded to two decimals.
    """
    available = transformer_routes(decoder_transformer(predictor.model))
    names = list(available) if routes is None else list(routes)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown route(s) {unknown}; this transformer has {list(available)}")
    full = _miou(predictor, dataset, prompts, kinds)
    out = {"full": {k: round(v, 2) for k, v in full.items()}, "routes": {}, "site": SITE}
    for name in names:
        with route_removed(available[name]):
            removed = _miou(predictor, dataset, prompts, kinds)
        out["routes"][name] = {"mIoU": {k: round(v, 2) for k, v in removed.items()},
                               "drop": {k: round(full[k] - removed[k], 2) for k in kinds}}
    return out
