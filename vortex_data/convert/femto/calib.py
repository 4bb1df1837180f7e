"""Femto Bolt / Azure Kinect calibration files -> camera models and depth->colour extrinsics.

Two shapes are read:

* the K4A device calibration (``calibration.json`` attached to a k4arecorder MKV): intrinsics are
  normalised to the native sensor (depth 1024x1024, colour 4096x3072) and converted here to the
  recorded mode exactly as the Azure Kinect SDK does (``mode_specific_calibration.c``);
* ROS ``camera_info``-style JSON (``K`` 3x3, ``D`` in OpenCV order, ``width``/``height``) plus an
  extrinsic file with ``R`` and ``t`` (metres) or ``t_mm``, as Orbbec tools export them.

Convention everywhere: ``P_color = R @ P_depth + t``, t in metres.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..registration import CameraModel, nearest_rotation


class CalibrationError(InputError):
    """A calibration that is missing, malformed or does not fit the recording."""


@dataclass(frozen=True)
class FemtoCalibration:
    depth: CameraModel
    color: CameraModel
    R: tuple[float, ...]
    """Row-major 3x3 depth->colour rotation (a tuple, so the calibration hashes and pickles)."""
    t: tuple[float, float, float]
    """depth->colour translation, metres."""
    source: str

    @property
    def rotation(self) -> np.ndarray:
        return np.asarray(self.R, np.float64).reshape(3, 3)

    @property
    def translation(self) -> np.ndarray:
        return np.asarray(self.t, np.float64)

    def with_sizes(self, depth_size: tuple[int, int], color_size: tuple[int, int]) -> "FemtoCalibration":
        """The calibration for images stored at other sizes (same aspect ratio required)."""
        return FemtoCalibration(_fit(self.depth, depth_size, self.source, "depth"),
                                _fit(self.color, color_size, self.source, "colour"), self.R, self.t, self.source)

    def as_dict(self) -> dict[str, Any]:
        return {"depth": self.depth.as_dict(), "color": self.color.as_dict(), "R": list(self.R), "t_m": list(self.t),
                "source": self.source}


def _fit(cam: CameraModel, size: tuple[int, int], source: str, what: str) -> CameraModel:
    w, h = size
    if (w, h) == cam.size:
        return cam
    if abs(w / h - cam.width / cam.height) > 1e-3:
        raise CalibrationError(f"{source}: {what} calibration is for {cam.width}x{cam.height} but the images are "
                               f"{w}x{h} (a different aspect ratio, so not a plain resize)")
    return cam.resized(w, h)


def _make(depth: CameraModel, color: CameraModel, R: Any, t: Any, source: str) -> FemtoCalibration:
    try:
        rot = nearest_rotation(np.asarray(R, np.float64).reshape(3, 3), source=source)
        tr = np.asarray(t, np.float64).reshape(3)
    except (ValueError, TypeError) as e:
        raise CalibrationError(f"{source}: bad extrinsics ({e})") from None
    if np.linalg.norm(tr) > 0.5:
        raise CalibrationError(f"{source}: depth->colour translation {tr.tolist()} is over 0.5 m; "
                               "is it in millimetres? (expected metres, or give t_mm)")
    return FemtoCalibration(depth, color, tuple(rot.ravel().tolist()), tuple(tr.tolist()), source)


# ---------------------------------------------------------------- K4A device calibration

# (binned calibration image size, crop offset, output size) per mode, from the Azure Kinect SDK.
DEPTH_MODES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "NFOV_2X2BINNED": ((512, 512), (96, 90), (320, 288)),
    "NFOV_UNBINNED": ((1024, 1024), (192, 180), (640, 576)),
    "WFOV_2X2BINNED": ((512, 512), (0, 0), (512, 512)),
    "WFOV_UNBINNED": ((1024, 1024), (0, 0), (1024, 1024)),
    "PASSIVE_IR": ((1024, 1024), (0, 0), (1024, 1024)),
}
COLOR_RESOLUTIONS: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "720P": ((1280, 960), (0, 120), (1280, 720)),
    "1080P": ((1920, 1440), (0, 180), (1920, 1080)),
    "1440P": ((2560, 1920), (0, 240), (2560, 1440)),
    "1536P": ((2048, 1536), (0, 0), (2048, 1536)),
    "2160P": ((3840, 2880), (0, 360), (3840, 2160)),
    "3072P": ((4096, 3072), (0, 0), (4096, 3072)),
}


def _k4a_camera(cam: dict[str, Any], mode: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
                source: str) -> CameraModel:
    """Normalised, 0-cornered native intrinsics -> pixel, 0-centred intrinsics of one mode."""
    p = cam["Intrinsics"]["ModelParameters"]
    if len(p) < 14:
        raise CalibrationError(f"{source}: camera {cam.get('Location')} has {len(p)} model parameters, expected 14")
    cx, cy, fx, fy, k1, k2, k3, k4, k5, k6, codx, cody, p2, p1 = (float(v) for v in p[:14])
    if codx or cody:
        raise CalibrationError(f"{source}: a non-zero centre of distortion (Rational6KT codx/cody) is not supported")
    (bw, bh), (ox, oy), (w, h) = mode
    radius = float(cam.get("MetricRadius") or 0.0) or None
    return CameraModel.from_k6p2(w, h, fx * bw, fy * bh, cx * bw - ox - 0.5, cy * bh - oy - 0.5,
                                 (k1, k2, k3, k4, k5, k6), p1, p2, max_radius=radius)


def color_mode_parts(color_mode: str, source: str) -> tuple[str, str]:
    """'MJPG_720P' -> ('MJPG', '720P')."""
    fmt, _, res = color_mode.partition("_")
    if res not in COLOR_RESOLUTIONS:
        raise CalibrationError(f"{source}: unknown colour mode {color_mode!r}; known resolutions {sorted(COLOR_RESOLUTIONS)}")
    return fmt, res


def k4a_calibration(doc: dict[str, Any] | bytes | str, depth_mode: str, color_mode: str, source: str) -> FemtoCalibration:
    """Parse a K4A ``calibration.json`` for the recorded depth mode and colour mode (e.g. 'MJPG_720P')."""
    try:
        if not isinstance(doc, dict):
            doc = json.loads(doc)
        cams = {c["Location"]: c for c in doc["CalibrationInformation"]["Cameras"]}
    except (ValueError, KeyError, TypeError) as e:
        raise CalibrationError(f"{source}: not a K4A calibration.json ({e.__class__.__name__}: {e})") from None
    try:
        d, c = cams["CALIBRATION_CameraLocationD0"], cams["CALIBRATION_CameraLocationPV0"]
    except KeyError as e:
        raise CalibrationError(f"{source}: calibration has no camera {e} (cameras: {sorted(cams)})") from None
    if depth_mode not in DEPTH_MODES:
        raise CalibrationError(f"{source}: unknown depth mode {depth_mode!r}; known {sorted(DEPTH_MODES)}")
    if (int(d["SensorWidth"]), int(d["SensorHeight"])) != (1024, 1024):
        raise CalibrationError(f"{source}: depth calibration is for {d['SensorWidth']}x{d['SensorHeight']}, expected 1024x1024")
    if int(c["SensorWidth"]) * 3 != int(c["SensorHeight"]) * 4:
        # The SDK also converts a legacy 16:9 colour calibration; none is known on Femto devices.
        raise CalibrationError(f"{source}: colour calibration {c['SensorWidth']}x{c['SensorHeight']} is not 4:3")
    depth = _k4a_camera(d, DEPTH_MODES[depth_mode], source)
    color = _k4a_camera(c, COLOR_RESOLUTIONS[color_mode_parts(color_mode, source)[1]], source)
    # Each camera's Rt maps depth-camera (D0) coordinates into that camera; D0's own is identity.
    if not np.allclose(np.asarray(d["Rt"]["Rotation"], float), np.eye(3).ravel()) or any(d["Rt"]["Translation"]):
        raise CalibrationError(f"{source}: depth camera extrinsics are not the identity; cannot tell the reference frame")
    return _make(depth, color, c["Rt"]["Rotation"], c["Rt"]["Translation"], source)


# ---------------------------------------------------------------- camera_info-style files

def camera_from_info(info: dict[str, Any], source: str) -> CameraModel:
    """A ROS camera_info-like dict: K (3x3 or 9), D (OpenCV order), width, height."""
    try:
        K = np.asarray(info.get("K", info.get("k")), np.float64).reshape(3, 3)
        D = [float(v) for v in info.get("D", info.get("d", []))]
        w, h = int(info["width"]), int(info["height"])
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationError(f"{source}: not a camera_info-style calibration (needs K, D, width, height): {e}") from None
    model = str(info.get("distortion_model", "rational_polynomial" if len(D) == 8 else "plumb_bob"))
    if model not in ("rational_polynomial", "plumb_bob") or len(D) not in (0, 4, 5, 8):
        raise CalibrationError(f"{source}: distortion model {model!r} with {len(D)} coefficients is not supported "
                               "(rational_polynomial: 8, plumb_bob: 5)")
    return CameraModel(w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2], tuple(D) if D else (0.0,) * 8)


def extrinsics_from_dict(ext: dict[str, Any], source: str) -> tuple[Any, Any]:
    """R and t (metres) from {'R', 't'} or {'R', 't_mm'} (also 'rotation'/'translation')."""
    R = ext.get("R", ext.get("rotation"))
    if "t" in ext or "translation" in ext:
        t = ext.get("t", ext.get("translation"))
    elif "t_mm" in ext:
        t = np.asarray(ext["t_mm"], np.float64) / 1000.0
    else:
        t = None
    if R is None or t is None:
        raise CalibrationError(f"{source}: extrinsics need 'R' and 't' (metres) or 't_mm'")
    return R, t


CAMERA_INFO_FILES = ("rgb_camera_info.json", "depth_camera_info.json", "extrinsic_depth_to_color.json")
COMBINED_FILE = "calibration.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: calibration file missing") from None
    except ValueError as e:
        raise CalibrationError(f"{path}: not valid JSON ({e})") from None


def folder_calibration(folder: Path) -> FemtoCalibration:
    """Calibration of a frame-dump folder: the three camera_info-style files, or one
    ``calibration.json`` with ``color``, ``depth`` (camera_info-style) and ``depth_to_color`` (R, t)."""
    folder = Path(folder)
    if (folder / COMBINED_FILE).is_file():
        path = folder / COMBINED_FILE
        doc = _read_json(path)
        if "CalibrationInformation" in doc:
            raise CalibrationError(f"{path}: a K4A device calibration needs the recording's depth and colour "
                                   "modes; use the camera_info-style layout for frame dumps (docs/femto.md)")
        for key in ("color", "depth", "depth_to_color"):
            if key not in doc:
                raise CalibrationError(f"{path}: missing '{key}'")
        R, t = extrinsics_from_dict(doc["depth_to_color"], str(path))
        return _make(camera_from_info(doc["depth"], f"{path}:depth"), camera_from_info(doc["color"], f"{path}:color"),
                     R, t, str(path))
    rgb_p, depth_p, ext_p = (folder / n for n in CAMERA_INFO_FILES)
    missing = [p.name for p in (rgb_p, depth_p, ext_p) if not p.is_file()]
    if missing:
        raise CalibrationError(f"{folder}: no calibration: missing {', '.join(missing)} "
                               f"(or give a single {COMBINED_FILE}; see docs/femto.md)")
    R, t = extrinsics_from_dict(_read_json(ext_p), str(ext_p))
    return _make(camera_from_info(_read_json(depth_p), str(depth_p)), camera_from_info(_read_json(rgb_p), str(rgb_p)),
                 R, t, str(folder))
