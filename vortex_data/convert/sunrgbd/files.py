"""SUN RGB-D's on-disk layout: frame folders, bit-rotated depth PNGs, intrinsics, Rt, split files.

Pure readers of the files one frame folder holds, and the search for frame folders by what they
contain; the converter (:mod:`.converter`) turns them into samples. See ``docs/sunrgbd.md``.
"""


from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import scipy.io
from PIL import Image

from ...errors import InputError
from ...format.geometry import Intrinsics
from ..base import RejectFrame, os_reason, scan_folder
from ..image_files import incomplete_reason, read_image

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
    label_entry: int | None = None
    """0-based entry of the toolbox's SUNRGBD2Dseg / SUNRGBDMeta for this folder, if any."""


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
        raise InputError(f"split path {path!r} does not contain {_SPLIT_ANCHOR!r}")
    return path[i + len(_SPLIT_ANCHOR):].strip().rstrip("/")


def _cell_strings(cell: np.ndarray, path: Path, name: str) -> list[str]:
    out = []
    for item in np.asarray(cell).ravel():
        arr = np.asarray(item).ravel()
        if arr.size != 1 or not isinstance(arr[0], str):
            raise InputError(f"{path}: '{name}' must be a cell array of strings, found {item!r}")
        out.append(str(arr[0]))
    return out


def read_split_file(path: Path) -> dict[str, str]:
    """``allsplit.mat`` (MATLAB v5) -> {frame folder relative to SUNRGBD/: 'train' | 'test'}."""
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several unrelated types for a bad .mat
        raise InputError(f"{path}: not a readable MATLAB v5 file ({e})") from None
    splits: dict[str, str] = {}
    for split, name in (("train", "alltrain"), ("test", "alltest")):
        if name not in mat:
            raise InputError(f"{path}: no '{name}' cell (keys: {sorted(k for k in mat if not k.startswith('__'))})")
        for entry in _cell_strings(mat[name], path, name):
            key = split_key(entry)
            if splits.get(key, split) != split:
                raise InputError(f"{path}: {key!r} is listed in both alltrain and alltest")
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

