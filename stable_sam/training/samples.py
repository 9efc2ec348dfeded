"""The training samples: which images a run reads, how each becomes an augmented image, its mask
and one prompt, and in which order an epoch serves them to this process."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from . import baselines
from .._config_fields import check_known_fields
from .config import TrainConfig
from .distributed import DistContext
from .signals import ignore_sigterm

__all__ = ["TrainingSamples", "load_datasets", "collate", "batches_for_epoch", "epoch_loader",
           "closing_batches"]


def _rts_config(config: TrainConfig, spec: baselines.MethodSpec, image_size: int):
    from ..data.prompts import RTSConfig, WITHOUT_RTS

    fields = dict(config.rts)
    if not spec.robust_prompts:
        fields.update(WITHOUT_RTS)
    fields["model_image_size"] = image_size  # coarse-mask logits must match this model's input
    check_known_fields(RTSConfig, fields, "rts (RTSConfig)")
    if "noisy_box_iou_range" in fields:
        fields["noisy_box_iou_range"] = tuple(fields["noisy_box_iou_range"])
    return RTSConfig(**fields)


def _data_pairs(folder: str) -> List[Tuple[Path, Path]]:
    """`folder` with im/ and gt/ (DIS5K, the synthetic sets), or one folder holding both the
    .jpg images and the .png masks (cascade_psp's DUTS-TR, ECSSD, ...)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder not found: {root}")
    if (root / "im").is_dir():
        return [(root / "im", root / "gt")]
    return [(root, root)]


def load_datasets(config: TrainConfig) -> List[Any]:
    from ..data.hqseg import HQSegDataset

    datasets = [HQSegDataset(_data_pairs(folder), name=f"train{i}-{Path(folder).name}")
                for i, folder in enumerate(config.data)]
    if config.hqseg44k_root is not None:
        from ..data.hqseg import hqseg44k_datasets

        datasets += hqseg44k_datasets(config.hqseg44k_root, "train")
    if not datasets:
        raise ValueError("no training data: give data folders or hqseg44k_root "
                         "(stable-sam train --data DIR ... / --hqseg44k-root DATA_ROOT)")
    return datasets


class TrainingSamples(torch.utils.data.Dataset):
    """(epoch, index) -> one augmented image, its mask and one prompt, all drawn from generators
    keyed by (seed, dataset, image, epoch): the same sample whichever worker or process builds it
    (one prompt per image per epoch: `prompt_index` is the epoch)."""

    def __init__(self, datasets: Sequence[Any], config: TrainConfig, image_size: int):
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.config = config
        self.rts = _rts_config(config, baselines.get_method(config.method), image_size)
        self.image_size = image_size

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> Tuple[int, int]:
        d = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return d, index - int(self.offsets[d])

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        from ..data.occlusion import synthesize_occlusion
        from ..data.prompts import prompt_rng, sample_training_prompt

        epoch, index = key
        d, local = self.locate(index)
        dataset = self.datasets[d]
        item = dataset[local]

        def rng(stream: str) -> np.random.Generator:
            return prompt_rng(dataset.name, local, epoch, self.config.seed, stream=stream)

        if not item["mask"].any():
            raise ValueError(f"training image {item['name']!r} (#{local} of {dataset.name}) has an "
                             "empty mask: every training image needs a foreground object")
        image, mask = self._geometry(item["image"], item["mask"], rng("jitter"),
                                     f"{item['name']!r} (#{local} of {dataset.name})")
        occlusion_rng = rng("occlusion")
        occluded = len(self) > 1 and occlusion_rng.uniform() < self.rts.occlusion_probability
        if occluded:
            other = int(occlusion_rng.integers(len(self) - 1))
            other += other >= index  # any image but this one
            od, olocal = self.locate(other)
            occluder = self.datasets[od][olocal]
            image, mask = synthesize_occlusion(image, mask, occluder["image"],
                                               occluder["mask"], occlusion_rng)
        prompt = sample_training_prompt(mask, rng("prompt"), self.rts,
                                        image_size=(self.image_size, self.image_size))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),  # (3, S, S)
            "mask": torch.from_numpy(mask)[None],  # (1, S, S) bool
            "prompt": _prompt_to_tensors(prompt),
            "kind": prompt.kind,
            # the same image at every epoch (no jitter, no occluder): its embedding can be kept
            "reusable_image": not occluded and not self.config.lsj,
        }

    def _geometry(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  what: str):
        """LSJ onto the S x S canvas, or resize-longest-side + pad; never an empty target."""
        from ..data.transforms import large_scale_jitter, pad_bottom_right, resize_longest_side

        size = self.image_size
        if self.config.lsj:
            # A large scale can crop the object away; redraw (same generator, so still
            # reproducible), then fall back to the plain resize.
            for _ in range(10):
                j = large_scale_jitter(image, mask, rng, size, tuple(self.config.lsj_scale))
                if j.mask.any():
                    return j.image, j.mask
        image = pad_bottom_right(resize_longest_side(image, size), size)
        mask = pad_bottom_right(resize_longest_side(mask, size), size, False)
        if not mask.any():
            raise ValueError(f"the mask of training image {what} vanished when resized to the "
                             "model input size (the object is too small for it)")
        return image, mask


def _prompt_to_tensors(prompt: Any) -> Dict[str, Optional[Tensor]]:
    def t(x):
        return None if x is None else torch.from_numpy(np.asarray(x))

    mask_input = t(prompt.mask_input)
    return {
        "point_coords": t(prompt.point_coords),  # (k, 2) xy in the S x S input frame
        "point_labels": t(prompt.point_labels),  # (k,)
        "box": t(prompt.box),  # (4,) xyxy
        "mask_input": None if mask_input is None else mask_input[None],  # (1, S/4, S/4) logits
    }


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "image": torch.stack([it["image"] for it in items]),  # (B, 3, S, S) uint8
        "mask": torch.stack([it["mask"] for it in items]),  # (B, 1, S, S) bool
        "prompts": [it["prompt"] for it in items],
        "kinds": [it["kind"] for it in items],
        "reusable_images": [it["reusable_image"] for it in items],
    }


def batches_for_epoch(num_samples: int, epoch: int, start_batch: int, steps_per_epoch: int,
                      config: TrainConfig, ctx: DistContext) -> List[List[Tuple[int, int]]]:
    sampler = DistributedSampler(range(num_samples), num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = list(sampler)
    bs = config.batch_size
    return [[(epoch, i) for i in order[b * bs:(b + 1) * bs]]
            for b in range(start_batch, steps_per_epoch)]


def epoch_loader(samples: TrainingSamples, step: int, total_steps: int, steps_per_epoch: int,
                 config: TrainConfig, ctx: DistContext, pin_memory: bool) -> DataLoader:
    """This process's batches from 0-based `step` to the end of its epoch or of the run."""
    epoch, start_batch = divmod(step, steps_per_epoch)
    batches = batches_for_epoch(len(samples), epoch, start_batch, steps_per_epoch, config, ctx)
    batches = batches[: total_steps - step]
    # Its own generator: creating a loader draws a worker base seed, which must not come
    # from (and shift) the global RNG, or a resumed run would drift from an uninterrupted one.
    loader_rng = torch.Generator().manual_seed(config.seed * 100003 + epoch)
    return DataLoader(samples, batch_sampler=batches, num_workers=config.num_workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      generator=loader_rng, worker_init_fn=ignore_sigterm)


def closing_batches(loader: DataLoader) -> Iterator[Dict[str, Any]]:
    """The loader's batches; however the iteration ends (exhausted, an error, a break), its
    workers are shut down before this returns. They ignore SIGTERM (see `signals`), so a worker
    left behind would block the interpreter's exit for ever: multiprocessing terminates its
    children with SIGTERM at exit and then waits for them."""
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        workers = list(getattr(iterator, "_workers", []))
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # asks each worker to finish, waits a little, then SIGTERMs (ignored)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
