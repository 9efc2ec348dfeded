"""Flushing denormal floats to zero for the reproduction's CPU work, and only for it.

Trained weights and Adam's moments fill up with denormal floats, which x86 CPUs handle in slow
microcode: a step of the trained demo base took 0.44 s against 0.23 s flushed (2 threads). The
flag is process-wide and torch has no getter for it, so it is turned back off on the way out
(torch's default): code run after a reproduction in the same process, tests included, keeps
IEEE arithmetic.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def denormals_flushed():
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
