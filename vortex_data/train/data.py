"""The trainer's view of data: a batch contract, a pluggable loader factory, a synthetic source.

A loader is any iterable of batch dicts with ``state_dict()`` / ``load_state_dict()`` whose
state covers exactly the batches already yielded (so a resumed run sees the next batch), and
optionally ``finish(batch)``, which the trainer calls after moving the batch to its device
(the streaming loader's device phase); without it, batches must already look like this:

    rgb (B,3,H,W) float normalised   depth (B,1,H,W) float metres, 0 = invalid
    seg (B,H,W) long, 255 = ignore   has_seg (B,) bool   dataset (B,)   key list[str]   intrinsics (B,4)

A factory turns a :class:`LoaderRequest` into such a loader. ``--loader module:function``
selects one; the default adapts ``vortex_data.stream.make_loader``.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from vortex_data.format.schema import IGNORE_INDEX
from vortex_data.stream import make_loader, normalise_into, widen_labels
from vortex_data.stream.collate import collate

from ..errors import InputError


@dataclass(frozen=True)
class LoaderRequest:
    """Everything the trainer tells a loader factory."""

    mixture: str | None
    manifest: str | None
    split: str
    batch_size: int
    image_size: tuple[int, int]
    augment: str | None
    seed: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    training: bool = True
    """True: shuffled and endless (or re-iterable); False: one ordered pass for evaluation."""
    manifests_dir: str | None = None
    on_error: str = "raise"
    """A sample failing its integrity check: 'raise' (stop) or 'skip' (replace it, count it, log it)."""
    photometric: str = "cpu"
    """'device': raw batches that the loader's ``finish(batch)`` completes on the device (the
    trainer asks for this); 'cpu': finished batches (evaluation, custom loop code)."""
    decode: str = "cpu"


def train_request(cfg: Any, rank: int = 0, world_size: int = 1) -> LoaderRequest:
    """The training loader of a :class:`~vortex_data.train.config.TrainConfig` (recipe + overrides)
    for one rank: the trainer builds its loader from this, and ``vortex-data preflight`` times the
    loader built from this, so the two cannot drift apart (workers, photometric on the device,
    decode, size, batch, augmentation, error policy)."""
    return LoaderRequest(
        mixture=cfg.mixture, manifest=cfg.manifest, split="train", batch_size=cfg.batch_size,
        image_size=tuple(cfg.image_size), augment=cfg.augment, seed=cfg.seed, rank=rank, world_size=world_size,
        num_workers=cfg.num_workers, training=True, manifests_dir=cfg.manifests_dir, on_error=cfg.on_error,
        photometric="device", decode=cfg.decode)


class StatefulLoader(Protocol):
    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


LoaderFactory = Callable[[LoaderRequest], StatefulLoader]


def stream_loader(req: LoaderRequest) -> StatefulLoader:
    """Adapter to the streaming loader (vortex_data.stream.make_loader): the one place to wire it."""
    return make_loader(**asdict(req))


def synthetic_loader(req: LoaderRequest) -> StatefulLoader:
    """Rendered indoor scenes (vortex_data.fixtures.scene); no files needed."""
    return SyntheticBatches(batch_size=req.batch_size, image_size=req.image_size, seed=req.seed,
                            rank=req.rank, num_batches=None if req.training else 4)


FACTORIES: dict[str, LoaderFactory] = {"stream": stream_loader, "synthetic": synthetic_loader}


def resolve_factory(spec: str) -> LoaderFactory:
    """'stream', 'synthetic' or 'package.module:function'."""
    if spec in FACTORIES:
        return FACTORIES[spec]
    module, sep, attr = spec.partition(":")
    if not sep:
        raise InputError(f"loader factory {spec!r} is neither {sorted(FACTORIES)} nor 'module:function'")
    return getattr(importlib.import_module(module), attr)


class SyntheticBatches:
    """Deterministic batches of ray-cast rooms: batch i depends only on (seed, rank, i).

    Every second sample is label-less (has_seg False, seg all 255) and samples alternate between
    two dataset names, so the label-less and per-dataset paths are always exercised.
    ``unique`` > 0 cycles through that many distinct samples (for overfitting checks);
    ``num_batches`` None means endless.
    """

    def __init__(self, batch_size: int, image_size: tuple[int, int], seed: int = 0, rank: int = 0,
                 num_batches: int | None = None, unique: int = 0, max_depth: float = 10.0) -> None:
        self.batch_size, self.image_size = batch_size, tuple(image_size)
        self.seed, self.rank, self.num_batches, self.unique = seed, rank, num_batches, unique
        self.max_depth = max_depth
        self.index = 0

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.num_batches is None or self.index < self.num_batches:
            batch = self.batch(self.index)
            self.index += 1
            yield batch
        self.index = 0  # the next pass starts over, like a fresh epoch

    def sample(self, n: int) -> dict[str, Any]:
        """Sample number n of this rank's stream."""
        if self.unique:
            n %= self.unique
        # The renderer is the test fixtures' scene generator: imported here, so the trainer's data
        # contract does not load fixture code unless synthetic batches are asked for.
        from vortex_data.fixtures.scene import random_room, random_view, render

        rng = np.random.default_rng([self.seed, self.rank, n])
        h, w = self.image_size
        f = 0.8 * w
        rgb, depth, seg = render(random_room(rng), random_view(rng, f, f, w / 2 - 0.5, h / 2 - 0.5, w, h), noise_seed=n)
        depth = np.where(np.isfinite(depth) & (depth < self.max_depth), depth, 0).astype(np.float32)
        has_seg = n % 2 == 0
        return {"rgb": rgb, "depth": depth[None], "seg": seg if has_seg else np.full((h, w), IGNORE_INDEX, np.uint8),
                "has_seg": has_seg, "dataset": n % 2, "key": f"synth_{'ab'[n % 2]}/train/{self.rank}_{n:08d}",
                "intrinsics": (f, f, w / 2 - 0.5, h / 2 - 0.5)}

    def batch(self, i: int) -> dict[str, Any]:
        """Batch i, normalised and collated by the streaming loader's own functions, so both
        loaders' batches have the same fields, dtypes and normalisation."""
        samples = [self.sample(i * self.batch_size + j) for j in range(self.batch_size)]
        h, w = self.image_size
        rgb = np.empty((len(samples), h, w, 3), np.float32)
        for j, s in enumerate(samples):
            normalise_into(s["rgb"], rgb[j])  # ImageNet mean/std, what the timm encoder expects
        return widen_labels(collate(rgb=rgb, depth=np.stack([s["depth"] for s in samples]),
                                    seg=np.stack([s["seg"] for s in samples]),
                                    has_seg=[s["has_seg"] for s in samples], dataset=[s["dataset"] for s in samples],
                                    key=[s["key"] for s in samples], intrinsics=[s["intrinsics"] for s in samples]))
