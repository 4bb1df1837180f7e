"""The one resize policy for RGB, depth, labels and intrinsics.

Every resize in the package (a converter's ``--resize``, the loader's training and evaluation
transforms, the Femto registration output) goes through these functions, so the three maps
and the intrinsics cannot drift apart.

Convention: pixel centres. Pixel ``i`` is centred on coordinate ``i``; resizing ``n`` pixels to
``m`` maps output pixel ``u`` to source coordinate ``x = (u + 0.5) * n / m - 0.5``, and the
intrinsics follow the same rule (``c' = (c + 0.5) * s - 0.5``, ``f' = f * s``, ``s = m / n``).

- RGB: ``cv2.INTER_AREA`` when both axes shrink (a box filter, so no aliasing), otherwise
  ``cv2.INTER_LINEAR``; both are centre-aligned in OpenCV.
- Depth and labels: the source pixel nearest to ``x`` -- never a blend, so every output depth
  is a measured value (no mixing across an edge or with 0 = invalid) and every label is a
  label. OpenCV's ``INTER_NEAREST`` takes ``floor(u * n / m)`` (corner-aligned: shifted by
  ``(n/m - 1) / 2`` source pixels against RGB and the intrinsics). ``INTER_NEAREST_EXACT`` is
  centre-aligned but rounds exact ties up, and at an even integer factor (480 -> 240) every
  pixel is a tie, so it shifts by +0.5 source pixels. Here a tie goes down on even and up on
  odd output pixels: the same nearest sampling with no systematic shift at any factor.

:func:`camera_zoom` and :func:`scale_depth_mm` serve ``AugmentConfig(scale_depth="camera")``,
which reads a crop's zoom as the camera moving nearer (depth divided by the zoom).

Sizes are ``(height, width)`` throughout, like numpy shapes (OpenCV's ``dsize`` is (w, h)).
Each resize takes an optional ``dst`` array of the output shape and dtype to write into, so a
caller can reuse buffers; without it a new array is returned (or the input itself when the
size does not change).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

SCALE_DEPTH_MODES = ("none", "camera")


def scale_centre(c: float, s: float) -> float:
    """A principal-point coordinate after resizing by ``s`` (pixel-centre rule)."""
    return (c + 0.5) * s - 0.5


@dataclass
class Intrinsics:
    """Pinhole intrinsics in pixels, for the image resolution they are stored with."""

    fx: float
    fy: float
    cx: float
    cy: float

    def scaled(self, sx: float, sy: float) -> "Intrinsics":
        """Intrinsics after resizing the image by (sx, sy), pixel-centre convention (:func:`scale_centre`)."""
        return Intrinsics(fx=self.fx * sx, fy=self.fy * sy, cx=scale_centre(self.cx, sx), cy=scale_centre(self.cy, sy))

    def cropped(self, x0: float, y0: float) -> "Intrinsics":
        return Intrinsics(self.fx, self.fy, self.cx - x0, self.cy - y0)

    def as_dict(self) -> dict[str, float]:
        return {"fx": float(self.fx), "fy": float(self.fy), "cx": float(self.cx), "cy": float(self.cy)}


def resize_intrinsics(k: Intrinsics, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> Intrinsics:
    """Intrinsics of an image of size ``src_hw`` after resizing it to ``out_hw``."""
    return k.scaled(out_hw[1] / src_hw[1], out_hw[0] / src_hw[0])


def rgb_interpolation(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """INTER_AREA when shrinking both axes, else INTER_LINEAR."""
    return cv2.INTER_AREA if out_hw[0] < src_hw[0] and out_hw[1] < src_hw[1] else cv2.INTER_LINEAR


def _same(arr: np.ndarray, dst: np.ndarray | None) -> np.ndarray:
    if dst is None:
        return arr
    np.copyto(dst, arr)
    return dst


def resize_rgb(rgb: np.ndarray, out_hw: tuple[int, int], dst: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB resized to ``out_hw`` by :func:`rgb_interpolation`."""
    src_hw = rgb.shape[:2]
    if tuple(src_hw) == tuple(out_hw):
        return _same(rgb, dst)
    interp = rgb_interpolation(src_hw, out_hw)
    if dst is None:
        return cv2.resize(rgb, (out_hw[1], out_hw[0]), interpolation=interp)
    out = cv2.resize(rgb, (out_hw[1], out_hw[0]), dst=dst, interpolation=interp)
    if out is not dst:  # OpenCV allocates when dst does not fit; say so instead of ignoring it
        raise ValueError(f"dst {dst.shape} {dst.dtype} does not fit a {out.shape} {out.dtype} result")
    return dst


@lru_cache(maxsize=1024)
def nearest_indices(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of each of ``n_dst`` output pixels: the pixel nearest to its centre,
    ``x = (u + 0.5) * n_src / n_dst - 0.5``, with exact ties alternating (down on even u, up
    on odd u). Integer arithmetic, so ties are found exactly. Read-only (cached)."""
    if n_src < 1 or n_dst < 1:
        raise ValueError(f"cannot resize {n_src} pixels to {n_dst}")
    u = np.arange(n_dst, dtype=np.int64)
    num = (2 * u + 1) * n_src - n_dst          # x = num / (2 n_dst)
    q, r = np.divmod(num, 2 * n_dst)
    # r / (2 n_dst) is the fractional part of x: below one half -> q, above -> q + 1, a tie -> by parity.
    half = n_dst  # one half of the denominator 2 * n_dst
    idx = np.where(r < half, q, q + 1)
    idx = np.where(r == half, q + (u & 1), idx)
    idx = np.clip(idx, 0, n_src - 1).astype(np.intp)
    idx.setflags(write=False)
    return idx


@lru_cache(maxsize=4096)
def _opencv_agrees(n_src: int, n_dst: int, axis: int) -> bool:
    """Whether ``cv2.INTER_NEAREST_EXACT`` picks exactly :func:`nearest_indices` along ``axis``
    for this size pair (it differs only where a tie falls, e.g. at even integer factors).
    Checked once per pair on an index ramp, so the fast path is taken only where it is exact."""
    if n_src > np.iinfo(np.uint16).max:
        return False
    ramp = np.arange(n_src, dtype=np.uint16).reshape((n_src, 1) if axis == 0 else (1, n_src))
    size = (1, n_dst) if axis == 0 else (n_dst, 1)  # OpenCV's (width, height)
    got = cv2.resize(ramp, size, interpolation=cv2.INTER_NEAREST_EXACT).ravel()
    return bool(np.array_equal(got, nearest_indices(n_src, n_dst)))


def resize_nearest(arr: np.ndarray, out_hw: tuple[int, int], dst: np.ndarray | None = None) -> np.ndarray:
    """A depth or label map (H, W[, C]) resized to ``out_hw`` by nearest source pixel
    (:func:`nearest_indices` on each axis); every output value is an input value.

    Where OpenCV's ``INTER_NEAREST_EXACT`` samples the very same pixels (no tie on either axis:
    most crop sizes) it does the work, about twice as fast as the two gathers below."""
    src_hw = arr.shape[:2]
    if tuple(src_hw) == tuple(out_hw):
        return _same(arr, dst)
    if (arr.dtype in (np.uint8, np.uint16) and _opencv_agrees(int(src_hw[0]), int(out_hw[0]), 0)
            and _opencv_agrees(int(src_hw[1]), int(out_hw[1]), 1)):
        out = cv2.resize(arr, (out_hw[1], out_hw[0]), dst=dst, interpolation=cv2.INTER_NEAREST_EXACT)
        if dst is not None and out is not dst:
            raise ValueError(f"dst {dst.shape} {dst.dtype} does not fit a {out.shape} {out.dtype} result")
        return out
    rows = nearest_indices(int(src_hw[0]), int(out_hw[0]))
    cols = nearest_indices(int(src_hw[1]), int(out_hw[1]))
    # Two 1-D gathers (rows, then columns) are ~4x faster than one 2-D fancy index.
    return np.take(arr.take(rows, axis=0), cols, axis=1, out=dst)


def camera_zoom(crop_hw: tuple[int, int], full_hw: tuple[int, int]) -> float:
    """How much nearer a crop of ``crop_hw`` makes the camera look, against the crop
    ``full_hw`` that the same output size would take of the whole image (the evaluation
    transform's centre crop): ``sqrt((full_h / crop_h) * (full_w / crop_w))``."""
    return float(np.sqrt((full_hw[0] / crop_hw[0]) * (full_hw[1] / crop_hw[1])))


def scale_depth_mm(depth_mm: np.ndarray, factor: float, dst: np.ndarray | None = None) -> np.ndarray:
    """uint16 millimetres times ``factor``, rounded; 0 (invalid) stays 0 and a product beyond
    the uint16 range becomes 0 (invalid) rather than wrapping."""
    scaled = np.rint(depth_mm.astype(np.float32) * np.float32(factor))
    scaled[scaled > np.iinfo(np.uint16).max] = 0
    if dst is None:
        return scaled.astype(np.uint16)
    np.copyto(dst, scaled, casting="unsafe")
    return dst
