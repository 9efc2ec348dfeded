"""Shared pieces of the ONNX export tests (not a test module): random prompts in the form
segment_anything's exported decoder takes, and PyTorch's answer for them through StableSam's
own path (prompt encoder, StableSam.decode, postprocess_masks), independent of the wrapper."""

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from stable_sam import StableSam


@dataclass
class Prompt:
    coords: torch.Tensor  # (K, 2) points in the model's input frame
    labels: torch.Tensor  # (K,) 1 foreground, 0 background
    box: Optional[torch.Tensor]  # (4,) x0, y0, x1, y1 in the input frame
    mask: Optional[torch.Tensor]  # (1, 1, 4h, 4w) low-res mask logits
    orig_size: tuple  # (H, W) of the original image


def random_prompt(
    model: StableSam, num_points: int, with_box: bool, with_mask: bool, seed: int
) -> Prompt:
    gen = torch.Generator().manual_seed(seed)
    size = model.image_encoder.img_size
    orig = tuple(int(v) for v in torch.randint(size // 2, 2 * size, (2,), generator=gen))
    h, w = ResizeLongestSide.get_preprocess_shape(orig[0], orig[1], size)
    frame = torch.tensor([w, h], dtype=torch.float32)
    coords = torch.rand(num_points, 2, generator=gen) * frame
    labels = torch.randint(0, 2, (num_points,), generator=gen)
    box = None
    if with_box:
        xy0 = torch.rand(2, generator=gen) * frame * 0.5
        box = torch.cat([xy0, xy0 + 4 + torch.rand(2, generator=gen) * frame * 0.5])
    grid = model.prompt_encoder.image_embedding_size
    mask = None
    if with_mask:
        mask = torch.randn(1, 1, 4 * grid[0], 4 * grid[1], generator=gen) * 4
    return Prompt(coords, labels, box, mask, orig)


def onnx_feeds(embedding: torch.Tensor, prompt: Prompt, model: StableSam) -> Dict[str, np.ndarray]:
    """The exported decoder's inputs, as segment_anything's ONNX example builds them: box
    corners as points labelled 2 and 3, or a padding point labelled -1 without a box."""
    if prompt.box is not None:
        extra = prompt.box.view(2, 2)
        extra_labels = torch.tensor([2, 3])
    else:
        extra = torch.zeros(1, 2)
        extra_labels = torch.tensor([-1])
    coords = torch.cat([prompt.coords, extra])[None]
    labels = torch.cat([prompt.labels, extra_labels])[None].to(torch.float32)
    grid = model.prompt_encoder.image_embedding_size
    mask = prompt.mask if prompt.mask is not None else torch.zeros(1, 1, 4 * grid[0], 4 * grid[1])
    return {
        "image_embeddings": embedding.numpy(),
        "point_coords": coords.numpy().astype(np.float32),
        "point_labels": labels.numpy(),
        "mask_input": mask.numpy(),
        "has_mask_input": np.array([1.0 if prompt.mask is not None else 0.0], np.float32),
        "orig_im_size": np.array(prompt.orig_size, np.float32),
    }


@torch.no_grad()
def torch_outputs(
    model: StableSam, embedding: torch.Tensor, prompt: Prompt, use_plugins: bool = True
) -> Dict[str, torch.Tensor]:
    """All four masks in SAM's token order (single-mask token first, then the three multimask
    outputs), from two StableSam.decode calls: low_res (1, 4, 4h, 4w), iou (1, 4), masks
    (1, 4, H, W) logits at the original size."""
    sparse, dense = model.prompt_encoder(
        points=(prompt.coords[None], prompt.labels[None]),
        boxes=prompt.box[None] if prompt.box is not None else None,
        masks=prompt.mask,
    )
    pe = model.prompt_encoder.get_dense_pe()
    single = model.decode(embedding, pe, sparse, dense, False, use_plugins=use_plugins)
    multi = model.decode(embedding, pe, sparse, dense, True, use_plugins=use_plugins)
    low_res = torch.cat([single[0], multi[0]], dim=1)
    size = model.image_encoder.img_size
    input_size = ResizeLongestSide.get_preprocess_shape(*prompt.orig_size, size)
    masks = model.postprocess_masks(low_res, input_size, prompt.orig_size)
    return {"low_res": low_res, "iou": torch.cat([single[1], multi[1]], dim=1), "masks": masks}
