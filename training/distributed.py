"""One process or many: read torchrun's environment, start the process group, pick the device.

Launch several GPUs with ``torchrun --nproc_per_node=N -m napari_ssmamba train finetune ...``;
nothing here starts processes itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits: its rank among ``world_size`` and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other names pass through,
    a CUDA device this torch cannot reach raising a message that says so."""
    from napari_ssmamba.inference.predict import resolve_device as resolve_torch_device

    resolved = resolve_torch_device(device)
    return device if device != "auto" else resolved.type


def setup_distributed(device: str = "auto") -> DistributedEnv:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or run as a single process.

    NCCL on CUDA, gloo on CPU. A group that is already initialised (tests that spawn their own
    processes) is used as it is.
    """
    import torch
    import torch.distributed as dist

    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
    if world_size == 1:
        return DistributedEnv(rank=0, world_size=1, local_rank=0, device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistributedEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                          local_rank=local_rank, device=device)


def all_reduce_sum(values: list[float], env: DistributedEnv) -> list[float]:
    """Sum a few floats over all ranks (a no-op in one process)."""
    if not env.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(env: DistributedEnv) -> None:
    """Wait for every rank (a no-op in one process)."""
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()
