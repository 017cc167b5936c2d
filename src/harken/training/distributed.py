"""DistributedDataParallel set-up from torchrun's environment variables (nanoGPT style).

Under ``torchrun --nproc_per_node N -m harken train ...`` the variables RANK, LOCAL_RANK and
WORLD_SIZE are set and training switches to DDP; without them it is a plain single process.
Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_kind: str) -> DistInfo:
    """Initialize the process group when launched by torchrun; a no-op otherwise."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    if not dist.is_initialized():
        cuda = device_kind.startswith("cuda") or (device_kind == "auto" and torch.cuda.is_available())
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend)
    return info


def current() -> DistInfo:
    """The initialized process group's ranks; a single-process DistInfo when there is none."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=dist.get_world_size(),
    )


def teardown(info: DistInfo, *, wait: bool = True) -> None:
    """Destroy the process group; ``wait`` first meets the other ranks at a barrier (skip it
    after an error: the other ranks may never get there, and torchrun stops them anyway)."""
    if info.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_map(fn: Callable[[list[T]], list[R]], items: Sequence[T], info: DistInfo) -> list[R]:
    """``fn(items)`` computed in slices: rank ``r`` maps ``items[r::world_size]``, and every
    rank gets the whole result in the original order (``fn(list(items))`` without DDP)."""
    if not info.enabled:
        return fn(list(items))
    n, world = len(items), info.world_size
    part = fn([items[i] for i in range(info.rank, n, world)])
    merged: list[Any] = [None] * n
    for rank, results in enumerate(all_gather_object(part, info)):
        for i, r in zip(range(rank, n, world), results, strict=True):  # type: ignore[call-overload]
            merged[i] = r
    return merged


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, the SVDD center) to every rank."""
    if info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def resolve_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` picks CUDA when present (one GPU per local rank), else CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and info.enabled:
        requested = f"cuda:{info.local_rank}"
    device = torch.device(requested)
    if device.type == "cuda":
        if device.index is None:  # set_device() refuses an index-less device
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device
