"""Read frames from ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5) one at a time.

MATLAB stores arrays column-major and h5py shows the dimensions reversed: MATLAB's
``images`` (480, 640, 3, 1449) reads as (1449, 3, 640, 480). A per-frame transpose restores
(H, W, ...); ``rot90`` would look similar but mirror the image left-right. Strings (scene names,
raw file names) are object references to (n, 1) uint16 character arrays.

Only one frame is read per call, never a whole dataset: the file is ~2.8 GiB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

HEIGHT, WIDTH = 480, 640
FRAME_KEYS = ("images", "depths", "rawDepths", "labels")


class LabeledFileError(ValueError):
    """The labeled .mat is unreadable or not laid out as NYU Depth V2's labeled file."""


def _describe(ds: Any) -> str:
    return f"{ds.shape} {ds.dtype}" if isinstance(ds, h5py.Dataset) else type(ds).__name__


class LabeledMat:
    """An open labeled file with its layout checked. Not picklable: open one per process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise LabeledFileError(f"{self.path}: labeled file not found") from None
        except OSError as e:
            raise LabeledFileError(f"{self.path}: not an HDF5 / MATLAB v7.3 file ({e}); "
                                   "a MATLAB v5 file must be re-saved with -v7.3") from None
        try:
            self.n_frames = self._check_layout()
        except LabeledFileError:
            self.file.close()
            raise

    def _check_layout(self) -> int:
        f = self.file
        missing = [k for k in ("images", "depths", "labels") if k not in f]
        if missing:
            raise LabeledFileError(f"{self.path}: no {missing} datasets; keys are {sorted(f.keys())}")
        images = f["images"]
        if not isinstance(images, h5py.Dataset) or images.ndim != 4 or images.shape[1:] != (3, WIDTH, HEIGHT):
            raise LabeledFileError(f"{self.path}: 'images' is {_describe(images)}, expected (N, 3, {WIDTH}, {HEIGHT}) "
                                   "(MATLAB (480, 640, 3, N) seen through HDF5)")
        if images.dtype != np.uint8:
            raise LabeledFileError(f"{self.path}: 'images' is {images.dtype}, expected uint8")
        n = images.shape[0]
        for key in FRAME_KEYS[1:]:
            if key in f and (not isinstance(f[key], h5py.Dataset) or f[key].shape != (n, WIDTH, HEIGHT)):
                raise LabeledFileError(f"{self.path}: '{key}' is {_describe(f[key])}, expected ({n}, {WIDTH}, {HEIGHT})")
        for key in ("depths", "rawDepths"):
            if key in f and f[key].dtype.kind != "f":
                raise LabeledFileError(f"{self.path}: '{key}' is {f[key].dtype}, expected float metres")
        if f["labels"].dtype.kind not in "ui":
            raise LabeledFileError(f"{self.path}: 'labels' is {f['labels'].dtype}, expected integer class ids")
        return n

    def close(self) -> None:
        self.file.close()

    def has(self, key: str) -> bool:
        return key in self.file

    def rgb(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of 0-based frame i."""
        return np.ascontiguousarray(self.file["images"][i].transpose(2, 1, 0))

    def plane(self, key: str, i: int) -> np.ndarray:
        """A per-pixel (H, W) map ('depths', 'rawDepths', 'labels', 'instances') of frame i."""
        if key not in self.file:
            raise LabeledFileError(f"{self.path}: no '{key}' dataset")
        return np.ascontiguousarray(self.file[key][i].T)

    def string(self, key: str, i: int) -> str | None:
        """Per-frame string (scene name, raw file name...), or None when the file lacks it."""
        ds = self.file.get(key)
        # MATLAB's (N, 1) cell column reads as (1, N) references.
        if not isinstance(ds, h5py.Dataset) or ds.dtype != h5py.ref_dtype or ds.ndim != 2 or ds.shape[0] != 1 \
                or ds.shape[1] <= i:
            return None
        target = self.file[ds[0, i]]
        if target.attrs.get("MATLAB_empty", 0) or target.size == 0:
            return ""
        if target.dtype.kind not in "ui":
            raise LabeledFileError(f"{self.path}: '{key}'[{i}] is {target.dtype}, expected uint16 characters")
        return "".join(map(chr, np.asarray(target).ravel()))

    def accel(self, i: int) -> list[float] | None:
        """Accelerometer reading (roll, yaw, pitch, tilt) of frame i, if the file has it."""
        ds = self.file.get("accelData")
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or 4 not in ds.shape:
            return None
        row = ds[:, i] if ds.shape[0] == 4 else ds[i, :]
        return [float(v) for v in row]
