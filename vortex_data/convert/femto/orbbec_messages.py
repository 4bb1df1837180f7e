"""Orbbec SDK v2 bag messages parsed by hand: frame messages that claim ``sensor_msgs/Image`` but
are laid out per SDK version, and stream profiles (layouts in :mod:`vortex_data.convert.femto.bag`).
ROS 1 serialisation: little-endian, length-prefixed strings and arrays."""

from __future__ import annotations

import struct
from typing import Any

from ..registration import CameraModel


class _Cursor:
    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise ValueError("message ends early")
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return vals if len(vals) > 1 else vals[0]

    def string(self) -> str:
        return self.blob().decode("utf-8", "replace")

    def blob(self) -> bytes:
        n = self.take("I")
        if self.pos + n > len(self.buf):
            raise ValueError("array runs past the end of the message")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def _header(c: _Cursor) -> tuple[int, str]:
    """ROS 1 std_msgs/Header -> (stamp in microseconds, frame_id)."""
    _seq, sec, nsec = c.take("III")
    return sec * 1_000_000 + nsec // 1000, c.string()


def parse_orbbec_frame(raw: bytes) -> dict[str, Any]:
    """One Orbbec SDK v2 frame message -> stamp_us, width, height, encoding, step, pixels, depth_units, layout."""
    c = _Cursor(raw)
    stamp, frame_id = _header(c)
    height, width = c.take("II")
    encoding = c.string().lower()
    _bigendian, step = c.take("BI")
    after_step = c.pos
    compressed = encoding in ("mjpg", "mjpeg", "jpeg")

    def fits(pixels: bytes) -> bool:
        return pixels[:2] == b"\xff\xd8" if compressed else len(pixels) == step * height

    found = []
    try:  # v2.4.3+: data[] directly, then float32 depth_units
        c2 = _Cursor(raw, after_step)
        data = c2.blob()
        if fits(data):
            units = c2.take("f") if c2.pos + 4 <= len(raw) else 1.0
            found.append(("v2.4.3", data, float(units)))
    except ValueError:
        pass
    try:  # v2.3.5: uint32 metadatasize, then data[] = metadata + pixels
        c3 = _Cursor(raw, after_step)
        meta_size = c3.take("I")
        data = c3.blob()
        if meta_size <= len(data) and fits(data[meta_size:]):
            found.append(("v2.3.5", data[meta_size:], 1.0))
    except ValueError:
        pass
    if len(found) != 1:
        raise ValueError(f"frame ({encoding} {width}x{height}, step {step}) matches "
                         f"{'no' if not found else 'both'} known Orbbec layouts")
    layout, pixels, units = found[0]
    return {"stamp_us": stamp, "frame_id": frame_id, "width": width, "height": height, "encoding": encoding,
            "step": step, "pixels": pixels, "depth_units": units, "layout": layout}


def parse_stream_profile(raw: bytes) -> dict[str, Any]:
    """Orbbec stream profile message (header, stream type, format, R[9], t[3] mm, w, h, fps, K[4], D[8], model)."""
    c = _Cursor(raw)
    _header(c)
    stream_type, fmt = c.take("BB")
    rot = c.take("9f")
    trans = c.take("3f")
    width, height, fps = c.take("HHH")
    fx, fy, cx, cy = c.take("4f")
    dist = c.take("8f")
    model = c.take("B") if c.pos < len(raw) else None
    return {"stream_type": stream_type, "format": fmt, "rotation": rot, "translation_mm": trans, "width": width,
            "height": height, "fps": fps, "K": (fx, fy, cx, cy), "dist_k6p2": dist, "model": model}


def profile_camera(p: dict[str, Any]) -> CameraModel:
    fx, fy, cx, cy = p["K"]
    d = p["dist_k6p2"]
    return CameraModel.from_k6p2(p["width"], p["height"], fx, fy, cx, cy, tuple(d[:6]), d[6], d[7])


