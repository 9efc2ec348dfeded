"""The random state of a run: seeded at the start, saved in every checkpoint and restored on
resume (as plain lists and tensors, so checkpoints load with weights_only=True)."""
from __future__ import annotations

import random
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything", "step_generator"]


def capture_rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    # Only this process's own GPU: get_rng_state_all() would open a context on every visible GPU
    # from every rank.
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    on_gpu = device is not None and device.type == "cuda"
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if on_gpu else [],
    }
    return state


def restore_rng_state(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)


def seed_everything(seed: int, rank: int) -> None:
    seed = (seed * 1000003 + rank) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The loss's point-sampling draws for one step: a function of (seed, step, rank) only."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1)[0]))
    return g
