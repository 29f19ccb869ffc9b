"""Process-group setup for torchrun: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment.

NCCL on CUDA, gloo on CPU. A plain ``python`` launch (no ``RANK``) is a single process and
initialises nothing. Several ranks train data-parallel, with DDP (a replica per rank) or FSDP2
(:func:`shard_model`: parameters, gradients and optimizer state sharded over the ranks).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..cli_types import check_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init(device_name: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    """Leave the process group, after collecting what may still hold it (the trainer's model, its
    DTensors' mesh): freed later, at interpreter shutdown, gloo's worker threads can abort a run
    that finished (pytorch/pytorch#179291)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2 (``fully_shard``): each transformer block, then the rest (embeddings, final norm and
    the tied head), sharded over the ranks; the module is changed in place."""
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:  # type: ignore[union-attr]
        fully_shard(block)
    fully_shard(model)
