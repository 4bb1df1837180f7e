"""What the Femto readers (MKV, frame dump, bag) share: captures, timestamp pairing, colour decoding.

A reader indexes a recording cheaply (``captures()``: timestamps and locators, no pixels) in the
parent process, and reads one capture's pixels (``read()``) in a worker; it opens files lazily so
it pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ...errors import InputError
from ..image_files import decode_image
from ..timestamps import associate
from .calib import FemtoCalibration


class RecordingError(InputError):
    """A recording that cannot be read at all (wrong format, missing track, truncated, ...)."""


@dataclass(frozen=True)
class Capture:
    """One colour+depth pair (either side may be None when it could not be paired)."""

    index: int
    """Position in the recording (in order of time), stable for a given recording."""
    depth_us: int | None
    color_us: int | None
    depth_loc: Any = None
    """Reader-private locator of the depth image (a packet timestamp, a file name, ...)."""
    color_loc: Any = None
    files: tuple[str, ...] = ()

    @property
    def time_us(self) -> int:
        return self.depth_us if self.depth_us is not None else int(self.color_us or 0)


@dataclass
class CaptureData:
    rgb: np.ndarray
    """(H, W, 3) uint8 RGB in the colour camera."""
    depth_mm: np.ndarray
    """(H, W) uint16 millimetres in the depth camera, 0 = invalid."""
    rejected_depth_pixels: int = 0
    """Pixels made invalid because their value was negative or too far (see schema.depth_to_mm)."""


class Recording(Protocol):
    path: Path
    kind: str

    def calibration(self) -> FemtoCalibration: ...
    def captures(self) -> list[Capture]: ...
    def read(self, capture: Capture) -> CaptureData: ...
    def info(self) -> dict[str, Any]: ...


def pair_by_time(depth: list[tuple[int, Any]], color: list[tuple[int, Any]], tol_us: int) -> list[Capture]:
    """Pair depth and colour frames one-to-one by timestamp within tol_us (inclusive), by the one
    pairing rule of the package (timestamps.associate: greedy by smallest difference).

    Each input frame appears in exactly one Capture; frames without a partner get a Capture
    with the other side None (the converter rejects those with a reason), so nothing is dropped.
    """
    d = sorted(depth, key=lambda x: x[0])
    c = sorted(color, key=lambda x: x[0])
    # Integer microseconds: |a - b| <= tol is |a - b| < tol + 1.
    pairs = associate([t for t, _ in d], [t for t, _ in c], tol_us + 1)
    used = {j for _, j in pairs}
    caps = [(d[i][0], d[i][1], c[j][0], c[j][1]) for i, j in pairs]
    paired = {i for i, _ in pairs}
    caps += [(t, loc, None, None) for i, (t, loc) in enumerate(d) if i not in paired]
    caps += [(None, None, t, loc) for j, (t, loc) in enumerate(c) if j not in used]
    caps.sort(key=lambda x: (x[0] if x[0] is not None else x[2], x[0] is None))
    return [Capture(i, dt, ct, dl, cl) for i, (dt, dl, ct, cl) in enumerate(caps)]


def decode_color(data: bytes | np.ndarray, fmt: str, width: int, height: int, source: str) -> np.ndarray:
    """Colour payload -> (H, W, 3) uint8 RGB. fmt: MJPG (JPEG bytes), BGRA, NV12, YUY2, RGB8, BGR8."""
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    fmt = fmt.upper()
    if fmt in ("MJPG", "MJPEG", "JPEG", "JPG", "PNG"):
        bgr = decode_image(buf, cv2.IMREAD_COLOR, f"{source}: {fmt} colour image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] != (height, width) and width and height:
            raise InputError(f"{source}: colour image is {rgb.shape[1]}x{rgb.shape[0]}, expected {width}x{height}")
        return rgb
    layouts = {"BGRA": ((height, width, 4), cv2.COLOR_BGRA2RGB), "BGRA8": ((height, width, 4), cv2.COLOR_BGRA2RGB),
               "NV12": ((height * 3 // 2, width), cv2.COLOR_YUV2RGB_NV12),
               "YUY2": ((height, width, 2), cv2.COLOR_YUV2RGB_YUY2), "YUYV": ((height, width, 2), cv2.COLOR_YUV2RGB_YUY2),
               "RGB8": ((height, width, 3), None), "BGR8": ((height, width, 3), cv2.COLOR_BGR2RGB)}
    if fmt not in layouts:
        raise InputError(f"{source}: colour format {fmt!r} is not supported ({', '.join(['MJPG', *layouts])})")
    shape, code = layouts[fmt]
    if buf.size != int(np.prod(shape)):
        raise InputError(f"{source}: {fmt} colour payload has {buf.size} bytes, expected {int(np.prod(shape))} for {width}x{height}")
    img = buf.reshape(shape)
    return img.copy() if code is None else cv2.cvtColor(img, code)
