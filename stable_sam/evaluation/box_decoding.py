"""Box prompts -> mask logits, differentiable in the box's four coordinates, for every base family.

The worst-case box search (`stable_sam.evaluation.worst_box`) needs the gradient of a mask with
respect to the box that prompted it. The predictors' `predict_torch` runs under `no_grad` and
takes its boxes through numpy, so the search decodes through the family's own prompt-batching
part instead (`stable_sam.families.batched_prompts.family_batching`: SAM, the demo model,
HQ-SAM, SAM 2), which is what `predict_across_images` runs: the same prompt encoder, decoder and
mask upsampling as `predict_torch`, without the `no_grad`. The box enters the model's input frame
through the affine map that the predictor's own `transform.apply_boxes` is, measured on it once,
so no family's resize is re-implemented here.

Only the box requires a gradient: the image tensors are copied out of the predictor (a cached
embedding made under `torch.inference_mode` cannot be saved for backward), and the search asks
autograd for the box's gradient alone, so no parameter's `.grad` is written.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from stable_sam.families.batched_prompts import ImagePrompts, PromptTensors, family_batching


class BoxDecoder(Protocol):
    """What the search needs of a model on one image (a stand-in model in the tests is one too).

    image_size: (H, W) of the image; boxes are xyxy in its pixels.
    mask_threshold: a mask is logits > mask_threshold.
    low_res_size: (h, w) of the frame the soft IoU is computed in.
    """

    image_size: tuple[int, int]
    mask_threshold: float
    low_res_size: tuple[int, int]

    def low_res(self, boxes: Tensor) -> Tensor:
        """Single-mask logits (N, 1, h', w') of boxes (N, 4) in the model's own low-res frame;
        differentiable in `boxes` where grad mode is on."""
        ...

    def resize(self, low_res: Tensor, size: tuple[int, int]) -> Tensor:
        """low_res's logits in the image's frame at `size` (h, w): (N, h, w)."""
        ...

    def masks(self, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """bool (K, *size) masks of boxes (K, 4), exactly as the evaluation predicts them."""
        ...


def image_frame_size(image_size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(h, w) of the image scaled so its long side is `long_side` (never enlarged), rounded as
    SAM's ResizeLongestSide rounds."""
    height, width = image_size
    scale = min(1.0, long_side / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _frame_map(batching, predictor, original_size) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) (4,) with frame_box = box * scale + offset, read off the family's own
    numpy path on three boxes (ValueError if that path is not affine)."""
    probes = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [3, 5, 11, 13]], np.float64)
    mapped = batching.prompt_tensors(predictor, ImagePrompts(boxes=probes),
                                     original_size).boxes.double().cpu().numpy()
    offset, scale = mapped[0], mapped[1] - mapped[0]
    if not np.allclose(mapped[2], probes[2] * scale + offset, rtol=1e-5, atol=1e-4):
        raise ValueError("the predictor's box transform is not affine; the worst-box search "
                         "cannot take its gradient")
    return scale, offset


class PredictorBoxDecoder:
    """A BoxDecoder over a Stable-SAM predictor of any family that holds an image (after
    set_image), with the plugins on or off.

    Arguments:
      predictor: `stable_sam.predictor_for(model)` (StableSamPredictor, StableHQSamPredictor,
        StableSam2ImagePredictor); a base package's own predictor has no plugin switch and is
        refused.
      use_plugins: False decodes plain SAM (the same decoder path, regular keys).
      low_res_side: the soft IoU frame's long side; default the model's low-res logits' side
        (4 x the embedding's, 256 for a 1024 px model).
    """

    def __init__(self, predictor, use_plugins: bool = True, low_res_side: int | None = None):
        model = predictor.model
        try:
            self.batching = family_batching(model)
        except TypeError as exc:
            raise TypeError(f"the worst-box search needs a Stable-SAM predictor "
                            f"(stable_sam.predictor_for(model)), got {type(predictor).__name__} "
                            f"({exc})") from None
        image = self.batching.predictor_image(predictor)
        self.predictor, self.model, self.use_plugins = predictor, model, use_plugins
        # copies: a cached embedding made under inference_mode is an inference tensor, which
        # autograd refuses to save for backward should a family's decoder op need it
        self.tensors = {name: t.clone() for name, t in image.tensors.items()}
        self.input_size, self.image_size = image.input_sizes[0], tuple(image.original_sizes[0])
        # SAM2ImagePredictor keeps the threshold itself; SamPredictor reads its model's
        self.mask_threshold = float(predictor.mask_threshold if hasattr(predictor, "mask_threshold")
                                    else model.mask_threshold)
        with torch.no_grad():
            self.image_pe = model.prompt_encoder.get_dense_pe().clone()
        side = 4 * self.tensors["image_embeddings"].shape[-1]
        self.low_res_size = image_frame_size(self.image_size, low_res_side or side)
        scale, offset = _frame_map(self.batching, predictor, self.image_size)
        device = self.tensors["image_embeddings"].device
        self.scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
        self.offset = torch.as_tensor(offset, dtype=torch.float32, device=device)

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def _decode(self, frame_boxes: Tensor) -> Tensor:
        sparse, dense = self.batching.encode(self.model, PromptTensors(boxes=frame_boxes))
        low_res, _ = self.batching.decode(self.model, self.tensors, self.image_pe, sparse, dense,
                                          False, use_plugins=self.use_plugins)
        return low_res

    def low_res(self, boxes: Tensor) -> Tensor:
        return self._decode(boxes.to(self.scale) * self.scale + self.offset)

    def resize(self, low_res: Tensor, size: tuple[int, int]) -> Tensor:
        full, _ = self.batching.postprocess(self.predictor, low_res, self.input_size, tuple(size),
                                            True)
        return full[:, 0]

    @torch.no_grad()
    def masks(self, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        # the evaluation's own entry: float32 boxes through the predictor's numpy transform
        frame = self.predictor.transform.apply_boxes(np.asarray(boxes, np.float32).reshape(-1, 4),
                                                     self.image_size)
        frame = torch.as_tensor(frame, dtype=torch.float, device=self.scale.device)
        return (self.resize(self._decode(frame), size) > self.mask_threshold).cpu().numpy()
