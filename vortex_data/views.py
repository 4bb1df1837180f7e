"""How frames are drawn for people: one depth colour scale, the label palette, depth edges.

Used by the stats report's gallery, `vortex-data show` and `inspect shard --dump`, so every
picture of the data uses the same colours: depth on one metric scale for all the frames of a
picture (a frame that looks brighter *is* farther, whatever dataset it came from), invalid depth
in a colour the depth map never uses, and one colour per class. The report and the contact
sheet take their scale from the data they show (:func:`depth_scale`), printed on their colour
bar; a scale fixed for 0.25-40 m would draw a room of 2-7 m in nearly one colour.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any

import cv2
import numpy as np

from .format.schema import CLASS_NAMES, IGNORE_INDEX

DEPTH_RANGE_M = (0.25, 40.0)
"""The default depth scale (metres, logarithmic), for a picture with no data-derived scale
(`inspect shard --dump`, where frames are compared across sources): indoor rooms and DIODE's
outdoor depths both fit."""
SCALE_PERCENTILES = (1, 99)
"""A data-derived scale spans these percentiles of the valid depth shown: a few stray pixels
(a window, a sensor spike) do not stretch it; depth beyond it takes the end colours."""
TICK_LADDERS = ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9))
"""Round tick values per decade, coarse to fine; a colour bar takes the first giving 3 ticks."""
DEPTH_CMAP = "viridis"
"""Perceptually uniform and colour-blind safe: dark = near, yellow = far."""
INVALID_RGB = (255, 0, 255)
"""Depth 0 (invalid): magenta, a colour viridis never produces."""
EDGE_RGB = (255, 40, 40)
"""Depth edges drawn over the RGB (contact sheet): red, to stand out on photos."""
PALETTE = np.array([[128, 64, 128], [70, 70, 70], [220, 220, 0], [250, 170, 30], [0, 130, 180], [220, 20, 60]],
                   np.uint8)
"""One RGB colour per class (CLASS_NAMES order); 255 = ignore is left transparent in overlays."""
LABEL_ALPHA = 0.55



@functools.cache
def _pyplot():
    # Imported on first use: `inspect` (used by build-shards) needs the palette, not matplotlib.
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


@functools.cache
def depth_lut() -> np.ndarray:
    """(256, 3) uint8: the colour map sampled at 256 steps of the log depth scale."""
    return (_pyplot().get_cmap(DEPTH_CMAP)(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def depth_scale(lows: list[float | None], highs: list[float | None]) -> tuple[float, float]:
    """One log scale (metres) for a picture: from the lowest of ``lows`` to the highest of
    ``highs`` (the :data:`SCALE_PERCENTILES` of each source or of the pixels shown; None = no
    valid depth), rounded outward to 2 significant digits; :data:`DEPTH_RANGE_M` without data."""
    lo = min((v for v in lows if v is not None and v > 0), default=None)
    hi = max((v for v in highs if v is not None and v > 0), default=None)
    if lo is None or hi is None:
        return DEPTH_RANGE_M
    lo, hi = float(_round_sig(lo, np.floor)), float(_round_sig(hi, np.ceil))
    return (lo, hi) if hi > lo * 1.05 else (lo / 1.25, lo * 1.25)  # a flat wall still gets a visible ramp


def pixel_scale(depths: list[np.ndarray]) -> tuple[float, float]:
    """:func:`depth_scale` of the valid pixels of these depth maps (metres, 0 = invalid)."""
    valid = np.concatenate([np.asarray(d, np.float32).ravel() for d in depths]) if depths else np.zeros(0)
    valid = valid[valid > 0]
    if not valid.size:
        return DEPTH_RANGE_M
    lo, hi = np.percentile(valid, SCALE_PERCENTILES)
    return depth_scale([float(lo)], [float(hi)])


def _round_sig(v: float, how: Any) -> float:
    e = 10.0 ** (np.floor(np.log10(v)) - 1)
    return float(f"{how(v / e) * e:.2g}")


def depth_colours(depth_m: np.ndarray, scale: tuple[float, float] = DEPTH_RANGE_M) -> np.ndarray:
    """(H, W) depth in metres (0 = invalid) -> (H, W, 3) uint8 RGB on the log ``scale`` (metres;
    depth beyond it takes its end colours)."""
    d = np.asarray(depth_m, np.float32)
    valid = d > 0
    lo, hi = np.log(scale[0]), np.log(scale[1])
    t = (np.log(np.where(valid, d, 1.0)) - lo) / (hi - lo)
    out = depth_lut()[np.clip(np.rint(t * 255), 0, 255).astype(np.uint8)]
    out[~valid] = INVALID_RGB
    return out


def label_overlay(rgb: np.ndarray, seg: np.ndarray, alpha: float = LABEL_ALPHA) -> np.ndarray:
    """Class colours blended over the RGB; ignore (255) pixels keep the plain RGB."""
    out = rgb.copy()
    known = seg != IGNORE_INDEX
    if known.any():
        blend = (1 - alpha) * rgb[known].astype(np.float32) + alpha * PALETTE[seg[known]].astype(np.float32)
        out[known] = np.rint(blend).astype(np.uint8)
    return out


def label_colours(seg: np.ndarray) -> np.ndarray:
    """Class colours alone, ignore black (for dumps of the label map itself)."""
    out = np.zeros((*seg.shape, 3), np.uint8)
    known = seg != IGNORE_INDEX
    out[known] = PALETTE[seg[known]]
    return out


def depth_edges(depth_m: np.ndarray, rel_jump: float = 0.1) -> np.ndarray:
    """(H, W) bool: pixels where depth jumps by more than ``rel_jump`` (relative) to a neighbour,
    both valid. These are object boundaries, which must coincide with the RGB's edges."""
    d = np.asarray(depth_m, np.float32)
    edge = np.zeros(d.shape, bool)
    for a, b in ((d[:, 1:], d[:, :-1]), (d[1:, :], d[:-1, :])):
        jump = (a > 0) & (b > 0) & (np.abs(a - b) > rel_jump * np.minimum(a, b))
        if a.shape[1] != d.shape[1]:
            edge[:, 1:] |= jump
        else:
            edge[1:, :] |= jump
    return edge


def draw_edges(rgb: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[depth_edges(depth_m)] = EDGE_RGB
    return out


def fit_height(img: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    """Resize to ``height`` rows keeping the aspect ratio (nearest for maps, area for photos)."""
    h, w = img.shape[:2]
    width = max(1, round(w * height / h))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def triptych(rgb: np.ndarray, depth_m: np.ndarray, seg: np.ndarray, height: int, gap: int = 4,
             edges: bool = False, scale: tuple[float, float] = DEPTH_RANGE_M) -> np.ndarray:
    """RGB | depth colours (on ``scale``) | labels over RGB, side by side at ``height`` rows, white gaps."""
    photo = draw_edges(rgb, depth_m) if edges else rgb
    panels = [fit_height(photo, height, nearest=edges),
              fit_height(depth_colours(depth_m, scale), height, nearest=True),
              fit_height(label_overlay(rgb, seg), height)]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    return np.concatenate([panels[0], spacer, panels[1], spacer, panels[2]], axis=1)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} {img.dtype} image as JPEG (quality {quality})")
    return buf.tobytes()


def scale_ticks(scale: tuple[float, float], most: int = 8) -> list[float]:
    """Metre ticks for a colour bar: both ends (so the scale is printed on it) and round values
    between them (1-2-5, or finer steps for a narrow scale), at most ``most``, none crowding an end."""
    lo, hi = scale
    margin = (hi / lo) ** (1 / (1.5 * most))
    inner: list[float] = []
    for ladder in TICK_LADDERS:
        inner = [float(f"{m * 10.0 ** k:.3g}") for k in range(-2, 4) for m in ladder
                 if lo * margin <= m * 10.0 ** k <= hi / margin]
        if len(inner) >= 3 or len(inner) > most - 2:
            break
    return [lo, *inner[::max(1, -(-len(inner) // (most - 2)))], hi]


def colour_bar_png(scale: tuple[float, float] = DEPTH_RANGE_M, note: str = "", width_in: float = 6.0) -> bytes:
    """The depth ``scale`` as a horizontal colour bar with metre ticks (its ends printed), invalid
    swatch included; ``note`` says where the scale comes from."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width_in, 0.75))
    sm = plt.cm.ScalarMappable(norm=LogNorm(*scale), cmap=DEPTH_CMAP)
    bar = fig.colorbar(sm, cax=ax, orientation="horizontal")
    ticks = scale_ticks(scale)
    bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    bar.minorticks_off()
    bar.set_label(f"depth (m, log scale{note}); magenta = invalid (0)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def legend_rgb(height: int = 22) -> np.ndarray:
    """A one-line image legend of the classes (swatch + name each), for PNG outputs."""
    cells = []
    for name, colour in zip(CLASS_NAMES, PALETTE):
        cell = np.full((height, 14 + 9 * len(name) + 14, 3), 255, np.uint8)
        cell[4:height - 4, 2:14] = colour
        cv2.putText(cell, name, (18, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(cell)
    return np.concatenate(cells, axis=1)


def colour_bar_rgb(width: int, height: int = 22, scale: tuple[float, float] = DEPTH_RANGE_M) -> np.ndarray:
    """The depth ``scale`` drawn with OpenCV (for PNG outputs): a ramp with metre ticks, its ends printed."""
    bar_w = width - 150
    t = np.linspace(0, 1, bar_w)
    out = np.full((height + 14, width, 3), 255, np.uint8)
    out[:height - 8, :bar_w] = depth_lut()[np.rint(t * 255).astype(np.uint8)][None]
    lo, hi = np.log(scale[0]), np.log(scale[1])
    ticks = scale_ticks(scale)
    for m in ticks:
        x = int(round((np.log(m) - lo) / (hi - lo) * (bar_w - 1)))
        out[height - 8:height - 4, x] = 0
        text = f"{m:.3g} m" if m == ticks[-1] else f"{m:.3g}"
        cv2.putText(out, text, (min(max(0, x - 8), bar_w + 34 - 9 * len(text)), height + 8),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    out[:height - 8, bar_w + 40:bar_w + 54] = INVALID_RGB
    cv2.putText(out, "invalid", (bar_w + 58, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    return out
