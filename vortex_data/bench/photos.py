"""A real-photo benchmark set: NYU frames, perturbed per sample, written as shards.

Synthetic ray-cast rooms compress to JPEGs several times smaller and flatter than photographs,
which flatters every decode figure. This set starts from real NYU Depth V2 frames
(``rgb_*.jpg`` with ``sync_depth_*.png``, 640x480, uint16 mm, as in the NYU demo layout) and
gives every sample its own small similarity warp (scale 1-1.08, rotation +-2 degrees, shift
+-8 px), per-channel gain (+-6 %), a random mirror and mild sensor-like noise (sigma 1.5 levels)
so that no two JPEGs are identical while the content keeps real-photo entropy; written at JPEG
q95 (about 100 KB per frame at 640x480). Depth follows the same warp (nearest, 0 outside).
The sample frames carry no labels, so labels are depth bands (1.5 m wide, classes 0-5, 255 where
depth is invalid): they exercise the label decode and geometry at real-map entropy, nothing else.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..convert.base import Converter, Enumeration, FrameRef, RejectFrame
from ..convert.nyu.converter import NYU_INTRINSICS  # the frames are NYU's: its camera, not a rounded copy
from ..format.schema import EncodeOptions, IGNORE_INDEX, Sample


def find_frames(src: Path) -> list[tuple[Path, Path]]:
    """(rgb, depth) pairs ``rgb_N.jpg`` / ``sync_depth_N.png`` under ``src``."""
    pairs = []
    for rgb in sorted(Path(src).rglob("rgb_*.jpg")):
        depth = rgb.with_name("sync_depth_" + rgb.stem[len("rgb_"):] + ".png")
        if depth.exists():
            pairs.append((rgb, depth))
    return pairs


def perturb(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = depth.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-2, 2), rng.uniform(1.0, 1.08))
    m[:, 2] += rng.uniform(-8, 8, 2)
    rgb = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    depth = cv2.warpAffine(depth, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    f = rgb.astype(np.float32) * rng.uniform(0.94, 1.06, 3).astype(np.float32)
    f += rng.normal(0, 1.5, f.shape).astype(np.float32)
    rgb = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        rgb, depth = cv2.flip(rgb, 1), cv2.flip(depth, 1)
    return rgb, depth


class PhotoBenchConverter(Converter):
    name = "nyu_photos"
    description = "real NYU frames, perturbed per sample (benchmark set)"
    splits = ("train",)

    def __init__(self, src: Path, n: int, seed: int = 0):
        self.src, self.n, self.seed = Path(src), n, seed
        self.pairs = find_frames(self.src)
        if not self.pairs:
            raise FileNotFoundError(f"{src}: no NYU frames (rgb_N.jpg with sync_depth_N.png) found")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "PhotoBenchConverter":
        return cls(src, args.photo_samples)

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "frames": [p[0].name for p in self.pairs]}

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        return Enumeration([FrameRef("train", f"bench_{i:05d}", tuple(str(p) for p in self.pairs[i % len(self.pairs)]), i)
                            for i in range(self.n)])

    def load(self, ref: FrameRef) -> Sample:
        rgb_path, depth_path = self.pairs[ref.payload % len(self.pairs)]
        bgr = cv2.imread(str(rgb_path), cv2.IMREAD_COLOR)
        depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
        if bgr is None or depth is None or depth.dtype != np.uint16 or depth.shape != bgr.shape[:2]:
            raise RejectFrame("unreadable", f"{rgb_path} / {depth_path}: not a 640x480 RGB + uint16 depth pair",
                              rgb_path)
        rgb, depth = perturb(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), depth, np.random.default_rng([self.seed, ref.payload]))
        seg = np.minimum(depth // 1500, 5).astype(np.uint8)
        seg[depth == 0] = IGNORE_INDEX
        return Sample(key="", rgb=rgb, depth_mm=depth, intrinsics=NYU_INTRINSICS, seg=seg,
                      meta={"benchmark": f"perturbed copy of {rgb_path.name}"})


def build_photo_set(src: Path, out: Path, n: int, workers: int = 1) -> Path:
    """Write ``n`` perturbed frames as shards under ``out``; returns the train manifest."""
    from ..convert.shards import BuildConfig, build_shards

    cfg = BuildConfig(out_dir=out / "shards", manifest_dir=out / "manifests", shard_samples=256,
                      encode=EncodeOptions(jpeg_quality=95), workers=workers, progress=False)
    res = build_shards(PhotoBenchConverter(src, n), cfg)
    return Path(res.manifests[0])
