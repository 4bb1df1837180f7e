"""Synthetic shard sets for the loader tests, written by the real shard writer.

A tiny in-memory converter renders ray-cast rooms (exact depth, 6-class labels) so tests can
build several datasets with chosen sizes, shard sizes, codecs and with or without labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from vortex_data.fixtures.scene import random_room, random_view, render
from vortex_data.format.schema import EncodeOptions, Sample, depth_to_mm
from vortex_data.format.geometry import Intrinsics
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.base import Converter, Enumeration, FrameRef


class SyntheticConverter(Converter):
    description = "synthetic rooms for tests"
    splits = ("train", "val")

    def __init__(self, name: str, n: int, size: tuple[int, int] = (48, 64), with_seg: bool = True,
                 split: str = "train", seed: int = 0, src: Path = Path("."), scenes: list[str] | None = None):
        self.name, self.n, self.size, self.with_seg, self.split, self.seed, self.src = \
            name, n, size, with_seg, split, seed, src
        self.scenes = scenes  # frame i's scene (the index's scene column), or none recorded

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "SyntheticConverter":
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "size": list(self.size), "with_seg": self.with_seg, "seed": self.seed}

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        return Enumeration([FrameRef(self.split, f"frame_{i:05d}", (), i) for i in range(self.n)])

    def load(self, ref: FrameRef) -> Sample:
        h, w = self.size
        rng = np.random.default_rng([self.seed, ref.payload])
        f = 0.9 * w
        view = random_view(rng, f, f, (w - 1) / 2, (h - 1) / 2, w, h)
        rgb, depth, seg = render(random_room(rng), view, noise_seed=int(ref.payload))
        return Sample(key="", rgb=rgb, depth_mm=depth_to_mm(depth).depth_mm, intrinsics=Intrinsics(f, f, (w - 1) / 2, (h - 1) / 2),
                      seg=seg if self.with_seg else None,
                      meta={"synthetic": True, **({"scene": self.scenes[ref.payload]} if self.scenes else {})})


def build(root: Path, name: str, n: int, shard_samples: int, split: str = "train", **kw: Any) -> Path:
    """Write ``n`` samples of dataset ``name`` into ``root/shards`` and return the manifest path."""
    codec = kw.pop("array_codec", "zst")
    cfg = BuildConfig(out_dir=root / "shards", manifest_dir=root / "manifests", shard_samples=shard_samples,
                      encode=EncodeOptions(array_codec=codec), workers=1, progress=False)
    res = build_shards(SyntheticConverter(name, n, split=split, **kw), cfg)
    return Path(res.manifests[0])


def write_mixture(path: Path, manifests_dir: Path, epoch_size: int, sources: Any = (("nyu", 1),)) -> Path:
    """A mixture TOML over ``<name>-{split}.json`` manifests in ``manifests_dir``, (name, weight) each."""
    path.write_text(f'name = "t"\nepoch_size = {epoch_size}\nmanifests_dir = "{manifests_dir}"\n' + "".join(
        f'[[source]]\nname = "{n}"\nmanifest = "{n}-{{split}}.json"\nweight = {w}\n' for n, w in sources))
    return path
