"""V5 augmentation: joint geometric transforms on rgb/depth/seg plus colour jitter on RGB.

Each call is a pure function of (seed, epoch, sample key, repeat): the same sample in the same
epoch gets the same augmentation on any worker, rank or restart (exact resume depends on it).

Geometry (random resized crop, then horizontal flip) moves all three maps together by the one
resize policy of :mod:`vortex_data.format.geometry`: RGB is interpolated, depth and labels take the
centre-aligned nearest pixel so every output depth value is one that was measured (no blending
across an object edge or with the 0 = invalid value). Intrinsics follow the crop, the resize and
the flip. Depth values are rescaled only with ``AugmentConfig(scale_depth="camera")``.

Two phases: :func:`draw_train` draws everything from the RNG stream (crop box, flip, jitter
factors and order, in that order); the geometry runs on the CPU (:func:`apply_geometry`, which
can write straight into batch buffers), and the colour jitter either on the CPU
(:func:`color_jitter`) or batched on the device (:mod:`vortex_data.stream.photometric`). Both consume
the same draws, so the choice changes where the work runs, not what a sample looks like.

Colour jitter follows torchvision's ``ColorJitter`` on uint8 tensors: factors drawn uniformly
from [max(0, 1-b), 1+b] (brightness, contrast, saturation) and [-h, h] (hue), the four applied
in a random order, with torchvision v2's blend/grayscale/HSV formulas and float->uint8 truncation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import InputError
from ..format.geometry import (SCALE_DEPTH_MODES, camera_zoom, resize_intrinsics, resize_nearest, resize_rgb,
                               scale_depth_mm)
from ..format.geometry import Intrinsics
from .mixture import rng_for

cv2.setNumThreads(1)  # DataLoader workers supply the parallelism; extra threads only contend


@dataclass(frozen=True)
class AugmentConfig:
    """size: (H, W) training resolution. scale: crop area as a fraction of the image.
    ratio: crop aspect (w/h) relative to the output aspect, sampled log-uniformly.
    scale_depth: what a crop's zoom does to depth (see :func:`crop_resize`). "none" (V5): depth
    values unchanged, the focal length follows the resize. "camera": Metric3D's RandomResize
    rule, the zoom is the camera moving along its axis: focal length kept, depth divided by it."""

    size: tuple[int, int] = (480, 640)
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    scale_depth: str = "none"

    def __post_init__(self) -> None:
        if self.scale_depth not in SCALE_DEPTH_MODES:
            raise InputError(f"scale_depth must be one of {SCALE_DEPTH_MODES}, got {self.scale_depth!r}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise InputError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise InputError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0 <= self.hue <= 0.5:
            raise InputError(f"hue must be in [0, 0.5], got {self.hue}")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise InputError("brightness, contrast and saturation must be >= 0")


# ---------------------------------------------------------------- colour (torchvision formulas)

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class JitterParams:
    order: tuple[int, ...]
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None


def jitter_params(rng: np.random.Generator, cfg: AugmentConfig) -> JitterParams:
    """Draw ColorJitter's parameters the way ``ColorJitter.get_params`` does (a zero strength
    means 'not applied', like torchvision's None)."""
    order = tuple(int(i) for i in rng.permutation(4))

    def around_one(s: float) -> float | None:
        return float(rng.uniform(max(0.0, 1 - s), 1 + s)) if s > 0 else None

    b, c, s = around_one(cfg.brightness), around_one(cfg.contrast), around_one(cfg.saturation)
    h = float(rng.uniform(-cfg.hue, cfg.hue)) if cfg.hue > 0 else None
    return JitterParams(order, b, c, s, h)


def _f32(x: float) -> np.float32:
    return np.float32(x)


# torchvision v2 computes ``a.mul(r).add_(b, alpha=1-r)`` in float32 with the add fused
# (``a*r`` rounded, then ``+ b*(1-r)`` rounded once, as an FMA does). Here the fused step is done in
# float64, where ``b*(1-r)`` and the sum are exact for 8-bit data, then rounded once to float32.

def _fused(x32: np.ndarray, b: np.ndarray | np.float32, alpha: np.float32) -> np.ndarray:
    """float32 round(x32 + b*alpha) with one rounding, like torch's ``add_(b, alpha=alpha)``."""
    return (x32.astype(np.float64) + np.asarray(b, np.float64) * np.float64(alpha)).astype(np.float32)


def _blend_lut(ratio: float, other: np.float32) -> np.ndarray:
    """torchvision ``_blend(img, other, ratio)`` for a scalar ``other`` as a 256-entry table:
    clamp(ratio*v + (1-ratio)*other, 0, 255) truncated to uint8, in float32 like torch."""
    v = np.arange(256, dtype=np.float32) * _f32(ratio)
    return np.clip(_fused(v, other, _f32(1.0 - ratio)), 0, 255).astype(np.uint8)


def _gray_f32(rgb: np.ndarray) -> np.ndarray:
    """torchvision v2's grayscale (``r*0.2989 + g*0.587 + b*0.114``, the adds fused) of a uint8
    RGB image as float32, floored like its uint8 callers."""
    r, g, b = (rgb[..., c] for c in range(3))
    x = r.astype(np.float32) * _f32(0.2989)
    x = _fused(x, g, _f32(0.587))
    return np.floor(_fused(x, b, _f32(0.114)))


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """torchvision ``rgb_to_grayscale`` for uint8: 0.2989 R + 0.587 G + 0.114 B, truncated."""
    return _gray_f32(rgb).astype(np.uint8)


def adjust_brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    return cv2.LUT(rgb, _blend_lut(factor, np.float32(0)))


def adjust_contrast(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean of the (floored) grayscale image."""
    mean = np.float32(_gray_f32(rgb).mean(dtype=np.float64))
    return cv2.LUT(rgb, _blend_lut(factor, mean))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """clamp(0, 255) then truncate, as torch's ``.clamp(0, 255).to(torch.uint8)``."""
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


def adjust_saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Blend each pixel with its own grayscale value. The result depends only on (value, gray),
    so it is a 256x256 table built per call and indexed once, instead of float passes over the image."""
    v = np.arange(256, dtype=np.float32)
    table = np.clip(_fused((v * _f32(factor))[:, None], v[None, :], _f32(1.0 - factor)), 0, 255).astype(np.uint8)
    idx = rgb.astype(np.uint16) << 8
    idx |= _gray_f32(rgb).astype(np.uint8)[..., None]
    return table.reshape(-1)[idx]


def adjust_hue(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Rotate hue by ``factor`` turns in HSV (the hexcone model torchvision uses), then convert
    back with torchvision's float->uint8 rule (x * 255.999, truncated)."""
    f = rgb.astype(np.float32)
    f *= _f32(1 / 255)
    hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)  # H in degrees [0, 360)
    # One contiguous per-channel add; OpenCV's HSV->RGB takes H modulo 360 itself, so no wrap pass.
    cv2.add(hsv, ((factor % 1.0) * 360.0, 0.0, 0.0, 0.0), dst=hsv)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    out *= _f32(255.999)
    return _to_uint8(out)


def color_jitter(rgb: np.ndarray, p: JitterParams) -> np.ndarray:
    """Apply the four adjustments in ``p.order`` (torchvision's fn_idx convention)."""
    for fn in p.order:
        if fn == BRIGHTNESS and p.brightness is not None:
            rgb = adjust_brightness(rgb, p.brightness)
        elif fn == CONTRAST and p.contrast is not None:
            rgb = adjust_contrast(rgb, p.contrast)
        elif fn == SATURATION and p.saturation is not None:
            rgb = adjust_saturation(rgb, p.saturation)
        elif fn == HUE and p.hue is not None:
            rgb = adjust_hue(rgb, p.hue)
    return rgb


# ---------------------------------------------------------------- geometry

def crop_box(rng: np.random.Generator, h: int, w: int, cfg: AugmentConfig) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw) like torchvision ``RandomResizedCrop.get_params`` (10 tries, then the
    largest centred crop with the output aspect), with the aspect measured relative to the
    output size so the resize does not distort the scene on average."""
    out_aspect = cfg.size[1] / cfg.size[0]
    area = h * w
    log_r = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*cfg.scale)
        aspect = out_aspect * math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return centre_box(h, w, cfg.size)


def centre_box(h: int, w: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred crop with the aspect of ``size``."""
    out_aspect = size[1] / size[0]
    if w / h > out_aspect:
        ch, cw = h, max(1, int(round(h * out_aspect)))
    else:
        ch, cw = max(1, int(round(w / out_aspect))), w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


MAPS = ("rgb", "depth_mm", "seg")


def jpeg_reduction(box: tuple[int, int, int, int], size: tuple[int, int]) -> int:
    """The JPEG DCT downscale (1, 2, 4 or 8) to decode at: the largest r with the crop box at
    least r times the output in both axes (so the RGB is still shrunk, never enlarged)."""
    for r in (8, 4, 2):
        if box[2] >= r * size[0] and box[3] >= r * size[1]:
            return r
    return 1


def crop_resize_reduced(rgb: np.ndarray, reduce: int, box: tuple[int, int, int, int], size: tuple[int, int],
                        dst: np.ndarray | None = None) -> np.ndarray:
    """Crop + resize of an RGB image decoded at 1/``reduce`` to the full-resolution ``box``:
    one bilinear affine warp mapping each output pixel centre to exactly the scene point the
    full-resolution path samples (a reduced pixel j covers full pixels [r*j, r*j + r)), so
    depth, labels and intrinsics are unaffected by the reduction."""
    if all(v % reduce == 0 for v in box):  # the box falls on reduced pixels: a plain resize samples the same points
        y0, x0, ch, cw = (v // reduce for v in box)
        return resize_rgb(rgb[y0:y0 + ch, x0:x0 + cw], size, dst)
    y0, x0, ch, cw = box
    oh, ow = size
    sx, sy = cw / ow, ch / oh
    m = np.array([[sx / reduce, 0, (x0 + 0.5 * sx) / reduce - 0.5],
                  [0, sy / reduce, (y0 + 0.5 * sy) / reduce - 0.5]])
    return cv2.warpAffine(rgb, m, (ow, oh), dst=dst, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def crop_resize(sample: dict[str, Any], box: tuple[int, int, int, int], size: tuple[int, int],
                out: dict[str, np.ndarray] | None = None, rgb_reduce: int = 1,
                scale_depth: str = "none") -> dict[str, Any]:
    """Crop all maps to ``box`` and resize to ``size`` by the policy in :mod:`vortex_data.format.geometry`.

    out: optional destination arrays per map (e.g. rows of a batch), so no intermediate is
    allocated. A map absent from ``sample`` is skipped (the RGB of a ``decode="device"`` batch).
    rgb_reduce > 1: the RGB was decoded at that JPEG reduction (:func:`jpeg_reduction`).
    scale_depth="camera": a crop smaller than the evaluation transform's (the largest centred
    crop) zooms in by s (:func:`geometry.camera_zoom`); it is taken as the camera moving nearer
    along its axis, so depth is divided by s and the focal length stays the one the whole image
    has at this size. The base resize to the training size is not a zoom and scales nothing.
    """
    y0, x0, ch, cw = box
    out = out or {}
    res = dict(sample)
    if sample.get("rgb") is not None:
        rgb = sample["rgb"]
        res["rgb"] = (crop_resize_reduced(rgb, rgb_reduce, box, size, out.get("rgb")) if rgb_reduce > 1
                      else resize_rgb(rgb[y0:y0 + ch, x0:x0 + cw], size, out.get("rgb")))
    for name in ("depth_mm", "seg"):
        if sample.get(name) is not None:
            res[name] = resize_nearest(sample[name][y0:y0 + ch, x0:x0 + cw], size, out.get(name))
    k: Intrinsics = resize_intrinsics(sample["intrinsics"].cropped(x0, y0), (ch, cw), size)
    if scale_depth == "camera":
        h, w = sample["depth_mm"].shape[:2]  # full resolution even when the RGB was decoded reduced
        s = camera_zoom((ch, cw), centre_box(h, w, size)[2:])
        if s != 1.0:
            res["depth_mm"] = scale_depth_mm(res["depth_mm"], 1.0 / s, out.get("depth_mm"))
            k = Intrinsics(k.fx / s, k.fy / s, k.cx, k.cy)
    res["intrinsics"] = k
    return res


def hflip(sample: dict[str, Any], in_place: bool = False) -> dict[str, Any]:
    """Mirror all maps (``cv2.flip``; ``in_place`` overwrites the arrays, e.g. batch rows);
    the principal point moves to W-1-cx (pixel-centre convention)."""
    k: Intrinsics = sample["intrinsics"]
    res = dict(sample)
    w = 0
    for name in MAPS:
        if sample.get(name) is not None:
            a = sample[name]
            w = a.shape[1]
            res[name] = cv2.flip(a, 1, dst=a) if in_place else cv2.flip(a, 1)
    res["intrinsics"] = Intrinsics(k.fx, k.fy, w - 1 - k.cx, k.cy)
    return res


def intrinsics_of(meta: dict[str, Any]) -> Intrinsics:
    k = meta["intrinsics"]
    return Intrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]))


# ---------------------------------------------------------------- entry points

@dataclass(frozen=True)
class Draw:
    """Everything random about one sample's augmentation (jitter None: no colour jitter)."""

    box: tuple[int, int, int, int]
    flip: bool
    jitter: JitterParams | None


def draw_train(key: str, h: int, w: int, cfg: AugmentConfig, seed: int, epoch: int, repeat: int = 0) -> Draw:
    """The V5 draws for an (h, w) sample, a pure function of (seed, epoch, key, repeat), in the
    fixed order crop box, flip, jitter (so every phase split sees the same stream)."""
    rng = rng_for(seed, "augment", epoch, key, repeat)
    box = crop_box(rng, h, w, cfg)
    flip = bool(rng.random() < cfg.flip_p)
    return Draw(box, flip, jitter_params(rng, cfg))


def draw_eval(h: int, w: int, cfg: AugmentConfig) -> Draw:
    """Validation: deterministic centre crop to the output aspect, no flip, no jitter."""
    return Draw(centre_box(h, w, cfg.size), False, None)


def apply_geometry(sample: dict[str, Any], draw: Draw, size: tuple[int, int],
                   out: dict[str, np.ndarray] | None = None, rgb_reduce: int = 1,
                   scale_depth: str = "none") -> dict[str, Any]:
    """Crop, resize and flip of all maps (the CPU phase), optionally into ``out`` arrays."""
    res = crop_resize(sample, draw.box, size, out, rgb_reduce, scale_depth)
    if draw.flip:
        res = hflip(res, in_place=out is not None)
    return res


def augment_train(sample: dict[str, Any], cfg: AugmentConfig, seed: int, epoch: int, repeat: int = 0) -> dict[str, Any]:
    """V5 training augmentation of a decoded sample (``rgb``, ``depth_mm``, ``seg``,
    ``intrinsics``, ``key``). Determined by (seed, epoch, key, repeat) only."""
    h, w = sample["rgb"].shape[:2]
    draw = draw_train(sample["key"], h, w, cfg, seed, epoch, repeat)
    out = apply_geometry(sample, draw, cfg.size, scale_depth=cfg.scale_depth)
    out["rgb"] = color_jitter(np.ascontiguousarray(out["rgb"]), draw.jitter)
    return out


def augment_eval(sample: dict[str, Any], cfg: AugmentConfig) -> dict[str, Any]:
    """Validation: deterministic centre crop to the output aspect, then resize."""
    h, w = sample["rgb"].shape[:2]
    return apply_geometry(sample, draw_eval(h, w, cfg), cfg.size)
