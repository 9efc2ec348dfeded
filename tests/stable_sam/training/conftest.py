"""Fixtures shared by the training tests."""
import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """In-process runs: a fixed reduction order (bit-level comparisons), and the shared CI
    cores stay free."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
