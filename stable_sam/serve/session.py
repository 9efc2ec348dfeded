"""The demo server's model side: one StableSam, a small LRU cache of image embeddings, and the
four things the page asks for (a prompt's masks, the shake, the worst box, a bundled scene).

SAM and Stable-SAM share the embedding: SAM is the same model's decoder with the plugins off
(`use_plugins=False`), so one `set_image` per image serves both panels and every prompt after
it. The predictor holds one image at a time, so every model call runs under `lock`, with the
cached embedding put back into the predictor first.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict

import numpy as np
import torch

from ..prompting import predict_best
from ..data.prompts import gt_box, noisy_box
from ..evaluation.box_decoding import PredictorBoxDecoder
from ..evaluation.coco import rle_json
from ..evaluation.metrics import mask_iou, stability_score
from ..evaluation.worst_box import WorstBoxConfig, search_worst_boxes
from ..families import predictor_for
from . import encoding
from .prompts import PromptError, validate_box, validate_prompts

MODELS = (("sam", False), ("stable_sam", True))  # (name in the API, use_plugins)
SHAKE_BOXES = 20  # the paper's protocol: 20 noisy boxes per target
SHAKE_NOISE_SCALE = 0.4  # ... at noise scale 0.4
# The shake's masks are made at most this many pixels on a side (the image scaled down, aspect
# kept): 2 x 20 masks of a 40 Mpx upload at full size take gigabytes and tens of seconds under
# the model lock. SAM predicts 256x256 logits in a 1024 px frame, so nothing is lost at 1024.
SHAKE_MAX_SIDE = 1024
# The worst box: SAM's (plugins off) lowest-IoU box among those with IoU >= WORST_BOX_TAU to the
# page's box (or the scene target's), searched with the evaluation's defaults but a tighter time
# budget, since it holds the model lock: on the demo model a scene takes well under a second,
# and a 1024 px model on a large upload stops at the budget. Its masks are made at the shake's
# size (SHAKE_MAX_SIDE), so an upload's size does not scale the work.
WORST_BOX_TAU = 0.5
WORST_BOX_CONFIG = WorstBoxConfig(time_budget_s=5.0)
# Attributes SamPredictor.set_image fills (HQ-SAM's predictor adds its early features).
_EMBEDDING_ATTRIBUTES = ("features", "interm_features", "original_size", "input_size")


class UnknownImageError(KeyError):
    """An image id that is not (or no longer) in the cache."""

    def __str__(self) -> str:
        return (f"image {self.args[0]!r} is not loaded on the server (it may have been evicted "
                "by newer images): upload it or pick the scene again")


class DemoSession:
    """The model and its embedding cache; thread-safe (the model runs one call at a time)."""

    def __init__(self, model, cache_size: int = 4, top_k: int = 16) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, is {cache_size}")
        self.model = model
        self.predictor = predictor_for(model)
        self.device = next(model.parameters()).device
        self.cache_size = cache_size
        self.top_k = top_k
        self.lock = threading.Lock()
        self._cache: OrderedDict[str, dict] = OrderedDict()
        # Ids are keyed by a secret of this process: the same pixels get the same id (and reuse
        # their embedding), but no one who has only the pixels can name a loaded image.
        self._id_key = secrets.token_bytes(32)

    # -- images ---------------------------------------------------------------------------------

    def add_image(self, image: np.ndarray, target: np.ndarray | None = None) -> dict:
        """Embeds an RGB uint8 HxWx3 image (once: a known image only becomes the most recently used)
        and returns {image_id, width, height}. `target` (a bundled scene's target mask, bool HxW)
        is what the worst box searches against when the page has no box."""
        digest = hmac.new(self._id_key, np.ascontiguousarray(image).tobytes(), hashlib.sha256)
        digest.update(repr(image.shape).encode())
        image_id = digest.hexdigest()[:20]
        with self.lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                if target is not None:
                    self._cache[image_id]["target"] = target
            else:
                with torch.inference_mode():
                    self.predictor.set_image(image)
                self._cache[image_id] = {
                    "image": image,
                    "embedding": {name: getattr(self.predictor, name)
                                  for name in _EMBEDDING_ATTRIBUTES
                                  if hasattr(self.predictor, name)},
                    "target": target,
                }
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return {"image_id": image_id, "width": int(image.shape[1]), "height": int(image.shape[0])}

    def cached_ids(self) -> list[str]:
        with self.lock:
            return list(self._cache)

    def image(self, image_id: str) -> np.ndarray:
        with self.lock:
            return self._entry(image_id)["image"]

    def _entry(self, image_id: str) -> dict:
        try:
            return self._cache[image_id]
        except KeyError:
            raise UnknownImageError(image_id) from None

    def _activate(self, image_id: str) -> np.ndarray:
        """Puts the cached embedding into the predictor (caller holds the lock)."""
        entry = self._entry(image_id)
        self._cache.move_to_end(image_id)
        for name, value in entry["embedding"].items():
            setattr(self.predictor, name, value)
        self.predictor.is_image_set = True
        return entry["image"]

    # -- prompts --------------------------------------------------------------------------------

    def predict(self, image_id: str, box=None, points=None) -> dict:
        """SAM's and Stable-SAM's mask for one prompt (a box and/or clicks), with the mask as a
        PNG and as COCO RLE, the predicted IoU, and layer 2's sampling points of the top-k
        most-attended image tokens (what `stable-sam visualize` draws)."""
        start = time.perf_counter()
        with self.lock:
            image = self._activate(image_id)
            prompts = validate_prompts(box, points, image.shape)
            with torch.inference_mode():
                views = {name: predict_best(self.predictor, prompts, False, use_plugins=use,
                                       return_extras=True)
                         for name, use in MODELS}
        models = {}
        for name, (mask, score, extras) in views.items():
            models[name] = {
                "score": score,
                "area": int(mask.sum()),
                "mask_png": encoding.mask_png_data_url(mask),
                "rle": rle_json(mask),
                "sampling": self._sampling_view(extras),
            }
        models["stable_sam"]["alpha"] = [float(a) for a in views["stable_sam"][2]["alpha"]]
        return {"image_id": image_id, "models": models,
                "elapsed_ms": round(1000 * (time.perf_counter() - start), 1)}

    def _sampling_view(self, extras: dict) -> dict:
        """Top-k tokens by layer-2 attention and their sampling points in image pixels."""
        from ..commands.visualize import _to_image_pixels

        attention = extras["attention"]
        locations = extras["sampling_locations"]
        order = np.argsort(-attention, axis=None)[: self.top_k]
        rows, cols = np.unravel_index(order, attention.shape)
        points = _to_image_pixels(locations[rows, cols], attention.shape,
                                  self.predictor.input_size, self.predictor.original_size,
                                  self.model.image_encoder.img_size)
        return {"points": np.round(points, 2).tolist(),
                "weights": [float(w) for w in attention[rows, cols]]}

    def shake(self, image_id: str, box, seed: int = 0, count: int = SHAKE_BOXES) -> dict:
        """The paper's Figure 1 on the user's box: `count` noisy boxes around it (scale 0.4, no
        IoU filter, as the evaluation draws them), both models' masks for each, how often each
        pixel is covered (a PNG, 255 = every mask) and the stability score mSF. The masks, the
        PNG and mSF are at the image's size, or scaled down to SHAKE_MAX_SIDE on the long side
        (`mask_size`, [width, height]): the cost is bounded whatever the upload's size."""
        start = time.perf_counter()
        with self.lock:
            image = self._activate(image_id)
            height, width = image.shape[:2]
            user_box = validate_box(box, image.shape)
            rng = np.random.default_rng(int(seed))
            boxes = np.stack([noisy_box(user_box, rng, SHAKE_NOISE_SCALE, (0.0, 1.0),
                                        (height, width)) for _ in range(count)])
            frame_boxes = self.predictor.transform.apply_boxes(boxes, (height, width))
            frame_boxes = torch.as_tensor(frame_boxes, dtype=torch.float, device=self.device)
            mask_size = shake_mask_size(height, width)
            with torch.inference_mode(), _masks_made_at(self.predictor, mask_size):
                masks = {name: self.predictor.predict_torch(None, None, frame_boxes,
                                                            multimask_output=False,
                                                            use_plugins=use)[0][:, 0]
                         .cpu().numpy() for name, use in MODELS}
        models = {name: {"stability": stability_score(m),
                         "frequency_png": encoding.frequency_png_data_url(m)}
                  for name, m in masks.items()}
        return {"image_id": image_id, "boxes": boxes.round(2).tolist(), "models": models,
                "mask_size": [mask_size[1], mask_size[0]],
                "noise_scale": SHAKE_NOISE_SCALE, "seed": int(seed),
                "elapsed_ms": round(1000 * (time.perf_counter() - start), 1)}

    def worst_box(self, image_id: str, box=None, tau: float = WORST_BOX_TAU) -> dict:
        """SAM's worst box near the page's box: among the boxes inside the image with IoU >= tau
        to it, the one whose SAM mask (plugins off) agrees least with the reference, found by
        the evaluation's gradient search (stable_sam.evaluation.worst_box); both models' masks
        on it and their IoUs with the reference. The reference is the scene's target when no
        box is given ("target": the box is the target's tight box), else each model's own mask
        for the given box ("box": how far the worst box moves each model's answer). Masks and
        IoUs at `mask_size` (the shake's bound)."""
        start = time.perf_counter()
        with self.lock:
            image = self._activate(image_id)
            height, width = image.shape[:2]
            size = shake_mask_size(height, width)
            decoders = {name: PredictorBoxDecoder(self.predictor, use_plugins=use)
                        for name, use in MODELS}
            if box is None:
                target = self._cache[image_id].get("target")
                if target is None:
                    raise PromptError("the worst box needs a box: drag one on the image (or load "
                                      "a scene, whose target it then uses)")
                centre = gt_box(target).astype(np.float64)
                references = {name: _resized_mask(target, size) for name, _ in MODELS}
            else:
                centre = validate_box(box, image.shape)
                references = {name: d.masks(centre[None], size)[0]
                              for name, d in decoders.items()}
            (found,) = search_worst_boxes(decoders["sam"], references["sam"], centre, (tau,),
                                          WORST_BOX_CONFIG, seed=0, score_size=size)
            worst = np.array(found["box_min"])
            masks = {name: d.masks(np.stack([worst, centre]), size)
                     for name, d in decoders.items()}
        models = {name: {"iou": mask_iou(m[0], references[name]),
                         "iou_base": mask_iou(m[1], references[name]),
                         "mask_png": encoding.mask_png_data_url(m[0])}
                  for name, m in masks.items()}
        return {"image_id": image_id, "reference": "target" if box is None else "box",
                "tau": tau, "box": [round(float(v), 2) for v in centre],
                "worst_box": [float(v) for v in worst], "box_iou": found["box_iou_min"],
                "models": models, "mask_size": [size[1], size[0]], "steps": found["steps"],
                "truncated": found["truncated"],
                "elapsed_ms": round(1000 * (time.perf_counter() - start), 1)}


def _resized_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask at (height, width) `size` (area share > 1/2), itself when already there."""
    if mask.shape == tuple(size):
        return mask
    import cv2

    return cv2.resize(mask.astype(np.float32), (size[1], size[0]),
                      interpolation=cv2.INTER_AREA) > 0.5


def shake_mask_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the shake's masks: the image's, scaled to SHAKE_MAX_SIDE on the long
    side when it is larger (rounded as SAM rounds its own resize)."""
    if max(height, width) <= SHAKE_MAX_SIDE:
        return height, width
    scale = SHAKE_MAX_SIDE / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@contextlib.contextmanager
def _masks_made_at(predictor, size: tuple[int, int]):
    """The predictor's masks come out at `size`: every family's predictor upsamples its logits
    to `original_size` (prompts are already in the model's frame, so nothing else reads it)."""
    original = predictor.original_size
    predictor.original_size = tuple(size)
    try:
        yield
    finally:
        predictor.original_size = original


def scene_image(index: int, num_scenes: int) -> tuple[np.ndarray, list[float]]:
    """Held-out generated scene `index` of `num_scenes` (the demo model never trained on them)
    and a casual box on its target (`casual_prompts`: noisy, from seed 0, loose by rule)."""
    image, box, _ = scene_with_target(index, num_scenes)
    return image, box


def scene_with_target(index: int, num_scenes: int) -> tuple[np.ndarray, list[float], np.ndarray]:
    """scene_image's (image, casual box) and the scene's target mask (bool HxW)."""
    from ..commands.demo import casual_prompts
    from ..data.scenes import held_out_scene

    if not 0 <= index < num_scenes:
        raise PromptError(f"scene {index} does not exist: pick 0 to {num_scenes - 1}")
    scene = held_out_scene(index)
    target = np.asarray(scene.masks[scene.target], bool)
    box, _ = casual_prompts(target)
    return scene.image, [round(float(v), 1) for v in box], target
