"""How frames are drawn for people: one depth colour scale, the label palette, depth edges.

Used by the stats report's gallery, `vortex-data show` and `inspect shard --dump`, so every
picture of the data uses the same colours: depth on one metric scale for all sources (a frame
that looks brighter *is* farther, whatever dataset it came from), invalid depth in a colour the
depth map never uses, and one colour per class.
"""

from __future__ import annotations

import base64
import functools
import io

import cv2
import numpy as np

from .format.schema import CLASS_NAMES, IGNORE_INDEX

DEPTH_RANGE_M = (0.25, 40.0)
"""The one depth scale (metres, logarithmic): indoor rooms (0.5-10 m) get most of the colours,
DIODE's far indoor halls and outdoor depths still differ from each other up to 40 m."""
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


def depth_colours(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) depth in metres (0 = invalid) -> (H, W, 3) uint8 RGB on the fixed log scale."""
    d = np.asarray(depth_m, np.float32)
    valid = d > 0
    lo, hi = np.log(DEPTH_RANGE_M[0]), np.log(DEPTH_RANGE_M[1])
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
             edges: bool = False) -> np.ndarray:
    """RGB | depth colours | labels over RGB, side by side at ``height`` rows, white gaps."""
    photo = draw_edges(rgb, depth_m) if edges else rgb
    panels = [fit_height(photo, height, nearest=edges), fit_height(depth_colours(depth_m), height, nearest=True),
              fit_height(label_overlay(rgb, seg), height)]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    return np.concatenate([panels[0], spacer, panels[1], spacer, panels[2]], axis=1)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} {img.dtype} image as JPEG (quality {quality})")
    return buf.tobytes()


def colour_bar_png(width_in: float = 6.0) -> bytes:
    """The depth scale as a horizontal colour bar with metre ticks, invalid swatch included."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width_in, 0.75))
    sm = plt.cm.ScalarMappable(norm=LogNorm(*DEPTH_RANGE_M), cmap=DEPTH_CMAP)
    bar = fig.colorbar(sm, cax=ax, orientation="horizontal")
    ticks = [t for t in (0.25, 0.5, 1, 2, 3, 5, 10, 20, 40) if DEPTH_RANGE_M[0] <= t <= DEPTH_RANGE_M[1]]
    bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    bar.set_label("depth (m, log scale); magenta = invalid (0)")
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


def colour_bar_rgb(width: int, height: int = 22) -> np.ndarray:
    """The depth scale drawn with OpenCV (for PNG outputs): a ramp with metre ticks."""
    bar_w = width - 150
    t = np.linspace(0, 1, bar_w)
    out = np.full((height + 14, width, 3), 255, np.uint8)
    out[:height - 8, :bar_w] = depth_lut()[np.rint(t * 255).astype(np.uint8)][None]
    lo, hi = np.log(DEPTH_RANGE_M[0]), np.log(DEPTH_RANGE_M[1])
    for m in (0.25, 0.5, 1, 2, 5, 10, 20, DEPTH_RANGE_M[1]):
        x = int(round((np.log(m) - lo) / (hi - lo) * (bar_w - 1)))
        out[height - 8:height - 4, x] = 0
        cv2.putText(out, f"{m:g} m" if m == DEPTH_RANGE_M[1] else f"{m:g}", (max(0, x - 8), height + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
    out[:height - 8, bar_w + 40:bar_w + 54] = INVALID_RGB
    cv2.putText(out, "invalid", (bar_w + 58, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    return out
