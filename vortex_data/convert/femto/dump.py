"""Frame-dump folders: colour images and 16-bit depth PNGs named by timestamp, plus calibration.

Layout (docs/femto.md)::

    <folder>/color/color_<timestamp_us>.jpg   (or .png; RGB as any 8-bit colour image)
    <folder>/depth/depth_<timestamp_us>.png   (uint16, millimetres, 0 = invalid)
    <folder>/rgb_camera_info.json, depth_camera_info.json, extrinsic_depth_to_color.json
             (or one calibration.json; see calib.folder_calibration)

The timestamp is read from the file name by the package's one rule (timestamps.stamp_from_name):
``<sec>.<nsec>`` (a ROS export, ``1712345678.123456789.png``) or, failing that, the last run of
digits in microseconds (``color_<timestamp_us>``). Calibrations for
another size of the same aspect ratio (e.g. the factory 3840x2160 colour calibration for 1280x720
dumps) are rescaled to the stored images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...errors import InputError
from ..base import scan_folder
from ..image_files import ImageError, decode_image, read_image
from ..timestamps import StampedFolder, duplicate_times, stamped_files
from .calib import FemtoCalibration, folder_calibration
from .recording import Capture, CaptureData, RecordingError, pair_by_time

COLOR_DIR, DEPTH_DIR = "color", "depth"
COLOR_EXTS = (".jpg", ".jpeg", ".png")


def is_frame_dump(folder: Path) -> bool:
    return (folder / COLOR_DIR).is_dir() and (folder / DEPTH_DIR).is_dir()


def _us(found: StampedFolder) -> list[tuple[int, str]]:
    """(microseconds, name): the captures' unit. Nanoseconds below a microsecond are dropped
    (they never separate two frames of one stream)."""
    return [(t // 1000, name) for t, name in found.stamped]


class DumpRecording:
    kind = "dump"

    def __init__(self, path: Path, pair_tol_us: int = 16_000):
        self.path = Path(path)
        self.pair_tol_us = pair_tol_us
        self._calib: FemtoCalibration | None = None
        self.unstamped: list[str] = []
        self.unreadable: list[tuple[str, str]] = []
        """(file relative to the dump, why) for image entries that cannot be read at all."""

    def info(self) -> dict[str, Any]:
        return {"format": "frame-dump"}

    def _first_size(self, sub: str, exts: tuple[str, ...]) -> tuple[int, int]:
        entries, _ = scan_folder(self.path / sub)
        for p in (p for p in entries if p.suffix.lower() in exts):
            try:
                img = decode_image(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED, str(p))
            except (OSError, ValueError):
                continue  # that frame is rejected when loaded; size the calibration by another
            return img.shape[1], img.shape[0]
        raise RecordingError(f"{self.path / sub}: no readable image to size the calibration by")

    def calibration(self) -> FemtoCalibration:
        if self._calib is None:
            calib = folder_calibration(self.path)
            self._calib = calib.with_sizes(self._first_size(DEPTH_DIR, (".png",)), self._first_size(COLOR_DIR, COLOR_EXTS))
        return self._calib

    def captures(self) -> list[Capture]:
        if not is_frame_dump(self.path):
            raise RecordingError(f"{self.path}: not a frame dump (needs '{COLOR_DIR}/' and '{DEPTH_DIR}/' folders)")
        try:
            found = {sub: stamped_files(self.path / sub, exts)
                     for sub, exts in ((DEPTH_DIR, (".png",)), (COLOR_DIR, COLOR_EXTS))}
        except InputError as e:
            raise RecordingError(str(e)) from None
        self.unstamped = [f"{sub}/{n}" for sub, f in found.items() for n in f.unstamped]
        self.unreadable = [(f"{sub}/{n}", why) for sub, f in found.items() for n, why in f.unreadable]
        if not found[DEPTH_DIR].stamped and not found[COLOR_DIR].stamped:
            raise RecordingError(f"{self.path}: no images in {COLOR_DIR}/ or {DEPTH_DIR}/")
        stamps = {sub: _us(f) for sub, f in found.items()}
        for sub, s in stamps.items():
            dup = duplicate_times([t for t, _ in s])
            if dup:
                raise RecordingError(f"{self.path / sub}: several images share timestamps {dup[:3]} (us)")
        caps = pair_by_time(stamps[DEPTH_DIR], stamps[COLOR_DIR], self.pair_tol_us)
        return [Capture(c.index, c.depth_us, c.color_us, c.depth_loc, c.color_loc,
                        tuple(f for f in (c.depth_loc and f"{DEPTH_DIR}/{c.depth_loc}",
                                          c.color_loc and f"{COLOR_DIR}/{c.color_loc}") if f))
                for c in caps]

    def read(self, capture: Capture) -> CaptureData:
        dpath = self.path / DEPTH_DIR / capture.depth_loc
        cpath = self.path / COLOR_DIR / capture.color_loc
        depth = read_image(dpath, cv2.IMREAD_UNCHANGED)
        if depth.dtype != np.uint16 or depth.ndim != 2:
            # A readable image with the wrong content: 'bad-value', as SUN RGB-D's reader says.
            raise ImageError("bad-value", f"{dpath}: depth must be a single-channel 16-bit PNG in mm, "
                                          f"got {depth.dtype} {depth.shape}")
        bgr = read_image(cpath, cv2.IMREAD_COLOR)
        return CaptureData(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), depth)
