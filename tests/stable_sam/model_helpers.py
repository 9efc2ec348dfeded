"""Shared helpers of the stable_sam model tests (not a test module)."""

import numpy as np
import torch

from stable_sam import StableSam, build_stable_sam


def tiny_model(**kwargs) -> StableSam:
    return build_stable_sam("tiny", **kwargs)


@torch.no_grad()
def perturb_plugins(model: StableSam, seed: int = 0, scale: float = 0.05) -> StableSam:
    """Moves every plugin parameter off its identity init, as training would: offsets of a few
    pixels, amplitudes and routing weights away from 1 and 0.5."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.plugins.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * scale)
    return model


def prompts(model: StableSam, kind: str, n: int, seed: int = 0):
    """(sparse, dense) prompt embeddings of n random boxes or 3-point prompts in the input frame."""
    gen = torch.Generator().manual_seed(seed)
    size = model.image_encoder.img_size
    if kind == "box":
        xy0 = torch.rand(n, 2, generator=gen) * size * 0.5
        boxes = torch.cat([xy0, xy0 + 8 + torch.rand(n, 2, generator=gen) * size * 0.5], dim=1)
        return model.prompt_encoder(points=None, boxes=boxes, masks=None)
    coords = torch.rand(n, 3, 2, generator=gen) * size
    labels = torch.randint(0, 2, (n, 3), generator=gen)
    return model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)


def embedding(model: StableSam, batch: int = 1, seed: int = 0) -> torch.Tensor:
    grid = model.prompt_encoder.image_embedding_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 256, *grid, generator=gen)


def make_image(height: int = 180, width: int = 240, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image with a bright rectangle on a textured background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (220, 180, 40)
    return image


def assert_masks_agree_where_decided(masks: np.ndarray, expected_masks: np.ndarray,
                                     expected_logits: np.ndarray, tol: float) -> None:
    """Thresholded masks of two computations whose logits agree within `tol`: equal at every
    pixel whose expected logit is further than `tol` from the threshold (0). A pixel closer to
    it may fall either side on another CPU's rounding, so an exact comparison there would pass
    or fail by the machine's luck."""
    decided = np.abs(expected_logits) > tol
    assert decided.mean() > 0.99, "almost every pixel should be decided"
    assert np.array_equal(masks[decided], expected_masks[decided])
