"""torch.distributed set-up from the torchrun / srun environment (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info(env: dict[str, str] | None = None) -> DistInfo:
    """Rank layout from torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else SLURM's (one srun task per GPU)."""
    e = os.environ if env is None else env
    if "WORLD_SIZE" in e:
        return DistInfo(int(e.get("RANK", 0)), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)))
    if "SLURM_NTASKS" in e and "SLURM_PROCID" in e and "MASTER_ADDR" in e:
        return DistInfo(int(e["SLURM_PROCID"]), int(e["SLURM_NTASKS"]), int(e.get("SLURM_LOCALID", 0)))
    return DistInfo()


def init(device_type: str) -> DistInfo:
    """Join the process group when more than one process runs; returns this process's place."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on any rank (so all ranks stop on the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (picklable objects; a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
