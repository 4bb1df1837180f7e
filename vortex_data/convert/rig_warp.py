"""Depth -> colour registration for a rig whose calibration does not change (the NYU Kinect):
:func:`~.registration.register_depth_to_color` with ``splat=1, undistort=True``, every factor that
depends only on the rig computed once per process."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InputError
from .registration import NO_DEPTH, CameraModel, pixel_rays, scatter_min


class DepthToColorWarp:
    """``register_depth_to_color(depth_mm, depth_cam, color_cam, R, t, splat=1, undistort=True)``
    for a rig whose calibration does not change, with every factor that depends only on the rig
    computed once, so a frame costs about ten passes over the image and one :func:`scatter_min`.

    A depth pixel with undistorted ray (x, y, 1) and depth z lands at ``P = a z + t`` in the colour
    camera, ``a = R (x, y, 1)``; its colour pixel is ``(U z + u0) / (W z + w0)`` with
    ``U = 1000 (fx a_x + cx a_z)``, ``u0 = 1000 (fx t_x + cx t_z)`` (rows alike), ``W = 1000 a_z``,
    ``w0 = 1000 t_z``: the denominator is the colour-camera depth in millimetres. Numerators and
    denominator are scaled by 1000, which leaves the pixel unchanged.

    Depths are clipped to ``z_range`` (metres; for NYU its upper end is the toolbox's 10 m cap).
    Because of that clip, every point lands in the colour image grown by :attr:`pad` pixels, which
    is worked out here once: a frame needs no bounds test per point, only a z-buffer that large,
    cropped at the end. Invalid pixels are projected too (computing them is cheaper than selecting
    the valid ones) and carry a depth that loses to every real one.

    Point-wise (no splatting): right when a depth pixel covers at most about one colour pixel, as
    for a Kinect (f 583 px against the colour camera's 519 px); colour pixels no depth pixel
    reaches stay 0. Float32 moves a point by < 1e-3 px against the float64 path, so a projection
    that falls within that of a pixel border may round to the other pixel.
    """

    def __init__(self, depth_cam: CameraModel, color_cam: CameraModel, R: np.ndarray, t: np.ndarray,
                 z_range: tuple[float, float] = (0.25, 20.0)):
        table = pixel_rays(depth_cam)
        rays = np.concatenate([table.rays, np.ones((len(table.rays), 1))], axis=1)
        # A ray that did not undistort is never valid; give it the centre's so its (masked) point stays in bounds.
        rays[~table.ok] = [0.0, 0.0, 1.0]
        a = rays @ np.asarray(R, np.float64).reshape(3, 3).T
        t = np.asarray(t, np.float64).reshape(3)
        self.depth_cam, self.target = depth_cam, color_cam.undistorted()
        cam = self.target
        self.z_range = (np.float32(z_range[0]), np.float32(z_range[1]))
        # The pixels every depth pixel reaches at both ends of z_range bound those in between (each
        # coordinate is monotonic in z); rounding and float32 may add one pixel.
        ends = [a * float(z) + t for z in self.z_range]
        if min(p[:, 2].min() for p in ends) * 1000 < 0.5 or max(p[:, 2].max() for p in ends) * 1000 >= NO_DEPTH - 0.5:
            raise InputError(f"DepthToColorWarp: depths {z_range} m put points behind the colour camera or beyond "
                             f"{NO_DEPTH - 1} mm")
        over = 0.0
        for p in ends:
            u, v = cam.fx * p[:, 0] / p[:, 2] + cam.cx, cam.fy * p[:, 1] / p[:, 2] + cam.cy
            over = max(over, -u.min(), -v.min(), u.max() - (cam.width - 1), v.max() - (cam.height - 1))
        self.pad = int(np.ceil(over)) + 1
        """The margin around the colour image that every point lands in."""
        self.padded = (cam.height + 2 * self.pad, cam.width + 2 * self.pad)
        if self.padded[1] > 32767 or self.padded[0] > 32767:
            raise InputError(f"DepthToColorWarp: depths {z_range} m spread points over {self.padded[1]}x{self.padded[0]} "
                             "pixels, beyond 16-bit pixel coordinates; narrow z_range or use register_depth_to_color")
        cx, cy = cam.cx + self.pad, cam.cy + self.pad  # pixel coordinates in the padded z-buffer
        # (U z + u0) / (W z + w0) = U / W + (u0 - w0 U / W) / (W z + w0): the pixel at infinite
        # depth plus the parallax, two passes per coordinate once the denominator is inverted.
        U = 1000.0 * (cam.fx * a[:, 0] + cx * a[:, 2])
        V = 1000.0 * (cam.fy * a[:, 1] + cy * a[:, 2])
        W = 1000.0 * a[:, 2]
        u0, v0, w0 = (1000.0 * v for v in (cam.fx * t[0] + cx * t[2], cam.fy * t[1] + cy * t[2], t[2]))
        self.W, self.w0 = self._image(W), np.float32(w0)
        self.col_inf, self.row_inf = self._image(U / W), self._image(V / W)
        self.col_par, self.row_par = self._image(u0 - w0 * U / W), self._image(v0 - w0 * V / W)
        self.ray_ok = None if table.ok.all() else table.ok.reshape(depth_cam.height, -1).astype(np.uint8)
        """Pixels whose ray is usable, or None when all are (a pass saved per frame)."""

    def _image(self, values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32).reshape(self.depth_cam.height, self.depth_cam.width)

    def __call__(self, depth_mm: np.ndarray) -> np.ndarray:
        """(H, W) uint16 depth-camera millimetres -> (H, W) uint16 colour-camera millimetres, 0 = none."""
        return self.from_metres(depth_mm * np.float32(1e-3), depth_mm > 0)

    def from_metres(self, z: np.ndarray, valid: np.ndarray, max_mm: int = 65535) -> np.ndarray:
        """(H, W) float32 depth-camera metres and (H, W) valid mask (nonzero = use the pixel) ->
        (H, W) uint16 colour-camera millimetres, depths above ``max_mm`` set to it, 0 = none."""
        cam, pad = self.target, self.pad
        if z.shape != (self.depth_cam.height, self.depth_cam.width) or valid.shape != z.shape:
            raise InputError(f"depth is {z.shape[1]}x{z.shape[0]} but the camera is "
                             f"{self.depth_cam.width}x{self.depth_cam.height}")
        valid = valid.view(np.uint8) if valid.dtype == bool else valid
        if self.ray_ok is not None:
            valid = cv2.bitwise_and(valid, self.ray_ok)
        z = np.clip(z, *self.z_range)
        pz = self.W * z
        pz += self.w0
        inv = np.reciprocal(pz)
        col = self.col_par * inv
        col += self.col_inf
        row = self.row_par * inv
        row += self.row_inf
        # Rounded to the nearest pixel by OpenCV's map conversion (one vectorised pass); the int16
        # pair (x, y >= 0) read as one little-endian int32 is x + 65536 y, re-strided to the z-buffer's width.
        xy, _ = cv2.convertMaps(col, row, cv2.CV_16SC2, nninterpolation=True)
        flat = xy.view(np.int32).reshape(-1)
        y = flat >> 16
        y *= 65536 - self.padded[1]
        flat -= y
        mm = np.full(z.shape, NO_DEPTH, np.int32)
        cv2.add(pz, 0.0, dst=mm, mask=valid, dtype=cv2.CV_32S)  # rounded; invalid pixels keep NO_DEPTH
        out = scatter_min(flat.astype(np.intp), mm.reshape(-1), self.padded[0] * self.padded[1])
        out = out.reshape(self.padded)[pad:pad + cam.height, pad:pad + cam.width]
        return cv2.min(out, max_mm) if max_mm < NO_DEPTH else out.copy()
