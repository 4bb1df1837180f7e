"""The Kinect calibration of NYU Depth V2: the official toolbox's ``camera_params.m``, read once.

Both NYU converters and the raw-capture fixture take the cameras from here. The toolbox's
quirks, and how they are turned into the package's convention (``P_rgb = R @ P_depth + t``,
pixel centres 0-based, OpenCV distortion order):

* ``camera_params.m`` builds ``R = inv(reshape(-v, 3, 3)')`` from nine printed numbers ``v``.
  MATLAB's ``reshape`` is column-major, so ``reshape(v, 3, 3)'`` is ``A``, the numbers read row
  by row, and the toolbox's R is ``-inv(A)``: every point is negated. Projection divides by z,
  so the sign cancels there; here R is ``inv(A)`` and t the negated translation, which keep
  z > 0 and give the same pixels.
* ``depth_world2rgb_world.m`` adds ``T = [t_x; t_z; t_y]`` (y and z swapped against their
  names); the translation is taken in that order, as the toolbox uses it.
* The projection scripts use 1-based pixel grids with these principal points while
  ``undistort.m`` uses 0-based ones; the calibration comes from RGBDemo (OpenCV, 0-based), so
  0-based is used throughout. The toolbox's mix moves a projected depth pixel by
  ``fx_rgb / fx_d - 1`` = 0.11 px.
* Disparity -> metres: ``depth_rel2depth_abs.m``, 351.3 / (1092.5 - raw), capped at 10 m.
"""

from __future__ import annotations

import numpy as np

from ..registration import CameraModel

WIDTH, HEIGHT = 640, 480

RGB_CAMERA = CameraModel(
    WIDTH, HEIGHT, fx=5.1885790117450188e+02, fy=5.1946961112127485e+02,
    cx=3.2558244941119034e+02, cy=2.5373616633400465e+02,
    # k1, k2, p1, p2, k3 (OpenCV order, as camera_params.m lists them)
    dist=(2.0796615318809061e-01, -5.8613825163911781e-01, 7.2231363135888329e-04, 1.0479627195765181e-03,
          4.9856986684705107e-01))
"""The Kinect RGB camera as recorded (distorted); ``RGB_CAMERA.undistorted()`` is the camera of
every NYU sample the package writes (the labelled set's RGB was undistorted by the toolbox)."""

DEPTH_CAMERA = CameraModel(
    WIDTH, HEIGHT, fx=5.8262448167737955e+02, fy=5.8269103270988637e+02,
    cx=3.1304475870804731e+02, cy=2.3844389626620386e+02,
    dist=(-9.9897236553084481e-02, 3.9065324602765344e-01, 1.9290592870229277e-03, -1.9422022475975055e-03,
          -5.1031725053400578e-01))
"""The Kinect IR (depth) camera as recorded."""

_A = np.array([9.9997798940829263e-01, 5.0518419386157446e-03, 4.3011152014118693e-03,
               -5.0359919480810989e-03, 9.9998051861143999e-01, -3.6879781309514218e-03,
               -4.3196624923060242e-03, 3.6662365748484798e-03, 9.9998394948385538e-01]).reshape(3, 3)
_T_X, _T_Y, _T_Z = 2.5031875059141302e-02, 6.6238747008330102e-04, -2.9342312935846411e-04

R_DEPTH_TO_RGB = np.linalg.inv(_A)
"""Rotation taking depth-camera points into the RGB camera (see the module docstring)."""
T_DEPTH_TO_RGB = -np.array([_T_X, _T_Z, _T_Y])
"""Translation in metres, depth camera -> RGB camera: about 2.5 cm along x."""

DISPARITY_PARAM_1 = 351.3
DISPARITY_PARAM_2 = 1092.5
MAX_DEPTH_M = 10.0
"""camera_params.m's maxDepth: projected depths beyond it are set to it."""
NO_RETURN = 2047
"""The 11-bit disparity the Kinect writes where it measured nothing."""
MIN_RAW = 600
"""project_depth_map.m sets disparities below 600 (nearer than 0.71 m, and the undistortion's
border fill) to no return."""


def disparity_to_metres(raw: np.ndarray) -> np.ndarray:
    """depth_rel2depth_abs.m without its clip: 351.3 / (1092.5 - raw), float32 (inf or negative
    at and beyond 1092.5)."""
    with np.errstate(divide="ignore"):
        z = np.subtract(np.float32(DISPARITY_PARAM_2), raw, dtype=np.float32)
        return np.divide(np.float32(DISPARITY_PARAM_1), z, out=z)


def metres_to_disparity(depth_m: np.ndarray) -> np.ndarray:
    """The inverse model (for rendering raw captures): raw = 1092.5 - 351.3 / z, unrounded."""
    with np.errstate(divide="ignore"):
        return DISPARITY_PARAM_2 - DISPARITY_PARAM_1 / np.asarray(depth_m, np.float64)


MIN_DEPTH_M = float(disparity_to_metres(np.array([MIN_RAW]))[0])
"""The nearest depth a valid disparity gives (0.713 m): the near end of every raw frame's range."""
