"""Bags: Orbbec SDK v2 / OrbbecViewer ``.bag`` and ordinary ROS 1 / ROS 2 bags (read with rosbags).

**Orbbec SDK v2** bags are ROS 1 bags whose frame messages *claim* ``sensor_msgs/Image`` but are
laid out differently, depending on the SDK version, so they are parsed by hand
(:mod:`vortex_data.convert.femto.orbbec_messages`; little-endian, length-prefixed strings and arrays):

* v2.3.5:  header, height, width, encoding, is_bigendian, step, uint32 metadatasize,
           uint8[] data (metadata bytes, then pixels), ...
* v2.4.3+: header, height, width, encoding, is_bigendian, step, uint8[] data (pixels),
           float32 depth_units, ...

The layout is chosen per message: the one whose pixel bytes are exactly step*height (or, for
MJPG, start with a JPEG marker). Stream profiles (``/cam/streamProfileType_<3 depth|2 colour>``)
carry intrinsics, k1..k6,p1,p2 distortion and the depth->colour extrinsics (translation in mm).

**Ordinary bags**: ``sensor_msgs/Image`` depth (16UC1/mono16 mm, or 32FC1 metres) and colour
Image/CompressedImage, with CameraInfo beside each; depth->colour extrinsics from ``/tf_static``
(identity when the depth is already aligned to colour, i.e. both share a frame id).
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ...format.schema import DepthConversion, depth_to_mm
from ..registration import CameraModel
from .calib import CalibrationError, FemtoCalibration, _make
from .orbbec_messages import parse_orbbec_frame, parse_stream_profile, profile_camera
from .recording import Capture, CaptureData, RecordingError, decode_color, pair_by_time

ORBBEC_DEPTH = "/cam/sensor_3/frameType_3"
ORBBEC_COLOR = "/cam/sensor_2/frameType_2"
ORBBEC_DEPTH_PROFILE = "/cam/streamProfileType_3"
ORBBEC_COLOR_PROFILE = "/cam/streamProfileType_2"
_SDK1_TOPIC = re.compile(r"^/cam\d+/")

DEPTH_ENCODINGS = ("z16", "mono16", "16uc1", "y16")


def _pixels_to_depth_mm(pixels: bytes | np.ndarray, width: int, height: int, step: int, encoding: str,
                        units_mm: float, bigendian: bool, where: str) -> DepthConversion:
    """Raw depth message pixels -> uint16 mm through schema.depth_to_mm, so values that are
    negative or beyond 65.535 m become invalid and are counted rather than clipped. In 32FC1
    (REP 118) NaN and +/-inf mean 'no measurement': invalid, but not counted as bad values."""
    buf = np.frombuffer(pixels, np.uint8) if not isinstance(pixels, np.ndarray) else pixels.reshape(-1).view(np.uint8)
    if encoding == "32fc1":
        rows = buf[: step * height].reshape(height, step)[:, : width * 4]
        m = np.ascontiguousarray(rows).view(">f4" if bigendian else "<f4").reshape(height, width)
        return depth_to_mm(m, valid=np.isfinite(m))
    if encoding not in DEPTH_ENCODINGS:
        raise InputError(f"{where}: depth encoding {encoding!r} is not one of {DEPTH_ENCODINGS + ('32fc1',)}")
    if buf.size < step * height or step < width * 2:
        raise InputError(f"{where}: depth has {buf.size} bytes, step {step}, for {width}x{height} uint16")
    rows = np.ascontiguousarray(buf[: step * height].reshape(height, step)[:, : width * 2])
    d = rows.view(">u2" if bigendian else "<u2").reshape(height, width).astype(np.uint16)
    if units_mm == 1.0:
        return DepthConversion(d, 0, 0, 0)
    return depth_to_mm(d * (units_mm / 1000.0))


# ---------------------------------------------------------------- the recording

class BagRecording:
    kind = "bag"

    def __init__(self, path: Path, pair_tol_us: int = 16_000, depth_topic: str | None = None,
                 color_topic: str | None = None):
        self.path = Path(path)
        self.pair_tol_us = pair_tol_us
        self.depth_topic, self.color_topic = depth_topic, color_topic
        self._reader = None
        self._topics: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def _open(self):
        """rosbags.rosbag1.Reader for ROS 1 files (Orbbec frames are parsed by hand, so their message
        definitions are never needed); AnyReader (which deserialises) for ordinary ROS 1/ROS 2 bags."""
        if self._reader is None:
            if not self.path.exists():
                raise RecordingError(f"{self.path}: no such bag")
            ros2 = self.path.is_dir() or self.path.suffix in (".mcap", ".db3")
            if not ros2:
                from rosbags.rosbag1 import Reader
                reader = self._try_open(Reader(self.path))
                if not _is_orbbec({c.topic for c in reader.connections}):
                    reader.close()
                    reader = None
            if ros2 or reader is None:
                from rosbags.highlevel import AnyReader
                reader = self._try_open(AnyReader([self.path]))
            self._reader = reader
        return self._reader

    def _try_open(self, reader):
        try:
            reader.open()
        except Exception as e:  # rosbags raises several reader-specific error types
            msg = str(e)
            hint = ""
            if "index" in msg.lower() or self.path.name.endswith("_error"):
                hint = (" — an unindexed bag (a crashed recording is renamed *_error); "
                        "run `rosbag reindex` on it first")
            raise RecordingError(f"{self.path}: cannot read bag ({e.__class__.__name__}: {msg}){hint}") from None
        return reader

    def _conns(self, topic: str) -> list[Any]:
        return [c for c in self._open().connections if c.topic == topic]

    def topics(self) -> dict[str, Any]:
        """Detect the layout and the depth/colour (and info) topics; overrides win."""
        if self._topics is not None:
            return self._topics
        reader = self._open()
        by_topic = {c.topic: c.msgtype for c in reader.connections}
        if any(_SDK1_TOPIC.match(t) for t in by_topic):
            raise RecordingError(f"{self.path}: an Orbbec SDK v1 bag (topics like /cam0/color_raw); its frame format "
                                 "is undocumented and not supported — re-record with Orbbec SDK v2 / OrbbecViewer 2.x")
        if _is_orbbec(set(by_topic)):
            kind = "orbbec"
            depth = self.depth_topic or ORBBEC_DEPTH
            color = self.color_topic or ORBBEC_COLOR
        else:
            kind = "ros"
            images = [t for t, m in by_topic.items() if m.endswith("sensor_msgs/msg/Image")]
            compressed = [t for t, m in by_topic.items() if m.endswith("sensor_msgs/msg/CompressedImage")]
            depth = self.depth_topic or _pick(images, ("depth",), f"{self.path}: depth image topic", by_topic)
            color = self.color_topic or _pick([t for t in images + compressed if t != depth],
                                              ("color", "rgb", "image"), f"{self.path}: colour image topic", by_topic)
        for what, t in (("depth", depth), ("colour", color)):
            if t not in by_topic:
                raise RecordingError(f"{self.path}: no {what} topic {t!r} (topics: {sorted(by_topic)})")
        self._topics = {"kind": kind, "depth": depth, "color": color, "types": by_topic}
        return self._topics

    def info(self) -> dict[str, Any]:
        t = self.topics()
        return {"format": f"{t['kind']}-bag", "depth_topic": t["depth"], "color_topic": t["color"]}

    # ---------------------------------------------------------------- frames

    def _frame(self, topic: str, raw: bytes, log_ns: int) -> dict[str, Any]:
        """Decode a frame message of either kind to a common dict (pixels not yet interpreted)."""
        t = self.topics()
        where = f"{self.path} {topic} @ {log_ns} ns"
        if t["kind"] == "orbbec":
            try:
                return parse_orbbec_frame(raw)
            except ValueError as e:
                raise InputError(f"{where}: {e}") from None
        reader = self._open()
        msgtype = t["types"][topic]
        conn = self._conns(topic)[0]
        msg = reader.deserialize(raw, conn.msgtype)
        stamp = msg.header.stamp.sec * 1_000_000 + msg.header.stamp.nanosec // 1000
        if msgtype.endswith("CompressedImage"):
            return {"stamp_us": stamp, "frame_id": msg.header.frame_id, "encoding": "mjpg", "pixels": bytes(msg.data),
                    "width": 0, "height": 0, "step": 0, "depth_units": 1.0}
        return {"stamp_us": stamp, "frame_id": msg.header.frame_id, "width": msg.width, "height": msg.height,
                "encoding": msg.encoding.lower(), "step": msg.step, "pixels": msg.data, "depth_units": 1.0,
                "bigendian": bool(msg.is_bigendian)}

    def _index(self, topic: str) -> list[tuple[int, Any]]:
        out = []
        for conn, log_ns, raw in self._open().messages(connections=self._conns(topic)):
            out.append((self._frame(topic, raw, log_ns)["stamp_us"], log_ns))
        return out

    def captures(self) -> list[Capture]:
        t = self.topics()
        depth, color = self._index(t["depth"]), self._index(t["color"])
        if not depth and not color:
            raise RecordingError(f"{self.path}: no messages on {t['depth']} or {t['color']}")
        caps = pair_by_time(depth, color, self.pair_tol_us)
        return [Capture(c.index, c.depth_us, c.color_us, c.depth_loc, c.color_loc, (self.path.name,)) for c in caps]

    def _message_at(self, topic: str, log_ns: int, stamp_us: int) -> dict[str, Any]:
        for _, ts, raw in self._open().messages(connections=self._conns(topic), start=log_ns, stop=log_ns + 1):
            f = self._frame(topic, raw, ts)
            if f["stamp_us"] == stamp_us:
                return f
        raise InputError(f"{self.path}: no {topic} message with stamp {stamp_us} us at {log_ns} ns")

    def read(self, capture: Capture) -> CaptureData:
        t = self.topics()
        d = self._message_at(t["depth"], capture.depth_loc, capture.depth_us)
        c = self._message_at(t["color"], capture.color_loc, capture.color_us)
        where = f"{self.path} capture {capture.index}"
        depth = _pixels_to_depth_mm(d["pixels"], d["width"], d["height"], d["step"], d["encoding"], d["depth_units"],
                                    d.get("bigendian", False), where)
        enc = c["encoding"]
        fmt = {"mjpg": "MJPG", "mjpeg": "MJPG", "jpeg": "MJPG", "rgb8": "RGB8", "bgr8": "BGR8", "bgra8": "BGRA",
               "bgra": "BGRA", "yuyv": "YUYV", "yuy2": "YUY2", "nv12": "NV12"}.get(enc)
        if fmt is None:
            raise InputError(f"{where}: colour encoding {enc!r} is not supported")
        pixels = c["pixels"]
        if fmt not in ("MJPG",) and c["step"] and c["step"] * c["height"] == len(pixels):
            bpp = {"RGB8": 3, "BGR8": 3, "BGRA": 4, "YUYV": 2, "YUY2": 2}.get(fmt)
            if bpp and c["step"] != c["width"] * bpp:  # drop row padding
                pixels = np.frombuffer(pixels, np.uint8).reshape(c["height"], c["step"])[:, : c["width"] * bpp].tobytes()
        return CaptureData(decode_color(pixels, fmt, c["width"], c["height"], where), depth.depth_mm,
                           depth.rejected)

    # ---------------------------------------------------------------- calibration

    def _first(self, topic: str) -> tuple[bytes, int] | None:
        for _, ts, raw in self._open().messages(connections=self._conns(topic)):
            return raw, ts
        return None

    def calibration(self) -> FemtoCalibration:
        t = self.topics()
        if t["kind"] == "orbbec":
            return self._orbbec_calibration()
        return self._ros_calibration()

    def _orbbec_calibration(self) -> FemtoCalibration:
        profiles = {}
        for name, topic in (("depth", ORBBEC_DEPTH_PROFILE), ("colour", ORBBEC_COLOR_PROFILE)):
            first = self._first(topic) if topic in self.topics()["types"] else None
            if first is None:
                raise RecordingError(f"{self.path}: no {name} stream profile ({topic}); no intrinsics to use")
            try:
                profiles[name] = parse_stream_profile(first[0])
            except ValueError as e:
                raise RecordingError(f"{self.path}: unreadable {name} stream profile ({e})") from None
        d = profiles["depth"]
        if not any(d["rotation"]):
            raise RecordingError(f"{self.path}: the depth stream profile has no depth->colour extrinsics "
                                 "(colour was not recorded with depth?)")
        t_m = np.asarray(d["translation_mm"], np.float64) / 1000.0
        return _make(profile_camera(d), profile_camera(profiles["colour"]), d["rotation"], t_m, f"{self.path}:stream profiles")

    def _ros_calibration(self) -> FemtoCalibration:
        t = self.topics()
        cams, frames = {}, {}
        for name in ("depth", "color"):
            info_topic = _info_topic(t[name], t["types"])
            if info_topic is None:
                raise RecordingError(f"{self.path}: no CameraInfo beside {t[name]} (looked for a camera_info topic "
                                     "in the same namespace)")
            raw, _ = self._first(info_topic)
            msg = self._open().deserialize(raw, t["types"][info_topic])
            K = np.asarray(getattr(msg, "K", getattr(msg, "k", None)), np.float64).reshape(3, 3)
            D = tuple(float(v) for v in getattr(msg, "D", getattr(msg, "d", ())))
            cams[name] = CameraModel(int(msg.width), int(msg.height), K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                                     D if len(D) in (4, 5, 8) else (0.0,) * 8)
            frames[name] = msg.header.frame_id
        if frames["depth"] == frames["color"]:
            R, tr = np.eye(3), np.zeros(3)
        else:
            R, tr = self._tf_static(frames["depth"], frames["color"])
        try:
            return _make(cams["depth"], cams["color"], R, tr, f"{self.path}:camera_info+tf")
        except CalibrationError as e:
            raise RecordingError(str(e)) from None

    def _tf_static(self, src: str, dst: str) -> tuple[np.ndarray, np.ndarray]:
        """Transform taking points in frame src to frame dst, composed along /tf_static."""
        types = self.topics()["types"]
        edges: dict[str, list[tuple[str, np.ndarray]]] = {}
        if "/tf_static" in types:
            for conn, _, raw in self._open().messages(connections=self._conns("/tf_static")):
                for tf in self._open().deserialize(raw, conn.msgtype).transforms:
                    T = _tf_matrix(tf.transform)  # maps child-frame points into the parent frame
                    parent, child = tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/")
                    edges.setdefault(child, []).append((parent, T))
                    edges.setdefault(parent, []).append((child, np.linalg.inv(T)))
        src, dst = src.lstrip("/"), dst.lstrip("/")
        seen, queue = {src: np.eye(4)}, deque([src])
        while queue:
            f = queue.popleft()
            for g, T in edges.get(f, []):
                if g not in seen:
                    seen[g] = T @ seen[f]
                    queue.append(g)
        if dst not in seen:
            raise RecordingError(f"{self.path}: no /tf_static path from depth frame {src!r} to colour frame {dst!r}; "
                                 "cannot register")
        M = seen[dst]
        return M[:3, :3], M[:3, 3]


def _is_orbbec(topics: set[str]) -> bool:
    return any(t.startswith("/cam/sensor_") or t.startswith("/cam/streamProfileType_") for t in topics)


def _tf_matrix(tr: Any) -> np.ndarray:
    q = tr.rotation
    x, y, z, w = q.x, q.y, q.z, q.w
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = (tr.translation.x, tr.translation.y, tr.translation.z)
    return M


def _pick(topics: list[str], words: tuple[str, ...], what: str, by_topic: dict[str, str]) -> str:
    for w in words:
        hits = sorted(t for t in topics if w in t.lower())
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise RecordingError(f"{what} is ambiguous: {hits}; choose one with --depth-topic/--color-topic")
    raise RecordingError(f"{what} not found among {sorted(by_topic)}; name it with --depth-topic/--color-topic")


def _info_topic(image_topic: str, types: dict[str, str]) -> str | None:
    """The CameraInfo topic in the image topic's namespace (or its parent's)."""
    parts = image_topic.rstrip("/").split("/")
    for depth in (len(parts) - 1, len(parts) - 2):
        ns = "/".join(parts[:depth])
        for t, m in sorted(types.items()):
            if m.endswith("sensor_msgs/msg/CameraInfo") and t.rsplit("/", 1)[0] == ns:
                return t
    return None
