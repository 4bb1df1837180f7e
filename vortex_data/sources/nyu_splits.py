"""NYU Depth V2 train/val/test splits over the 1,449 labeled frames.

Frame numbers here are 1-based, as in MATLAB and the official ``splits.mat``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io

SCHEMES = ("random80", "official")
SCHEME_SPLITS = {"random80": ("train", "val"), "official": ("train", "test")}
TRAIN_FRACTION = 0.8


class SplitError(ValueError):
    """A split definition that cannot be applied to the file's frames."""


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


def make_split(scheme: str, n_frames: int, seed: int = 0, splits_file: str | Path | None = None) -> dict[str, list[int]]:
    if scheme == "random80":
        return random80_split(n_frames, seed)
    if scheme == "official":
        return official_split(n_frames, splits_file)
    raise SplitError(f"unknown split scheme {scheme!r}; use one of {SCHEMES}")
