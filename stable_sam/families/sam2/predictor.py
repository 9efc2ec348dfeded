"""StableSam2ImagePredictor: sam2's SAM2ImagePredictor interface over a StableSam2."""

import contextlib
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .build import import_sam2
from .model import StableSam2

SAM2ImagePredictor = import_sam2("sam2.sam2_image_predictor").SAM2ImagePredictor


@contextlib.contextmanager
def quiet_sam2_transforms() -> Iterator[None]:
    """A context in which SAM2ImagePredictor is made without torch's FutureWarning about
    torch.jit.script, which its SAM2Transforms calls: a warning about sam2's code that the
    caller can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        yield


class Sam2InputFrame:
    """Prompts in original-image pixels -> SAM 2's input frame (the image stretched to the
    square input), with the method names of segment_anything's ResizeLongestSide, so that code
    written for SamPredictor.transform (the evaluation protocol, the demo server) works."""

    def __init__(self, img_size: int) -> None:
        self.img_size = img_size

    def apply_coords(self, coords: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        h, w = original_size
        scale = np.array([self.img_size / w, self.img_size / h])
        return np.asarray(coords, dtype=np.float64) * scale

    def apply_boxes(self, boxes: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        boxes = self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size)
        return boxes.reshape(-1, 4)


class StableSam2ImagePredictor(SAM2ImagePredictor):
    """Drop-in for sam2.sam2_image_predictor.SAM2ImagePredictor: the same constructor, methods
    (set_image, set_image_batch, predict, predict_batch, get_image_embedding, reset_predictor),
    arguments (normalize_coords included), defaults and returns. Masks come from Stable-SAM's
    decoder on SAM 2; trailing keyword-only switches: `use_plugins=False` gives plain SAM 2,
    `return_extras=True` appends the plug-in state (see StableSam2.decode) as a numpy dict
    (predict) or a list of them, one per image (predict_batch).

    For code written against SamPredictor it also has `predict_torch` (prompts already in the
    input frame), `transform` (a Sam2InputFrame), `input_size`, `original_size`, `features`
    and `is_image_set`.

    Arguments:
      sam_model (StableSam2): the model; mask_threshold, max_hole_area, max_sprinkle_area: as
        SAM2ImagePredictor.
    """

    def __init__(self, sam_model: StableSam2, mask_threshold: float = 0.0,
                 max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0, **kwargs) -> None:
        if not isinstance(sam_model, StableSam2):
            raise TypeError(
                f"{type(self).__name__} needs a StableSam2 model, got "
                f"{type(sam_model).__name__}; use sam2's SAM2ImagePredictor for a plain SAM2Base")
        with quiet_sam2_transforms():
            super().__init__(sam_model, mask_threshold=mask_threshold,
                             max_hole_area=max_hole_area, max_sprinkle_area=max_sprinkle_area,
                             **kwargs)
        encoding = sam_model.image_encoder
        self._bb_feat_sizes = encoding.feature_sizes()
        self.transform = Sam2InputFrame(encoding.img_size)
        self.input_size = (encoding.img_size, encoding.img_size)

    # -- images ----------------------------------------------------------------------------------
    @torch.no_grad()
    def set_image(self, image) -> None:
        """SAM2ImagePredictor.set_image: an HxWx3 RGB uint8 array or a PIL image."""
        if isinstance(image, np.ndarray):
            orig_hw = tuple(image.shape[:2])
        elif hasattr(image, "size") and hasattr(image, "mode"):  # PIL: size is (w, h)
            orig_hw = (image.size[1], image.size[0])
        else:
            raise NotImplementedError("Image format not supported")
        self.reset_predictor()
        self._features = self.model.image_encoder(self._transforms(image)[None].to(self.device))
        self._orig_hw = [orig_hw]
        self._is_image_set = True

    @torch.no_grad()
    def set_image_batch(self, image_list: List[np.ndarray]) -> None:
        """SAM2ImagePredictor.set_image_batch: a list of HxWx3 RGB uint8 arrays."""
        if not isinstance(image_list, list) or not all(
                isinstance(image, np.ndarray) for image in image_list):
            raise TypeError("set_image_batch takes a list of HxWx3 RGB np.ndarray images")
        self.reset_predictor()
        batch = self._transforms.forward_batch(image_list).to(self.device)
        self._features = self.model.image_encoder(batch)
        self._orig_hw = [tuple(image.shape[:2]) for image in image_list]
        self._is_image_set = True
        self._is_batch = True

    # SamPredictor's names for the state, so code that caches embeddings works unchanged
    @property
    def features(self):
        return self._features

    @features.setter
    def features(self, value) -> None:
        self._features = value

    @property
    def original_size(self) -> Optional[Tuple[int, int]]:
        return None if not self._orig_hw else tuple(self._orig_hw[-1])

    @original_size.setter
    def original_size(self, value: Tuple[int, int]) -> None:
        self._orig_hw = [tuple(value)]

    @property
    def is_image_set(self) -> bool:
        return self._is_image_set

    @is_image_set.setter
    def is_image_set(self, value: bool) -> None:
        self._is_image_set = value

    # -- prediction ------------------------------------------------------------------------------
    def predict(self, point_coords: Optional[np.ndarray] = None,
                point_labels: Optional[np.ndarray] = None, box: Optional[np.ndarray] = None,
                mask_input: Optional[np.ndarray] = None, multimask_output: bool = True,
                return_logits: bool = False, normalize_coords: bool = True, *,
                use_plugins: bool = True, return_extras: bool = False):
        """SAM2ImagePredictor.predict: masks (CxHxW), scores (C), low-res logits (Cx4hx4w) as
        numpy (a leading B with B boxes); with return_extras also a dict of numpy arrays."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        mask_input, coords, labels, boxes = self._prep_prompts(
            point_coords, point_labels, box, mask_input, normalize_coords)
        out = self._predict(coords, labels, boxes, mask_input, multimask_output,
                            return_logits=return_logits, use_plugins=use_plugins,
                            return_extras=return_extras)
        return _as_numpy(out, return_extras)

    def predict_batch(self, point_coords_batch: Optional[List[np.ndarray]] = None,
                      point_labels_batch: Optional[List[np.ndarray]] = None,
                      box_batch: Optional[List[np.ndarray]] = None,
                      mask_input_batch: Optional[List[np.ndarray]] = None,
                      multimask_output: bool = True, return_logits: bool = False,
                      normalize_coords: bool = True, *, use_plugins: bool = True,
                      return_extras: bool = False):
        """SAM2ImagePredictor.predict_batch: lists (one entry per image of set_image_batch) of
        masks, scores and low-res logits; with return_extras a fourth list of dicts."""
        if not self._is_batch:
            raise RuntimeError("predict_batch needs images set with .set_image_batch(...)")
        outputs: Tuple[list, ...] = ([], [], [], [])
        for img_idx in range(len(self._features["image_embed"])):
            def pick(batch):
                return None if batch is None else batch[img_idx]

            mask_input, coords, labels, boxes = self._prep_prompts(
                pick(point_coords_batch), pick(point_labels_batch), pick(box_batch),
                pick(mask_input_batch), normalize_coords, img_idx=img_idx)
            out = self._predict(coords, labels, boxes, mask_input, multimask_output,
                                return_logits=return_logits, img_idx=img_idx,
                                use_plugins=use_plugins, return_extras=return_extras)
            for values, value in zip(outputs, _as_numpy(out, return_extras)):
                values.append(value)
        return outputs if return_extras else outputs[:3]

    @torch.no_grad()
    def predict_torch(self, point_coords: Optional[Tensor], point_labels: Optional[Tensor],
                      boxes: Optional[Tensor] = None, mask_input: Optional[Tensor] = None,
                      multimask_output: bool = True, return_logits: bool = False, *,
                      use_plugins: bool = True, return_extras: bool = False):
        """SamPredictor.predict_torch's interface: prompts already in the input frame (see
        `transform`), batched over B prompts (boxes Bx4). Returns masks BxCxHxW, scores BxC,
        low-res logits BxCx4hx4w (+ the extras dict with return_extras)."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        return self._predict(point_coords, point_labels, boxes, mask_input, multimask_output,
                             return_logits=return_logits, use_plugins=use_plugins,
                             return_extras=return_extras)

    @torch.no_grad()
    def _predict(self, point_coords: Optional[Tensor], point_labels: Optional[Tensor],
                 boxes: Optional[Tensor] = None, mask_input: Optional[Tensor] = None,
                 multimask_output: bool = True, return_logits: bool = False,
                 img_idx: int = -1, *, use_plugins: bool = True, return_extras: bool = False):
        """SAM2ImagePredictor._predict with Stable-SAM's decoder: a box becomes two points
        labelled 2 and 3 ahead of the clicks, as SAM 2 encodes it."""
        points = None if point_coords is None else (point_coords, point_labels)
        if boxes is not None:
            box_coords = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device)
            box_labels = box_labels.repeat(box_coords.shape[0], 1)
            if points is None:
                points = (box_coords, box_labels)
            else:
                points = (torch.cat([box_coords, points[0]], dim=1),
                          torch.cat([box_labels, points[1]], dim=1))
        prompt_encoder = self.model.prompt_encoder
        sparse, dense = prompt_encoder(points=points, boxes=None, masks=mask_input)
        features = self._features
        decoded = self.model.decode(
            features["image_embed"][img_idx].unsqueeze(0), prompt_encoder.get_dense_pe(),
            sparse, dense, multimask_output,
            [level[img_idx].unsqueeze(0) for level in features["high_res_feats"]],
            use_plugins=use_plugins, return_extras=return_extras,
        )
        low_res_masks, iou_predictions = decoded[0], decoded[1]
        masks = self._transforms.postprocess_masks(low_res_masks, self._orig_hw[img_idx])
        low_res_masks = torch.clamp(low_res_masks, -32.0, 32.0)  # as SAM 2 returns them
        if not return_logits:
            masks = masks > self.mask_threshold
        return (masks, iou_predictions, low_res_masks) + tuple(decoded[2:])

    # -- prompts on several images, one decoder pass (stable_sam.families.batched_prompts) ------
    def embed_images(self, image_list: List[np.ndarray]):
        """set_image_batch's encoding of several images (HxWx3 RGB uint8 arrays, any sizes), as
        the EmbeddedImages that predict_across_images takes; the predictor's own images stay.
        `batched_prompts.predictor_image(self)` gives the same for the images already set."""
        from ..batched_prompts import family_batching

        return family_batching(self.model).embed_images(self, image_list)

    def predict_across_images(self, images, prompts, multimask_output: bool = True,
                              return_logits: bool = False, normalize_coords: bool = True, *,
                              use_plugins: bool = True):
        """predict_batch with one prompt-encoder and one decoder call per prompt structure
        (number of clicks, box or not, mask input or not) over all images, instead of one
        decoder call per image; the same masks as predict_batch up to float rounding.

        Arguments:
          images (EmbeddedImages): from embed_images, or batched_prompts.predictor_image(self)
            after set_image_batch.
          prompts (sequence of batched_prompts.ImagePrompts): one per image, each with its own
            number K of prompts (boxes (K, 4), clicks (K, P, 2) + labels (K, P), mask inputs
            (K, 1, 4h, 4w)) in that image's pixels (or 0..1 with normalize_coords=False, as
            predict); K = 0 is allowed.
          multimask_output, return_logits, normalize_coords, use_plugins: as predict.

        Returns:
          three lists with one numpy array per image: masks (K, M, H, W), scores (K, M),
          low-res logits (K, M, 4h, 4w); unlike predict_batch, K stays even when it is 1.
        """
        from ..batched_prompts import predict_across_images

        return predict_across_images(
            self, images, prompts, multimask_output, return_logits, use_plugins=use_plugins,
            prompt_options={"normalize_coords": normalize_coords})


def _as_numpy(out, return_extras: bool) -> Tuple:
    """_predict's tensors -> SAM2ImagePredictor.predict's numpy arrays (squeeze(0): one prompt
    loses its batch dim, B boxes keep it), with the extras dict appended when asked for."""
    arrays = tuple(t.squeeze(0).float().detach().cpu().numpy() for t in out[:3])
    if not return_extras:
        return arrays
    extras: Dict[str, np.ndarray] = {
        k: v.squeeze(0).float().detach().cpu().numpy() for k, v in out[3].items()}
    return arrays + (extras,)
