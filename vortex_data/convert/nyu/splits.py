"""NYU Depth V2 train/val/test splits over the 1,449 labeled frames.

Frame numbers here are 1-based, as in MATLAB and the official ``splits.mat``.

- ``scenes80`` (default): whole scenes (the file's ``scenes`` cell) to train or val, so no room
  is on both sides; the validation score then measures rooms the model has not seen. A scene is
  a place (:func:`place_of`): names that differ only in a trailing capture letter
  (``kitchen_0028a``, ``kitchen_0028b``) are recordings of one room and stay on one side.
- ``random80``: the seed's frame-level 80/20 split, kept to reproduce it exactly. NYU's labeled
  frames come several to a scene, so val shares rooms with train and scores optimistically.
- ``official``: the 795/654 ``splits.mat`` split, for comparing with published numbers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io

from ...errors import InputError
from ...format.scenes import shared_scenes

SCHEMES = ("scenes80", "random80", "official")
DEFAULT_SCHEME = "scenes80"
SCHEME_SPLITS = {"scenes80": ("train", "val"), "random80": ("train", "val"), "official": ("train", "test")}
SEEDED_SCHEMES = ("scenes80", "random80")
TRAIN_FRACTION = 0.8


class SplitError(InputError):
    """A split definition that cannot be applied to the file's frames."""


_CAPTURE_LETTER = re.compile(r"(?<=\d)[a-z]$")


def place_of(scene: str) -> str:
    """The room a scene name denotes: the name without a trailing capture letter after its number
    (``basement_0001a`` -> ``basement_0001``). Grouping by it is the cautious reading: two
    captures of one room on both sides of a split would leak the room."""
    return _CAPTURE_LETTER.sub("", scene)


def random80_split(n_frames: int, seed: int) -> dict[str, list[int]]:
    """round(0.8 N) frames for train and the rest for val, drawn by a seeded permutation.

    The same (N, seed) always gives the same split, on every platform and numpy version that
    keeps PCG64's stream (numpy guarantees it for ``default_rng``).
    """
    if n_frames < 1:
        raise SplitError(f"cannot split {n_frames} frames")
    perm = np.random.default_rng(seed).permutation(n_frames) + 1
    n_train = int(round(TRAIN_FRACTION * n_frames))
    return {"train": sorted(perm[:n_train].tolist()), "val": sorted(perm[n_train:].tolist())}


def scenes80_split(scenes: Sequence[str], seed: int) -> dict[str, list[int]]:
    """Whole scenes to train or val, train as close as possible to 80 % of the frames.

    ``scenes[i]`` is the scene of frame i + 1; scenes of one place (:func:`place_of`) count as
    one. The places are put in a seeded order
    (``default_rng(seed).permutation`` of their sorted names); an exact subset-sum over their frame
    counts then finds the reachable train size nearest to 0.8 N (the smaller one on a tie, so val
    is never short), with at least one scene on each side (a file of one scene is all train), and
    scenes in that order that make it up go to train.
    """
    scenes = [place_of(s) for s in scenes]
    n = len(scenes)
    names = sorted(set(scenes))
    if not names:
        raise SplitError("cannot split 0 frames")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    count = Counter(scenes)
    sizes = [count[s] for s in order]
    # reach[k, t]: some subset of the first k scenes (in this order) holds exactly t frames.
    reach = np.zeros((len(sizes) + 1, n + 1), bool)
    reach[0, 0] = True
    for k, c in enumerate(sizes):
        reach[k + 1] = reach[k]
        reach[k + 1, c:] |= reach[k, :n + 1 - c]
    target = TRAIN_FRACTION * n
    # Both sides non-empty when there are two scenes or more; a single scene all goes to train.
    totals = [t for t in range(1, n) if reach[-1, t]] or [n]
    best = min(totals, key=lambda t: (abs(t - target), t))
    train_scenes, t = set(), best
    for k in range(len(sizes) - 1, -1, -1):  # walk back, taking a scene whenever the rest can still make t
        c = sizes[k]
        if t >= c and reach[k, t - c]:
            train_scenes.add(order[k])
            t -= c
    frames = range(1, n + 1)
    return {"train": [i for i in frames if scenes[i - 1] in train_scenes],
            "val": [i for i in frames if scenes[i - 1] not in train_scenes]}


def split_scenes(scenes: Sequence[str], split: dict[str, list[int]]) -> dict[str, list[str]]:
    """Split name -> the sorted scene names of its frames."""
    return {name: sorted({scenes[i - 1] for i in idx}) for name, idx in split.items()}


def scene_overlap(scenes: Sequence[str], train: Sequence[int], held_out: Sequence[int]) -> dict[str, int]:
    """How many held-out frames (and places) share a place (:func:`place_of`) with train."""
    return shared_places([scenes[i - 1] for i in train], [scenes[i - 1] for i in held_out])


def shared_places(train_scenes: Sequence[str], held_out_scenes: Sequence[str]) -> dict[str, int]:
    """Held-out frames (one scene name each) whose place is also a train frame's, and how many places."""
    return shared_scenes(train_scenes, held_out_scenes, place_of)


def _read_splits_file(path: Path) -> dict[str, list[int]]:
    """``splits.mat`` (trainNdxs, testNdxs) or JSON ({"train": [...], "test": [...]}), 1-based."""
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
            return {"train": [int(v) for v in raw["train"]], "test": [int(v) for v in raw["test"]]}
        m = scipy.io.loadmat(path)
        return {"train": m["trainNdxs"].ravel().astype(int).tolist(), "test": m["testNdxs"].ravel().astype(int).tolist()}
    except KeyError as e:
        raise SplitError(f"{path}: splits file has no {e} entry (need trainNdxs/testNdxs or train/test)") from None
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise SplitError(f"{path}: cannot read splits file ({e})") from None


def official_split(n_frames: int, splits_file: str | Path | None = None) -> dict[str, list[int]]:
    """The official 795 train / 654 test split (shipped table, or ``splits_file`` to override).

    Refuses a split that is not a disjoint cover of 1..n_frames, so no frame is dropped unseen.
    """
    if splits_file is None:
        raw = json.loads(resources.files("vortex_data").joinpath("data/nyu_splits.json").read_text())
        split, where = {"train": raw["train"], "test": raw["test"]}, "shipped official NYU split"
    else:
        split, where = _read_splits_file(Path(splits_file)), str(splits_file)
    train, test = set(split["train"]), set(split["test"])
    if len(train) != len(split["train"]) or len(test) != len(split["test"]) or train & test:
        raise SplitError(f"{where}: train/test indices repeat or overlap")
    if train | test != set(range(1, n_frames + 1)):
        raise SplitError(f"{where}: indices cover {len(train | test)} frames in "
                         f"{min(train | test, default=0)}..{max(train | test, default=0)}, "
                         f"but the file has frames 1..{n_frames}")
    return {"train": sorted(train), "test": sorted(test)}


def make_split(scheme: str, n_frames: int, seed: int = 0, splits_file: str | Path | None = None,
               scenes: Sequence[str] | None = None) -> dict[str, list[int]]:
    """The split of ``n_frames`` frames; ``scenes`` (one name per frame) is needed by scenes80."""
    if scheme == "scenes80":
        if scenes is None or len(scenes) != n_frames:
            raise SplitError(f"scenes80 needs one scene name per frame ({n_frames}), got "
                             f"{'none' if scenes is None else len(scenes)}")
        return scenes80_split(scenes, seed)
    if scheme == "random80":
        return random80_split(n_frames, seed)
    if scheme == "official":
        return official_split(n_frames, splits_file)
    raise SplitError(f"unknown split scheme {scheme!r}; use one of {SCHEMES}")
