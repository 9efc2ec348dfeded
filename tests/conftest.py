"""Repo-wide test setup: Triton's mode is settled before anything imports it, and every test
starts from the same random state."""
import os

import torch

# Triton chooses between its interpreter and its compiler when @triton.jit functions are
# created, triton.language's own helpers included, so the choice must be made before the first
# import of triton (torch.compile imports it too). Without a GPU the Triton tests run on CPU
# tensors in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
