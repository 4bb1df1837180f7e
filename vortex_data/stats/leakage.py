"""Evaluation leakage in `vortex-data stats`: NYU evaluation frames whose room is also trained on.

The rule (a room is a scene name without its capture letter) and the pairing of training and
evaluation manifests live in :mod:`..convert.nyu.eval_scenes` and :mod:`..convert.nyu.splits`;
preflight calls the same two functions, so both commands count the same frames.
"""

from __future__ import annotations

from typing import Any

from ..format.manifest import load_manifest


def scene_leakage(units: list[Any]) -> list[dict[str, Any]]:
    """For each NYU training manifest given and each NYU val/test manifest given: the evaluation
    frames whose room is also trained on (the check preflight runs, :mod:`..convert.nyu.eval_scenes`)."""
    from ..convert.nyu.eval_scenes import Side, leakage_pairs
    from ..convert.nyu.splits import shared_places

    split = {u.name: load_manifest(u.manifest).split for u in units}
    train = [Side(u.name, u.manifest, u.key_pattern) for u in units if split[u.name] == "train"]
    held_out = [Side(u.name, u.manifest, u.key_pattern) for u in units if split[u.name] in ("val", "test")]
    out = []
    for label, tr, ho, why in leakage_pairs(train, held_out):
        shared = None if tr is None or ho is None else shared_places(tr, ho)
        out.append({"pair": label, "frames": None if ho is None else len(ho),
                    "leaked_frames": None if shared is None else shared["frames"],
                    "shared_places": None if shared is None else shared["scenes"], "unknown_because": why or None})
    return out
