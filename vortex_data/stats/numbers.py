"""Pure functions turning accumulated counts into the numbers `vortex-data stats` reports."""

from __future__ import annotations

import numpy as np

LOG_BINS_PER_DECADE = 20
"""Depth plot/JSON histogram: 20 log-spaced bins per decade (each ~12 % wide) from 1 mm to 65.536 m."""
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def log_depth_edges_mm() -> np.ndarray:
    """Bin edges in mm for the log-spaced depth histogram (1 mm ... 65536 mm)."""
    decades = np.log10(65536.0)
    n = int(np.ceil(decades * LOG_BINS_PER_DECADE))
    return np.geomspace(1.0, 65536.0, n + 1)


def log_histogram(depth_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-binning of a per-mm histogram (index = stored mm, 0 = invalid) into log bins.

    Stored depths are integers, so assigning each integer value to its bin loses nothing.
    Returns (edges in metres, counts).
    """
    edges = log_depth_edges_mm()
    values = np.arange(1, len(depth_counts))
    which = np.searchsorted(edges, values, side="right") - 1
    counts = np.bincount(which, weights=depth_counts[1:], minlength=len(edges) - 1)
    return edges / 1000.0, counts[: len(edges) - 1].astype(np.int64)


def depth_percentiles_m(depth_counts: np.ndarray, qs: tuple[float, ...] = PERCENTILES) -> dict[str, float | None]:
    """Percentiles of valid depth (metres) from a per-mm histogram.

    Definition: the smallest stored value v with (pixels <= v) >= q % of valid pixels (numpy's
    'inverted_cdf'), exact because the histogram has one bin per stored millimetre.
    """
    valid = depth_counts[1:]
    total = float(valid.sum())
    if total == 0:
        return {f"p{q:g}": None for q in qs}
    cum = np.cumsum(valid)
    out = {}
    for q in qs:
        idx = int(np.searchsorted(cum, q / 100.0 * total, side="left"))
        out[f"p{q:g}"] = (idx + 1) / 1000.0
    return out


def rgb_mean_std(pixels: int, s: np.ndarray, s2: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std in [0, 255] from exact integer sums of v and v^2."""
    if pixels == 0:
        return [float("nan")] * 3, [float("nan")] * 3
    n = float(pixels)
    mean = s.astype(np.float64) / n
    # Var = (N*S2 - S^2) / N^2 computed on Python ints, so no cancellation error creeps in.
    var = [(pixels * int(b) - int(a) ** 2) / pixels ** 2 for a, b in zip(s.tolist(), s2.tolist())]
    return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()


def class_frequency(class_pixels: np.ndarray) -> np.ndarray:
    """Share of labelled (non-ignore) pixels per class; zeros when nothing is labelled."""
    total = class_pixels.sum()
    return class_pixels / total if total else np.zeros_like(class_pixels, dtype=np.float64)


def median_frequency_weights(per_image_class_pixels: np.ndarray, image_weights: np.ndarray | None = None
                             ) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus, ICCV 2015): w_c = median(f) / f_c.

    f_c = pixels of class c / labelled pixels of the images in which c appears. A class that
    never appears gets weight 0 (it cannot be learned from this data anyway) and is left out
    of the median. ``image_weights`` (one per image) weight both sums, for mixtures.
    """
    px = np.asarray(per_image_class_pixels, dtype=np.float64)
    if image_weights is not None and px.ndim == 2:
        px = px * np.asarray(image_weights, dtype=np.float64)[:, None]
    if px.ndim != 2 or px.size == 0:
        return np.zeros(px.shape[-1] if px.ndim == 2 else 0)
    present = px > 0
    image_totals = px.sum(axis=1, keepdims=True)
    denom = (present * image_totals).sum(axis=0)
    freq = np.divide(px.sum(axis=0), denom, out=np.zeros(px.shape[1]), where=denom > 0)
    seen = freq > 0
    if not seen.any():
        return np.zeros(px.shape[1])
    med = np.median(freq[seen])
    return np.divide(med, freq, out=np.zeros_like(freq), where=seen)


def summary(values: np.ndarray) -> dict[str, float | None]:
    """min / median / max / mean of a 1-D array (None for an empty one)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"min": None, "median": None, "max": None, "mean": None}
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()), "mean": float(v.mean())}
