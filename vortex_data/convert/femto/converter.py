"""Orbbec Femto Bolt recordings -> uniform samples (docs/femto.md).

``--src`` is one recording: a k4arecorder-format ``.mkv``, an Orbbec/ROS ``.bag``, or a
frame-dump folder; the kind is detected from the path. Each capture (a colour image and the depth
image taken with it, paired by timestamp) becomes one sample in split ``eval``; depth is
registered into the colour camera by default (``--register color``).
"""

from __future__ import annotations

import argparse
import math
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from ...errors import InputError
from ...format.geometry import resize_nearest, resize_rgb
from ...format.schema import Sample
from ...format.tar_index import make_key
from ..base import Converter, Enumeration, FrameRef, Rejection, RejectFrame
from ..registration import register_color_to_depth, register_depth_to_color
from .calib import CalibrationError, FemtoCalibration
from .dump import DumpRecording, is_frame_dump
from .mkv import MkvRecording
from .recording import Capture, CaptureData, Recording, RecordingError

REGISTER_MODES = ("color", "depth", "none")

# Nominal operating ranges (metres) per K4A depth mode, from the Femto Bolt / Azure Kinect specs.
DEPTH_RANGES = {"NFOV_UNBINNED": (0.5, 3.86), "NFOV_2X2BINNED": (0.5, 5.46),
                "WFOV_2X2BINNED": (0.25, 2.88), "WFOV_UNBINNED": (0.25, 2.21)}


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'640x360' -> (640, 360); None stays None."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise InputError(f"--out-size must be WIDTHxHEIGHT (e.g. 640x360), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise InputError(f"--out-size must be positive, got {text!r}")
    return w, h


def open_recording(src: Path, pair_tol_us: int = 16_000, depth_topic: str | None = None,
                   color_topic: str | None = None) -> Recording:
    """The reader for a recording path, chosen by what the path is."""
    src = Path(src)
    if src.is_dir():
        if is_frame_dump(src):
            return DumpRecording(src, pair_tol_us)
        if (src / "metadata.yaml").is_file():  # a ROS 2 bag
            from .bag import BagRecording
            return BagRecording(src, pair_tol_us, depth_topic=depth_topic, color_topic=color_topic)
        raise RecordingError(f"{src}: a folder must be a frame dump with color/ and depth/ subfolders "
                             "or a ROS 2 bag (metadata.yaml) (docs/femto.md)")
    if not src.exists():
        raise RecordingError(f"{src}: no such file or folder")
    suffix = src.suffix.lower()
    if suffix == ".mkv":
        return MkvRecording(src, pair_tol_us)
    if suffix in (".bag", ".mcap", ".db3") or src.name.endswith(".bag_error"):
        from .bag import BagRecording
        return BagRecording(src, pair_tol_us, depth_topic=depth_topic, color_topic=color_topic)
    raise RecordingError(f"{src}: not a Femto recording (expected a .mkv, a .bag or a frame-dump folder)")


class FemtoConverter(Converter):
    name: ClassVar[str] = "femto"
    description: ClassVar[str] = "Orbbec Femto Bolt recordings (k4a MKV, Orbbec/ROS bag, frame dumps)"
    splits: ClassVar[tuple[str, ...]] = ("eval",)

    def __init__(self, src: Path, register: str = "color", out_size: tuple[int, int] | None = None,
                 stride: int = 1, start: float | None = None, end: float | None = None,
                 max_frames: int | None = None, min_valid: float = 0.01, split: str = "eval",
                 pair_tol_ms: float = 16.0, depth_topic: str | None = None, color_topic: str | None = None):
        if register not in REGISTER_MODES:
            raise InputError(f"--register must be one of {REGISTER_MODES}, got {register!r}")
        if stride < 1:
            raise InputError(f"--stride must be >= 1, got {stride}")
        if not pair_tol_ms > 0:
            raise InputError(f"--pair-tol-ms must be > 0 (colour and depth of one capture are never stamped "
                             f"at exactly the same microsecond), got {pair_tol_ms}")
        if max_frames is not None and max_frames < 1:
            raise InputError(f"--max-frames must be >= 1, got {max_frames}")
        if start is not None and end is not None and end < start:
            raise InputError(f"--end ({end} s) is before --start ({start} s)")
        if not 0.0 <= min_valid <= 1.0:
            raise InputError(f"--min-valid is a fraction in [0, 1], got {min_valid}")
        self.src = Path(src)
        self.register = register
        self.out_size = out_size
        self.stride = int(stride)
        self.start, self.end = start, end
        self.max_frames = max_frames
        self.min_valid = float(min_valid)
        self.split = split
        self.pair_tol_ms = float(pair_tol_ms)
        self.depth_topic, self.color_topic = depth_topic, color_topic
        self._rec: Recording | None = None
        self._calib: FemtoCalibration | None = None
        self._container_files: tuple[str, ...] | None = None

    # ---------------------------------------------------------------- construction

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--register", choices=REGISTER_MODES, default="color",
                           help="femto: put depth into the colour camera (color), colour into the depth camera "
                                "(depth), or neither (none: depth as recorded, colour only resized)")
        group.add_argument("--out-size", default=None, metavar="WxH",
                           help="femto: output size (default: the target camera's own size)")
        group.add_argument("--stride", type=int, default=1, help="femto: keep every Nth capture")
        group.add_argument("--start", type=float, default=None, help="femto: first second to keep (from the first capture)")
        group.add_argument("--end", type=float, default=None, help="femto: last second to keep (from the first capture)")
        group.add_argument("--max-frames", type=int, default=None, help="femto: keep at most this many captures")
        group.add_argument("--min-valid", type=float, default=0.01,
                           help="femto: reject frames with a smaller fraction of valid depth pixels")
        group.add_argument("--pair-tol-ms", type=float, default=16.0,
                           help="femto: largest colour/depth timestamp difference of one capture")
        group.add_argument("--depth-topic", default=None, help="femto (bags): depth image topic (default: detected)")
        group.add_argument("--color-topic", default=None, help="femto (bags): colour image topic (default: detected)")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "FemtoConverter":
        g = lambda name, default=None: getattr(args, name, default)  # noqa: E731
        return cls(src, register=g("register", "color"), out_size=parse_size(g("out_size")),
                   stride=g("stride", 1), start=g("start"), end=g("end"), max_frames=g("max_frames"),
                   min_valid=g("min_valid", 0.01) if g("min_valid") is not None else 0.01,
                   pair_tol_ms=g("pair_tol_ms", 16.0), depth_topic=g("depth_topic"), color_topic=g("color_topic"))

    @cached_property
    def recording_name(self) -> str:
        """The recording's name: its file's stem, or its frame-dump folder's name (the sample's scene)."""
        return self.src.stem if self.src.is_file() else self.src.name

    def options(self) -> dict[str, Any]:
        return {"register": self.register, "out_size": list(self.out_size) if self.out_size else None,
                "stride": self.stride, "start": self.start, "end": self.end, "max_frames": self.max_frames,
                "min_valid": self.min_valid, "pair_tol_ms": self.pair_tol_ms,
                "depth_topic": self.depth_topic, "color_topic": self.color_topic}

    def source_root(self) -> Path:
        return self.src if self.src.is_dir() else self.src.parent

    def source_files(self, ref: FrameRef) -> tuple[str, ...]:
        """A frame dump's images, or the recording itself (an MKV or bag file, or every file of
        a ROS 2 bag folder): captures inside a container list no files of their own."""
        if ref.files:
            return ref.files
        if self._container_files is None:
            self._container_files = ((self.src.name,) if self.src.is_file()
                                     else tuple(sorted(p.name for p in self.src.iterdir() if p.is_file())))
        return self._container_files

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rec"] = None  # open files stay in their process
        return state

    def recording(self) -> Recording:
        if self._rec is None:
            self._rec = open_recording(self.src, int(self.pair_tol_ms * 1000), self.depth_topic, self.color_topic)
        return self._rec

    def calibration(self) -> FemtoCalibration:
        if self._calib is None:
            try:
                self._calib = self.recording().calibration()
            except CalibrationError as e:
                raise RecordingError(str(e)) from None
        return self._calib

    # ---------------------------------------------------------------- enumeration

    def _select(self, caps: list[Capture]) -> tuple[list[Capture], int]:
        """Apply --start/--end, --stride, --max-frames; returns kept captures and the count left out."""
        if not caps:
            return [], 0
        t0 = min(c.time_us for c in caps)
        kept = [c for c in caps
                if (self.start is None or (c.time_us - t0) / 1e6 >= self.start)
                and (self.end is None or (c.time_us - t0) / 1e6 <= self.end)]
        kept = kept[::self.stride]
        if self.max_frames is not None:
            kept = kept[:self.max_frames]
        return kept, len(caps) - len(kept)

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        if splits is not None and self.split not in splits:
            return Enumeration([], [], {"note": f"femto writes split {self.split!r} only"})
        rec = self.recording()
        caps = rec.captures()
        calib = self.calibration()
        t0 = min(c.time_us for c in caps)
        kept, left_out = self._select(caps)
        stem = self.recording_name
        frames: list[FrameRef] = []
        rejected: list[Rejection] = []
        for c in kept:
            frame_id = f"{stem}/{c.index:06d}"
            file = c.files[0] if c.files else self.src.name
            if c.depth_us is None or c.color_us is None:
                missing = "depth" if c.depth_us is None else "colour"
                rejected.append(Rejection(frame_id, self.split, "unpaired",
                                          f"{self.src}: capture {c.index} at {c.time_us} us has no {missing} image "
                                          f"within {self.pair_tol_ms} ms", file))
                continue
            frames.append(FrameRef(self.split, frame_id, tuple(c.files), payload=(c, t0)))
        for name in getattr(rec, "unstamped", []):
            rejected.append(Rejection(name, self.split, "bad-name", f"{self.src / name}: no timestamp digits in the file name", name))
        for name, why in getattr(rec, "unreadable", []):
            rejected.append(Rejection(name, self.split, "unreadable", f"{self.src / name}: cannot be read ({why})", name))
        report = {"recording": rec.info(), "captures": len(caps), "left_out_by_selection": left_out,
                  "calibration": calib.as_dict()}
        return Enumeration(frames, rejected, report)

    # ---------------------------------------------------------------- loading

    def load(self, ref: FrameRef) -> Sample:
        capture, t0 = ref.payload
        file = ref.files[0] if ref.files else str(self.src)
        try:
            data = self.recording().read(capture)
        except (ValueError, OSError) as e:  # an ImageError carries its own code (truncated, ...)
            raise RejectFrame(getattr(e, "code", "unreadable"), str(e), file) from None
        calib = self.calibration()
        where = f"{self.src} capture {capture.index}"
        if data.depth_mm.shape != (calib.depth.height, calib.depth.width):
            raise RejectFrame("bad-shape", f"{where}: depth is {data.depth_mm.shape[1]}x{data.depth_mm.shape[0]}, "
                              f"calibration is {calib.depth.width}x{calib.depth.height}", file)
        if data.rgb.shape[:2] != (calib.color.height, calib.color.width):
            raise RejectFrame("bad-shape", f"{where}: colour is {data.rgb.shape[1]}x{data.rgb.shape[0]}, "
                              f"calibration is {calib.color.width}x{calib.color.height}", file)
        rgb, depth, camera, extra = self._register(data, calib)
        valid = float((depth > 0).mean())
        if valid == 0.0:
            raise RejectFrame("no-valid-depth", f"{where}: no valid depth pixel after registration ({self.register})", file)
        if valid < self.min_valid:
            raise RejectFrame("low-valid-depth", f"{where}: {valid:.1%} of pixels have valid depth, below --min-valid "
                              f"{self.min_valid:.1%}", file)
        info = self.recording().info()
        meta = {
            "source": ref.files[0] if ref.files else self.src.name, "files": list(ref.files),
            "recording": info, "capture_index": capture.index,
            "depth_timestamp_us": capture.depth_us, "color_timestamp_us": capture.color_us,
            "time_s": (capture.time_us - t0) / 1e6,
            "registration": self.register, "camera": camera.as_dict(), "undistorted": False,
            "sensor": "Orbbec Femto Bolt / Azure Kinect (K4A)", **extra,
            "scene": self.recording_name,  # the recording
        }
        return Sample(key=make_key("femto", ref.split, ref.frame_id), rgb=rgb, depth_mm=depth,
                      intrinsics=camera.intrinsics(), meta=meta,
                      depth_range_m=DEPTH_RANGES.get(info.get("depth_mode", "")),
                      rejected_depth_pixels=data.rejected_depth_pixels)

    def _register(self, data: CaptureData, calib: FemtoCalibration):
        R, t = calib.rotation, calib.translation
        if self.register == "color":
            target = calib.color.resized(*(self.out_size or calib.color.size))
            # The z-buffer keeps the nearer of the depth pixels that land in one target pixel, so
            # registering straight into a target smaller than the depth image would pull slanted
            # surfaces toward their near side. Register where a depth pixel covers at least one
            # target pixel (an integer multiple of the output), then resize by the one policy.
            m = max(1, math.ceil(calib.depth.fx / target.fx - 1e-6))
            reg = register_depth_to_color(data.depth_mm, calib.depth, calib.color, R, t,
                                          (target.width * m, target.height * m))
            hw = (target.height, target.width)
            return resize_rgb(data.rgb, hw), resize_nearest(reg.depth_mm, hw), reg.camera.resized(*target.size), {}
        if self.register == "depth":
            rc = register_color_to_depth(data.rgb, data.depth_mm, calib.depth, calib.color, R, t, self.out_size)
            depth = resize_nearest(data.depth_mm, (rc.camera.height, rc.camera.width))
            return rc.rgb, depth, rc.camera, {"color_valid_fraction": float(rc.valid.mean())}
        camera = calib.depth.resized(*(self.out_size or calib.depth.size))
        # Unregistered: colour is only resized to the depth image's size; its pixels do NOT
        # correspond to the depth pixels (meta says so), and intrinsics are the depth camera's.
        hw = (camera.height, camera.width)
        return (resize_rgb(data.rgb, hw), resize_nearest(data.depth_mm, hw), camera,
                {"rgb_registered": False, "color_camera": calib.color.as_dict()})
