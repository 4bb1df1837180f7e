"""`vortex-data show`: a contact sheet of training batches exactly as the trainer receives them.

The batches come from ``make_loader`` with ``photometric="device"`` and go through
``loader.finish`` (colour jitter and normalisation), as in the training loop; only then is the
RGB un-normalised (x * std + mean) for display. Each tile: RGB with depth edges drawn in red
(a depth edge off the RGB's edge is a misalignment) | depth on one metric colour scale for the
sheet (the 1st-99th percentile of the depth drawn, printed on its colour bar) | labels over the
RGB; under it the key, the source and whether it has labels.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import InputError
from .temporaries import output_file
from .views import DEPTH_RANGE_M, colour_bar_rgb, legend_rgb, pixel_scale, triptych

SHEET_WIDTH = 2000
"""Tiles per row: as many as fit in this many pixels (at least one)."""
CAPTION_H = 36
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_manifest(path: str) -> bool:
    """A manifest JSON (has 'shards'), as opposed to a mixture file or recipe name."""
    p = Path(path)
    if p.suffix != ".json" or not p.is_file():
        return False
    try:
        return "shards" in json.loads(p.read_text())
    except (OSError, ValueError):
        return False


def _caption(width: int, lines: list[str]) -> np.ndarray:
    out = np.full((CAPTION_H, width, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(out, text, (2, 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def tiles_of_batch(batch: dict[str, Any], names: list[str], mean: tuple[float, ...], std: tuple[float, ...],
                   batch_no: int, scale: tuple[float, float] = DEPTH_RANGE_M) -> list[np.ndarray]:
    """One finished batch -> one tile per sample (triptych with depth on ``scale`` + caption)."""
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    rgb = batch["rgb"].detach().float().cpu().numpy() * s + m
    rgb = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    depth = batch["depth"].detach().float().cpu().numpy()[:, 0]
    seg = batch["seg"].detach().cpu().numpy().astype(np.uint8)  # 255 stays 255 (ignore)
    tiles = []
    for i in range(rgb.shape[0]):
        pic = triptych(np.ascontiguousarray(rgb[i]), depth[i], seg[i], rgb.shape[1], edges=True, scale=scale)
        source = names[int(batch["dataset"][i])]
        labelled = "labels" if bool(batch["has_seg"][i]) else "no labels"
        pad = " (padding)" if "is_pad" in batch and bool(batch["is_pad"][i]) else ""
        tiles.append(np.concatenate([pic, _caption(pic.shape[1], [
            str(batch["key"][i]), f"source {source}, {labelled}, batch {batch_no} #{i}{pad}"])], axis=0))
    return tiles


def contact_sheet(tiles: list[np.ndarray], title: str, scale: tuple[float, float] = DEPTH_RANGE_M) -> np.ndarray:
    """Tiles in rows under a header (title, class legend, the depth ``scale``'s colour bar)."""
    th, tw = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    cols = max(1, min(len(tiles), SHEET_WIDTH // (tw + 8)))
    rows = -(-len(tiles) // cols)
    legend, bar = legend_rgb(), colour_bar_rgb(560, scale=scale)
    gap = np.full((legend.shape[0], 24, 3), 255, np.uint8)
    keys = np.concatenate([legend, gap, bar[:legend.shape[0]]], axis=1)
    width = max(cols * (tw + 8), keys.shape[1])
    grid = np.full((rows * (th + 8), width, 3), 255, np.uint8)
    for n, t in enumerate(tiles):
        y, x = (n // cols) * (th + 8), (n % cols) * (tw + 8)
        grid[y:y + t.shape[0], x:x + t.shape[1]] = t
    head = np.full((28 + bar.shape[0], width, 3), 255, np.uint8)
    cv2.putText(head, title, (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    head[28:28 + legend.shape[0], :keys.shape[1]] = keys
    head[28 + legend.shape[0]:, legend.shape[1] + 24:legend.shape[1] + 24 + bar.shape[1]] = bar[legend.shape[0]:]
    return np.concatenate([head, grid], axis=0)


def show(target: str, out: Path, split: str = "train", batches: int = 2, batch_size: int = 8,
         size: tuple[int, int] = (240, 320), augment: str = "default", seed: int = 0,
         manifests_dir: str | None = None) -> Path:
    """Draw ``batches`` batches of ``target`` (manifest, mixture file or recipe name) into ``out``.

    A plan with fewer samples than one batch (a small manifest) gives no batch to the trainer,
    which drops an epoch's partial tail; here that tail is drawn instead, and the title says so."""
    from .stream import make_loader

    if batches < 1 or batch_size < 1:
        raise InputError(f"batches and batch size must be >= 1, got {batches} and {batch_size}")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"--out {out}: the suffix must be one of {', '.join(IMAGE_SUFFIXES)}")
    source = {"manifest": target} if is_manifest(target) else {"mixture": target, "manifests_dir": manifests_dir}
    with output_file(out) as f:  # opened first: an unwritable --out fails before any drawing
        make = functools.partial(make_loader, **source, split=split, batch_size=batch_size, image_size=size,
                                 augment=augment, seed=seed, photometric="device")
        loader = make()
        partial = len(loader) == 0
        if partial:
            loader.close()
            loader = make(drop_last=False)
        try:
            drawn = [loader.finish(batch) for _, batch in zip(range(batches), loader)]
        finally:
            loader.close()
        if not drawn:
            raise InputError(f"{target}: the {split} split has no samples")
        scale = pixel_scale([b["depth"].detach().float().cpu().numpy() for b in drawn])
        tiles = [t for i, b in enumerate(drawn)
                 for t in tiles_of_batch(b, loader.source_names, loader.spec.mean, loader.spec.std, i, scale)]
        title = (f"vortex-data show {target}  split={split}  augment={augment}  seed={seed}  "
                 f"{len(tiles)} sample{'s' if len(tiles) != 1 else ''}  RGB (red: depth edges) | depth | labels")
        if partial:
            title += f"  (fewer than a batch of {batch_size}: training drops these)"
        ok, buf = cv2.imencode(out.suffix, cv2.cvtColor(contact_sheet(tiles, title, scale), cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError(f"{out}: OpenCV could not encode the sheet as {out.suffix}")
        f.write(buf.tobytes())
    return out


def add_parser(subparsers: argparse._SubParsersAction, **kw: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "show", **kw,
        description="Draw batches exactly as the trainer receives them (the loader with device photometric, "
                    "then loader.finish; RGB un-normalised for display): per sample the RGB with depth edges "
                    "in red, the depth on one metric colour scale for the sheet (1st-99th percentile of the depth "
                    "drawn, printed on its colour bar), and the labels over the RGB, with key and source "
                    "underneath. Misaligned depth shows as red edges off the RGB's edges. A manifest smaller than "
                    "a batch is drawn as one partial batch (training drops it).")
    p.add_argument("target", metavar="MANIFEST_OR_MIXTURE",
                   help="a manifest JSON, a mixture file (TOML/JSON) or a shipped recipe name (stage1, stage2)")
    p.add_argument("--out", type=Path, required=True, help="the image to write (.png or .jpg)")
    p.add_argument("--split", default="train", help="split (default train; other splits: one ordered pass)")
    p.add_argument("--batches", type=int, default=2, help="batches to draw (default 2)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    p.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"),
                   help="the loader's output size (default 240 320)")
    p.add_argument("--augment", choices=["none", "default"], default="default",
                   help="default: V5 augmentation as in training; none: the deterministic resize/centre crop")
    p.add_argument("--seed", type=int, default=0, help="loader seed (default 0)")
    p.add_argument("--manifests-dir", default=None,
                   help="folder of the manifests a mixture names (default: the file's manifests_dir; "
                        "manifests/ for a recipe name)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = show(args.target, args.out, args.split, args.batches, args.batch_size, tuple(args.size), args.augment,
               args.seed, args.manifests_dir)
    print(f"wrote {out}")
    return 0
