"""The one streaming pass over shards that `vortex-data stats` needs beyond the Parquet index.

Each worker process reads whole shards and returns small per-shard results (a 1-mm depth
histogram, integer RGB sums, per frame its far-depth share and, when asked, its image hashes);
the parent merges them in shard order. Nothing proportional to the dataset's pixels is ever
held: per frame, the parent keeps its key as bytes, 8 bytes of far share and, only for manifests
whose frames are compared with another's, 46 x 8 bytes of hashes (:mod:`phash`).
"""

from __future__ import annotations

import re
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..format.schema import DEPTH_SCALE_MM, SchemaError, decode_sample
from ..format.tar_index import TAR_ERRORS, iter_samples
from ..errors import Interrupted
from ..pool import worker_pool
from .phash import WINDOWS, frame_hashes

DEPTH_BINS_MM = 65536
"""One histogram bin per stored millimetre value: percentiles are exact at the storage resolution."""
FAR_M = 10.0
"""'Far' depth: beyond the trainer's max_depth (recipe v6), so those pixels teach it nothing."""
_DEPTH_BUFFER = 1 << 22
"""Depth pixels gathered before one bincount: a bincount per frame costs a 512 KB histogram each
time, which for small frames is most of the work."""


@dataclass
class Accumulator:
    """Sums over the samples of one source (or one shard of it); merge() adds two together."""

    samples: int = 0
    depth_counts: np.ndarray = field(default_factory=lambda: np.zeros(DEPTH_BINS_MM, np.int64))
    """depth_counts[v] = number of pixels whose stored depth is v mm (index 0 = invalid pixels)."""
    rgb_pixels: int = 0
    rgb_sum: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    rgb_sq_sum: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    """Integer sums of v and v^2 per channel: exact (255^2 x 2^40 pixels still fits in int64)."""
    keys: list[np.ndarray] = field(default_factory=list)
    """Per merged part, the frames' keys (UTF-8, numpy bytes) in shard order."""
    far: list[np.ndarray] = field(default_factory=list)
    """Per merged part, each frame's share of valid depth pixels beyond FAR_M (float64)."""
    _depth: list[np.ndarray] = field(default_factory=list, repr=False)
    _buffered: int = 0

    def add_sample(self, rgb: np.ndarray, depth_mm: np.ndarray) -> float:
        """Add one frame's pixels; returns its far-depth share."""
        self.samples += 1
        flat = depth_mm.ravel()
        self._depth.append(flat)
        self._buffered += flat.size
        if self._buffered >= _DEPTH_BUFFER:
            self._flush()
        px = rgb.reshape(-1, 3).astype(np.int64)
        self.rgb_pixels += px.shape[0]
        self.rgb_sum += px.sum(axis=0)
        self.rgb_sq_sum += (px * px).sum(axis=0)
        valid = int(np.count_nonzero(flat))
        return float(np.count_nonzero(flat > FAR_M * DEPTH_SCALE_MM)) / valid if valid else 0.0

    def _flush(self) -> None:
        if self._depth:
            self.depth_counts += np.bincount(np.concatenate(self._depth), minlength=DEPTH_BINS_MM)
            self._depth, self._buffered = [], 0

    def merge(self, other: "Accumulator") -> None:
        other._flush()
        self.samples += other.samples
        self.depth_counts += other.depth_counts
        self.rgb_pixels += other.rgb_pixels
        self.rgb_sum += other.rgb_sum
        self.rgb_sq_sum += other.rgb_sq_sum
        self.keys += other.keys
        self.far += other.far

    def frame_keys(self) -> np.ndarray:
        return np.concatenate(self.keys) if self.keys else np.zeros(0, "S1")

    def far_shares(self) -> np.ndarray:
        return np.concatenate(self.far) if self.far else np.zeros(0, np.float64)


@dataclass
class Hashes:
    """Image hashes of a manifest's frames (each frame once, whichever sources read it)."""

    keys: list[np.ndarray] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)
    """Per merged part, an (n, len(WINDOWS)) uint64 array (:func:`phash.frame_hashes`)."""

    def merge(self, other: "Hashes") -> None:
        self.keys += other.keys
        self.hashes += other.hashes

    def frame_keys(self) -> np.ndarray:
        self.keys = [np.concatenate(self.keys) if self.keys else np.zeros(0, "S1")]  # one copy, not two
        return self.keys[0]

    def array(self) -> np.ndarray:
        self.hashes = [np.concatenate(self.hashes) if self.hashes else np.zeros((0, len(WINDOWS)), np.uint64)]
        return self.hashes[0]


@dataclass(frozen=True)
class ShardTask:
    """One shard and the sources that read it: (source name, key regex or None) each.

    hash_as: the name under which the shard's frames are hashed (their manifest's), or None
    when no other manifest's frames are compared with them.
    """

    shard: Path
    sources: tuple[tuple[str, str | None], ...]
    hash_as: str | None = None


@dataclass
class ShardResult:
    sources: dict[str, Accumulator]
    hashes: dict[str, Hashes]


def scan_shard(task: ShardTask) -> ShardResult:
    """Accumulate one shard for each source that reads it. Raises SchemaError naming the shard."""
    accs = {name: Accumulator() for name, _ in task.sources}
    keys: dict[str, list[bytes]] = {name: [] for name in accs}
    far: dict[str, list[float]] = {name: [] for name in accs}
    hkeys: list[bytes] = []
    hashes: list[np.ndarray] = []
    patterns = [(name, re.compile(p) if p else None) for name, p in task.sources]
    try:
        for key, members in iter_samples(task.shard):
            users = [name for name, pat in patterns if pat is None or pat.search(key)]
            if not users:
                continue
            s = decode_sample(members, key, fill_seg=False)
            bkey = key.encode()
            for name in users:
                far[name].append(accs[name].add_sample(s["rgb"], s["depth_mm"]))
                keys[name].append(bkey)
            # The hash is only needed once per frame, whichever sources read it.
            if task.hash_as is not None:
                hkeys.append(bkey)
                hashes.append(frame_hashes(s["rgb"]))
    except (*TAR_ERRORS, SchemaError, OSError, ValueError) as e:  # a damaged shard is named, not a raw tar error
        raise SchemaError(f"{task.shard}: {e}") from None
    for name, acc in accs.items():
        acc._flush()
        if keys[name]:
            acc.keys.append(np.array(keys[name]))
            acc.far.append(np.array(far[name], np.float64))
    out = {}
    if task.hash_as is not None and hkeys:
        out[task.hash_as] = Hashes([np.array(hkeys)], [np.stack(hashes)])
    return ShardResult(accs, out)


def scan_shards(tasks: list[ShardTask], workers: int = 1,
                progress: bool = True) -> tuple[dict[str, Accumulator], dict[str, Hashes]]:
    """Run scan_shard over every task (in worker processes when workers > 1) and merge per source
    and per hashed manifest.

    Results are merged in task order, so keys and hashes come out in shard order whatever the
    completion order was.
    """
    names = {name for t in tasks for name, _ in t.sources}
    merged = {name: Accumulator() for name in sorted(names)}
    hashed = {t.hash_as: Hashes() for t in tasks if t.hash_as is not None}
    bar = tqdm(total=len(tasks), desc="stats", unit="shard", disable=not progress)
    # Each shard's accumulator holds a 512 KB histogram: merge them in task order as soon as they
    # can be, rather than keeping one per shard until the end (2 GB at 4,000 shards).
    pending: dict[int, ShardResult] = {}
    done = 0

    def arrived(i: int, res: ShardResult) -> None:
        nonlocal done
        pending[i] = res
        while done in pending:
            res = pending.pop(done)
            for name, acc in res.sources.items():
                merged[name].merge(acc)
            for name, h in res.hashes.items():
                hashed[name].merge(h)
            done += 1
        bar.update()

    try:
        if workers <= 1:
            for i, t in enumerate(tasks):
                arrived(i, scan_shard(t))
        else:
            # worker_pool: a shard's error or Ctrl-C stops the scan now, not after every other shard.
            with worker_pool(workers) as pool:
                futures = {pool.submit(scan_shard, t): i for i, t in enumerate(tasks)}
                for fut in as_completed(futures):
                    arrived(futures[fut], fut.result())
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(f"stopped after scanning {done + len(pending)} of {len(tasks)} shards; stats writes its "
                          "report only at the end, so nothing was written: rerun the command to compute it") from None
    bar.close()
    return merged, hashed
