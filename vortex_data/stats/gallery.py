"""The report's gallery: a few frames of every source, drawn RGB | depth | labels.

Per source: the frame with the least valid depth (from the index), the frame with the largest
share of depth beyond ``FAR_M`` (a depth-only pass over the shards, one worker per shard) and a
few frames drawn at random with a seed, so the same inputs always give the same gallery.
:func:`select` runs with the statistics and stores its choice (keys, shards, figures) in
stats.json; :func:`render` reads just those samples back and draws them. Images are JPEG
strips embedded as data URIs, re-encoded smaller until each source fits ``BUDGET_PER_SOURCE``,
so the report stays one file of bounded size (<= 4 MB of gallery for 8 sources).
"""

from __future__ import annotations

import html
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ..format.manifest import load_manifest
from ..format.schema import CLASS_NAMES, DEPTH_SCALE_MM, SchemaError, decode_sample
from ..format.tar_index import TAR_ERRORS, iter_samples
from ..pool import die_with_parent
from ..stream.shard_reader import ShardReader
from ..views import PALETTE, colour_bar_png, data_uri, encode_jpeg, triptych

FAR_M = 10.0
"""'Far' depth: beyond the trainer's max_depth (recipe v6), so those pixels teach it nothing."""
RANDOM_FRAMES = 3
STRIP_HEIGHT = 180
BUDGET_PER_SOURCE = 512 * 1024
"""Bytes of base64 image data per source: 8 sources stay within 4 MB."""
_QUALITIES = (80, 65, 50, 35)


def _far_shares(shard: str, keys: frozenset[str]) -> dict[str, float]:
    """Share of valid pixels beyond FAR_M for the listed samples of one shard (depth decoded only)."""
    out = {}
    far_mm = FAR_M * DEPTH_SCALE_MM
    try:
        for key, members in iter_samples(shard):
            if key in keys:
                d = decode_sample(members, key, with_rgb=False, fill_seg=False)["depth_mm"]
                valid = int(np.count_nonzero(d))
                out[key] = float(np.count_nonzero(d > far_mm)) / valid if valid else 0.0
    except (*TAR_ERRORS, OSError, ValueError) as e:
        raise SchemaError(f"{shard}: {e}") from None
    return out


def far_shares(wanted: dict[str, set[str]], workers: int = 1) -> dict[str, float]:
    """key -> far-depth share for every key of every shard in ``wanted`` (shard -> keys)."""
    jobs = [(s, frozenset(k)) for s, k in wanted.items()]
    out: dict[str, float] = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            out.update(_far_shares(*job))
        return out
    with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        for res in pool.map(_far_shares, *zip(*jobs)):
            out.update(res)
    return out


def select(units: list[Any], rows: dict[str, dict[str, np.ndarray]], workers: int = 1,
           seed: int = 0) -> list[dict[str, Any]]:
    """The frames to show per source (JSON-able): least valid depth, most far depth, random ones."""
    shard_of: dict[str, dict[str, str]] = {}
    wanted: dict[str, set[str]] = {}
    for u in units:
        base = load_manifest(u.manifest).path.parent
        r = rows[u.name]
        shard_of[u.name] = {k: str((base / s).resolve()) for k, s in zip(r["key"], r["shard"])}
        for k, s in shard_of[u.name].items():
            wanted.setdefault(s, set()).add(k)
    far = far_shares(wanted, workers)
    out = []
    for u in units:
        r = rows[u.name]
        keys = [str(k) for k in r["key"]]
        if not keys:
            out.append({"name": u.name, "frames": []})
            continue
        vf = np.asarray(r["valid_fraction"], np.float64)
        fs = np.array([far[k] for k in keys])
        picks: list[tuple[int, str]] = [(int(np.argmin(vf)), "least valid depth")]
        i_far = int(np.argmax(fs))
        if fs[i_far] > 0 and i_far != picks[0][0]:
            picks.append((i_far, f"most depth beyond {FAR_M:g} m"))
        # Seeded by (seed, source name), so adding a source does not change another's frames.
        rng = np.random.default_rng([seed, zlib.crc32(u.name.encode())])
        rest = [i for i in range(len(keys)) if i not in {p for p, _ in picks}]
        picks += [(int(i), "random") for i in sorted(rng.choice(rest, min(RANDOM_FRAMES, len(rest)), replace=False))]
        out.append({"name": u.name, "frames": [
            {"key": keys[i], "shard": shard_of[u.name][keys[i]], "why": why,
             "valid_fraction": float(vf[i]), "far_share": float(fs[i]), "has_seg": bool(r["has_seg"][i])}
            for i, why in picks]})
    return out


def _strips(frames: list[dict[str, Any]]) -> list[np.ndarray]:
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
        out.append(triptych(s["rgb"], s["depth_mm"].astype(np.float32) / DEPTH_SCALE_MM, s["seg"], STRIP_HEIGHT))
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


def render(gallery: list[dict[str, Any]]) -> str:
    """The gallery section of report.html (images embedded)."""
    legend = " ".join(f'<span class="sw" style="background:rgb({c[0]},{c[1]},{c[2]})"></span>{html.escape(n)}'
                      for n, c in zip(CLASS_NAMES, PALETTE.tolist()))
    parts = ["<h2>Gallery</h2>",
             "<p>Per source: the frame with the least valid depth, the one with the most depth beyond "
             f"{FAR_M:g} m, and {RANDOM_FRAMES} frames drawn at random (seeded). Each row: RGB | depth | labels "
             "over RGB. Depth uses one scale for every source:</p>",
             f'<img class="gallery" alt="depth colour scale" src="{data_uri(colour_bar_png(), "image/png")}">',
             f'<p class="legend">Labels: {legend}; ignore (255): not coloured</p>']
    for src in gallery:
        parts.append(f"<h3>{html.escape(src['name'])}</h3>")
        if not src["frames"]:
            parts.append("<p>no frames</p>")
            continue
        data, q = _fit(_strips(src["frames"]), BUDGET_PER_SOURCE)
        for f, jpg in zip(src["frames"], data):
            cap = html.escape(_caption(f))
            parts.append(f'<div class="frame"><img class="gallery" alt="{cap}" src="{data_uri(jpg, "image/jpeg")}">'
                         f'<p class="cap">{cap}</p></div>')
        if q != _QUALITIES[0]:
            parts.append(f"<p>(JPEG quality {q} to stay within {BUDGET_PER_SOURCE // 1024} KB for this source)</p>")
    return '<section id="gallery">\n' + "\n".join(parts) + "\n</section>"
