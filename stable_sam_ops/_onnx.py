"""The fused op in standard ONNX operators, for `torch.onnx.export(..., dynamo=True)`.

The compiled op `torch.ops.stable_sam_ops.deformable_sample` has no ONNX translation. Before the
exporter lowers a `torch.export` program, `decompose_for_onnx` replaces every call to it by one of
two pure-PyTorch forms with the op's exact contract (zero padding, align_corners=True pixel
centres, NaN offsets sample zeros), which the exporter then writes as plain ONNX operators:

  "gather"       four `Gather`s of the bilinear corners from a (B*H*W*G, C/G) table, weights
                 and bounds masks computed with Floor / Where (opset 18 operators only). The
                 default: runtimes have miscompiled GridSample-based deformable attention
                 (NVIDIA/TensorRT #4813) and some have no GridSample at all.
  "grid_sample"  the reference composition, one ONNX `GridSample` (opset 16+) per call.
"""
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from .reference import deformable_sample_reference

DEFAULT_ONNX_SAMPLING = "gather"


def deformable_sample_gather(
    value: Tensor,
    offset: Tensor,
    amplitude: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    alpha: Optional[Tensor] = None,
    offset_scale: float = 1.0,
) -> Tensor:
    """`deformable_sample` as an explicit bilinear gather (same arguments, no validation)."""
    B, H, W, C = value.shape
    G = offset.shape[3]
    Cg = C // G
    nan = torch.isnan(offset)
    point_nan = nan.any(dim=-1)  # (B, H, W, G): such a point samples zeros
    delta = offset_scale * torch.tanh(torch.where(nan, 0.0, offset))  # (B, H, W, G, 2) pixels
    cols = torch.arange(W, device=value.device, dtype=delta.dtype).view(1, 1, W, 1)
    rows = torch.arange(H, device=value.device, dtype=delta.dtype).view(1, H, 1, 1)
    x = cols + delta[..., 0]  # (B, H, W, G)
    y = rows + delta[..., 1]
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    # |delta| <= offset_scale, so the integer casts cannot overflow
    x0i = x0.to(torch.int64)
    y0i = y0.to(torch.int64)

    scale = amplitude if amplitude is not None else torch.ones_like(fx)  # (B, H, W, G)
    if alpha is not None:
        scale = scale * alpha[:, 0].view(B, 1, 1, 1)
    batch = torch.arange(B, device=value.device).view(B, 1, 1, 1)
    group = torch.arange(G, device=value.device).view(1, 1, 1, G)
    table = value.reshape(B * H * W * G, Cg)  # row ((b * H + y) * W + x) * G + g

    out = None
    for dy in (0, 1):
        for dx in (0, 1):
            xi = x0i + dx
            yi = y0i + dy
            inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H) & ~point_nan
            weight = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
            # out-of-image corners read a clamped row and are weighted by exactly zero
            weight = torch.where(inside, weight, torch.zeros_like(weight)) * scale
            row = ((batch * H + yi.clamp(0, H - 1)) * W + xi.clamp(0, W - 1)) * G + group
            corner = table.index_select(0, row.reshape(-1)).view(B, H, W, G, Cg)
            term = corner * weight.unsqueeze(-1).to(value.dtype)
            out = term if out is None else out + term
    out = out.reshape(B, H, W, C)
    if residual is not None:
        out = out + (residual if alpha is None else residual * alpha[:, 1].view(B, 1, 1, 1))
    return out


ONNX_SAMPLING_FORMS: Dict[str, Callable[..., Tensor]] = {
    "gather": deformable_sample_gather,
    "grid_sample": deformable_sample_reference,
}


def decomposition_table(sampling: str = DEFAULT_ONNX_SAMPLING) -> Dict[object, Callable]:
    """{compiled op: its pure-PyTorch form} for `ExportedProgram.run_decompositions`."""
    if sampling not in ONNX_SAMPLING_FORMS:
        raise ValueError(
            f"sampling must be one of {sorted(ONNX_SAMPLING_FORMS)}, is {sampling!r}"
        )
    if not hasattr(torch.ops.stable_sam_ops, "deformable_sample"):
        return {}  # extension not loaded: no program can contain the compiled op
    return {torch.ops.stable_sam_ops.deformable_sample.default: ONNX_SAMPLING_FORMS[sampling]}


def decompose_for_onnx(
    program: "torch.export.ExportedProgram", sampling: str = DEFAULT_ONNX_SAMPLING
) -> "torch.export.ExportedProgram":
    """The program with each compiled deformable_sample replaced by the chosen ONNX form; other
    operators are left to the ONNX exporter's own decompositions."""
    return program.run_decompositions(decomposition_table(sampling))
