"""Atomic, resumable checkpoints: one directory per step, published by renaming it into place.

Layout under ``ckpt_dir``::

    step_00001200/train.pt       model, Kendall, optimiser, scheduler, scaler, step, config
    step_00001200/rank_00000.pt  this rank's loader state and RNG states
    latest                       name of the newest complete step directory

A crash mid-write leaves only a ``*.tmp`` directory, which resuming ignores.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vortex_data.train.distributed import DistInfo, barrier

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(ckpt_dir: Path, step: int, shared: dict[str, Any], per_rank: dict[str, Any], info: DistInfo,
         keep: int = 2) -> Path:
    """Write a checkpoint collectively (every rank calls this); returns the published directory."""
    name = f"step_{step:08d}"
    tmp = ckpt_dir / (name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    _atomic_torch_save(per_rank, tmp / f"rank_{info.rank:05d}.pt")
    if info.is_main:
        _atomic_torch_save(shared, tmp / "train.pt")
    barrier()  # every rank's file is in tmp before it is published
    final = ckpt_dir / name
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = ckpt_dir / (LATEST + ".part")
        pointer.write_text(name + "\n")
        os.replace(pointer, ckpt_dir / LATEST)
        _prune(ckpt_dir, keep)
    barrier()
    return final


def _prune(ckpt_dir: Path, keep: int) -> None:
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest(ckpt_dir: Path) -> Path | None:
    """The newest published checkpoint directory, or None."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "train.pt").is_file() else None


def load_shared(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """train.pt of a checkpoint directory (or a file path given directly)."""
    f = path / "train.pt" if path.is_dir() else path
    # weights_only=False: the file holds optimiser/scheduler state and numpy RNG tuples we wrote ourselves
    return torch.load(f, map_location=map_location, weights_only=False)


def load_rank(path: Path, rank: int) -> dict[str, Any] | None:
    f = path / f"rank_{rank:05d}.pt"
    return torch.load(f, map_location="cpu", weights_only=False) if f.is_file() else None
