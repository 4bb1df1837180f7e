"""NYU Depth V2 labeled set (``nyu_depth_v2_labeled.mat``, MATLAB v7.3 = HDF5) -> Samples.

The file is 2.9 GB, so frames are read one at a time (``f['images'][i]``), never whole
datasets, and the HDF5 handle is opened lazily in each process that loads frames. MATLAB is
column-major, so h5py sees every dimension reversed: images (N, 3, 640, 480) become upright
(480, 640, 3) by a transpose; ``rot90`` would mirror them.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import InputError
from ...format.schema import Sample, depth_to_mm
from ...format.tar_index import make_key
from ..base import Converter, Enumeration, FrameRef, RejectFrame, input_sha256
from ..labels import LabelMappingError, load_nyu40_to_6, nyu40_table, nyu894_to_6, nyu894_to_6_lut
from .camera import HEIGHT, RGB_CAMERA, WIDTH
from .splits import DEFAULT_SCHEME, SCHEME_SPLITS, SCHEMES, SEEDED_SCHEMES, make_split, scene_overlap, split_scenes

# The undistorted Kinect RGB camera (the toolbox's camera_params.m, camera.py); the labeled depth
# is already registered to it.
NYU_INTRINSICS = RGB_CAMERA.intrinsics()
DEPTH_KEYS = {"filled": "depths", "raw": "rawDepths"}
# Per-frame string cells worth keeping as provenance; the first two are required.
STRING_KEYS = {"scenes": "scene", "sceneTypes": "scene_type",
               "rawRgbFilenames": "raw_rgb_filename", "rawDepthFilenames": "raw_depth_filename"}
REQUIRED_STRINGS = ("scenes", "sceneTypes")


LABELED_FILE = "nyu_depth_v2_labeled.mat"


class NyuFileError(InputError):
    """The .mat file as a whole cannot be converted; the message names the file and the key."""


def frame_id(index0: int) -> str:
    """0-based index -> 1-based, zero-padded frame id ('0001'), as MATLAB and splits.mat count."""
    return f"{index0 + 1:04d}"


def _expected_shapes(n: int) -> dict[str, tuple[int, ...]]:
    return {"images": (n, 3, WIDTH, HEIGHT), "depths": (n, WIDTH, HEIGHT), "rawDepths": (n, WIDTH, HEIGHT),
            "labels": (n, WIDTH, HEIGHT)}


def _decode_char(f: h5py.File, ref: h5py.Reference) -> str:
    """A MATLAB char array (stored as (n, 1) uint16 codes) -> str."""
    return "".join(map(chr, np.asarray(f[ref]).ravel()))


class NyuConverter(Converter):
    name = "nyu"
    description = "NYU Depth V2 labeled set (nyu_depth_v2_labeled.mat, 1,449 frames, 894-class labels)"
    splits = ("train", "val", "test")

    def __init__(self, src: str | Path, depth: str = "filled", split_scheme: str = DEFAULT_SCHEME,
                 split_seed: int = 0, splits_file: str | Path | None = None,
                 label_map: str | Path | None = None):
        if depth not in DEPTH_KEYS:
            raise InputError(f"depth must be one of {sorted(DEPTH_KEYS)}, got {depth!r}")
        if split_scheme not in SCHEMES:
            raise InputError(f"split scheme must be one of {SCHEMES}, got {split_scheme!r}")
        if splits_file is not None and split_scheme != "official":
            raise InputError("--splits-file only applies to --split-scheme official")
        self.src = Path(src)
        self.depth = depth
        self.split_scheme = split_scheme
        self.split_seed = int(split_seed)
        self.splits_file = None if splits_file is None else Path(splits_file)
        self.label_map = None if label_map is None else Path(label_map)
        self._mapping = None if label_map is None else load_nyu40_to_6(label_map)
        self._lut = nyu894_to_6_lut(self._mapping)
        self._split: dict[str, list[int]] | None = None
        self._scene_names: list[str] | None = None
        self._n_frames: int | None = None
        self._h5: h5py.File | None = None
        self._h5_pid: int | None = None

    # ------------------------------------------------------------ CLI

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--depth", choices=sorted(DEPTH_KEYS), default="filled",
                           help="NYU: 'filled' = depths (inpainted), 'raw' = rawDepths (0 = hole)")
        group.add_argument("--split-scheme", choices=SCHEMES, default=DEFAULT_SCHEME,
                           help="NYU: scenes80 = whole scenes, seeded, ~80/20 train/val (no room on both sides); "
                                "random80 = the seed's frame-level 80/20 split (val shares rooms with train); "
                                "official = splits.mat 795 train / 654 test")
        group.add_argument("--split-seed", type=int, default=0, help="NYU: seed of the scenes80 / random80 split")
        group.add_argument("--splits-file", type=Path, default=None,
                           help="NYU: splits.mat (trainNdxs/testNdxs) or JSON overriding the shipped official split")
        group.add_argument("--label-map", type=Path, default=None,
                           help="NYU: JSON of NYU-40 class -> 6-class overriding the default (see docs/labels.md)")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "NyuConverter":
        return cls(src, depth=getattr(args, "depth", "filled"), split_scheme=getattr(args, "split_scheme", DEFAULT_SCHEME),
                   split_seed=getattr(args, "split_seed", 0), splits_file=getattr(args, "splits_file", None),
                   label_map=getattr(args, "label_map", None))

    # ------------------------------------------------------------ pickling / file handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_h5_pid"] = None
        return state

    def _open(self) -> h5py.File:
        if self.src.is_dir():  # h5py would say only "[Errno 21] Is a directory"
            inside = sorted(p.name for p in self.src.glob("*.mat"))
            hint = (f"give --src {self.src / LABELED_FILE}" if LABELED_FILE in inside else
                    f"it holds {', '.join(inside[:3])}" if inside else f"it holds no {LABELED_FILE}")
            raise NyuFileError(f"{self.src}: is a folder; --src must be the labeled set's one file, "
                               f"{LABELED_FILE} (MATLAB v7.3, 2.8 GB): {hint}")
        try:
            return h5py.File(self.src, "r")
        except FileNotFoundError:
            raise NyuFileError(f"{self.src}: file not found") from None
        except OSError as e:
            raise NyuFileError(f"{self.src}: {self._not_hdf5_hint()} ({e})") from None

    def _not_hdf5_hint(self) -> str:
        with open(self.src, "rb") as fh:
            head = fh.read(128)
        if head.startswith(b"MATLAB 5.0"):
            return "a MATLAB v5 MAT-file, but the NYU labeled set is v7.3 (HDF5); is this the right file?"
        if head.startswith(b"MATLAB 7.3"):
            return "MATLAB v7.3 header present but the HDF5 data cannot be opened: truncated or corrupted download?"
        return "not a MATLAB v7.3 (HDF5) file, or truncated/corrupted"

    def _file(self) -> h5py.File:
        # One handle per process: an HDF5 handle inherited across fork is not safe to use.
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5, self._h5_pid = self._open(), os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._h5_pid == os.getpid():
            self._h5.close()
        self._h5 = self._h5_pid = None

    def source_root(self) -> Path:
        return self.src.parent

    # ------------------------------------------------------------ validation / splits

    def _validate(self, f: h5py.File) -> int:
        """Check the keys, shapes and dtypes this converter reads; return the frame count."""
        needed = ["images", DEPTH_KEYS[self.depth], "labels", *REQUIRED_STRINGS]
        missing = [k for k in needed if k not in f]
        if missing:
            raise NyuFileError(f"{self.src}: missing dataset key(s) {missing}; keys present: {sorted(f.keys())}")
        n = f["images"].shape[0] if f["images"].ndim == 4 else -1
        shapes = _expected_shapes(n)
        for key in ("images", DEPTH_KEYS[self.depth], "labels"):
            if f[key].shape != shapes[key]:
                raise NyuFileError(f"{self.src}: dataset '{key}' has shape {f[key].shape}, expected {shapes[key]} "
                                   "(MATLAB (480, 640, ...) seen through HDF5 with axes reversed)")
        if f["images"].dtype != np.uint8:
            raise NyuFileError(f"{self.src}: dataset 'images' has dtype {f['images'].dtype}, expected uint8 "
                               "(8-bit RGB as in the released file); no frame could be converted")
        for key, kinds, what in ((DEPTH_KEYS[self.depth], "f", "floating-point metres"),
                                 ("labels", "uif", "integer class ids")):
            if f[key].dtype.kind not in kinds:
                raise NyuFileError(f"{self.src}: dataset '{key}' has dtype {f[key].dtype}, expected {what}")
        # Optional datasets are read per frame: a wrong shape must be named here, not fail frame i.
        for key in (*REQUIRED_STRINGS, *(k for k in STRING_KEYS if k not in REQUIRED_STRINGS and k in f)):
            if f[key].shape != (1, n) or f[key].dtype != h5py.ref_dtype:
                raise NyuFileError(f"{self.src}: dataset '{key}' is {f[key].shape} {f[key].dtype}, "
                                   f"expected (1, {n}) object references")
        if "accelData" in f and (f["accelData"].shape != (4, n) or f["accelData"].dtype.kind not in "fiu"):
            raise NyuFileError(f"{self.src}: dataset 'accelData' is {f['accelData'].shape} {f['accelData'].dtype}, "
                               f"expected (4, {n}) numbers (MATLAB {n}x4 seen through HDF5)")
        if "names" in f and f["names"].dtype != h5py.ref_dtype:
            raise NyuFileError(f"{self.src}: dataset 'names' has dtype {f['names'].dtype}, expected object references")
        return n

    def _check_class_names(self, f: h5py.File) -> dict[str, Any]:
        """Compare the file's 894 class names with the shipped mapping's (a mismatch means wrong labels)."""
        if "names" not in f:
            return {"class_names_checked": False, "reason": "no 'names' dataset"}
        refs = f["names"][()].ravel()
        names = [_decode_char(f, r) for r in refs]
        expected = list(nyu40_table().names_894)
        diffs = [i + 1 for i, (a, b) in enumerate(zip(names, expected)) if a != b]
        if len(names) != len(expected) or diffs:
            warnings.warn(f"{self.src}: 'names' differs from the shipped classMapping40 names "
                          f"({len(names)} names, first differing ids {diffs[:5]}); labels may be mapped wrongly")
        return {"class_names_checked": True, "class_names_match": not diffs and len(names) == len(expected),
                "class_name_mismatches": diffs[:20]}

    def frame_count(self) -> int:
        if self._n_frames is None:
            with self._open() as f:
                self._n_frames = self._validate(f)
        return self._n_frames

    def split_indices(self) -> dict[str, list[int]]:
        """Split name -> sorted 1-based frame numbers."""
        if self._split is None:
            scenes = self.scene_names() if self.split_scheme == "scenes80" else None
            self._split = make_split(self.split_scheme, self.frame_count(), self.split_seed, self.splits_file, scenes)
        return self._split

    def scene_names(self) -> list[str]:
        """The ``scenes`` cell: the scene of every frame, in frame order."""
        if self._scene_names is None:
            with self._open() as f:
                n = self._n_frames = self._validate(f)
                try:
                    self._scene_names = [_decode_char(f, f["scenes"][0, i]) for i in range(n)]
                except (OSError, KeyError, ValueError, TypeError) as e:
                    raise NyuFileError(f"{self.src}: cannot decode the 'scenes' cell ({e})") from None
        return self._scene_names

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "depth": self.depth,
            "depth_key": DEPTH_KEYS[self.depth],
            "split_scheme": self.split_scheme,
            "split_indices_base": 1,
            "split_indices": self.split_indices(),
            "label_map": "default" if self._mapping is None else {"file": str(self.label_map),
                                                                  "nyu40_to_6": self._mapping},
        }
        if self.split_scheme in SEEDED_SCHEMES:
            opts["split_seed"] = self.split_seed
            if self.split_scheme == "scenes80":
                opts["split_scenes"] = split_scenes(self.scene_names(), self.split_indices())
        else:
            opts["splits_file"] = "shipped" if self.splits_file is None else str(self.splits_file)
        return opts

    # ------------------------------------------------------------ enumerate / load

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        scheme_splits = SCHEME_SPLITS[self.split_scheme]
        unknown = sorted(set(splits or ()) - set(scheme_splits))
        if unknown:
            raise InputError(f"split(s) {unknown} do not exist in NYU split scheme {self.split_scheme!r} "
                             f"(it has {list(scheme_splits)})")
        with self._open() as f:
            n = self._n_frames = self._validate(f)
            names_report = self._check_class_names(f)
        split = self.split_indices()
        by_frame = {i: s for s in scheme_splits for i in split[s]}
        frames = [FrameRef(split=by_frame[i], frame_id=frame_id(i - 1), files=(self.src.name,), payload=i - 1)
                  for i in range(1, n + 1) if splits is None or by_frame[i] in splits]
        held_out = scheme_splits[1]
        overlap = scene_overlap(self.scene_names(), split["train"], split[held_out])
        report = {"frames_in_file": n, "file_size": self.src.stat().st_size,
                  "file_sha256": input_sha256(self.src),
                  "split_counts": {s: len(split[s]) for s in scheme_splits},
                  # Rooms seen in training make the held-out score optimistic; say how many.
                  "held_out_frames_sharing_a_train_scene": overlap["frames"],
                  "scenes_on_both_sides": overlap["scenes"], **names_report}
        return Enumeration(frames=frames, report=report)

    def _read(self, key: str, i: int) -> np.ndarray:
        try:
            return self._file()[key][i]
        except NyuFileError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise RejectFrame("unreadable", f"{self.src}: cannot read '{key}'[{i}] (frame {frame_id(i)}): {e}",
                              self.src) from None

    def _strings(self, i: int) -> dict[str, str]:
        f = self._file()
        out = {}
        for key, field in STRING_KEYS.items():
            if key in f:
                try:
                    out[field] = _decode_char(f, f[key][0, i])
                except (OSError, KeyError, ValueError, TypeError) as e:
                    raise RejectFrame("unreadable", f"{self.src}: cannot decode '{key}' of frame {frame_id(i)}: {e}",
                                      self.src) from None
        return out

    def _integer_labels(self, labels: np.ndarray, i: int) -> np.ndarray:
        """Labels as integers; a float-stored label map is accepted only if every value is whole."""
        if labels.dtype.kind != "f":
            return labels
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise RejectFrame("bad-value", f"{self.src}: 'labels'[{i}] (frame {frame_id(i)}) holds non-integer values",
                              self.src)
        return labels.astype(np.int64)

    def load(self, ref: FrameRef) -> Sample:
        i = int(ref.payload)
        depth_key = DEPTH_KEYS[self.depth]
        # h5py sees MATLAB's (H, W, C) as (C, W, H): a transpose makes it upright without mirroring.
        rgb = np.ascontiguousarray(self._read("images", i).transpose(2, 1, 0))
        depth_m = self._read(depth_key, i).T
        labels = self._integer_labels(self._read("labels", i).T, i)
        conv = depth_to_mm(depth_m)
        if not conv.depth_mm.any():
            raise RejectFrame("no-valid-depth", f"{self.src}: '{depth_key}'[{i}] (frame {frame_id(i)}) has no valid depth",
                              self.src)
        try:
            seg = np.ascontiguousarray(nyu894_to_6(labels, self._lut))
        except LabelMappingError as e:
            raise RejectFrame("bad-value", f"{self.src}: 'labels'[{i}] (frame {frame_id(i)}): {e}", self.src) from None
        meta: dict[str, Any] = {
            "source": "nyu_depth_v2_labeled",
            "source_file": self.src.name,
            "source_index": i + 1,
            "depth_source": depth_key,
            "split_scheme": self.split_scheme,
            "label_source": "nyu894->nyu40->6",
            **self._strings(i),
        }
        if "accelData" in self._file():
            meta["accel"] = [float(v) for v in self._read("accelData", (slice(None), i))]
        return Sample(key=make_key("nyu", ref.split, ref.frame_id), rgb=rgb, depth_mm=conv.depth_mm,
                      intrinsics=NYU_INTRINSICS, seg=seg, meta=meta, rejected_depth_pixels=conv.rejected)
