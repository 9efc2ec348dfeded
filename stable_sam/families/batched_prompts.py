"""Prompts on several images through one mask-decoder pass (the annotation tools' ask, sam2 #476).

A tool holds many images' embeddings and a few boxes or clicks on each. The loop "for each image:
set its features, predict_torch(its prompts)" runs the prompt encoder and the decoder once per
image. Here every prompt is paired with its own image's row of the embeddings (the decoders take
one embedding per prompt, batch N: see StableSam.decode), and the prompts of all images that
share a structure (points per prompt, a box or not, a mask input or not) go through the prompt
encoder and the decoder together: one decoder call per structure, a single one when every image
has boxes only. Structures are not mixed in one call: they differ in their number of sparse
tokens, and padding them with "not a point" tokens would change the masks (SAM attends to them).

What differs between families (which tensors the decoder reads per image, how prompts enter
the input frame and the prompt encoder, how the decoder is called, how masks return to the
image) is the `BATCHING` object of a family's `batched` module, found through the registry
(`stable_sam.families.family_of_model`); SamStyleBatching below serves the families built on
segment_anything's SamPredictor. The grouping, the pairing with image rows and the split back
into images are here, shared by all.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

# (point count per prompt or None, has a box, has a mask input): prompts with the same
# structure have the same sparse tokens and can share one decoder call
Structure = Tuple[Optional[int], bool, bool]


@dataclass
class ImagePrompts:
    """One image's K prompts (K objects), in the image's own pixels, as numpy arrays (or anything
    np.asarray takes). Every field that is given describes the same K prompts; all None (or
    K = 0 arrays) is an image without prompts.

    point_coords ((K, P, 2), or (P, 2) for one prompt): x, y clicks; point_labels ((K, P) or
      (P,)): 1 foreground, 0 background; boxes ((K, 4) or (4,)): x0, y0, x1, y1;
      mask_input ((K, 1, 4h, 4w) or (1, 4h, 4w)): low-res logits of an earlier prediction.
    """

    point_coords: Optional[np.ndarray] = None
    point_labels: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    mask_input: Optional[np.ndarray] = None

    def checked(self, index: int) -> "ImagePrompts":
        """The same prompts with the K axis always present and float coordinates; ValueError
        naming image `index` and the bad shape when the fields disagree or hold NaN."""
        where = f"prompts of image {index}"
        coords = labels = boxes = masks = None
        counts: Dict[str, int] = {}
        if (self.point_coords is None) != (self.point_labels is None):
            raise ValueError(f"{where}: point_coords and point_labels go together")
        if self.point_coords is not None:
            coords = _finite(np.asarray(self.point_coords, dtype=np.float64), where, "point_coords")
            labels = np.asarray(self.point_labels)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"{where}: point_coords must be (K, P, 2) with point_labels (K, P), got "
                    f"{np.shape(self.point_coords)} and {np.shape(self.point_labels)}")
            counts["point_coords"] = coords.shape[0]
        if self.boxes is not None:
            boxes = _finite(np.asarray(self.boxes, dtype=np.float64), where, "boxes")
            boxes = boxes[None] if boxes.ndim == 1 else boxes
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"{where}: boxes must be (K, 4), got {np.shape(self.boxes)}")
            counts["boxes"] = boxes.shape[0]
        if self.mask_input is not None:
            masks = _finite(np.asarray(self.mask_input, dtype=np.float32), where, "mask_input")
            masks = masks[None] if masks.ndim == 3 else masks
            if masks.ndim != 4 or masks.shape[1] != 1:
                raise ValueError(
                    f"{where}: mask_input must be (K, 1, H, W), got {np.shape(self.mask_input)}")
            counts["mask_input"] = masks.shape[0]
        if len(set(counts.values())) > 1:
            raise ValueError(f"{where}: the fields give different prompt counts {counts}")
        if counts and next(iter(counts.values())) == 0:
            return ImagePrompts()
        return ImagePrompts(coords, labels, boxes, masks)

    @property
    def count(self) -> int:
        """K, on checked prompts."""
        for value in (self.point_coords, self.boxes, self.mask_input):
            if value is not None:
                return int(value.shape[0])
        return 0


def _finite(array: np.ndarray, where: str, name: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: {name} holds NaN or infinite values")
    return array


@dataclass
class PromptTensors:
    """One image's K prompts as the prompt encoder takes them (the model's input frame)."""

    point_coords: Optional[Tensor] = None  # (K, P, 2)
    point_labels: Optional[Tensor] = None  # (K, P)
    boxes: Optional[Tensor] = None  # (K, 4)
    mask_input: Optional[Tensor] = None  # (K, 1, 4h, 4w)

    @property
    def count(self) -> int:
        for value in (self.point_coords, self.boxes, self.mask_input):
            if value is not None:
                return int(value.shape[0])
        return 0

    @property
    def structure(self) -> Structure:
        points = None if self.point_coords is None else int(self.point_coords.shape[1])
        return points, self.boxes is not None, self.mask_input is not None

    @staticmethod
    def cat(parts: Sequence["PromptTensors"]) -> "PromptTensors":
        """The prompts of several images of one structure, image after image."""

        def join(name: str) -> Optional[Tensor]:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return PromptTensors(*(join(n) for n in
                               ("point_coords", "point_labels", "boxes", "mask_input")))


@dataclass
class EmbeddedImages:
    """Several images' encoder outputs, one row per image, and where their masks go.

    tensors: the decoder's per-image inputs, batch B first ("image_embeddings" (B, C, h, w) for
      every family; a family may add its own, e.g. HQ-SAM's "interm_embeddings").
    input_sizes: (h, w) of each image after the model's resize, before padding.
    original_sizes: (H, W) of each image as given.
    """

    tensors: Dict[str, Tensor]
    input_sizes: List[Tuple[int, int]]
    original_sizes: List[Tuple[int, int]]

    def __post_init__(self) -> None:
        sizes = {name: t.shape[0] for name, t in self.tensors.items()}
        sizes["input_sizes"] = len(self.input_sizes)
        sizes["original_sizes"] = len(self.original_sizes)
        if "image_embeddings" not in self.tensors or len(set(sizes.values())) != 1:
            raise ValueError(
                f"EmbeddedImages needs image_embeddings and one row per image in every field, "
                f"got {sizes}")

    def __len__(self) -> int:
        return len(self.input_sizes)

    @staticmethod
    def cat(parts: Sequence["EmbeddedImages"]) -> "EmbeddedImages":
        """The images of several EmbeddedImages (e.g. one per set_image), in order."""
        if not parts:
            raise ValueError("EmbeddedImages.cat needs at least one part")
        names = list(parts[0].tensors)
        return EmbeddedImages(
            {n: torch.cat([p.tensors[n] for p in parts]) for n in names},
            [s for p in parts for s in p.input_sizes],
            [s for p in parts for s in p.original_sizes],
        )


# prompts of one structure, all images together -> (sparse, dense) prompt embeddings
EncodeFn = Callable[[PromptTensors], Tuple[Tensor, Tensor]]
# (image row of each prompt (N,), sparse, dense) -> low-res logits (N, M, 4h, 4w), scores (N, M)
DecodeFn = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]


def group_by_structure(prompts: Sequence[PromptTensors]) -> Dict[Structure, List[int]]:
    """The images with prompts, grouped by the structure of their prompts (first-seen order)."""
    groups: Dict[Structure, List[int]] = {}
    for index, p in enumerate(prompts):
        if p.count:
            groups.setdefault(p.structure, []).append(index)
    return groups


def decode_across_images(
    prompts: Sequence[PromptTensors],
    encode: EncodeFn,
    decode: DecodeFn,
    empty: Tuple[Tensor, Tensor],
) -> List[Tuple[Tensor, Tensor]]:
    """Each image's (low-res logits (K, M, 4h, 4w), scores (K, M)), one encode and one decode
    per prompt structure over all images; `empty` ((0, M, 4h, 4w), (0, M)) for images without
    prompts."""
    out: List[Tuple[Tensor, Tensor]] = [empty] * len(prompts)
    for images in group_by_structure(prompts).values():
        parts = [prompts[i] for i in images]
        counts = [p.count for p in parts]
        device = next(t.device for t in (parts[0].point_coords, parts[0].boxes,
                                          parts[0].mask_input) if t is not None)
        rows = torch.repeat_interleave(torch.tensor(images, device=device),
                                       torch.tensor(counts, device=device))
        sparse, dense = encode(PromptTensors.cat(parts))
        low_res, scores = decode(rows, sparse, dense)
        for i, lr, sc in zip(images, low_res.split(counts), scores.split(counts)):
            out[i] = (lr, sc)
    return out


def family_batching(model: torch.nn.Module):
    """The `BATCHING` object of the model's family (`<family package>.batched`)."""
    from . import family_of_model

    package = family_of_model(model).load_adapter().__name__
    return importlib.import_module(f"{package}.batched").BATCHING


def select_rows(tensors: Dict[str, Tensor], rows: Tensor) -> Dict[str, Tensor]:
    """Each per-image tensor's rows for the prompts (one image row per prompt). A group whose
    prompts all come from one image keeps batch 1, so the decoder shares that embedding across
    them as it does for one image's prompts; consecutive images with one prompt each are a view
    (no copy: SAM 2's high-resolution features are 12 MB per image at 1024 px)."""
    first, n = int(rows[0]), rows.numel()
    if bool((rows == first).all()):
        return {name: t[first:first + 1] for name, t in tensors.items()}
    if torch.equal(rows, torch.arange(first, first + n, device=rows.device)):
        return {name: t[first:first + n] for name, t in tensors.items()}
    return {name: t.index_select(0, rows) for name, t in tensors.items()}


# -- the predictor-level call, shared by every family ------------------------------------------

class SamStyleBatching:
    """A family part for predictors built on segment_anything's SamPredictor (SAM, the demo
    model, HQ-SAM): prompts through `predictor.transform`, masks through the model's
    postprocess_masks. Subclasses say which tensors the decoder reads and how it is called."""

    @staticmethod
    def encoder_tensors(encoded) -> Dict[str, Tensor]:
        """The decoder's per-image inputs from the image encoder's output on B images."""
        raise NotImplementedError

    @staticmethod
    def predictor_tensors(predictor) -> Dict[str, Tensor]:
        """The same, from a predictor after set_image (batch 1)."""
        raise NotImplementedError

    @staticmethod
    def decode(model, tensors: Dict[str, Tensor], image_pe: Tensor, sparse: Tensor,
               dense: Tensor, multimask_output: bool, *, use_plugins: bool, **options):
        raise NotImplementedError

    @staticmethod
    def masks_per_prompt(multimask_output: bool, **options) -> int:
        return 3 if multimask_output else 1

    @staticmethod
    def prompt_tensors(predictor, prompts: ImagePrompts, original_size) -> PromptTensors:
        """Checked numpy prompts in image pixels -> tensors in the model's input frame."""
        transform, device = predictor.transform, predictor.device
        out = PromptTensors()
        if prompts.point_coords is not None:
            coords = transform.apply_coords(prompts.point_coords, original_size)
            out.point_coords = torch.as_tensor(coords, dtype=torch.float, device=device)
            out.point_labels = torch.as_tensor(prompts.point_labels, dtype=torch.int,
                                               device=device)
        if prompts.boxes is not None:
            boxes = transform.apply_boxes(prompts.boxes, original_size)
            out.boxes = torch.as_tensor(boxes, dtype=torch.float, device=device)
        if prompts.mask_input is not None:
            out.mask_input = torch.as_tensor(prompts.mask_input, dtype=torch.float,
                                             device=device)
        return out

    @staticmethod
    def encode(model, prompts: PromptTensors) -> Tuple[Tensor, Tensor]:
        points = None if prompts.point_coords is None else (prompts.point_coords,
                                                              prompts.point_labels)
        return model.prompt_encoder(points=points, boxes=prompts.boxes, masks=prompts.mask_input)

    @staticmethod
    def postprocess(predictor, low_res: Tensor, input_size, original_size,
                    return_logits: bool) -> Tuple[Tensor, Tensor]:
        """(masks at the original size, low-res logits as predict returns them)."""
        model = predictor.model
        masks = model.postprocess_masks(low_res, input_size, original_size)
        return (masks if return_logits else masks > model.mask_threshold), low_res

    @torch.no_grad()
    def embed_images(self, predictor, images: Sequence[np.ndarray], image_format: str = "RGB",
                     check_image: Optional[Callable[[np.ndarray], None]] = None
                     ) -> EmbeddedImages:
        """SamPredictor.set_image's steps for several images, the encoder run once on all of
        them (each resized so its long side is the input size, then padded: every image gives
        one equally shaped input). The predictor's own image, if one is set, is kept."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be in ['RGB', 'BGR'], is {image_format}.")
        if len(images) == 0:
            raise ValueError("embed_images needs at least one image")
        model = predictor.model
        inputs, input_sizes, original_sizes = [], [], []
        for image in images:
            if check_image is not None:
                check_image(image)
            if image_format != model.image_format:
                image = image[..., ::-1]
            resized = predictor.transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=predictor.device).permute(2, 0, 1)
            inputs.append(model.preprocess(tensor.contiguous()[None]))
            input_sizes.append(tuple(resized.shape[:2]))
            original_sizes.append(tuple(image.shape[:2]))
        encoded = model.image_encoder(torch.cat(inputs))
        return EmbeddedImages(self.encoder_tensors(encoded), input_sizes, original_sizes)

    def predictor_image(self, predictor) -> EmbeddedImages:
        predictor._require_image()
        return EmbeddedImages(self.predictor_tensors(predictor), [tuple(predictor.input_size)],
                              [tuple(predictor.original_size)])


def predictor_image(predictor) -> EmbeddedImages:
    """The image(s) a predictor holds after set_image (SAM 2: or set_image_batch), as an
    EmbeddedImages (join several with EmbeddedImages.cat)."""
    return family_batching(predictor.model).predictor_image(predictor)


@torch.no_grad()
def predict_across_images(
    predictor,
    images: EmbeddedImages,
    prompts: Sequence[ImagePrompts],
    multimask_output: bool = True,
    return_logits: bool = False,
    *,
    use_plugins: bool = True,
    prompt_options: Optional[Dict] = None,
    **decode_options,
) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]]:
    """Masks for every image's prompts, one prompt-encoder and one decoder call per prompt
    structure; see PluginPredictor.predict_across_images. prompt_options go to the family's
    prompt_tensors (SAM 2: normalize_coords), decode_options to its decode (HQ: hq_token_only)."""
    if not isinstance(images, EmbeddedImages):
        raise TypeError(f"images must be EmbeddedImages (from embed_images), "
                        f"got {type(images).__name__}")
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but prompts for {len(prompts)}")
    model = predictor.model
    batching = family_batching(model)
    like = images.tensors["image_embeddings"]
    h, w = like.shape[-2:]
    checked = [p.checked(i) for i, p in enumerate(prompts)]
    for i, p in enumerate(checked):
        if p.mask_input is not None and p.mask_input.shape[-2:] != (4 * h, 4 * w):
            raise ValueError(f"prompts of image {i}: mask_input must be (K, 1, {4 * h}, {4 * w}) "
                             f"for this model, got {p.mask_input.shape}")
    tensors = [batching.prompt_tensors(predictor, p, images.original_sizes[i],
                                       **(prompt_options or {}))
               for i, p in enumerate(checked)]
    image_pe = model.prompt_encoder.get_dense_pe()
    m = batching.masks_per_prompt(multimask_output, **decode_options)
    empty = (like.new_zeros(0, m, 4 * h, 4 * w), like.new_zeros(0, m))

    def decode(rows: Tensor, sparse: Tensor, dense: Tensor):
        return batching.decode(model, select_rows(images.tensors, rows), image_pe, sparse, dense,
                               multimask_output, use_plugins=use_plugins, **decode_options)

    decoded = decode_across_images(tensors, partial(batching.encode, model), decode, empty)
    masks, scores, low_res = [], [], []
    for i, (lr, sc) in enumerate(decoded):
        full, lr = batching.postprocess(predictor, lr, images.input_sizes[i],
                                        images.original_sizes[i], return_logits)
        masks.append(full.cpu().numpy())
        scores.append(sc.float().cpu().numpy())
        low_res.append(lr.float().cpu().numpy())
    return masks, scores, low_res
