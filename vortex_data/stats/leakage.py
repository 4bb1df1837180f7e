"""Evaluation leakage in `vortex-data stats` and `preflight`: evaluation frames whose scene is also trained on.

The pairing and counting live in :mod:`..format.scenes`; :func:`leakage` hands it the scene
families whose rule a converter knows (NYU: its three datasets name the same rooms, matched by
place), and both commands call :func:`leakage`, so they count the same frames.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..format.manifest import load_manifest
from ..format.scenes import Family, Side, scene_leakage as pair_leakage


def families() -> tuple[Family, ...]:
    """Families of several datasets; every other dataset is matched with itself, by exact scene name."""
    from ..convert.nyu.eval_scenes import FAMILY

    return (FAMILY,)


def leakage(train: Sequence[Side], held_out: Sequence[Side]) -> list[dict[str, Any]]:
    """Every (training, evaluation) pair of one scene family: the evaluation frames whose scene is
    also trained on (:func:`..format.scenes.scene_leakage`)."""
    return pair_leakage(train, held_out, families())


def scene_leakage(units: list[Any]) -> list[dict[str, Any]]:
    """For each training manifest given and each val/test/eval manifest given of its family."""
    sides = [Side(u.name, u.manifest, u.key_pattern) for u in units]
    train = [s for s in sides if load_manifest(s.manifest).split == "train"]
    return leakage(train, sides)
