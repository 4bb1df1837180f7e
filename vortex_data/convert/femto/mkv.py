"""Azure-Kinect-format MKV (k4arecorder; Orbbec's K4A wrapper writes the same) read with PyAV.

Tracks are found by their Matroska tags (``K4A_COLOR_TRACK``, ``K4A_DEPTH_TRACK``), never by
index. Depth blocks are raw ``b16g``: big-endian uint16 millimetres. Colour is MJPG (or BGRA,
NV12, YUY2 raw, per the ``K4A_COLOR_MODE`` tag). The device calibration is the ``calibration.json``
attachment: PyAV >= 18 exposes it as an attachment stream's ``data``; otherwise it is read from
the Matroska Attachments element directly.

Every block is independently decodable, so reading one capture is a seek to its timestamp and a
short demux forward; the capture's packets are matched by exact timestamp, so a seek landing
early costs time, never correctness.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ...errors import InputError
from .calib import DEPTH_MODES, CalibrationError, FemtoCalibration, color_mode_parts, k4a_calibration, COLOR_RESOLUTIONS
from .recording import Capture, CaptureData, RecordingError, decode_color, pair_by_time

_EBML_ID = 0x1A45DFA3
_SEGMENT_ID = 0x18538067


def _read_vint(buf: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """One EBML variable-length integer at pos -> (value, next pos); value -1 = unknown size."""
    first = buf[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(buf):
        raise InputError("bad EBML variable-length integer")
    value = first if keep_marker else first & (0xFF >> length)
    for b in buf[pos + 1:pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return -1, pos + length
    return value, pos + length


def check_matroska_complete(path: Path) -> None:
    """Raise RecordingError if the file is not Matroska or is shorter than its Segment declares.

    A recording cut short (copy interrupted, disk full) still demuxes up to the cut, silently
    losing its tail; the Segment size in the header tells how long it should be. A Segment of
    unknown size (a recorder that crashed before finalising) cannot be checked and is accepted.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        eid, pos = _read_vint(head, 0, True)
        if eid != _EBML_ID:
            raise RecordingError(f"{path}: not a Matroska/MKV file (no EBML header)")
        hsize, pos = _read_vint(head, pos, False)
        pos += hsize
        sid, pos = _read_vint(head, pos, True)
        seg_size, pos = _read_vint(head, pos, False)
    except (ValueError, IndexError):
        raise RecordingError(f"{path}: truncated or corrupt Matroska header ({size} bytes)") from None
    if sid != _SEGMENT_ID:
        raise RecordingError(f"{path}: no Matroska Segment after the EBML header")
    if seg_size >= 0 and pos + seg_size > size:
        raise RecordingError(f"{path}: truncated: the Matroska segment declares {pos + seg_size} bytes "
                             f"but the file has {size}")


_ATTACHMENTS_ID, _ATTACHED_FILE_ID = 0x1941A469, 0x61A7
_FILE_NAME_ID, _FILE_DATA_ID = 0x466E, 0x465C
_CLUSTER_ID = 0x1F43B675


def _elements(f, start: int, end: int):
    """Yield (id, data offset, data size) of the EBML elements between start and end of an open file."""
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 2:
            return
        eid, p = _read_vint(head, 0, True)
        size, p = _read_vint(head, p, False)
        if size < 0:  # unknown size (an unfinalised cluster): nothing after it can be located
            return
        yield eid, pos + p, size
        pos += p + size


def read_matroska_attachment(path: Path, name: str) -> bytes | None:
    """The bytes of the attachment called `name`, read from the Matroska Attachments element.

    PyAV exposes attachment payloads (AttachmentStream.data) only in recent versions; this walks
    the Segment's top-level elements (skipping clusters by their size) so any version works.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
        _, pos = _read_vint(head, 0, True)
        hsize, pos = _read_vint(head, pos, False)
        pos += hsize
        _, pos = _read_vint(head, pos, True)
        seg_size, pos = _read_vint(head, pos, False)
        end = path.stat().st_size if seg_size < 0 else pos + seg_size
        for eid, off, size in _elements(f, pos, end):
            if eid != _ATTACHMENTS_ID:
                continue
            for fid, foff, fsize in _elements(f, off, off + size):
                if fid != _ATTACHED_FILE_ID:
                    continue
                fields = {}
                for cid, coff, csize in _elements(f, foff, foff + fsize):
                    if cid in (_FILE_NAME_ID, _FILE_DATA_ID):
                        f.seek(coff)
                        fields[cid] = f.read(csize)
                if fields.get(_FILE_NAME_ID, b"").decode("utf-8", "replace") == name:
                    return fields.get(_FILE_DATA_ID)
    return None


def _find_track(container: av.container.InputContainer, tag: str) -> av.stream.Stream | None:
    for s in container.streams:
        if tag in s.metadata:
            return s
    return None


class MkvRecording:
    """One k4arecorder MKV. Pickles without its open container (reopened lazily per process)."""

    kind = "mkv"

    def __init__(self, path: Path, pair_tol_us: int = 16_000):
        self.path = Path(path)
        self.pair_tol_us = pair_tol_us
        self._c: av.container.InputContainer | None = None
        self._meta: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "pair_tol_us": self.pair_tol_us, "_c": None, "_meta": self._meta}

    # ---------------------------------------------------------------- opening

    def _container(self) -> av.container.InputContainer:
        if self._c is None:
            if not self.path.is_file():
                raise RecordingError(f"{self.path}: no such recording")
            check_matroska_complete(self.path)
            try:
                self._c = av.open(str(self.path))
            except av.error.FFmpegError as e:
                raise RecordingError(f"{self.path}: cannot be opened as MKV ({e})") from None
        return self._c

    def _streams(self) -> tuple[av.stream.Stream, av.stream.Stream]:
        c = self._container()
        depth = _find_track(c, "K4A_DEPTH_TRACK")
        color = _find_track(c, "K4A_COLOR_TRACK")
        if depth is None:
            raise RecordingError(f"{self.path}: no depth track (no stream tagged K4A_DEPTH_TRACK; "
                                 f"tracks: {[s.metadata.get('title', s.type) for s in c.streams]})")
        if color is None:
            raise RecordingError(f"{self.path}: no colour track (no stream tagged K4A_COLOR_TRACK); "
                                 "a depth-only recording cannot give RGB-D samples")
        return depth, color

    def meta(self) -> dict[str, Any]:
        """Modes, sizes, start offset and track indices (cached; small and picklable)."""
        if self._meta is None:
            c = self._container()
            depth, color = self._streams()
            depth_mode = depth.metadata.get("K4A_DEPTH_MODE", "")
            color_mode = color.metadata.get("K4A_COLOR_MODE", "")
            if depth_mode not in DEPTH_MODES:
                raise RecordingError(f"{self.path}: depth track mode {depth_mode!r} is not one of {sorted(DEPTH_MODES)}")
            try:
                fmt, res = color_mode_parts(color_mode, str(self.path))
            except CalibrationError as e:
                raise RecordingError(str(e)) from None
            dw, dh = DEPTH_MODES[depth_mode][2]
            cw, ch = COLOR_RESOLUTIONS[res][2]
            if (depth.codec_context.width, depth.codec_context.height) not in ((dw, dh), (0, 0)):
                raise RecordingError(f"{self.path}: depth track is {depth.codec_context.width}x{depth.codec_context.height}"
                                     f" but mode {depth_mode} is {dw}x{dh}")
            tag = depth.codec_context.codec_tag.strip("\x00")
            if tag and tag != "b16g":
                raise RecordingError(f"{self.path}: depth track codec tag {tag!r}, expected 'b16g' (16-bit big-endian)")
            self._meta = {
                "depth_index": depth.index, "color_index": color.index,
                "depth_mode": depth_mode, "color_mode": color_mode, "color_format": fmt,
                "depth_size": (dw, dh), "color_size": (cw, ch),
                "start_offset_us": int(c.metadata.get("K4A_START_OFFSET_NS", "0") or 0) // 1000,
                "serial": c.metadata.get("K4A_DEVICE_SERIAL_NUMBER"),
                "depth_tb": (depth.time_base.numerator, depth.time_base.denominator),
                "color_tb": (color.time_base.numerator, color.time_base.denominator),
            }
        return self._meta

    def info(self) -> dict[str, Any]:
        m = self.meta()
        return {"format": "k4a-mkv", "depth_mode": m["depth_mode"], "color_mode": m["color_mode"],
                "device_serial": m["serial"], "start_offset_us": m["start_offset_us"]}

    def calibration(self) -> FemtoCalibration:
        c = self._container()
        att = [s for s in c.streams if s.type == "attachment"
               and ("K4A_CALIBRATION_FILE" in s.metadata or s.metadata.get("filename") == "calibration.json")]
        data = getattr(att[0], "data", None) if att else None
        if data is None:
            name = att[0].metadata.get("filename", "calibration.json") if att else "calibration.json"
            data = read_matroska_attachment(self.path, name)
        if data is None:
            raise RecordingError(f"{self.path}: no calibration.json attachment (K4A_CALIBRATION_FILE); "
                                 "the recording cannot be registered or given intrinsics")
        m = self.meta()
        try:
            return k4a_calibration(bytes(data), m["depth_mode"], m["color_mode"], f"{self.path}:calibration.json")
        except CalibrationError as e:
            raise RecordingError(str(e)) from None

    # ---------------------------------------------------------------- indexing and reading

    @staticmethod
    def _us(pts: int, tb: tuple[int, int]) -> int:
        return int(round(Fraction(pts) * Fraction(*tb) * 1_000_000))

    def captures(self) -> list[Capture]:
        """Index every depth and colour block (timestamps only) and pair them."""
        m = self.meta()
        c = self._container()
        c.seek(0)
        depth: list[tuple[int, Any]] = []
        color: list[tuple[int, Any]] = []
        streams = [c.streams[m["depth_index"]], c.streams[m["color_index"]]]
        try:
            for p in c.demux(streams):
                if p.pts is None or not p.size:
                    continue
                if p.stream.index == m["depth_index"]:
                    depth.append((self._us(p.pts, m["depth_tb"]), p.pts))
                else:
                    color.append((self._us(p.pts, m["color_tb"]), p.pts))
        except av.error.FFmpegError as e:
            raise RecordingError(f"{self.path}: demuxing failed ({e}); the file is damaged or truncated") from None
        if not depth and not color:
            raise RecordingError(f"{self.path}: no depth or colour blocks (empty or truncated recording)")
        caps = pair_by_time(depth, color, self.pair_tol_us)
        name = self.path.name
        return [Capture(k.index, k.depth_us, k.color_us, k.depth_loc, k.color_loc, (name,)) for k in caps]

    def _packets(self, capture: Capture) -> tuple[bytes | None, bytes | None]:
        m = self.meta()
        c = self._container()
        want = {m["depth_index"]: capture.depth_loc, m["color_index"]: capture.color_loc}
        want = {k: v for k, v in want.items() if v is not None}
        got: dict[int, bytes] = {}
        target = min(want.values())
        for attempt in ("seek", "scan"):
            if attempt == "seek":
                c.seek(int(target), stream=c.streams[m["depth_index"] if capture.depth_loc is not None else m["color_index"]],
                       backward=True, any_frame=True)
            else:
                c.seek(0)
            for p in c.demux([c.streams[i] for i in want]):
                if p.pts is None:
                    continue
                i = p.stream.index
                if p.pts == want.get(i) and i not in got:
                    got[i] = bytes(p)
                if len(got) == len(want) or p.pts > max(want.values()):
                    break
            if len(got) == len(want):
                break
        return got.get(m["depth_index"]), got.get(m["color_index"])

    def read(self, capture: Capture) -> CaptureData:
        m = self.meta()
        try:
            depth_b, color_b = self._packets(capture)
        except av.error.FFmpegError as e:
            raise RecordingError(f"{self.path}: reading capture {capture.index} failed ({e})") from None
        dw, dh = m["depth_size"]
        cw, ch = m["color_size"]
        if depth_b is None or color_b is None:
            raise InputError(f"{self.path}: capture {capture.index} blocks not found at their indexed timestamps")
        if len(depth_b) != dw * dh * 2:
            raise InputError(f"{self.path}: depth block of capture {capture.index} has {len(depth_b)} bytes, "
                             f"expected {dw * dh * 2} ({dw}x{dh} uint16); truncated?")
        depth = np.frombuffer(depth_b, ">u2").reshape(dh, dw).astype(np.uint16)
        rgb = decode_color(color_b, m["color_format"], cw, ch, f"{self.path} capture {capture.index}")
        return CaptureData(rgb, depth)
