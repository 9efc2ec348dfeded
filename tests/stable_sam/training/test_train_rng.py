"""RNG states: what a checkpoint saves brings every generator back."""
import random

import numpy as np
import torch

from stable_sam.training.rng import capture_rng_state, restore_rng_state


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    def draws():
        return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = draws()
    draws()  # move every generator on
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected
