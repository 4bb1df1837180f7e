"""NYU Depth V2, labeled subset (1,449 frames of ``nyu_depth_v2_labeled.mat``).

Source folder layout (names can be changed with the options below)::

    <src>/nyu_depth_v2_labeled.mat   MATLAB v7.3 (HDF5) with images, depths, rawDepths, labels, ...
    <src>/splits.mat                 official train/test indices (needed for --nyu-split-scheme official)
    <src>/classMapping40.mat         894 -> 40 class mapping (needed unless --nyu-no-labels)

Frame ids are the 1-based frame numbers of the labeled file, zero-padded (``nyu/test/0001``), so
they match ``splits.mat`` and the papers that cite frames by number. Depth is the hole-filled
``depths`` by default or the unfilled ``rawDepths`` (0 = hole) with ``--nyu-depth raw``. Labels
go 894 -> NYU-40 -> the 6-class taxonomy (see :mod:`.nyu_classes`). ``--nyu-crop eigen`` keeps
only rows 44:471, cols 40:601 (0-based), the region where the Kinect depth projects onto the RGB
image; outside it the RGB has a white border and the filled depth is extrapolated.

The RGB is stored as in the file (not undistorted); its distortion coefficients go in the metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..schema import Intrinsics, Sample, depth_to_mm, make_key
from .base import Converter, Enumeration, FrameRef, Rejection, RejectFrame
from .nyu_classes import ClassMappingError, load_nyu40_lut, map_labels
from .nyu_mat import HEIGHT, WIDTH, LabeledFileError, LabeledMat
from .nyu_splits import SCHEMES, holdout_splits, official_splits, unassigned

# NYU toolbox camera_params.m (RGB camera; depth is already registered to it).
INTRINSICS = Intrinsics(fx=518.8579, fy=519.4696, cx=325.5824, cy=253.7362)
RGB_DISTORTION = {"k1": 0.20797, "k2": -0.58614, "p1": 7.223e-4, "p2": 1.048e-3, "k3": 0.49857}
EIGEN_CROP = (slice(44, 471), slice(40, 601))
"""Rows, cols (0-based, end-exclusive) where depth projects onto the RGB image."""

META_STRINGS = {"scenes": "scene", "sceneTypes": "scene_type", "rawRgbFilenames": "raw_rgb_file",
                "rawDepthFilenames": "raw_depth_file"}
"""Per-frame strings of the labeled file -> metadata keys."""

DEPTH_KEYS = {"filled": "depths", "raw": "rawDepths"}
CROPS = ("none", "eigen")


class NyuConverter(Converter):
    name: ClassVar[str] = "nyu"
    description: ClassVar[str] = "NYU Depth V2 labeled subset (nyu_depth_v2_labeled.mat, 1,449 frames)"
    splits: ClassVar[tuple[str, ...]] = ("train", "test", "val")

    def __init__(self, src: Path, *, mat: str = "nyu_depth_v2_labeled.mat", split_file: str = "splits.mat",
                 class_mapping: str = "classMapping40.mat", depth: str = "filled", crop: str = "none",
                 labels: bool = True, split_scheme: str = "official", val_fraction: float = 0.2,
                 split_seed: int = 0):
        if depth not in DEPTH_KEYS:
            raise ValueError(f"NYU depth must be one of {sorted(DEPTH_KEYS)}, got {depth!r}")
        if crop not in CROPS:
            raise ValueError(f"NYU crop must be one of {CROPS}, got {crop!r}")
        if split_scheme not in SCHEMES:
            raise ValueError(f"NYU split scheme must be one of {SCHEMES}, got {split_scheme!r}")
        self.src = Path(src)
        self.mat, self.split_file, self.class_mapping = mat, split_file, class_mapping
        self.depth, self.crop, self.labels = depth, crop, labels
        self.split_scheme, self.val_fraction, self.split_seed = split_scheme, val_fraction, split_seed
        self._reader: LabeledMat | None = None
        self._lut: np.ndarray | None = None

    # ---------------------------------------------------------------- command line

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--nyu-mat", default="nyu_depth_v2_labeled.mat", help="labeled file, relative to --src")
        group.add_argument("--nyu-depth", choices=sorted(DEPTH_KEYS), default="filled",
                           help="'filled' (hole-filled 'depths') or 'raw' ('rawDepths', 0 = hole)")
        group.add_argument("--nyu-crop", choices=CROPS, default="none",
                           help="'eigen' keeps rows 44:471, cols 40:601 where depth is projected (561x427)")
        group.add_argument("--nyu-no-labels", action="store_true", help="write no segmentation labels")
        group.add_argument("--nyu-class-mapping", default="classMapping40.mat", help="894->40 mapping, relative to --src")
        group.add_argument("--nyu-split-scheme", choices=SCHEMES, default="official",
                           help="'official' train/test from splits.mat, or a seeded 'holdout' train/val")
        group.add_argument("--nyu-split-file", default="splits.mat", help="official split file, relative to --src")
        group.add_argument("--nyu-val-fraction", type=float, default=0.2, help="holdout: fraction of frames in val")
        group.add_argument("--nyu-split-seed", type=int, default=0, help="holdout: permutation seed")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "NyuConverter":
        def opt(name: str, default: Any) -> Any:
            return getattr(args, name, default)
        return cls(src, mat=opt("nyu_mat", "nyu_depth_v2_labeled.mat"), depth=opt("nyu_depth", "filled"),
                   crop=opt("nyu_crop", "none"), labels=not opt("nyu_no_labels", False),
                   class_mapping=opt("nyu_class_mapping", "classMapping40.mat"),
                   split_scheme=opt("nyu_split_scheme", "official"), split_file=opt("nyu_split_file", "splits.mat"),
                   val_fraction=opt("nyu_val_fraction", 0.2), split_seed=opt("nyu_split_seed", 0))

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"depth": self.depth, "crop": self.crop, "labels": self.labels,
                               "split_scheme": self.split_scheme}
        if self.split_scheme == "holdout":
            out.update(val_fraction=self.val_fraction, split_seed=self.split_seed)
        return out

    # ---------------------------------------------------------------- pickling: files open per process

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def _path(self, name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else self.src / name

    def _open(self) -> LabeledMat:
        if self._reader is None:
            self._reader = LabeledMat(self._path(self.mat))
        return self._reader

    def _label_lut(self) -> np.ndarray:
        if self._lut is None:
            self._lut = load_nyu40_lut(self._path(self.class_mapping))
        return self._lut

    # ---------------------------------------------------------------- enumeration

    def _split_indices(self, n_frames: int) -> dict[str, np.ndarray]:
        if self.split_scheme == "official":
            return official_splits(self._path(self.split_file), n_frames)
        return holdout_splits(n_frames, self.val_fraction, self.split_seed)

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        reader = LabeledMat(self._path(self.mat))
        try:
            n = reader.n_frames
            if self.depth == "raw" and not reader.has("rawDepths"):
                raise LabeledFileError(f"{reader.path}: no 'rawDepths' dataset for --nyu-depth raw")
        finally:
            reader.close()
        if self.labels:
            self._label_lut()  # a bad mapping file should stop the run here, not in every worker
        by_split = self._split_indices(n)
        unknown = set(splits or ()) - set(by_split)
        if unknown:
            raise ValueError(f"NYU split scheme {self.split_scheme!r} has splits {sorted(by_split)}, not {sorted(unknown)}")
        frames: list[FrameRef] = []
        for split, idx in by_split.items():
            if splits is None or split in splits:
                frames += [FrameRef(split, f"{i + 1:04d}", (self.mat,), int(i)) for i in idx]
        rejected = [Rejection(frame=f"{i + 1:04d}", split="none", code="no-split",
                              reason=f"frame {i + 1} of {self.mat} is in no split of {self.split_file}", file=self.mat)
                    for i in unassigned(by_split, n)] if self.split_scheme == "official" and splits is None else []
        report = {"frames_in_file": n, "split_counts": {s: int(v.size) for s, v in by_split.items()}}
        return Enumeration(frames=frames, rejected=rejected, report=report)

    # ---------------------------------------------------------------- loading

    def load(self, ref: FrameRef) -> Sample:
        reader = self._open()
        i = int(ref.payload)
        where = f"{reader.path} frame {i + 1}"
        rgb = reader.rgb(i)
        depth_m = reader.plane(DEPTH_KEYS[self.depth], i)
        conv = depth_to_mm(depth_m)
        if not (conv.depth_mm > 0).any():
            raise RejectFrame("no-valid-depth", f"{where}: '{DEPTH_KEYS[self.depth]}' has no valid depth", reader.path)
        seg = None
        if self.labels:
            try:
                seg = map_labels(reader.plane("labels", i), self._label_lut(), where)
            except ValueError as e:
                raise RejectFrame("bad-value", str(e), reader.path) from None
        intrinsics = INTRINSICS
        if self.crop == "eigen":
            rows, cols = EIGEN_CROP
            rgb, depth_mm = rgb[rows, cols], conv.depth_mm[rows, cols]
            seg = None if seg is None else seg[rows, cols]
            intrinsics = INTRINSICS.cropped(cols.start, rows.start)
        else:
            depth_mm = conv.depth_mm
        return Sample(
            key=make_key(self.name, ref.split, ref.frame_id),
            rgb=np.ascontiguousarray(rgb), depth_mm=np.ascontiguousarray(depth_mm),
            seg=None if seg is None else np.ascontiguousarray(seg),
            intrinsics=intrinsics, meta=self._meta(reader, i), rejected_depth_pixels=conv.rejected,
        )

    def _meta(self, reader: LabeledMat, i: int) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "source": "nyu_depth_v2_labeled", "source_file": self.mat, "frame_index": i + 1,
            "sensor": "kinect_v1", "depth_source": DEPTH_KEYS[self.depth], "crop": self.crop,
            "original_size": [WIDTH, HEIGHT], "rgb_distortion": RGB_DISTORTION, "rgb_undistorted": False,
        }
        for key, meta_key in META_STRINGS.items():
            value = reader.string(key, i)
            if value is not None:
                meta[meta_key] = value
        accel = reader.accel(i)
        if accel is not None:
            meta["accel"] = accel
        return meta


__all__ = ["NyuConverter", "ClassMappingError", "LabeledFileError"]
