"""Scenes of built sets: the evaluation frames whose scene is also trained on.

Every index records each frame's ``scene``: the unit its source says must never be on both sides
of a train/evaluation split (an NYU scene, a SUN RGB-D frame folder, a DIODE scene, a recording, a
TUM sequence). ``preflight`` and ``stats`` both run :func:`scene_leakage`, through
:func:`vortex_data.stats.leakage.leakage`, which names the families of several datasets:

1. **Sides.** Training manifests on one side; on the other, manifests whose split is an
   evaluation split (:data:`EVAL_SPLITS`). A manifest is never paired with itself, and a manifest
   that cannot be read takes no part (the commands report unreadable manifests elsewhere).
2. **Families.** A training and an evaluation manifest are paired when their datasets are of one
   family. A dataset is its own family (diode train vs diode val, femto train vs femto eval);
   the caller names families of several datasets whose scene names denote the same places (NYU's
   labelled set, raw captures and synchronised export).
3. **Match.** A family compares scenes by its ``unit`` of a scene name: the name itself unless the
   family gives its own (NYU: the room, the name without its capture letter).
4. **Count.** Per pair: the evaluation frames whose unit is also a training frame's, and how many
   units are shared; unknown, with why, when an index records no scene for some frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .manifest import ManifestError, load_manifest

EVAL_SPLITS = ("val", "test", "eval")
"""Splits a model is scored on: their scenes must not be trained on."""


def same_scene(scene: str) -> str:
    return scene


@dataclass(frozen=True)
class Family:
    """Datasets whose scene names are comparable, and the unit two names are compared by."""

    name: str
    datasets: frozenset[str]
    unit: Callable[[str], str] = same_scene


@dataclass(frozen=True)
class Side:
    """One manifest as a side of the check: ``name`` is how the report calls it."""

    name: str
    manifest: Path
    key_pattern: str | None = None


def manifest_scenes(manifest: Path, key_pattern: str | None = None) -> tuple[list[str] | None, str]:
    """The scene of every frame of a manifest, from its Parquet index's ``scene`` column (None and
    why when the index records none)."""
    if not Path(manifest).is_file():
        return None, f"no manifest {Path(manifest).name}"
    try:
        m = load_manifest(manifest)
        index = m.index_file()
        if "scene" not in index.schema_arrow.names:
            return None, f"{m.index_path().name} records no scenes; rebuild it with a vortex-data that does"
        t = index.read(columns=["key", "scene"])
    except (ManifestError, OSError) as e:
        return None, str(e)
    keys, scenes = t.column("key").to_pylist(), t.column("scene").to_pylist()
    if all(s is None for s in scenes):  # the column exists in every index; a source without scenes leaves it empty
        return None, f"{m.index_path().name} records no scenes"
    if key_pattern:
        scenes = [s for k, s in zip(keys, scenes) if re.search(key_pattern, k)]
    if any(s is None for s in scenes):
        return None, f"{m.index_path().name} lacks the scene of some frames"
    return [str(s) for s in scenes], ""


def shared_scenes(train_scenes: Sequence[str], held_out_scenes: Sequence[str],
                  unit: Callable[[str], str] = same_scene) -> dict[str, int]:
    """Held-out frames (one scene name each) whose unit is also a train frame's, and how many units."""
    in_train = {unit(s) for s in train_scenes}
    shared = [u for u in map(unit, held_out_scenes) if u in in_train]
    return {"frames": len(shared), "scenes": len(set(shared))}


def scene_leakage(train: Sequence[Side], held_out: Sequence[Side],
                  families: Sequence[Family] = ()) -> list[dict[str, Any]]:
    """For every (training, evaluation) pair of one family: ``pair`` ("<train name>/<eval name>"),
    evaluation ``frames``, ``leaked_frames`` and ``shared_places`` (units also trained on), each
    None with ``unknown_because`` when a side records no scenes."""
    def about(s: Side) -> tuple[str, str, Path] | None:
        try:
            m = load_manifest(s.manifest)
        except (ManifestError, OSError):
            return None
        return m.dataset, m.split, Path(s.manifest).resolve()

    def family(dataset: str) -> Family:
        return next((f for f in families if dataset in f.datasets), Family(dataset, frozenset({dataset})))

    cache: dict[tuple[Path, str | None], tuple[list[str] | None, str]] = {}

    def scenes(s: Side, path: Path) -> tuple[list[str] | None, str]:
        if (path, s.key_pattern) not in cache:
            cache[path, s.key_pattern] = manifest_scenes(s.manifest, s.key_pattern)
        return cache[path, s.key_pattern]

    evals = [(h, a) for h in held_out if (a := about(h)) is not None and a[1] in EVAL_SPLITS]
    out = []
    for t in train:
        if (a := about(t)) is None:
            continue
        fam = family(a[0])
        for h, b in evals:
            if b[2] == a[2] or b[0] not in fam.datasets:
                continue
            (tr, why_t), (ho, why_h) = scenes(t, a[2]), scenes(h, b[2])
            shared = None if tr is None or ho is None else shared_scenes(tr, ho, fam.unit)
            out.append({"pair": f"{t.name}/{h.name}", "frames": None if ho is None else len(ho),
                        "leaked_frames": None if shared is None else shared["frames"],
                        "shared_places": None if shared is None else shared["scenes"],
                        "unknown_because": (why_t or why_h) or None})
    return out
