"""The report's gallery: a few frames of every source, drawn RGB | depth | labels.

Per source: the frame with the least valid depth (from the index), the frame with the largest
share of depth beyond ``FAR_M`` (counted by the statistics' one pass over the shards) and a
few frames drawn at random with a seed, so the same inputs always give the same gallery.
:func:`select` runs with the statistics and stores its choice (keys, shards, figures) in
stats.json; :func:`render` reads just those samples back and draws them. Images are JPEG
strips embedded as data URIs, re-encoded smaller until each source fits ``BUDGET_PER_SOURCE``,
so the report stays one file of bounded size (<= 4 MB of gallery for 8 sources). Depth is drawn
on one scale for the whole report, taken from the data (:func:`report_scale`).
"""

from __future__ import annotations

import html
import zlib
from typing import Any

import numpy as np

from ..format.manifest import load_manifest
from ..format.schema import CLASS_NAMES, DEPTH_SCALE_MM, decode_sample
from ..stream.shard_reader import ShardReader
from ..views import PALETTE, SCALE_PERCENTILES, colour_bar_png, data_uri, depth_scale, encode_jpeg, triptych
from .scan import FAR_M

RANDOM_FRAMES = 3
STRIP_HEIGHT = 180
BUDGET_PER_SOURCE = 512 * 1024
"""Bytes of base64 image data per source: 8 sources stay within 4 MB."""
_QUALITIES = (80, 65, 50, 35)


def select(units: list[Any], rows: dict[str, dict[str, np.ndarray]], far: dict[str, np.ndarray],
           seed: int = 0) -> list[dict[str, Any]]:
    """The frames to show per source (JSON-able): least valid depth, most far depth, random ones.

    rows: the index columns per source; far: each row's share of valid depth beyond FAR_M
    (from the statistics' pass over the shards, :mod:`scan`)."""
    out = []
    for u in units:
        r = rows[u.name]
        n = len(r["key"])
        if not n:
            out.append({"name": u.name, "frames": []})
            continue
        base = load_manifest(u.manifest).path.parent
        vf = np.asarray(r["valid_fraction"], np.float64)
        fs = far[u.name]
        picks: list[tuple[int, str]] = [(int(np.argmin(vf)), "least valid depth")]
        i_far = int(np.argmax(fs))
        if fs[i_far] > 0 and i_far != picks[0][0]:
            picks.append((i_far, f"most depth beyond {FAR_M:g} m"))
        # Seeded by (seed, source name), so adding a source does not change another's frames.
        rng = np.random.default_rng([seed, zlib.crc32(u.name.encode())])
        rest = np.delete(np.arange(n), sorted({p for p, _ in picks}))
        picks += [(int(i), "random") for i in sorted(rng.choice(rest, min(RANDOM_FRAMES, len(rest)), replace=False))]
        out.append({"name": u.name, "frames": [
            {"key": r["key"][i].decode(), "shard": str((base / r["shard"][i].decode()).resolve()), "why": why,
             "valid_fraction": float(vf[i]), "far_share": float(fs[i]), "has_seg": bool(r["has_seg"][i])}
            for i, why in picks]})
    return out


def report_scale(sources: list[dict[str, Any]]) -> tuple[float, float]:
    """The report's one depth scale (metres): from the lowest 1st to the highest 99th percentile
    of the sources' valid depth (stats.json's exact ``depth_percentiles_m``), so a set of rooms
    gets the whole colour map and a source far from the others still stays on it."""
    lo_key, hi_key = (f"p{q}" for q in SCALE_PERCENTILES)
    return depth_scale([x["depth_percentiles_m"].get(lo_key) for x in sources],
                       [x["depth_percentiles_m"].get(hi_key) for x in sources])


def _strips(frames: list[dict[str, Any]], scale: tuple[float, float]) -> list[np.ndarray]:
    reader = ShardReader()
    by_shard: dict[str, list[str]] = {}
    for f in frames:
        by_shard.setdefault(f["shard"], []).append(f["key"])
    samples = {}
    try:
        for shard, keys in by_shard.items():
            for key, members in reader.read_group(shard, keys).items():
                samples[key] = decode_sample(members, key)
    finally:
        reader.close()
    out = []
    for f in frames:
        s = samples[f["key"]]
        out.append(triptych(s["rgb"], s["depth_mm"].astype(np.float32) / DEPTH_SCALE_MM, s["seg"], STRIP_HEIGHT,
                            scale=scale))
    return out


def _fit(strips: list[np.ndarray], budget: int) -> tuple[list[bytes], int]:
    """JPEG bytes of the strips, at the best quality (then scale) whose base64 total fits budget."""
    scale = 1.0
    while True:
        for q in _QUALITIES:
            imgs = [s if scale == 1.0 else _scaled(s, scale) for s in strips]
            data = [encode_jpeg(i, q) for i in imgs]
            if sum(4 * -(-len(d) // 3) for d in data) <= budget:
                return data, q
        scale *= 0.75


def _scaled(img: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _caption(f: dict[str, Any]) -> str:
    return (f"{f['key']} — {f['why']}: valid depth {f['valid_fraction']:.0%}, "
            f"beyond {FAR_M:g} m {f['far_share']:.0%}" + ("" if f.get("has_seg", True) else "; no labels"))


def render(gallery: list[dict[str, Any]], sources: list[dict[str, Any]]) -> str:
    """The gallery section of report.html (images embedded); ``sources``: stats.json's, whose
    depth percentiles set the depth scale (:func:`report_scale`)."""
    scale = report_scale([x for x in sources if x["name"] in {g["name"] for g in gallery}])
    lo_q, hi_q = SCALE_PERCENTILES
    note = f", {scale[0]:.3g}-{scale[1]:.3g} m: the sources' {lo_q}st-{hi_q}th percentiles"
    legend = " ".join(f'<span class="sw" style="background:rgb({c[0]},{c[1]},{c[2]})"></span>{html.escape(n)}'
                      for n, c in zip(CLASS_NAMES, PALETTE.tolist()))
    parts = ["<h2>Gallery</h2>",
             "<p>Per source: the frame with the least valid depth, the one with the most depth beyond "
             f"{FAR_M:g} m, and {RANDOM_FRAMES} frames drawn at random (seeded). Each row: RGB | depth | labels "
             f"over RGB. Depth uses one scale for every source, {scale[0]:.3g} to {scale[1]:.3g} m (log), from the "
             f"lowest {lo_q}st to the highest {hi_q}th percentile of the sources' valid depth; depth beyond it "
             "takes the end colours:</p>",
             f'<img class="gallery" alt="depth colour scale" src="{data_uri(colour_bar_png(scale, note), "image/png")}">',
             f'<p class="legend">Labels: {legend}; ignore (255): not coloured</p>']
    for src in gallery:
        parts.append(f"<h3>{html.escape(src['name'])}</h3>")
        if not src["frames"]:
            parts.append("<p>no frames</p>")
            continue
        data, q = _fit(_strips(src["frames"], scale), BUDGET_PER_SOURCE)
        for f, jpg in zip(src["frames"], data):
            cap = html.escape(_caption(f))
            parts.append(f'<div class="frame"><img class="gallery" alt="{cap}" src="{data_uri(jpg, "image/jpeg")}">'
                         f'<p class="cap">{cap}</p></div>')
        if q != _QUALITIES[0]:
            parts.append(f"<p>(JPEG quality {q} to stay within {BUDGET_PER_SOURCE // 1024} KB for this source)</p>")
    return '<section id="gallery">\n' + "\n".join(parts) + "\n</section>"
