"""What every family's predictor shares: the type check of its model, numpy prompts turned into
the model's input frame, and outputs turned back into numpy. Each family's predictor subclasses
this and keeps its base package's own `predict` signature; none imports another family's."""

from typing import Dict, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch import Tensor, nn
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide


class ImageSizeError(ValueError):
    """An image the model cannot take: resized so its long side is the model's input size, its
    short side would be under one pixel (e.g. 20000x20 for a 256 px model)."""


def check_image_size(height: int, width: int, img_size: int) -> None:
    """Raises ImageSizeError unless SAM's resize (long side -> img_size) keeps both sides >= 1
    pixel; SAM itself fails inside its resize with "height and width must be > 0"."""
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, img_size)
    if min(height, width, new_h, new_w) < 1:
        ratio = max(height, width) / max(1, min(height, width))
        raise ImageSizeError(
            f"a {width}x{height} image is too elongated for this model: resized to its "
            f"{img_size} px input it would be {new_w}x{new_h}; the long side may be at most "
            f"{2 * img_size}x the short side (this one is {ratio:.0f}x); crop or pad it")


def check_image_array(image: np.ndarray) -> None:
    """What set_image needs beyond SAM's own assert: an HxWx3 array of uint8, or of floats in
    0..1 (SAM scales floats by 255, so a float image in 0..255 would wrap to garbage)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (HxWx3 uint8), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 (RGB or BGR), got shape {image.shape}")
    if image.dtype == np.uint8:
        return
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 (0..255) or floating point (0..1), is {image.dtype}")
    if image.size and not np.isfinite(image).all():
        raise ValueError("image holds NaN or infinite values")
    if image.size and (image.min() < 0 or image.max() > 1):
        raise ValueError(
            f"a {image.dtype} image must be in 0..1 (SAM multiplies floats by 255); this one "
            f"spans {image.min():g}..{image.max():g}: pass image.astype(np.uint8) for 0..255")


def _check_finite(name: str, value) -> np.ndarray:
    """value as an array (its dtype kept, so the coordinates transform exactly as in SAM);
    ValueError for NaN or inf, which SAM turns into a NaN score and an empty mask."""
    array = np.asarray(value)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        shown = f": {array.tolist()}" if array.size <= 8 else ""
        raise ValueError(f"{name} holds NaN or infinite values{shown}")
    return array


class PluginPredictor(SamPredictor):
    """SamPredictor over a Stable-SAM model; subclasses set `model_class` and `base_hint` (which
    plain predictor to use for a model of another class)."""

    model_class: Type[nn.Module] = nn.Module
    base_hint = "segment_anything.SamPredictor"
    # the image sizes this predictor's resize can take; the CLI asks it before building a model
    check_image_size = staticmethod(check_image_size)

    def __init__(self, sam_model: nn.Module) -> None:
        if not isinstance(sam_model, self.model_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.model_class.__name__} model, got "
                f"{type(sam_model).__name__}; {self.base_hint}"
            )
        from . import family_of_model

        family = family_of_model(sam_model)
        own = family.load_adapter().PREDICTOR_CLASS
        if not isinstance(self, own):  # e.g. StableHQSam subclasses StableSam
            raise TypeError(
                f"{type(self).__name__} cannot drive a {type(sam_model).__name__} (the "
                f"{family.name} family); use {own.__name__}, or stable_sam.predictor_for(model)")
        super().__init__(sam_model)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """SamPredictor.set_image, after check_image_array and check_image_size (ValueError /
        ImageSizeError where SAM would compute garbage or fail inside its resize)."""
        check_image_array(image)
        self.check_image_size(image.shape[0], image.shape[1], self.model.image_encoder.img_size)
        super().set_image(image, image_format)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def _prompts_to_torch(self, point_coords, point_labels, box, mask_input):
        """numpy prompts in original-image pixels -> batch-1 tensors in the model's input frame."""
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            point_coords = _check_finite("point_coords", point_coords)
            coords = self.transform.apply_coords(point_coords, self.original_size)
            coords = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            boxes = self.transform.apply_boxes(_check_finite("box", box), self.original_size)
            boxes = torch.as_tensor(boxes, dtype=torch.float, device=self.device)[None]
        if mask_input is not None:
            _check_finite("mask_input", mask_input)
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        return coords, labels, boxes, masks

    @staticmethod
    def _first_as_numpy(
        out: Sequence, return_extras: bool
    ) -> Tuple:
        """predict_torch's batch-1 output -> predict's numpy arrays (batch dim dropped), with the
        extras dict's arrays appended when asked for."""
        arrays = tuple(t[0].detach().cpu().numpy() for t in out[:3])
        if not return_extras:
            return arrays
        extras: Dict[str, np.ndarray] = {k: v[0].detach().cpu().numpy() for k, v in out[3].items()}
        return arrays + (extras,)

    def _masks_from_logits(self, low_res_masks: Tensor, return_logits: bool) -> Tensor:
        masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        return masks if return_logits else masks > self.model.mask_threshold

    def _dense_pe(self) -> Tensor:
        return self.model.prompt_encoder.get_dense_pe()

    def _encode_prompts(self, point_coords: Optional[Tensor], point_labels: Optional[Tensor],
                        boxes: Optional[Tensor], mask_input: Optional[Tensor]):
        points = (point_coords, point_labels) if point_coords is not None else None
        return self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)

    # -- prompts on several images, one decoder pass (stable_sam.families.batched_prompts) ------
    def embed_images(self, images, image_format: str = "RGB"):
        """set_image's work for several images (numpy HxWx3 each, any sizes), the image encoder
        run once on all of them; returns the EmbeddedImages that predict_across_images takes.
        The image set with set_image, if any, stays set. For images embedded one at a time,
        `batched_prompts.predictor_image(self)` after each set_image, joined with
        `EmbeddedImages.cat`, gives the same."""
        from . import batched_prompts

        def check(image: np.ndarray) -> None:  # what set_image checks, per image
            check_image_array(image)
            self.check_image_size(image.shape[0], image.shape[1], self.model.image_encoder.img_size)

        return batched_prompts.family_batching(self.model).embed_images(
            self, images, image_format, check_image=check)

    def predict_across_images(self, images, prompts, multimask_output: bool = True,
                              return_logits: bool = False, *, use_plugins: bool = True,
                              **decode_options):
        """Masks for several images' prompts with one prompt-encoder and one decoder call per
        prompt structure (number of points, box or not, mask input or not) over all images,
        instead of one predict_torch per image; the same masks as that loop up to float
        rounding.

        Arguments:
          images (EmbeddedImages): from embed_images (or predictor_image + EmbeddedImages.cat).
          prompts (sequence of batched_prompts.ImagePrompts): one per image, each with its own
            number K of prompts (boxes (K, 4), clicks (K, P, 2) + labels (K, P), mask inputs
            (K, 1, 256, 256)) in that image's pixels; K = 0 is allowed.
          multimask_output, return_logits, use_plugins: as predict; decode_options: the family's
            extra predict options (HQ-SAM: hq_token_only).

        Returns:
          three lists with one numpy array per image: masks (K, M, H, W), scores (K, M),
          low-res logits (K, M, 256, 256); M as predict gives it.
        """
        from . import batched_prompts

        return batched_prompts.predict_across_images(
            self, images, prompts, multimask_output, return_logits, use_plugins=use_plugins,
            **decode_options)
