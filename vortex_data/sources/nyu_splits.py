"""Which NYU Depth V2 labeled frames go to which split.

Two schemes:

* ``official``: ``splits.mat`` (MATLAB v5) with 1-based ``trainNdxs`` (795) and ``testNdxs`` (654)
  -> splits ``train`` and ``test``. The file is checked to be disjoint and to cover every frame.
* ``holdout``: a seeded random ``train`` / ``val`` split of all frames (the training program used
  80/20 = 1,159 / 290). The permutation comes from ``numpy.random.default_rng(seed)``, whose
  PCG64 stream numpy keeps stable, so the same seed gives the same split everywhere.

Indices returned here are 0-based frame positions in the labeled file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

SCHEMES = ("official", "holdout")


class SplitError(ValueError):
    """A split file that is missing, malformed, or does not partition the frames."""


def official_splits(path: Path, n_frames: int) -> dict[str, np.ndarray]:
    """splits.mat -> {"train": idx, "test": idx}, 0-based, sorted; raises SplitError naming the file."""
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise SplitError(f"{path}: split file not found (use --nyu-split-scheme holdout to split without it)") from None
    except (ValueError, OSError, NotImplementedError) as e:
        raise SplitError(f"{path}: not a readable MATLAB v5 file ({e})") from None
    out: dict[str, np.ndarray] = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in mat:
            raise SplitError(f"{path}: no '{key}' variable")
        idx = np.asarray(mat[key]).ravel().astype(np.int64)
        if idx.size and (idx.min() < 1 or idx.max() > n_frames):
            raise SplitError(f"{path}: {key} holds indices {idx.min()}..{idx.max()}, but the labeled file has "
                             f"{n_frames} frames (indices are 1-based)")
        if np.unique(idx).size != idx.size:
            raise SplitError(f"{path}: {key} lists some frames twice")
        out[split] = np.sort(idx - 1)
    both = np.intersect1d(out["train"], out["test"])
    if both.size:
        raise SplitError(f"{path}: {both.size} frames are in both train and test (e.g. {both[0] + 1})")
    return out


def holdout_splits(n_frames: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A seeded train/val split of all frames; val gets round(val_fraction * n) frames."""
    if not 0.0 < val_fraction < 1.0:
        raise SplitError(f"validation fraction must be in (0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n_frames)
    n_val = int(round(val_fraction * n_frames))
    return {"train": np.sort(perm[n_val:]), "val": np.sort(perm[:n_val])}


def unassigned(splits: dict[str, np.ndarray], n_frames: int) -> np.ndarray:
    """0-based frames no split claims (they are reported as rejections, never dropped silently)."""
    claimed = np.zeros(n_frames, bool)
    for idx in splits.values():
        claimed[idx] = True
    return np.flatnonzero(~claimed)
