"""No NYU evaluation room in a training set: the scenes to leave out, and the check on built sets.

NYU's labelled frames (the official 654-frame test split, the ``scenes80`` validation split) were
picked from the same Kinect captures the raw distribution and its synchronised export hold, so a
converter of those captures would, left alone, train on the very rooms the model is scored on.
This module is the one place that knows which rooms those are and how names match:

1. **Which scenes.** Read from the labelled ``.mat`` (``--labelled``; its ``scenes`` cell and the
   splits of :mod:`.splits`, the labelled converter's own code: the official test frames and,
   with ``--split-seed``, the ``scenes80`` val frames) and/or a plain list (``--exclude-scenes``,
   one scene per line, ``#`` comments).
2. **How names match.** By place (:func:`.splits.place_of`): a trailing capture letter is dropped,
   so ``kitchen_0028a`` in the labelled set excludes ``kitchen_0028b`` in the raw captures. Two
   captures of one room are the same room to a model; this is the cautious reading and may drop a
   few sessions a published list keeps (docs/nyu.md, "Evaluation leakage").
3. **What happens.** Every frame of a matching scene is rejected (code ``eval-scene``, the reason
   names the split it belongs to) and counted in the build report by reason. Building without
   either source is refused (:func:`from_args`), unless ``--allow-eval-scenes``; then nothing is
   excluded but the report still counts the frames of evaluation scenes that were kept.
4. **After the fact.** :data:`FAMILY` tells the check on built sets (:mod:`...format.scenes`, run
   by ``preflight`` and ``stats``) that the three NYU datasets name the same rooms, matched by place.

API for a converter of raw NYU captures: ``add_arguments(group)`` in its ``add_arguments``,
``from_args(args, dataset)`` in its ``from_args`` (returns :class:`EvalScenes` or None when
allowed without a source; raises :class:`EvalScenesRefused`), then in ``enumerate``
``kept, rejected, report = exclude(eval_scenes, frames, scene_of)`` and ``options(eval_scenes)``
in its options.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import InputError
from ...format.scenes import Family
from ..base import FrameRef, Rejection
from .splits import place_of, split_scenes

NYU_DATASETS = ("nyu", "nyu-raw", "nyu-sync")
"""Datasets whose ``scene`` values are NYU scene names, comparable with one another."""
FAMILY = Family("nyu", frozenset(NYU_DATASETS), place_of)
"""The NYU datasets as one scene family of the leakage check on built sets, matched by place."""
EVAL_SPLITS = ("official", "scenes80", "both")
REJECT_CODE = "eval-scene"
FLAGS = "--labelled FILE, --exclude-scenes FILE or --allow-eval-scenes"


class EvalScenesRefused(InputError):
    """A build of raw NYU captures that does not say which evaluation scenes to leave out."""


@dataclass(frozen=True)
class EvalScenes:
    """Places (scene names without capture letter) whose frames are evaluation rooms, each with why."""

    places: dict[str, str]
    """place -> the evaluation split(s) it belongs to, e.g. 'official test split'."""
    origin: dict[str, Any] = field(default_factory=dict)
    """JSON-able: where the scenes came from (recorded in the manifest's options)."""
    allowed: bool = False
    """--allow-eval-scenes: keep those frames (counted, not excluded)."""

    def reason(self, scene: str) -> str | None:
        """Why frames of ``scene`` are evaluation frames, or None when it is no evaluation room."""
        return self.places.get(place_of(scene))


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags, in the converter's own option group."""
    group.add_argument("--labelled", type=Path, default=None, metavar="FILE",
                       help="nyu_depth_v2_labeled.mat: leave out every scene holding an evaluation frame "
                            "(see --eval-split); captures of one room (kitchen_0028a/b) count as one")
    group.add_argument("--exclude-scenes", type=Path, default=None, metavar="FILE",
                       help="text file, one scene name per line (# comments): leave these rooms out too")
    group.add_argument("--eval-split", choices=EVAL_SPLITS, default="both",
                       help="with --labelled: the evaluation frames whose scenes are left out: the official "
                            "654-frame test split, the scenes80 val split, or both (default)")
    group.add_argument("--split-seed", type=int, default=0,
                       help="with --labelled: seed of the scenes80 split the labelled frames were built with "
                            "(default 0)")
    group.add_argument("--splits-file", type=Path, default=None,
                       help="with --labelled: splits.mat or JSON overriding the shipped official split")
    group.add_argument("--allow-eval-scenes", action="store_true",
                       help="keep frames of evaluation scenes (they are counted in the report, not excluded)")


def from_args(args: argparse.Namespace, dataset: str) -> EvalScenes | None:
    """The scenes to leave out, from the flags; EvalScenesRefused when none is given and not allowed."""
    labelled, listed = getattr(args, "labelled", None), getattr(args, "exclude_scenes", None)
    allowed = bool(getattr(args, "allow_eval_scenes", False))
    if labelled is None and listed is None:
        if allowed:
            return None
        raise EvalScenesRefused(
            f"{dataset}: refusing to build without the NYU evaluation scenes: the raw captures are the rooms the "
            f"labelled test/val frames come from, so training on them leaks those rooms into the score. Give "
            f"--labelled nyu_depth_v2_labeled.mat (its scenes and splits) or --exclude-scenes FILE (one scene per "
            f"line), or --allow-eval-scenes to keep every scene knowingly")
    if labelled is None:
        given = [f for f, v, default in (("--eval-split", getattr(args, "eval_split", "both"), "both"),
                                         ("--split-seed", getattr(args, "split_seed", 0), 0),
                                         ("--splits-file", getattr(args, "splits_file", None), None)) if v != default]
        if given:
            raise InputError(f"{dataset}: {', '.join(given)} only apply with --labelled (they choose its evaluation "
                             "frames)")
    return from_sources(labelled=labelled, exclude_file=listed, eval_split=getattr(args, "eval_split", "both"),
                        split_seed=getattr(args, "split_seed", 0), splits_file=getattr(args, "splits_file", None),
                        allowed=allowed)


def from_sources(labelled: Path | None = None, exclude_file: Path | None = None, eval_split: str = "both",
                 split_seed: int = 0, splits_file: Path | None = None, allowed: bool = False) -> EvalScenes:
    """EvalScenes from a labelled ``.mat`` and/or a scene list (at least one)."""
    if eval_split not in EVAL_SPLITS:
        raise InputError(f"--eval-split must be one of {EVAL_SPLITS}, got {eval_split!r}")
    whys: dict[str, list[str]] = {}
    origin: dict[str, Any] = {"match": "place (scene name without its trailing capture letter)"}
    if labelled is not None:
        origin["labelled"] = Path(labelled).name
        origin["eval_split"] = eval_split
        for why, scenes in labelled_eval_scenes(Path(labelled), eval_split, split_seed, splits_file).items():
            for s in scenes:
                whys.setdefault(place_of(s), []).append(why)
        if eval_split != "official":
            origin["split_seed"] = int(split_seed)
        if eval_split != "scenes80":
            origin["splits_file"] = "shipped" if splits_file is None else Path(splits_file).name
    if exclude_file is not None:
        origin["exclude_scenes"] = Path(exclude_file).name
        for s in read_scene_list(Path(exclude_file)):
            whys.setdefault(place_of(s), []).append(f"listed in {Path(exclude_file).name}")
    if labelled is None and exclude_file is None:
        raise InputError("evaluation scenes need a labelled .mat or a scene list")
    places = {p: " and ".join(dict.fromkeys(w)) for p, w in sorted(whys.items())}
    origin["places"] = len(places)
    return EvalScenes(places, origin, allowed)


def labelled_eval_scenes(path: Path, eval_split: str, split_seed: int = 0,
                         splits_file: Path | None = None) -> dict[str, list[str]]:
    """Why -> scene names of the labelled file's evaluation frames, by the labelled converter's
    own split code (so the scenes left out here are the ones its val/test manifests hold)."""
    from .converter import NyuConverter

    out: dict[str, list[str]] = {}
    schemes = {"official": ("official", "test", "official test split"),
               "scenes80": ("scenes80", "val", f"scenes80 val split (seed {split_seed})")}
    for name, (scheme, held_out, why) in schemes.items():
        if eval_split not in (name, "both"):
            continue
        conv = NyuConverter(path, split_scheme=scheme, split_seed=split_seed,
                            splits_file=splits_file if scheme == "official" else None)
        out[why] = split_scenes(conv.scene_names(), conv.split_indices())[held_out]
    return out


def read_scene_list(path: Path) -> list[str]:
    """Scene names, one per line; blank lines and ``#`` comments ignored; a leading/trailing ``/`` dropped."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the scene list ({e}); give a text file, one scene name per "
                         "line") from None
    names = [line.split("#", 1)[0].strip().strip("/") for line in text.splitlines()]
    bad = [n for n in names if n and not re.fullmatch(r"[A-Za-z0-9_\-]+", n)]
    if bad:
        raise InputError(f"{path}: {bad[0]!r} is not a scene name (one name per line, e.g. kitchen_0028a)")
    names = [n for n in names if n]
    if not names:
        raise InputError(f"{path}: the scene list names no scene")
    return names


def exclude(eval_scenes: EvalScenes | None, frames: Sequence[FrameRef],
            scene_of: Callable[[FrameRef], str]) -> tuple[list[FrameRef], list[Rejection], dict[str, Any]]:
    """(frames kept, frames rejected as evaluation rooms, the report's ``eval_scenes`` entry)."""
    if eval_scenes is None:
        return list(frames), [], {"excluded": 0, "note": "--allow-eval-scenes without a scene source: not checked"}
    kept, rejected, by_reason, scenes = [], [], Counter(), set()
    for f in frames:
        why = eval_scenes.reason(scene_of(f))
        if why is None:
            kept.append(f)
            continue
        by_reason[why] += 1
        scenes.add(scene_of(f))
        if eval_scenes.allowed:
            kept.append(f)
        else:
            rejected.append(Rejection(f.frame_id, f.split, REJECT_CODE,
                                      f"{f.files[0]}: scene {scene_of(f)} is an evaluation room ({why}); left out "
                                      f"so the score is on unseen rooms (--allow-eval-scenes keeps it)", f.files[0]))
    n = sum(by_reason.values())
    report = {"excluded": 0 if eval_scenes.allowed else n, "by_reason": dict(sorted(by_reason.items())),
              "scenes": sorted(scenes), "places_known": len(eval_scenes.places)}
    if eval_scenes.allowed:
        report["kept_despite_eval_scene"] = n
    return kept, rejected, report


def options(eval_scenes: EvalScenes | None) -> dict[str, Any]:
    """What the manifest records (it changes which frames are written)."""
    if eval_scenes is None:
        return {"allowed": True, "source": None}
    return {"allowed": eval_scenes.allowed, **eval_scenes.origin, "excluded_places": sorted(eval_scenes.places)}
