"""Depth -> colour registration for a rig whose calibration does not change (the NYU Kinect):
:func:`~.registration.register_depth_to_color` with ``splat=1, undistort=True``, every factor that
depends only on the rig computed once per process."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .registration import CameraModel, pixel_rays, scatter_min


class DepthToColorWarp:
    """``register_depth_to_color(depth_mm, depth_cam, color_cam, R, t, splat=1, undistort=True)``
    for a rig whose calibration does not change, with every factor that depends only on the rig
    computed once, so a frame costs about twenty float32 passes over the image and :func:`scatter_min`.

    A depth pixel with undistorted ray (x, y, 1) and depth z lands at ``P = a z + t`` in the colour
    camera, ``a = R (x, y, 1)``; its colour pixel, rounded, is ``floor((U z + u0) / (W z + w0))``
    with ``U = 1000 (fx a_x + (cx + 1/2) a_z)``, ``u0 = 1000 (fx t_x + (cx + 1/2) t_z)`` (rows
    alike), ``W = 1000 a_z``, ``w0 = 1000 t_z``: the principal point and the rounding are folded
    into the precomputed factors, and the denominator is the colour-camera depth in millimetres.

    Point-wise (no splatting): right when a depth pixel covers at most about one colour pixel, as
    for a Kinect (f 583 px against the colour camera's 519 px); colour pixels no depth pixel
    reaches stay 0. Float32 moves a point by < 1e-3 px against the float64 path, so a projection
    that falls within that of a pixel border may round to the other pixel.
    """

    def __init__(self, depth_cam: CameraModel, color_cam: CameraModel, R: np.ndarray, t: np.ndarray):
        table = pixel_rays(depth_cam)
        rays = np.concatenate([table.rays, np.ones((len(table.rays), 1))], axis=1)
        a = rays @ np.asarray(R, np.float64).reshape(3, 3).T
        t = np.asarray(t, np.float64).reshape(3)
        self.depth_cam, self.target = depth_cam, color_cam.undistorted()
        cam = self.target
        if cam.width * cam.height > 2**24:
            raise InputError(f"DepthToColorWarp: a {cam.width}x{cam.height} target has pixel indices beyond float32's "
                             "exact integers; use register_depth_to_color")
        cx, cy = cam.cx + 0.5, cam.cy + 0.5
        self.U = (1000.0 * (cam.fx * a[:, 0] + cx * a[:, 2])).astype(np.float32)
        self.V = (1000.0 * (cam.fy * a[:, 1] + cy * a[:, 2])).astype(np.float32)
        self.W = (1000.0 * a[:, 2]).astype(np.float32)
        self.u0, self.v0, self.w0 = (np.float32(1000.0 * v) for v in (cam.fx * t[0] + cx * t[2], cam.fy * t[1] + cy * t[2],
                                                                       t[2]))
        self.ray_ok = None if table.ok.all() else table.ok
        """Pixels whose ray is usable, or None when all are (a pass saved per frame)."""

    def __call__(self, depth_mm: np.ndarray) -> np.ndarray:
        """(H, W) uint16 depth-camera millimetres -> (H, W) uint16 colour-camera millimetres, 0 = none."""
        return self.from_metres(depth_mm * np.float32(1e-3))

    def from_metres(self, z: np.ndarray, valid: np.ndarray | None = None, max_mm: int = 65535) -> np.ndarray:
        """(H, W) float32 depth-camera metres -> (H, W) uint16 colour-camera millimetres, depths
        above ``max_mm`` set to it. Without ``valid`` (H, W, nonzero = use the pixel) the pixels
        with z > 0 are used."""
        cam = self.target
        if z.shape != (self.depth_cam.height, self.depth_cam.width):
            raise InputError(f"depth is {z.shape[1]}x{z.shape[0]} but the camera is "
                             f"{self.depth_cam.width}x{self.depth_cam.height}")
        z = z.reshape(-1)
        valid = (z > 0) if valid is None else valid.reshape(-1) != 0
        # Whole-image arithmetic (no gather of the valid pixels first: computing the invalid ones
        # too is cheaper, and ``keep`` drops them). Numerators and denominator are scaled by 1000,
        # which leaves the pixel unchanged and makes the denominator the depth in millimetres.
        pz = self.W * z
        pz += self.w0
        inv = np.reciprocal(pz)
        col = self.U * z
        col += self.u0
        col *= inv
        row = self.V * z
        row += self.v0
        row *= inv
        keep = valid if self.ray_ok is None else valid & self.ray_ok
        keep &= col >= 0
        keep &= col < cam.width
        keep &= row >= 0
        keep &= row < cam.height
        keep &= pz >= np.float32(0.5)         # rounds to >= 1 mm
        keep &= pz < np.float32(65535.5)      # rounds to <= 65535 mm
        # floor (the 1/2 is in the factors), then the flat index, exact in float32 below 2**24
        np.floor(row, out=row)
        np.floor(col, out=col)
        row *= np.float32(cam.width)
        row += col
        pz += np.float32(0.5)
        out = scatter_min(row[keep].astype(np.intp), pz[keep].astype(np.uint16), cam.width * cam.height)
        if max_mm < 65535:
            np.minimum(out, np.uint16(max_mm), out=out)
        return out.reshape(cam.height, cam.width)
