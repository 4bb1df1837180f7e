"""TUM RGB-D sequences and ROS-style frame folders -> uniform samples (docs/tum.md).

``--src`` is one sequence, or a folder whose subfolders are sequences, in either layout (detected
per sequence):

* TUM RGB-D: ``rgb.txt`` and ``depth.txt`` list ``timestamp path`` lines (``#`` comments), the
  images under ``rgb/`` and ``depth/``. Read as TUM's ``associate.py`` reads them (fields split on
  spaces, commas and tabs; a line starting with ``#`` is a comment; a later line with the same
  timestamp replaces an earlier one, which is rejected as a duplicate here).
* ROS-style folders, the shape a bag export takes: ``color/<sec>.<nsec>.png`` (or .jpg) and
  ``depth/<sec>.<nsec>.png``; times from the names by timestamps.stamp_from_name.

Colour and depth are paired by :func:`..timestamps.associate`, associate.py's algorithm (colour
first, depth second, ``|dt| < --max-dt``, default 0.02 s as associate.py's). Every listed frame is
written or rejected with a reason: colour without depth and depth without colour within
``--max-dt`` are ``unpaired``; every pair is written or rejected once (unreadable image, no valid
depth, ...). So colour entries + depth entries = 2 x pairs + unpaired + duplicates + bad lines.

Depth is a 16-bit PNG holding ``depth_scale`` units per metre (TUM: 5000, so mm = PNG / 5),
0 = missing. Intrinsics come from ``--camera``: TUM's published cameras by name or a TOML file.
A sample's ``scene`` is its sequence (the sequence folder's name); a build writes every sequence
to one split (``--sequence-split``), so a sequence never lands in both training and evaluation.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from .._toml import tomllib
from ..errors import InputError
from ..format.geometry import Intrinsics
from ..format.schema import Sample, depth_to_mm
from ..format.tar_index import make_key
from .base import Converter, Enumeration, FrameRef, Rejection, RejectFrame, os_reason, scan_folder
from .image_files import read_image
from .timestamps import associate, duplicate_times, stamped_files

DEFAULT_MAX_DT = 0.02
"""associate.py's default --max_difference, in seconds: at 30 Hz frames are 0.033 s apart, so a
frame's own partner is within it and a neighbour's only when the clocks drift by > 13 ms."""
SPLITS = ("train", "val", "test", "eval")
COLOR_DIR, DEPTH_DIR = "color", "depth"
COLOR_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class TumCamera:
    """Pinhole intrinsics of the colour camera (depth is registered to it), in pixels."""

    name: str
    fx: float
    fy: float
    cx: float
    cy: float
    depth_scale: float
    """Depth PNG units per metre (TUM: 5000; a millimetre PNG: 1000)."""
    distortion: tuple[float, ...] = ()
    """OpenCV order (k1, k2, p1, p2, k3, ...); recorded in meta, the images are not undistorted."""
    depth_correction: float | None = None
    """TUM's measured depth scale error ds of the camera, recorded in meta, not applied (docs/tum.md)."""
    size: tuple[int, int] | None = None
    """(width, height) the intrinsics are for; images of another size and the same aspect ratio
    get them rescaled, others are rejected. None: any size, as given."""

    def intrinsics(self, width: int, height: int) -> Intrinsics:
        """The intrinsics for an image of width x height; InputError when they cannot apply."""
        k = Intrinsics(self.fx, self.fy, self.cx, self.cy)
        if self.size is None or self.size == (width, height):
            return k
        cw, ch = self.size
        if cw * height != ch * width:
            raise InputError(f"camera {self.name} is for {cw}x{ch} images, this one is {width}x{height} "
                             "(another aspect ratio: give a camera file for this size)")
        return k.scaled(width / cw, height / ch)


# The TUM benchmark's camera page ("Intrinsic Camera Calibration of the Kinect"): the colour
# cameras of the Freiburg 1, 2 and 3 Kinects (d0..d4 in OpenCV order), and the ROS default set
# TUM's point-cloud recipe uses for the depth images as published (already registered to colour
# by OpenNI). ds: the depth scale error TUM measured for the fr1 and fr2 sensors.
CAMERAS: dict[str, TumCamera] = {
    "ros-default": TumCamera("ros-default", 525.0, 525.0, 319.5, 239.5, 5000.0, size=(640, 480)),
    "fr1": TumCamera("fr1", 517.3, 516.5, 318.6, 255.3, 5000.0, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633), 1.035,
                     (640, 480)),
    "fr2": TumCamera("fr2", 520.9, 521.0, 325.1, 249.7, 5000.0, (0.2312, -0.7849, -0.0033, -0.0001, 0.9172), 1.031,
                     (640, 480)),
    "fr3": TumCamera("fr3", 535.4, 539.2, 320.1, 247.6, 5000.0, size=(640, 480)),
}
_TOML_KEYS = {"fx", "fy", "cx", "cy", "depth_scale", "distortion", "name", "width", "height"}


def load_camera(spec: str | Path) -> TumCamera:
    """A camera by name (CAMERAS) or from a TOML file with fx, fy, cx, cy, depth_scale and an
    optional distortion list; InputError naming the file and the key otherwise."""
    if str(spec) in CAMERAS:
        return CAMERAS[str(spec)]
    path = Path(spec)
    names = ", ".join(CAMERAS)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--camera {spec}: neither a camera name ({names}) nor an existing TOML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - _TOML_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; a camera file has fx, fy, cx, cy, depth_scale "
                         "(depth PNG units per metre) and optionally distortion = [k1, k2, p1, p2, k3]")
    values = {}
    for key in ("fx", "fy", "cx", "cy", "depth_scale"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{path}: '{key}' must be a number, got {v!r}"
                             + (" (depth PNG units per metre: 5000 for TUM, 1000 for millimetre PNGs)"
                                if key == "depth_scale" else ""))
        values[key] = float(v)
    for key in ("fx", "fy", "depth_scale"):
        if values[key] <= 0:
            raise InputError(f"{path}: '{key}' must be > 0, got {values[key]}")
    dist = data.get("distortion", [])
    if not isinstance(dist, list) or len(dist) not in (0, 4, 5, 8) or \
            not all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in dist):
        raise InputError(f"{path}: 'distortion' must be a list of 4, 5 or 8 numbers in OpenCV order "
                         f"(k1, k2, p1, p2[, k3[, k4, k5, k6]]), got {dist!r}")
    size = (data.get("width"), data.get("height"))
    if size == (None, None):
        size = None
    elif not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise InputError(f"{path}: 'width' and 'height' go together and are positive integers, got {size}")
    return TumCamera(str(data.get("name", path.stem)), **values, distortion=tuple(float(d) for d in dist),
                     size=size)


@dataclass(frozen=True)
class _Entry:
    """One colour or depth frame of the sequence."""

    stamp: str
    """The timestamp as written (the list's first field, or the file name's stem)."""
    time: float | int
    """Seconds as associate.py parses them (float) for lists; nanoseconds (int) for folders."""
    path: str
    """Image file relative to --src."""
    where: str
    """Where it was listed, for messages: 'rgb.txt line 7' or 'color/1.5.png'."""


def read_file_list(path: Path, prefix: str, seq: str, split: str, rejected: list[Rejection]) -> list[_Entry]:
    """associate.py's read_file_list: ``timestamp path`` lines -> entries in file order; the
    lines it drops or overwrites are appended to ``rejected`` instead of vanishing. ``prefix``:
    the sequence folder relative to --src ('' or 'name/')."""
    try:
        text = path.read_text(errors="surrogateescape")
    except FileNotFoundError:
        raise InputError(f"{path}: missing (a TUM sequence has rgb.txt and depth.txt)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    by_time: dict[float, _Entry] = {}
    for n, line in enumerate(text.replace(",", " ").replace("\t", " ").split("\n"), 1):
        fields = line.split()
        if not fields or line.lstrip().startswith("#"):
            continue
        where = f"{path.name} line {n}"
        try:
            t = float(fields[0])
            ok = len(fields) >= 2 and math.isfinite(t)
        except ValueError:
            ok = False
        if not ok:
            rejected.append(Rejection(f"{seq}/{where}", split, "bad-line",
                                      f"{path} line {n}: expected 'timestamp path', got {line.strip()[:80]!r}",
                                      prefix + path.name))
            continue
        if t in by_time:
            old = by_time[t]
            rejected.append(Rejection(f"{seq}/{old.path}", split, "duplicate-timestamp",
                                      f"{path} {old.where}: timestamp {old.stamp} is listed again on line {n}, "
                                      "whose image is used (as associate.py does)", old.path))
        by_time[t] = _Entry(fields[0], t, prefix + fields[1], where)
    return list(by_time.values())


def read_stamped_folder(src: Path, sub: str, exts: tuple[str, ...], prefix: str, seq: str, split: str,
                        rejected: list[Rejection]) -> list[_Entry]:
    """The images of ``src/sub`` timed by their names; the unnamed, unreadable and duplicated are
    appended to ``rejected``. ``prefix``: ``src`` relative to --src ('' or 'name/')."""
    found = stamped_files(src / sub, exts)
    for name in found.unstamped:
        rejected.append(Rejection(f"{seq}/{sub}/{name}", split, "bad-name",
                                  f"{src / sub / name}: no timestamp in the file name (expected <sec>.<nsec>)",
                                  f"{prefix}{sub}/{name}"))
    for name, why in found.unreadable:
        rejected.append(Rejection(f"{seq}/{sub}/{name}", split, "unreadable",
                                  f"{src / sub / name}: cannot be read ({why})", f"{prefix}{sub}/{name}"))
    dup = set(duplicate_times([t for t, _ in found.stamped]))
    entries, seen = [], set()
    for t, name in found.stamped:  # by name: the first name of a time is kept
        if t in dup and t in seen:
            rejected.append(Rejection(f"{seq}/{sub}/{name}", split, "duplicate-timestamp",
                                      f"{src / sub / name}: another image in {sub}/ has the same time",
                                      f"{prefix}{sub}/{name}"))
            continue
        seen.add(t)
        entries.append(_Entry(Path(name).stem, t, f"{prefix}{sub}/{name}", f"{sub}/{name}"))
    return entries


def layout_of(folder: Path) -> str | None:
    """'lists' (rgb.txt + depth.txt), 'folders' (color/ + depth/) or None (not a sequence)."""
    if (folder / "rgb.txt").is_file() or (folder / "depth.txt").is_file():
        return "lists"
    if (folder / COLOR_DIR).is_dir() and (folder / DEPTH_DIR).is_dir():
        return "folders"
    return None


def _seconds(t: float | int) -> float:
    """A time difference in seconds: floats are seconds already, integers nanoseconds."""
    return float(t) if isinstance(t, float) else int(t) / 1e9


class TumConverter(Converter):
    name: ClassVar[str] = "tum"
    description: ClassVar[str] = ("TUM RGB-D sequences (rgb.txt/depth.txt) and ROS-style color/ + depth/ folders "
                                  "of <sec>.<nsec> images; one sequence or a folder of them")
    splits: ClassVar[tuple[str, ...]] = SPLITS

    def __init__(self, src: Path, camera: str | Path | None, max_dt: float = DEFAULT_MAX_DT, split: str = "train"):
        self.src = Path(src)
        if camera is None:
            hint = next((f" (the name says {n})" for n in ("fr1", "fr2", "fr3")
                         if f"freiburg{n[-1]}" in self.src.resolve().name), "")
            raise InputError(f"--dataset tum needs --camera: a TOML file (fx, fy, cx, cy, depth_scale) or one of "
                             f"{', '.join(CAMERAS)}{hint}")
        if not (isinstance(max_dt, (int, float)) and max_dt > 0 and math.isfinite(max_dt)):
            raise InputError(f"--max-dt must be a positive number of seconds, got {max_dt}")
        if split not in SPLITS:
            raise InputError(f"--sequence-split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.camera = load_camera(camera)
        self.max_dt = float(max_dt)
        self.split = split

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--camera", default=None,
                           help=f"tum: intrinsics and depth scale: a TOML file or one of {', '.join(CAMERAS)} "
                                "(TUM's published cameras; ros-default = 525/525/319.5/239.5, what TUM uses "
                                "for its pre-registered depth)")
        group.add_argument("--max-dt", type=float, default=DEFAULT_MAX_DT,
                           help="tum: largest colour/depth time difference of a pair, seconds (default 0.02, as "
                                "associate.py)")
        group.add_argument("--sequence-split", choices=SPLITS, default="train",
                           help="tum: the split every frame of the sequences goes to (default train)")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "TumConverter":
        g = lambda name, default=None: getattr(args, name, default)  # noqa: E731
        return cls(src, g("camera"), g("max_dt", DEFAULT_MAX_DT), g("sequence_split", "train"))

    def options(self) -> dict[str, Any]:
        return {"camera": asdict(self.camera), "max_dt": self.max_dt, "sequence_split": self.split}

    def sequences(self) -> list[tuple[Path, str, str]]:
        """(folder, its path relative to --src as a prefix, name) of each sequence: --src itself,
        or else each of its subfolders that is one, by name."""
        if not self.src.is_dir():
            raise InputError(f"{self.src}: no such folder (--src is a TUM sequence folder or a folder of them)")
        if layout_of(self.src):
            return [(self.src, "", self.src.resolve().name)]
        entries, err = scan_folder(self.src)
        if err is not None:
            raise InputError(f"{self.src}: cannot be listed ({os_reason(err)})")
        found = [(p, f"{p.name}/", p.name) for p in entries if p.is_dir() and layout_of(p)]
        if not found:
            raise InputError(f"{self.src}: not a TUM sequence (needs rgb.txt and depth.txt) nor a ROS-style export "
                             f"(needs {COLOR_DIR}/ and {DEPTH_DIR}/ with <sec>.<nsec> images), nor a folder of them")
        return found

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        if splits is not None and self.split not in splits:
            return Enumeration([], [], {"note": f"these sequences are split {self.split!r} (--sequence-split)"})
        frames: list[FrameRef] = []
        rejected: list[Rejection] = []
        report: dict[str, Any] = {}
        for folder, prefix, seq in self.sequences():
            f, r, report[seq] = self._enumerate_sequence(folder, prefix, seq)
            frames += f
            rejected += r
        return Enumeration(frames, rejected, {"camera": self.camera.name, "sequences": report})

    def _enumerate_sequence(self, folder: Path, prefix: str, seq: str):
        split = self.split
        rejected: list[Rejection] = []
        layout = layout_of(folder)
        if layout == "lists":
            color = read_file_list(folder / "rgb.txt", prefix, seq, split, rejected)
            depth = read_file_list(folder / "depth.txt", prefix, seq, split, rejected)
            max_diff: float | int = self.max_dt
        else:
            color = read_stamped_folder(folder, COLOR_DIR, COLOR_EXTS, prefix, seq, split, rejected)
            depth = read_stamped_folder(folder, DEPTH_DIR, (".png",), prefix, seq, split, rejected)
            max_diff = round(self.max_dt * 1e9)  # integer nanoseconds: exact
        pairs = associate([e.time for e in color], [e.time for e in depth], max_diff)
        frames = [FrameRef(split, f"{seq}/{color[i].stamp}", (color[i].path, depth[j].path),
                           payload=(seq, color[i].stamp, depth[j].stamp, _seconds(color[i].time - depth[j].time)))
                  for i, j in pairs]
        rejected += self._unpaired(seq, color, depth, {i for i, _ in pairs}, "colour", "depth", max_diff)
        rejected += self._unpaired(seq, depth, color, {j for _, j in pairs}, "depth", "colour", max_diff)
        report = {"layout": layout, "colour_frames": len(color), "depth_frames": len(depth), "pairs": len(pairs),
                  "colour_unpaired": len(color) - len(pairs), "depth_unpaired": len(depth) - len(pairs)}
        return frames, rejected, report

    def _unpaired(self, seq: str, mine: list[_Entry], other: list[_Entry], paired: set[int], what: str,
                  partner: str, max_diff: float | int) -> list[Rejection]:
        other_times = np.sort(np.asarray([e.time for e in other]))
        out = []
        for i, e in enumerate(mine):
            if i in paired:
                continue
            if other_times.size:
                k = int(np.searchsorted(other_times, e.time))
                near = min(abs(e.time - other_times[m]) for m in (k - 1, k) if 0 <= m < other_times.size)
                why = (f"the nearest {partner} frame, {_seconds(near):.4f} s away, is paired with a closer "
                       f"{what} frame" if near < max_diff else
                       f"the nearest {partner} frame is {_seconds(near):.4f} s away")
            else:
                why = f"there are no {partner} frames"
            where = f" ({e.where})" if not e.path.endswith(e.where) else ""
            out.append(Rejection(f"{seq}/{e.path}", self.split, "unpaired",
                                 f"{self.src / e.path}{where}: {what} frame at {e.stamp} s has no {partner} frame "
                                 f"within --max-dt {self.max_dt} s; {why}", e.path))
        return out

    def load(self, ref: FrameRef) -> Sample:
        color_rel, depth_rel = ref.files
        seq, color_stamp, depth_stamp, dt = ref.payload
        bgr = read_image(self.src / color_rel, cv2.IMREAD_COLOR, color_rel)
        raw = read_image(self.src / depth_rel, cv2.IMREAD_UNCHANGED, depth_rel)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise RejectFrame("bad-value", f"{depth_rel}: depth must be a single-channel 16-bit PNG, got "
                                           f"{raw.dtype} {raw.shape}", depth_rel)
        if raw.shape != bgr.shape[:2]:
            raise RejectFrame("bad-shape", f"{depth_rel}: depth is {raw.shape[1]}x{raw.shape[0]}, its colour image "
                                           f"{color_rel} is {bgr.shape[1]}x{bgr.shape[0]} (they must be registered)",
                              depth_rel)
        conv = depth_to_mm(raw / self.camera.depth_scale, valid=raw > 0)
        if not conv.depth_mm.any():
            raise RejectFrame("no-valid-depth", f"{depth_rel}: no valid depth pixel", depth_rel)
        cam = self.camera
        try:
            intrinsics = cam.intrinsics(raw.shape[1], raw.shape[0])
        except InputError as e:
            raise RejectFrame("bad-shape", f"{color_rel}: {e}", color_rel) from None
        return Sample(
            key=make_key(self.name, ref.split, ref.frame_id),
            rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            depth_mm=conv.depth_mm,
            intrinsics=intrinsics,
            meta={"source_files": list(ref.files), "scene": seq, "sequence": seq,
                  "color_timestamp": color_stamp, "depth_timestamp": depth_stamp, "dt_s": dt,
                  "camera": cam.name, "distortion": list(cam.distortion), "undistorted": False,
                  "depth_scale": cam.depth_scale, "tum_depth_correction": cam.depth_correction},
            rejected_depth_pixels=conv.rejected,
        )
