"""SAM's image encoder with `Sam.preprocess` inside, for ONNX export as its own file.

segment_anything's exporter writes the decoder only; deployments then re-implement the
normalisation and padding in front of a separately exported encoder, and any mismatch there
shifts every mask. Here the file takes the image as the predictor's `set_image` has it after
`ResizeLongestSide` (longest side = the model's input size) and does the rest itself.
"""

from torch import Tensor, nn

from ..families.sam import StableSam

ENCODER_INPUT_NAMES = ("input_image",)
ENCODER_OUTPUT_NAMES = ("image_embeddings",)


class ImageEncoderOnnxModel(nn.Module):
    """input_image (H, W, 3) float32 RGB in [0, 255], max(H, W) = image_encoder.img_size ->
    image_embeddings (1, 256, h, w): `Sam.preprocess` (normalise, pad bottom/right with zeros
    after normalising) then the image encoder. The plugins are in the decoder; the encoder is
    SAM's own."""

    def __init__(self, model: StableSam) -> None:
        super().__init__()
        self.sam = model.sam
        self.img_size = model.image_encoder.img_size

    def forward(self, input_image: Tensor) -> Tensor:
        if self.sam.image_format == "BGR":
            input_image = input_image.flip(-1)
        image = input_image.permute(2, 0, 1).unsqueeze(0)
        return self.sam.image_encoder(self.sam.preprocess(image))
