"""Writes Stable-SAM as ONNX files: the decoder (segment_anything's exported-decoder interface,
plugins included) and the image encoder, checked with `onnx.checker` before they are moved into
place. Traced with the dynamo-based exporter (`torch.export` + `torch.onnx.export(dynamo=True)`);
the fused op becomes standard ONNX operators through `stable_sam_ops._onnx`.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from stable_sam_ops import _extension
from stable_sam_ops._onnx import DEFAULT_ONNX_SAMPLING, ONNX_SAMPLING_FORMS, decompose_for_onnx

from ..families.sam import StableSam
from .decoder_model import (
    DECODER_EXTRA_OUTPUT_NAMES,
    DECODER_INPUT_NAMES,
    DECODER_OUTPUT_NAMES,
    StableSamOnnxModel,
)
from .encoder_model import ENCODER_INPUT_NAMES, ENCODER_OUTPUT_NAMES, ImageEncoderOnnxModel

# 18: the dynamo exporter's own opset; it converts up, but its down-conversion fails on this
# graph and leaves the file at 18, so segment_anything's default 17 is not offered. 23: the
# newest the export tests cover (onnxruntime 1.32 runs it).
SUPPORTED_OPSETS = tuple(range(18, 24))
DEFAULT_OPSET = 18
MAX_POINTS = 1024  # upper bound of the dynamic point count (boxes are two points)


def _is_sam2(model: nn.Module) -> bool:
    from ..families import family_of_model

    return family_of_model(model).name == "sam2"


def check_export_options(opset: int, sampling: str = DEFAULT_ONNX_SAMPLING) -> None:
    """Raises ValueError for an option the exporter does not support and RuntimeError when the
    compiled op is missing; cheap, so callers run it before any model is built."""
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(
            f"opset must be in {SUPPORTED_OPSETS[0]}..{SUPPORTED_OPSETS[-1]}, is {opset}"
        )
    if sampling not in ONNX_SAMPLING_FORMS:
        raise ValueError(f"sampling must be one of {sorted(ONNX_SAMPLING_FORMS)}, is {sampling!r}")
    if not _extension.load():
        # without the compiled op the plugins trace the grid_sample reference, whatever was asked
        raise RuntimeError(
            "ONNX export needs the compiled op stable_sam_ops._C (the export replaces it by "
            f"its ONNX form); it is not loaded: {_extension.load_error()}"
        )


@contextlib.contextmanager
def _export_mode(model: StableSam, gelu_approximate: bool) -> Iterator[None]:
    """Eval mode, plugins on the compiled op (which the export replaces), and with
    gelu_approximate the tanh GELU in every nn.GELU, as segment_anything's exporter does; all
    restored afterwards."""
    if model.device.type != "cpu":
        raise ValueError(f"export the model from the CPU, it is on {model.device}")
    training = model.training
    backend = model.plugins.op_backend
    gelus = [m for m in model.modules() if isinstance(m, nn.GELU)] if gelu_approximate else []
    approximations = [m.approximate for m in gelus]
    model.eval()
    model.plugins.op_backend = "cpu"
    for m in gelus:
        m.approximate = "tanh"
    try:
        yield
    finally:
        model.train(training)
        model.plugins.op_backend = backend
        for m, approximate in zip(gelus, approximations):
            m.approximate = approximate


def example_decoder_inputs(model: StableSam, num_points: int = 3) -> Tuple[torch.Tensor, ...]:
    """Inputs of the exported decoder in its input order (random embedding and points)."""
    h, w = model.prompt_encoder.image_embedding_size
    size = model.image_encoder.img_size
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, model.prompt_encoder.embed_dim, h, w, generator=gen),
        torch.rand(1, num_points, 2, generator=gen) * size,
        torch.randint(0, 4, (1, num_points), generator=gen).to(torch.float32),
        torch.randn(1, 1, 4 * h, 4 * w, generator=gen),
        torch.tensor([1.0]),
        torch.tensor([float(size), float(size)]),
    )


def _save_checked(program: "torch.onnx.ONNXProgram", path: str) -> None:
    """Saves into a temporary folder beside `path`, runs onnx.checker, then moves the file (and
    its external-data file, for models over protobuf's 2 GiB) into place."""
    import onnx

    folder = os.path.dirname(os.path.abspath(path))
    staging = tempfile.mkdtemp(dir=folder, prefix=".onnx-export-")
    try:
        staged = os.path.join(staging, os.path.basename(path))
        program.save(staged)
        onnx.checker.check_model(staged, full_check=True)
        # external data first: the model file appears last, complete
        for name in sorted(os.listdir(staging), key=lambda n: n == os.path.basename(path)):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _widen_int16_sums(program: "torch.export.ExportedProgram") -> None:
    """ONNX's ReduceSum has no int16, and segment_anything's stability score counts mask pixels
    with sum(dtype=int16) (then int32): count in int32, which gives the same numbers."""
    for node in program.graph.nodes:
        is_sum = node.target == torch.ops.aten.sum.dim_IntList
        if is_sum and node.kwargs.get("dtype") == torch.int16:
            node.kwargs = {**node.kwargs, "dtype": torch.int32}
            node.meta["val"] = node.meta["val"].to(torch.int32)
    program.graph_module.recompile()


def _to_onnx(module: nn.Module, args, dynamic_shapes, input_names, output_names, opset, sampling):
    program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    program = decompose_for_onnx(program, sampling)
    _widen_int16_sums(program)
    onnx_program = torch.onnx.export(
        program,
        args,
        input_names=list(input_names),
        output_names=list(output_names),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    written = onnx_program.model.opset_imports.get("")
    if written != opset:  # a failed version conversion only logs a warning
        raise RuntimeError(f"the exporter wrote opset {written} instead of opset {opset}")
    return onnx_program


def export_decoder_onnx(
    model: StableSam,
    path: str,
    *,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    gelu_approximate: bool = False,
    use_plugins: bool = True,
    sampling: str = DEFAULT_ONNX_SAMPLING,
    quantize_path: Optional[str] = None,
) -> str:
    """Writes Stable-SAM's prompt encoder + mask decoder (+ plugins) to `path` as ONNX.

    The file has segment_anything's exported-decoder interface: inputs image_embeddings
    (1, 256, h, w), point_coords (1, N, 2) in the model's input frame, point_labels (1, N)
    (1 fg, 0 bg, 2/3 box corners, -1 padding), mask_input (1, 1, 4h, 4w), has_mask_input (1,),
    orig_im_size (2,) = (H, W); outputs masks (1, M, H, W) logits, iou_predictions (1, M),
    low_res_masks (1, M, 4h, 4w), M = 4, or 1 with return_single_mask. N is dynamic.

    Arguments:
      model (StableSam): on the CPU, in eval mode.
      opset (int): ONNX opset, in SUPPORTED_OPSETS.
      return_single_mask, use_stability_score, return_extra_metrics, gelu_approximate: the
        options of segment_anything's scripts/export_onnx_model.py.
      use_plugins (bool): False exports plain SAM through the same decoder pass.
      sampling (str): ONNX form of the fused op, "gather" or "grid_sample" (stable_sam_ops._onnx).
      quantize_path (str or None): also write an onnxruntime dynamically quantized (uint8) copy.
    Returns: path.

    A StableSam2 model is written in SAM 2's decoder interface instead (see
    sam2_onnx_export.export_sam2_decoder_onnx; return_single_mask gives its single mask).
    """
    if _is_sam2(model):
        if use_stability_score or return_extra_metrics:
            raise ValueError("use_stability_score and return_extra_metrics are options of SAM's "
                             "decoder interface; SAM 2's outputs masks and iou_predictions")
        from .sam2_onnx_export import export_sam2_decoder_onnx

        return export_sam2_decoder_onnx(
            model, path, opset=opset, multimask_output=not return_single_mask,
            gelu_approximate=gelu_approximate, use_plugins=use_plugins, sampling=sampling,
            quantize_path=quantize_path)
    check_export_options(opset, sampling)
    wrapper = StableSamOnnxModel(
        model,
        return_single_mask=return_single_mask,
        use_stability_score=use_stability_score,
        return_extra_metrics=return_extra_metrics,
        use_plugins=use_plugins,
    )
    points = torch.export.Dim("num_points", min=1, max=MAX_POINTS)
    dynamic_shapes = {
        "image_embeddings": None,
        "point_coords": {1: points},
        "point_labels": {1: points},
        "mask_input": None,
        "has_mask_input": None,
        "orig_im_size": None,
    }
    outputs = DECODER_EXTRA_OUTPUT_NAMES if return_extra_metrics else DECODER_OUTPUT_NAMES
    with _export_mode(model, gelu_approximate):
        wrapper.eval()
        program = _to_onnx(
            wrapper,
            example_decoder_inputs(model),
            dynamic_shapes,
            DECODER_INPUT_NAMES,
            outputs,
            opset,
            sampling,
        )
    _save_checked(program, path)
    if quantize_path is not None:
        quantize_decoder(path, quantize_path)
    return path


def quantize_decoder(path: str, quantize_path: str) -> str:
    """onnxruntime's dynamic uint8 quantization of an exported decoder (as segment_anything's
    --quantize-out), written atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = os.path.dirname(os.path.abspath(quantize_path))
    staging = tempfile.mkdtemp(dir=folder, prefix=".onnx-quantize-")
    try:
        staged = os.path.join(staging, os.path.basename(quantize_path))
        quantize_dynamic(
            model_input=path,
            model_output=staged,
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
        )
        os.replace(staged, quantize_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return quantize_path


def export_encoder_onnx(model: StableSam, path: str, *, opset: int = DEFAULT_OPSET) -> str:
    """Writes SAM's image encoder with its preprocessing to `path` as ONNX.

    Input input_image (H, W, 3) float32 RGB 0..255 with max(H, W) = the model's input size
    (`ResizeLongestSide(img_size).apply_image(image)`); H and W are dynamic. Output
    image_embeddings (1, 256, h, w), the decoder's first input. A StableSam2 model is written
    in SAM 2's encoder interface (see sam2_onnx_export.export_sam2_encoder_onnx).
    """
    if _is_sam2(model):
        from .sam2_onnx_export import export_sam2_encoder_onnx

        return export_sam2_encoder_onnx(model, path, opset=opset)
    check_export_options(opset)
    wrapper = ImageEncoderOnnxModel(model)
    size = model.image_encoder.img_size
    height = torch.export.Dim("height", min=1, max=size)
    width = torch.export.Dim("width", min=1, max=size)
    example = (torch.rand(size, size * 3 // 4, 3) * 255,)
    with _export_mode(model, gelu_approximate=False), torch.no_grad():
        wrapper.eval()
        program = _to_onnx(
            wrapper,
            example,
            {"input_image": {0: height, 1: width}},
            ENCODER_INPUT_NAMES,
            ENCODER_OUTPUT_NAMES,
            opset,
            DEFAULT_ONNX_SAMPLING,
        )
    _save_checked(program, path)
    return path
