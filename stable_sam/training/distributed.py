"""Where this process sits among torchrun's processes, its device, and what the processes
exchange: the mean of the step's losses and gathered Python objects."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistContext", "resolve_device", "init_process_group", "mean_over_ranks",
           "gather_from_ranks", "gather_kinds"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a lone process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))



def resolve_device(requested: str, ctx: DistContext) -> torch.device:
    """The device for TrainConfig.device `requested`; "auto" is cuda:LOCAL_RANK, else cpu."""
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and ctx.distributed and device.index is None:
            device = torch.device("cuda", ctx.local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank if ctx.distributed else torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    if not ctx.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def mean_over_ranks(values: Tensor, ctx: DistContext) -> Tensor:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def gather_from_ranks(obj: Any, ctx: DistContext) -> List[Any]:
    """Every rank's `obj`, in rank order (a collective: every rank must call it)."""
    if not ctx.distributed:
        return [obj]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_kinds(kinds: List[str], ctx: DistContext) -> List[str]:
    """The prompt kinds of the whole global batch, rank 0's first."""
    return [k for rank_kinds in gather_from_ranks(list(kinds), ctx) for k in rank_kinds]
