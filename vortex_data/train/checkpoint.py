"""Atomic, resumable checkpoints: one directory per step, published by renaming it into place.

Layout under ``ckpt_dir``::

    step_00001200/train.pt        model, Kendall, optimiser, scheduler (samples seen), scaler, step, world size, config
    step_00001200/rank_00000.pt   this rank's loader state and RNG states
    step_00001200/checksums.json  bytes and sha256 of every file above, written last
    latest                        name of the newest published step directory

A crash mid-write leaves only a ``*.tmp`` directory, which resuming ignores. A published
checkpoint is used only if every file matches ``checksums.json`` (a truncated or damaged file,
e.g. a full disk or a lost page on a network filesystem, does not); otherwise the next older one
is taken and the skipped one is named with the reason. At least two checkpoints are kept so
that there is one to fall back to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vortex_data.train.compiled import plain_state_dict
from vortex_data.train.distributed import DistInfo, barrier

from ..errors import InputError
from ..temporaries import reraise_naming

LATEST = "latest"
CHECKSUMS = "checksums.json"
STEP_DIR = re.compile(r"step_\d{8}")
MIN_KEEP = 2
"""The newest checkpoint plus the previous one, to fall back to if the newest proves damaged."""

log = logging.getLogger("vortex_data.train")


class CheckpointError(InputError):
    """Checkpoints exist but none is complete: resuming would silently start over."""


class StageHandOffError(InputError):
    """A stage that starts from an earlier one, but the earlier one did not finish or its final
    checkpoint does not verify: starting from an older checkpoint would silently train on less."""


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
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        reraise_naming(e, tmp)
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
        _write_checksums(tmp, step, info.world_size)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = ckpt_dir / (LATEST + ".part")
        pointer.write_text(name + "\n")
        os.replace(pointer, ckpt_dir / LATEST)
        _prune(ckpt_dir, max(keep, MIN_KEEP))
    barrier()
    return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_checksums(folder: Path, step: int, world_size: int) -> None:
    """Size and sha256 of what is on disk (read back after fsync), so load checks the bytes saved."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.glob("*.pt"))}
    record = {"format": 1, "step": step, "world_size": world_size, "files": files}
    with open(folder / CHECKSUMS, "w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def problem(path: Path, only: tuple[str, ...] | None = None) -> str | None:
    """None if the checkpoint directory is complete, else what is wrong with it. ``only``: check
    just these files against ``checksums.json`` (what a reader of one file needs, e.g. eval's
    train.pt), not that every rank's file is there."""
    try:
        record = json.loads((path / CHECKSUMS).read_text())
        files, world = record["files"], int(record["world_size"])
    except FileNotFoundError:
        return f"no {CHECKSUMS} (not written to the end, or by a version without checksums)"
    except (ValueError, KeyError, TypeError) as e:
        return f"{CHECKSUMS} is unreadable ({type(e).__name__}: {e})"
    ranks = [n for n in files if n.startswith("rank_")]
    if only is not None:
        if missing := [n for n in only if n not in files]:
            return f"{CHECKSUMS} does not list {', '.join(missing)}"
        files = {n: files[n] for n in only}
    elif "train.pt" not in files or len(ranks) != world:
        return f"{CHECKSUMS} lists {sorted(files)}, not train.pt and {world} rank files"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return f"{name} is {size} bytes, {CHECKSUMS} records {want['bytes']}"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match the sha256 in {CHECKSUMS}"
    return None


def _prune(ckpt_dir: Path, keep: int) -> None:
    for old in published(ckpt_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def published(ckpt_dir: Path) -> list[Path]:
    """Published step directories, newest first (*.tmp and *.skipped are not)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name)), reverse=True)


def find(ckpt_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint or None, [(each newer incomplete one, why)])."""
    skipped: list[tuple[Path, str]] = []
    for path in published(ckpt_dir):
        why = problem(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


def latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint directory, or None when there is none at all. Damaged
    newer ones are logged and passed over; if every checkpoint is damaged, CheckpointError."""
    found, skipped = find(ckpt_dir)
    for path, why in skipped:
        log.warning("skipping checkpoint %s: %s", path, why)
    if found is None and skipped:
        raise CheckpointError(no_complete_message(ckpt_dir, skipped))
    return found


def finished_stage(stage_dir: Path, stage: int, next_stage: int) -> Path:
    """The final checkpoint of a stage that finished: its ``STATUS`` says ``done`` and its newest
    checkpoint verifies. Otherwise StageHandOffError naming what is missing and what to do."""
    status_file = stage_dir / "STATUS"
    what = (f"stage {next_stage} starts from stage {stage}'s final checkpoint, but ")
    todo = (f"; run stage {stage} to the end first (rerunning it resumes), or give --init-from CKPT to start "
            f"from a checkpoint of your choice")
    try:
        status = status_file.read_text().strip()
    except FileNotFoundError:
        raise StageHandOffError(what + f"{status_file} does not exist (stage {stage} never ran in this run "
                                f"directory)" + todo) from None
    if status != "done":
        raise StageHandOffError(what + f"stage {stage} did not finish: {status_file} says {status!r}" + todo)
    ckpts = published(stage_dir / "checkpoints")
    if not ckpts:
        raise StageHandOffError(what + f"{stage_dir / 'checkpoints'} holds no checkpoint" + todo)
    why = problem(ckpts[0])
    if why is not None:
        raise StageHandOffError(what + f"{ckpts[0]} does not verify: {why}" + todo)
    return ckpts[0]


def no_complete_message(ckpt_dir: Path, skipped: list[tuple[Path, str]]) -> str:
    return f"{ckpt_dir}: no complete checkpoint, so nothing to resume from: " + "; ".join(
        f"{p.name}: {why}" for p, why in skipped)


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to <name>.skipped: kept for inspection, never pruned in place of
    a good one, never picked again."""
    target = path.with_name(path.name + ".skipped")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    return target


def for_reading(path: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """The checkpoint whose network a reader (``eval``) loads, given as a user may give it, and the
    newer damaged ones passed over, each with the reason.

    * a ``train.pt``, or a step directory: that one, verified against its ``checksums.json`` with
      :func:`problem` (train.pt only, the file read); damaged, it is a CheckpointError naming the
      file: the user chose it, so no other is taken silently. A train.pt without checksums beside
      it (copied alone, or written by a version without them) is read as it is.
    * a stage's ``checkpoints/`` folder, or a stage folder holding one: the newest complete
      checkpoint, chosen by :func:`find` as resuming chooses (nothing is moved aside)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (give a train.pt, a step directory, a stage's "
                              f"checkpoints/ folder or the stage folder)")
    file = path if path.is_file() else path / "train.pt" if (path / "train.pt").exists() else None
    if file is not None:
        step = file.parent
        if file.name == "train.pt" and (step / CHECKSUMS).is_file() and (why := problem(step, only=("train.pt",))):
            raise CheckpointError(f"checkpoint {step}: {why}: damaged (a full disk, a killed copy); give the "
                                  f"stage's checkpoints/ folder to take the newest complete checkpoint")
        return file, []
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found, skipped = find(folder)
    if found is None:
        raise CheckpointError(no_complete_message(folder, skipped) if skipped else
                              f"{path}: no checkpoint under it (step_NNNNNNNN folders)")
    return found / "train.pt", skipped


def load_shared(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """train.pt of a checkpoint directory (or a file path given directly). A file torch cannot
    read is a CheckpointError naming it (callers verify checksums first where there are any)."""
    f = path / "train.pt" if path.is_dir() else path
    try:
        # weights_only=False: the file holds optimiser/scheduler state and numpy RNG tuples we wrote ourselves
        shared = torch.load(f, map_location=map_location, weights_only=False)
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{f}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e):  # a device or memory error is not the file's fault
            raise
        raise CheckpointError(f"{f}: not a readable checkpoint, truncated or damaged "
                              f"({str(e).splitlines()[0]})") from None
    for part in ("net", "kendall"):  # saved from a torch.compile'd module by other code: same weights
        if isinstance(shared.get(part), dict):
            shared[part] = plain_state_dict(shared[part])
    return shared


def load_rank(path: Path, rank: int) -> dict[str, Any] | None:
    f = path / f"rank_{rank:05d}.pt"
    return torch.load(f, map_location="cpu", weights_only=False) if f.is_file() else None
