"""ONNX export of Stable-SAM: the decoder with segment_anything's exported-decoder interface
(plugins included) and the image encoder as its own file. Needs the `onnx` extra."""

from .decoder_model import (
    DECODER_EXTRA_OUTPUT_NAMES,
    DECODER_INPUT_NAMES,
    DECODER_OUTPUT_NAMES,
    StableSamOnnxModel,
)
from .encoder_model import ENCODER_INPUT_NAMES, ENCODER_OUTPUT_NAMES, ImageEncoderOnnxModel
from .onnx_export import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    check_export_options,
    export_decoder_onnx,
    export_encoder_onnx,
    quantize_decoder,
)

__all__ = [
    "DECODER_EXTRA_OUTPUT_NAMES",
    "DECODER_INPUT_NAMES",
    "DECODER_OUTPUT_NAMES",
    "DEFAULT_OPSET",
    "ENCODER_INPUT_NAMES",
    "ENCODER_OUTPUT_NAMES",
    "ImageEncoderOnnxModel",
    "SUPPORTED_OPSETS",
    "StableSamOnnxModel",
    "check_export_options",
    "export_decoder_onnx",
    "export_encoder_onnx",
    "quantize_decoder",
]
