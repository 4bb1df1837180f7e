"""Frame-dump folders: colour images and 16-bit depth PNGs named by timestamp, plus calibration.

Layout (docs/femto.md)::

    <folder>/color/color_<timestamp_us>.jpg   (or .png; RGB as any 8-bit colour image)
    <folder>/depth/depth_<timestamp_us>.png   (uint16, millimetres, 0 = invalid)
    <folder>/rgb_camera_info.json, depth_camera_info.json, extrinsic_depth_to_color.json
             (or one calibration.json; see calib.folder_calibration)

The timestamp is the last run of digits in the file name, in microseconds. Calibrations for
another size of the same aspect ratio (e.g. the factory 3840x2160 colour calibration for 1280x720
dumps) are rescaled to the stored images.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..base import os_reason, scan_folder
from ..image_files import ImageError, decode_image, read_image
from .calib import FemtoCalibration, folder_calibration
from .recording import Capture, CaptureData, RecordingError, pair_by_time

COLOR_DIR, DEPTH_DIR = "color", "depth"
COLOR_EXTS = (".jpg", ".jpeg", ".png")
_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def is_frame_dump(folder: Path) -> bool:
    return (folder / COLOR_DIR).is_dir() and (folder / DEPTH_DIR).is_dir()


def _stamped(folder: Path, exts: tuple[str, ...]) -> tuple[list[tuple[int, Any]], list[str], list[tuple[str, str]]]:
    """(timestamp_us, file name) for every image in folder, names without a timestamp, and
    (name, why) for image names that are no readable file (symlink loop, dangling link, folder)."""
    out, bad, unreadable = [], [], []
    entries, err = scan_folder(folder)
    if err is not None:
        raise RecordingError(f"{folder}: cannot be listed ({os_reason(err)})")
    for p in entries:
        if p.suffix.lower() not in exts:
            continue
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):
                unreadable.append((p.name, "not a regular file"))
                continue
        except OSError as e:
            unreadable.append((p.name, os_reason(e)))  # ELOOP for a symlink loop, ENOENT for a dangling link
            continue
        m = _DIGITS.search(p.stem)
        if m:
            out.append((int(m.group(1)), p.name))
        else:
            bad.append(p.name)
    return out, bad, unreadable


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
        depth, bad_d, unread_d = _stamped(self.path / DEPTH_DIR, (".png",))
        color, bad_c, unread_c = _stamped(self.path / COLOR_DIR, COLOR_EXTS)
        self.unstamped = [f"{DEPTH_DIR}/{n}" for n in bad_d] + [f"{COLOR_DIR}/{n}" for n in bad_c]
        self.unreadable = [(f"{DEPTH_DIR}/{n}", why) for n, why in unread_d] + \
                          [(f"{COLOR_DIR}/{n}", why) for n, why in unread_c]
        if not depth and not color:
            raise RecordingError(f"{self.path}: no images in {COLOR_DIR}/ or {DEPTH_DIR}/")
        for stamps, sub in ((depth, DEPTH_DIR), (color, COLOR_DIR)):
            times = [t for t, _ in stamps]
            if len(set(times)) != len(times):
                dup = sorted({t for t in times if times.count(t) > 1})[:3]
                raise RecordingError(f"{self.path / sub}: several images share timestamps {dup}")
        caps = pair_by_time(depth, color, self.pair_tol_us)
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
