"""Writes Stable-SAM on SAM 2 as ONNX files in the interface of the tools that load SAM 2
decoders (see sam2_decoder_model, sam2_encoder_model), with the same exporter, checks and atomic
writes as the SAM export (`onnx_export`)."""

from typing import Optional, Tuple

import torch

from stable_sam_ops._onnx import DEFAULT_ONNX_SAMPLING

from ..families.sam2 import StableSam2
from .onnx_export import (
    DEFAULT_OPSET,
    MAX_POINTS,
    _export_mode,
    _save_checked,
    _to_onnx,
    check_export_options,
    quantize_decoder,
)
from .sam2_decoder_model import (
    SAM2_DECODER_INPUT_NAMES,
    SAM2_DECODER_OUTPUT_NAMES,
    StableSam2OnnxDecoder,
)
from .sam2_encoder_model import (
    SAM2_ENCODER_INPUT_NAMES,
    SAM2_ENCODER_OUTPUT_NAMES,
    StableSam2OnnxEncoder,
)

MAX_PROMPTS = 256  # upper bound of the dynamic prompt count (prompts share one image)


def example_sam2_decoder_inputs(model: StableSam2, num_prompts: int = 2, num_points: int = 3,
                                seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Inputs of the exported SAM 2 decoder in its input order (random features and points)."""
    s0, s1, grid = model.image_encoder.feature_sizes()
    size = model.image_encoder.img_size
    dim = model.prompt_encoder.embed_dim
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, dim, *grid, generator=gen),
        torch.randn(1, dim // 8, *s0, generator=gen),
        torch.randn(1, dim // 4, *s1, generator=gen),
        torch.rand(num_prompts, num_points, 2, generator=gen) * size,
        torch.randint(0, 4, (num_prompts, num_points), generator=gen).to(torch.float32),
        torch.randn(num_prompts, 1, 4 * grid[0], 4 * grid[1], generator=gen),
        torch.tensor([1.0]),
    )


def export_sam2_decoder_onnx(
    model: StableSam2,
    path: str,
    *,
    opset: int = DEFAULT_OPSET,
    multimask_output: bool = True,
    gelu_approximate: bool = False,
    use_plugins: bool = True,
    sampling: str = DEFAULT_ONNX_SAMPLING,
    quantize_path: Optional[str] = None,
) -> str:
    """Writes SAM 2's prompt encoder + Stable-SAM's mask decoder (+ plugins) to `path` as ONNX,
    with the inputs and outputs of sam2_decoder_model (B prompts and P points dynamic).

    Arguments:
      model (StableSam2): on the CPU.
      opset, gelu_approximate, sampling, quantize_path: as export_decoder_onnx.
      multimask_output (bool): three masks per prompt (default, as the tools expect), or one
        (SAM 2's single mask, with its dynamic_multimask_via_stability fallback when on).
      use_plugins (bool): False exports plain SAM 2 through the same decoder pass.
    Returns: path.
    """
    check_export_options(opset, sampling)
    wrapper = StableSam2OnnxDecoder(model, multimask_output, use_plugins=use_plugins)
    prompts = torch.export.Dim("num_prompts", min=1, max=MAX_PROMPTS)
    points = torch.export.Dim("num_points", min=1, max=MAX_POINTS)
    dynamic_shapes = {
        "image_embed": None,
        "high_res_feats_0": None,
        "high_res_feats_1": None,
        "point_coords": {0: prompts, 1: points},
        "point_labels": {0: prompts, 1: points},
        "mask_input": {0: prompts},
        "has_mask_input": None,
    }
    with _export_mode(model, gelu_approximate), torch.no_grad():
        wrapper.eval()
        program = _to_onnx(wrapper, example_sam2_decoder_inputs(model), dynamic_shapes,
                           SAM2_DECODER_INPUT_NAMES, SAM2_DECODER_OUTPUT_NAMES, opset, sampling)
    _save_checked(program, path)
    if quantize_path is not None:
        quantize_decoder(path, quantize_path)
    return path


def export_sam2_encoder_onnx(model: StableSam2, path: str, *, opset: int = DEFAULT_OPSET) -> str:
    """Writes SAM 2's image encoding (conv_s0 / conv_s1 and no_mem_embed included) to `path` as
    ONNX: input image (1, 3, S, S) normalised, outputs high_res_feats_0, high_res_feats_1,
    image_embed (the decoder file's first three inputs)."""
    check_export_options(opset)
    wrapper = StableSam2OnnxEncoder(model)
    size = model.image_encoder.img_size
    example = (torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),)
    with _export_mode(model, gelu_approximate=False), torch.no_grad():
        wrapper.eval()
        program = _to_onnx(wrapper, example, None, SAM2_ENCODER_INPUT_NAMES,
                           SAM2_ENCODER_OUTPUT_NAMES, opset, DEFAULT_ONNX_SAMPLING)
    _save_checked(program, path)
    return path
