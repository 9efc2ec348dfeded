"""Image embeddings computed once per training image and reused by every later step.

The encoder is frozen in every method this trainer runs, so when the image it sees is the same
every time (no large-scale jitter, no pasted occluders) its embedding is too, and a step can be
decoder-only. Several target masks of one image (one HQSeg pair each) share one embedding:
entries are keyed by the image's bytes, not by the sample.

Embeddings may be a tensor (SAM), a tuple (HQ-SAM: embedding, early features) or a dict (SAM 2:
image_embed, high_res_feats) with tensors of batch N inside; `stack_rows` / `row` walk any
nesting of those.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import Tensor

Embeddings = Any  # a Tensor, or a tuple / list / dict of them, each with the image batch first


def row(embeddings: Embeddings, i: int) -> Embeddings:
    """Image i's part of a batch's embeddings (batch dimension 1, as a copy that owns its
    memory, so a cached row keeps nothing else of the batch alive)."""
    if torch.is_tensor(embeddings):
        return embeddings[i:i + 1].clone()
    if isinstance(embeddings, dict):
        return {k: row(v, i) for k, v in embeddings.items()}
    return type(embeddings)(row(v, i) for v in embeddings)


def stack_rows(rows: List[Embeddings]) -> Embeddings:
    """The batch made of single-image rows, in their order."""
    first = rows[0]
    if torch.is_tensor(first):
        return torch.cat(rows)
    if isinstance(first, dict):
        return {k: stack_rows([r[k] for r in rows]) for k in first}
    return type(first)(stack_rows(list(parts)) for parts in zip(*rows))


def image_key(image: Tensor) -> str:
    """A key for an input image by its bytes (shape and dtype included)."""
    digest = hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16)
    digest.update(repr((tuple(image.shape), str(image.dtype))).encode())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings by image: `lookup(images, encode)` returns the batch's embeddings, encoding
    (in one call, under no_grad) only the images not seen before.

    Arguments:
      device: where the entries are kept (the training device).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.entries: Dict[str, Embeddings] = {}
        self.encoded = 0  # images the encoder has run on, for the log and the tests

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, images: Tensor, encode: Callable[[Tensor], Embeddings],
               cacheable: Sequence[bool]) -> Embeddings:
        """images (B, 3, S, S) on the CPU as the data loader gives them; encode maps a batch of
        them (on self.device) to its embeddings. An image with cacheable False (one that a
        pasted occluder made for this step only) is encoded and not kept."""
        keys = [image_key(image) if keep else None for image, keep in zip(images, cacheable)]
        todo: Dict[Any, int] = {}  # each new image's first position in the batch
        for i, key in enumerate(keys):
            if key is None:
                todo[("step", i)] = i
            elif key not in self.entries and key not in todo:
                todo[key] = i
        fresh_rows: Dict[Any, Embeddings] = {}
        if todo:
            with torch.no_grad():
                fresh = encode(images[list(todo.values())].to(self.device, non_blocking=True))
            for j, key in enumerate(todo):
                fresh_rows[key] = row(fresh, j)
                if not isinstance(key, tuple):
                    self.entries[key] = fresh_rows[key]
            self.encoded += len(todo)
        return stack_rows([fresh_rows[("step", i)] if key is None else self.entries[key]
                           for i, key in enumerate(keys)])
