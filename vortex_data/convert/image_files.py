"""Reading source images strictly: whole files only, any file name.

OpenCV decodes a truncated JPEG into a picture whose missing rows are grey and says so only on
stderr, and ``cv2.imread`` takes a ``str`` path that it cannot open (or, on some builds, crashes
on) when the name is not UTF-8. So files are read by Python (``np.fromfile``, any name), checked
for their format's end marker (JPEG EOI, PNG IEND chunk) and only then decoded from memory.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from .base import RejectFrame, printable_path

JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Some writers pad a file after its end marker; padding is NUL bytes (or whitespace).
_PADDING = b"\x00\r\n\t "


def incomplete_reason(data: bytes | np.ndarray) -> str | None:
    """Why a JPEG or PNG byte string is not a whole file, or None if its end marker is there.
    Other formats are left to the decoder."""
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not buf:
        return "empty file"
    if buf.startswith(JPEG_SOI):
        return None if buf.rstrip(_PADDING).endswith(JPEG_EOI) else "truncated JPEG (no end-of-image marker)"
    if buf.startswith(PNG_SIGNATURE):
        return None if buf.rstrip(_PADDING).endswith(PNG_IEND) else "truncated PNG (no IEND chunk)"
    return None


class ImageError(InputError):
    """An image file that cannot be used; ``code`` is the rejection code (truncated, unreadable)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def decode_image(data: bytes | np.ndarray, flags: int, source: str) -> np.ndarray:
    """Complete-file check, then cv2.imdecode; ImageError naming ``source`` otherwise."""
    buf = (data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)).reshape(-1).view(np.uint8)
    why = incomplete_reason(buf)
    if why:
        raise ImageError("truncated", f"{source}: {why}")
    img = cv2.imdecode(buf, flags)
    if img is None:
        raise ImageError("unreadable", f"{source}: not a decodable image")
    return img


def read_image(path: Path, flags: int, name: str | Path | None = None) -> np.ndarray:
    """A source image file, decoded strictly; RejectFrame (missing-file, unreadable or truncated)
    naming ``name`` (default: the path) when it cannot be used."""
    shown = printable_path(name if name is not None else path)
    try:
        buf = np.fromfile(path, np.uint8)
    except FileNotFoundError:
        raise RejectFrame("missing-file", f"{shown}: file missing", shown) from None
    except OSError as e:
        raise RejectFrame("unreadable", f"{shown}: cannot be read ({e.strerror or e})", shown) from None
    try:
        return decode_image(buf, flags, shown)
    except ImageError as e:
        raise RejectFrame(e.code, str(e), shown) from None
