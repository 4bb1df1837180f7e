"""SUN RGB-D (``SUNRGBD/<sensor>/<subset>/.../<frame folder>/``) -> uniform samples.

A frame folder is recognised by what it holds (``image/``, ``depth/``, ``intrinsics.txt``), not
by how deep it sits: xtion/sun3ddata nests scene/sub/frame one level deeper than the others.
Depth PNGs are bit-rotated (millimetres = 16-bit rotate-right by 3 of the stored value) and are
capped at 8 m as the official toolbox does. ``kv1/NYUdata`` holds the NYU Depth V2 frames again,
so it is left out by default and the manifest report says how many frames that removed.
See ``docs/sunrgbd.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import scipy.io
from PIL import Image

from ..schema import Intrinsics, Sample, make_key
from .base import Converter, Enumeration, FrameRef, RejectFrame, Rejection, os_reason, scan_folder
from .image_files import incomplete_reason, read_image

SENSOR_SUBSETS: dict[str, tuple[str, ...]] = {
    "kv1": ("NYUdata", "b3dodata"),
    "kv2": ("kinect2data", "align_kv2"),
    "realsense": ("lg", "sa", "sh", "shr"),
    "xtion": ("sun3ddata", "xtion_align_data"),
}
NYU_OVERLAP_SUBSET = "kv1/NYUdata"
NYU_OVERLAP_REASON = (
    "kv1/NYUdata holds the 1,449 NYU Depth V2 labelled frames (cropped to 427x561); they are left "
    "out so a mixture with the nyu dataset does not count them twice (--include-nyu-overlap keeps them)"
)
MAX_DEPTH_MM = 8000
"""The official toolbox caps depth at 8 m; beyond that the sensors' values are unreliable."""
DEPTH_MODES = {"raw": "depth", "filled": "depth_bfx"}
NOT_IN_SPLIT = "none"
"""Split recorded for frames that the split file lists in neither train nor test."""
_FRAME_MARKERS = ("image", "depth", "depth_bfx", "intrinsics.txt")
_SPLIT_ANCHOR = "SUNRGBD/"


class FrameFiles(NamedTuple):
    """Where one frame's files are, relative to the SUNRGBD root (posix strings)."""

    sensor: str
    subset: str
    folder: str
    image: str
    depth: str
    intrinsics: str
    extrinsics: str | None
    scene: str | None


# ---------------------------------------------------------------- pure decoding helpers

def rotate_right_3(stored: np.ndarray) -> np.ndarray:
    """SUN RGB-D depth PNG value -> millimetres: 16-bit rotate-right by 3.

    Computed in uint16 so the left shift wraps; promoting to a wider type first keeps the
    high bits and yields values far beyond 65535 mm.
    """
    if stored.dtype != np.uint16:
        raise TypeError(f"SUN RGB-D depth must be uint16 to be bit-rotated, got {stored.dtype}")
    return (stored >> np.uint16(3)) | (stored << np.uint16(13))


def rotate_left_3(mm: np.ndarray) -> np.ndarray:
    """Millimetres -> the stored SUN RGB-D PNG value (inverse of :func:`rotate_right_3`)."""
    if mm.dtype != np.uint16:
        raise TypeError(f"depth must be uint16 to be bit-rotated, got {mm.dtype}")
    return (mm << np.uint16(3)) | (mm >> np.uint16(13))


@dataclass(frozen=True)
class DecodedDepth:
    depth_mm: np.ndarray
    beyond_cap: int
    """Pixels whose decoded value exceeded 8 m (made invalid in raw mode, clipped in filled mode)."""


def cap_depth(mm: np.ndarray, mode: str) -> DecodedDepth:
    """Apply the 8 m cap: raw depth beyond it becomes invalid (0), filled depth is clipped to it."""
    far = mm > MAX_DEPTH_MM
    out = mm.copy()
    out[far] = 0 if mode == "raw" else MAX_DEPTH_MM
    return DecodedDepth(out, int(far.sum()))


def read_depth_png(path: Path) -> np.ndarray:
    """The stored uint16 values of a SUN RGB-D depth PNG (not yet rotated)."""
    stored = read_image(path, cv2.IMREAD_UNCHANGED)
    if stored.dtype != np.uint16 or stored.ndim != 2:
        raise RejectFrame("bad-value", f"{path}: expected a single-channel 16-bit PNG, got {stored.shape} {stored.dtype}", path)
    return stored


def read_rgb(path: Path) -> np.ndarray:
    """A JPEG as (H, W, 3) uint8 RGB. Pillow is used because it refuses truncated files
    (OpenCV returns the partial image with only a warning); a missing end marker is refused first."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RejectFrame("unreadable", f"{path}: cannot be read ({os_reason(e)})", path) from None
    why = incomplete_reason(data)
    if why:
        raise RejectFrame("truncated", f"{path}: {why}", path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise RejectFrame("unreadable", f"{path}: RGB image could not be decoded ({e})", path) from None


def parse_intrinsics(text: str, path: Path | str) -> Intrinsics:
    """``intrinsics.txt``: 9 whitespace-separated floats, row-major K (fx=v0, cx=v2, fy=v4, cy=v5)."""
    try:
        v = [float(t) for t in text.split()]
    except ValueError as e:
        raise RejectFrame("bad-value", f"{path}: intrinsics are not numbers ({e})", path) from None
    if len(v) != 9:
        raise RejectFrame("bad-value", f"{path}: expected 9 numbers (3x3 K), found {len(v)}", path)
    k = Intrinsics(fx=v[0], fy=v[4], cx=v[2], cy=v[5])
    if not all(np.isfinite([k.fx, k.fy, k.cx, k.cy])) or k.fx <= 0 or k.fy <= 0:
        raise RejectFrame("bad-value", f"{path}: not a pinhole K matrix: {v}", path)
    return k


def parse_rtilt(text: str, path: Path | str) -> list[list[float]]:
    """The gravity rotation Rtilt: the first 3x3 of an ``extrinsics/*.txt`` matrix (3x3 or 3x4)."""
    try:
        rows = [[float(t) for t in line.split()] for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise RejectFrame("bad-value", f"{path}: extrinsics are not numbers ({e})", path) from None
    if len(rows) < 3 or any(len(r) < 3 for r in rows[:3]):
        raise RejectFrame("bad-value", f"{path}: expected a 3x3 or 3x4 matrix, got rows of {[len(r) for r in rows]}", path)
    return [r[:3] for r in rows[:3]]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RejectFrame("unreadable", f"{path}: cannot be read as text ({e})", path) from None


# ---------------------------------------------------------------- split file

def split_key(path: str) -> str:
    """A split-file path -> the frame folder relative to SUNRGBD/ (foreign prefix and '/' removed)."""
    i = path.find(_SPLIT_ANCHOR)
    if i < 0:
        raise ValueError(f"split path {path!r} does not contain {_SPLIT_ANCHOR!r}")
    return path[i + len(_SPLIT_ANCHOR):].strip().rstrip("/")


def _cell_strings(cell: np.ndarray, path: Path, name: str) -> list[str]:
    out = []
    for item in np.asarray(cell).ravel():
        arr = np.asarray(item).ravel()
        if arr.size != 1 or not isinstance(arr[0], str):
            raise ValueError(f"{path}: '{name}' must be a cell array of strings, found {item!r}")
        out.append(str(arr[0]))
    return out


def read_split_file(path: Path) -> dict[str, str]:
    """``allsplit.mat`` (MATLAB v5) -> {frame folder relative to SUNRGBD/: 'train' | 'test'}."""
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several unrelated types for a bad .mat
        raise ValueError(f"{path}: not a readable MATLAB v5 file ({e})") from None
    splits: dict[str, str] = {}
    for split, name in (("train", "alltrain"), ("test", "alltest")):
        if name not in mat:
            raise ValueError(f"{path}: no '{name}' cell (keys: {sorted(k for k in mat if not k.startswith('__'))})")
        for entry in _cell_strings(mat[name], path, name):
            key = split_key(entry)
            if splits.get(key, split) != split:
                raise ValueError(f"{path}: {key!r} is listed in both alltrain and alltest")
            splits[key] = split
    return splits


# ---------------------------------------------------------------- walking the tree

def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def is_frame_folder(path: Path) -> bool:
    """Raises OSError when the folder's entries cannot even be looked at (permissions)."""
    for m in _FRAME_MARKERS:
        try:
            os.stat(path / m)
            return True
        except (FileNotFoundError, NotADirectoryError):
            continue
    return False


def find_frame_folders(subset_dir: Path, unlistable: list[tuple[Path, OSError]] | None = None) -> list[Path]:
    """Frame folders below a subset folder, sorted. A frame folder's own subfolders (fullres/, ...)
    are not searched, so their images and intrinsics are never mistaken for frames. Folders that
    cannot be listed are appended to ``unlistable`` with the error (os.walk would skip them)."""
    found: list[Path] = []
    errors: list[tuple[Path, OSError]] = [] if unlistable is None else unlistable

    def onerror(e: OSError) -> None:
        errors.append((Path(e.filename), e))

    for dirpath, dirnames, _ in os.walk(subset_dir, onerror=onerror):
        here = Path(dirpath)
        try:
            frame = here != subset_dir and is_frame_folder(here)
        except OSError as e:
            errors.append((here, e))
            dirnames.clear()
            continue
        if frame:
            found.append(here)
            dirnames.clear()
        else:
            dirnames.sort()
    return sorted(found)


def _single(folder: Path, sub: str, suffix: str, stem: str | None) -> Path | None:
    """The one ``folder/sub/*suffix`` file (preferring the same stem as the image), or None."""
    entries, err = scan_folder(folder / sub)
    if err is not None and not isinstance(err, (FileNotFoundError, NotADirectoryError)):
        raise RejectFrame("unreadable", f"{folder / sub}: cannot be listed ({os_reason(err)})", folder / sub)
    cands = [p for p in entries if p.suffix.lower() == suffix and p.is_file()]
    if stem is not None and len(cands) > 1:
        cands = [p for p in cands if p.stem == stem] or cands
    if len(cands) > 1:
        raise RejectFrame("bad-layout", f"{folder / sub}: {len(cands)} {suffix} files, expected one", folder / sub)
    return cands[0] if cands else None


def locate_frame_files(root: Path, folder: Path, depth_dir: str) -> FrameFiles:
    """The files of one frame folder, or RejectFrame naming what is missing."""
    rel = folder.relative_to(root).as_posix()
    sensor, subset = rel.split("/")[:2]
    image = _single(folder, "image", ".jpg", None)
    if image is None:
        raise RejectFrame("missing-file", f"{folder / 'image'}: no .jpg image in frame folder {rel}", folder / "image")
    depth = _single(folder, depth_dir, ".png", image.stem)
    if depth is None:
        raise RejectFrame("missing-file", f"{folder / depth_dir}: no .png depth in frame folder {rel}", folder / depth_dir)
    intr = folder / "intrinsics.txt"
    if not intr.is_file():
        raise RejectFrame("missing-file", f"{intr}: missing in frame folder {rel}", intr)
    extr = sorted(p for p in (folder / "extrinsics").glob("*.txt") if p.is_file())
    scene = folder / "scene.txt"

    def r(p: Path) -> str:
        return p.relative_to(root).as_posix()

    return FrameFiles(sensor, subset, rel, r(image), r(depth), r(intr),
                      r(extr[-1]) if extr else None, r(scene) if scene.is_file() else None)


# ---------------------------------------------------------------- the converter

class SunRgbdConverter(Converter):
    name = "sunrgbd"
    description = "SUN RGB-D (kv1, kv2, realsense, xtion): bit-rotated depth PNGs, per-frame intrinsics, official split"
    splits = ("train", "test")

    def __init__(self, src: Path, depth: str = "raw", include_nyu_overlap: bool = False,
                 split_file: Path | None = None):
        if depth not in DEPTH_MODES:
            raise ValueError(f"depth mode must be one of {sorted(DEPTH_MODES)}, got {depth!r}")
        self.src = Path(src)
        if not self.src.is_dir():
            raise FileNotFoundError(f"{self.src}: SUN RGB-D root (the SUNRGBD/ folder) not found")
        self.depth = depth
        self.include_nyu_overlap = include_nyu_overlap
        self.split_file = None if split_file is None else Path(split_file)
        if self.split_file is not None and not self.split_file.is_file():
            raise FileNotFoundError(f"{self.split_file}: split file not found")

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--depth", choices=sorted(DEPTH_MODES), default="raw",
                           help="sunrgbd: 'raw' depth/ (0 and > 8 m invalid) or 'filled' depth_bfx/ (clipped to 8 m)")
        group.add_argument("--include-nyu-overlap", action="store_true",
                           help="sunrgbd: keep kv1/NYUdata (the NYU Depth V2 frames), left out by default")
        group.add_argument("--split-file", type=Path, default=None,
                           help="sunrgbd: official allsplit.mat; without it every frame is 'train'")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "SunRgbdConverter":
        return cls(src, depth=getattr(args, "depth", "raw"),
                   include_nyu_overlap=getattr(args, "include_nyu_overlap", False),
                   split_file=getattr(args, "split_file", None))

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"depth": self.depth, "include_nyu_overlap": self.include_nyu_overlap,
                                "max_depth_mm": MAX_DEPTH_MM, "split_file": None}
        if self.split_file is not None:
            opts["split_file"] = self.split_file.name
            opts["split_file_sha256"] = hashlib.sha256(self.split_file.read_bytes()).hexdigest()
        return opts

    # -------------------------------------------------------- enumerate

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        split_of = read_split_file(self.split_file) if self.split_file is not None else None
        wanted = set(self.splits) if splits is None else set(splits)
        frames: list[FrameRef] = []
        rejected: list[Rejection] = []
        counts: dict[str, Counter] = {}
        excluded = 0
        seen: set[str] = set()
        subset_dirs, blocked = self._subset_dirs()
        for bad, err in blocked:
            rejected += self._unlistable(bad, err, split_of, wanted, seen)
        for subset_dir in subset_dirs:
            subset = subset_dir.relative_to(self.src).as_posix()
            unlistable: list[tuple[Path, OSError]] = []
            folders = find_frame_folders(subset_dir, unlistable)
            for bad, err in unlistable:
                rejected += self._unlistable(bad, err, split_of, wanted, seen)
            for folder in folders:
                rel = folder.relative_to(self.src).as_posix()
                seen.add(rel)
                split = "train" if split_of is None else split_of.get(rel, NOT_IN_SPLIT)
                if subset == NYU_OVERLAP_SUBSET and not self.include_nyu_overlap:
                    excluded += split in wanted or split == NOT_IN_SPLIT
                    continue
                if split == NOT_IN_SPLIT:
                    rejected.append(Rejection(rel, split, "not-in-split",
                                              f"{folder}: frame folder is listed in neither alltrain nor alltest of {self.split_file}",
                                              rel))
                    continue
                if split not in wanted:
                    continue
                counts.setdefault(subset, Counter())[split] += 1
                try:
                    ff = locate_frame_files(self.src, folder, DEPTH_MODES[self.depth])
                except RejectFrame as e:
                    rejected.append(Rejection(rel, split, e.code, e.reason, self._rel(e.file)))
                    continue
                files = tuple(f for f in (ff.image, ff.depth, ff.intrinsics, ff.extrinsics, ff.scene) if f)
                frames.append(FrameRef(split=split, frame_id=rel, files=files, payload=ff))
        report = self._report(counts, excluded, split_of, seen, wanted)
        return Enumeration(frames=frames, rejected=rejected, report=report)

    def _unlistable(self, folder: Path, err: OSError, split_of: dict[str, str] | None, wanted: set[str],
                    seen: set[str]) -> list[Rejection]:
        """Rejections for a folder that cannot be listed: each frame the split file puts below it,
        or the folder itself (its frames are unknown), so no frame disappears without a trace."""
        rel = folder.relative_to(self.src).as_posix()
        if (rel == NYU_OVERLAP_SUBSET or rel.startswith(NYU_OVERLAP_SUBSET + "/")) and not self.include_nyu_overlap:
            return []
        why = f"cannot be listed ({os_reason(err)}), so its frames cannot be converted"
        if split_of is None:
            return [Rejection(rel, "train", "unreadable", f"{folder}: folder {why}", rel)]
        below = sorted(k for k in split_of if (k == rel or k.startswith(rel + "/")) and k not in seen)
        seen.update(below)
        if not below:
            return [Rejection(rel, NOT_IN_SPLIT, "unreadable", f"{folder}: folder {why}", rel)]
        return [Rejection(k, split_of[k], "unreadable", f"{self.src / k}: in folder {folder}, which {why}", rel)
                for k in below if split_of[k] in wanted]

    def _subset_dirs(self) -> tuple[list[Path], list[tuple[Path, OSError]]]:
        """The subset folders present, and those that cannot even be looked at (with the error)."""
        found, blocked = [], []
        for s, subs in SENSOR_SUBSETS.items():
            for sub in subs:
                path = self.src / s / sub
                try:
                    if stat.S_ISDIR(os.stat(path).st_mode):
                        found.append(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as e:
                    blocked.append((path, e))
        return found, blocked

    def _rel(self, file: str | None) -> str | None:
        if file is None:
            return None
        try:
            return Path(file).relative_to(self.src).as_posix()
        except ValueError:
            return file

    def _unknown_folders(self) -> list[str]:
        """Folders under the root that are no known sensor/subset: listed so nothing is skipped unseen."""
        out = []
        sensors, err = scan_folder(self.src)
        if err is not None:
            return [f". (cannot be listed: {os_reason(err)})"]
        for sensor in (p for p in sensors if _is_dir(p)):
            if sensor.name not in SENSOR_SUBSETS:
                out.append(sensor.name)
                continue
            subsets, err = scan_folder(sensor)
            if err is not None:
                out.append(f"{sensor.name} (cannot be listed: {os_reason(err)})")
            out += [f"{sensor.name}/{q.name}" for q in subsets
                    if _is_dir(q) and q.name not in SENSOR_SUBSETS[sensor.name]]
        return out

    def _report(self, counts: dict[str, Counter], excluded: int, split_of: dict[str, str] | None,
                seen: set[str], wanted: set[str]) -> dict[str, Any]:
        known = {f"{s}/{sub}" for s, subs in SENSOR_SUBSETS.items() for sub in subs}
        present = {d.relative_to(self.src).as_posix() for d in self._subset_dirs()[0]}
        report: dict[str, Any] = {
            "frames_per_subset": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
            "subsets_missing": sorted(known - present),
            "folders_not_read": self._unknown_folders(),
            "depth": f"{self.depth} ({DEPTH_MODES[self.depth]}/), > {MAX_DEPTH_MM} mm "
                     + ("invalid" if self.depth == "raw" else "clipped"),
        }
        if self.include_nyu_overlap:
            report["nyu_overlap"] = "included (--include-nyu-overlap)"
        else:
            report["excluded_nyu_overlap"] = excluded
            report["reason"] = NYU_OVERLAP_REASON
        if split_of is not None:
            listed_missing = sorted(k for k, s in split_of.items() if s in wanted and k not in seen
                                    and (self.include_nyu_overlap or not k.startswith(NYU_OVERLAP_SUBSET + "/")))
            report["split_listed_but_missing"] = len(listed_missing)
            report["split_listed_but_missing_examples"] = listed_missing[:10]
        return report

    # -------------------------------------------------------- load

    def load(self, ref: FrameRef) -> Sample:
        ff: FrameFiles = ref.payload
        root = self.src
        intrinsics_path = root / ff.intrinsics
        k = parse_intrinsics(_read_text(intrinsics_path), intrinsics_path)
        rgb = read_rgb(root / ff.image)
        depth_path = root / ff.depth
        decoded = cap_depth(rotate_right_3(read_depth_png(depth_path)), self.depth)
        if decoded.depth_mm.shape != rgb.shape[:2]:
            raise RejectFrame("bad-shape", f"{depth_path}: depth is {decoded.depth_mm.shape[::-1]} (WxH) but image "
                              f"{root / ff.image} is {rgb.shape[1::-1]}", depth_path)
        if not decoded.depth_mm.any():
            raise RejectFrame("no-valid-depth", f"{depth_path}: no valid depth pixel after decoding", depth_path)
        meta: dict[str, Any] = {
            "sensor": ff.sensor,
            "subset": ff.subset,
            "folder": ff.folder,
            "source_files": list(ref.files),
            "depth_mode": self.depth,
            "depth_beyond_8m": decoded.beyond_cap,
            "depth_beyond_8m_action": "invalidated" if self.depth == "raw" else "clipped",
        }
        if ff.extrinsics is not None:
            path = root / ff.extrinsics
            meta["rtilt"] = parse_rtilt(_read_text(path), path)
        if ff.scene is not None:
            meta["scene"] = _read_text(root / ff.scene).strip()
        return Sample(
            key=make_key(self.name, ref.split, ref.frame_id),
            rgb=rgb,
            depth_mm=decoded.depth_mm,
            intrinsics=k,
            seg=None,
            meta=meta,
            rejected_depth_pixels=decoded.beyond_cap if self.depth == "raw" else 0,
        )
