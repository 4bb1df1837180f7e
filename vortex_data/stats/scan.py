"""The one streaming pass over shards that `vortex-data stats` needs beyond the Parquet index.

Each worker process reads whole shards and returns small per-shard accumulators (a 1-mm depth
histogram, integer RGB sums, image hashes); the parent merges them. Nothing proportional to the
dataset's pixels is ever held: memory is O(65536 + samples x 64 bytes of hashes).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..format.schema import SchemaError, decode_sample
from ..format.tar_index import TAR_ERRORS, iter_samples
from ..pool import die_with_parent
from .phash import frame_hashes

DEPTH_BINS_MM = 65536
"""One histogram bin per stored millimetre value: percentiles are exact at the storage resolution."""


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
    keys: list[str] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)

    def add_sample(self, rgb: np.ndarray, depth_mm: np.ndarray, key: str, with_hash: bool) -> None:
        self.samples += 1
        self.depth_counts += np.bincount(depth_mm.ravel(), minlength=DEPTH_BINS_MM)
        flat = rgb.reshape(-1, 3).astype(np.int64)
        self.rgb_pixels += flat.shape[0]
        self.rgb_sum += flat.sum(axis=0)
        self.rgb_sq_sum += (flat * flat).sum(axis=0)
        if with_hash:
            self.keys.append(key)
            self.hashes.append(frame_hashes(rgb))

    def merge(self, other: "Accumulator") -> None:
        self.samples += other.samples
        self.depth_counts += other.depth_counts
        self.rgb_pixels += other.rgb_pixels
        self.rgb_sum += other.rgb_sum
        self.rgb_sq_sum += other.rgb_sq_sum
        self.keys += other.keys
        self.hashes += other.hashes

    def hash_array(self) -> np.ndarray:
        return np.stack(self.hashes) if self.hashes else np.zeros((0, 1), np.uint64)


@dataclass(frozen=True)
class ShardTask:
    """One shard and the sources that read it: (source name, key regex or None) each."""

    shard: Path
    sources: tuple[tuple[str, str | None], ...]
    hash_frames: bool = True


def scan_shard(task: ShardTask) -> dict[str, Accumulator]:
    """Accumulate one shard for each source that reads it. Raises SchemaError naming the shard."""
    accs = {name: Accumulator() for name, _ in task.sources}
    patterns = [(name, re.compile(p) if p else None) for name, p in task.sources]
    try:
        for key, members in iter_samples(task.shard):
            users = [name for name, pat in patterns if pat is None or pat.search(key)]
            if not users:
                continue
            s = decode_sample(members, key)
            # The hash is only needed once per frame; the first source that reads it keeps it.
            for i, name in enumerate(users):
                accs[name].add_sample(s["rgb"], s["depth_mm"], key, with_hash=task.hash_frames and i == 0)
    except (*TAR_ERRORS, SchemaError, OSError, ValueError) as e:  # a damaged shard is named, not a raw tar error
        raise SchemaError(f"{task.shard}: {e}") from None
    return accs


def scan_shards(tasks: list[ShardTask], workers: int = 1, progress: bool = True) -> dict[str, Accumulator]:
    """Run scan_shard over every task (in worker processes when workers > 1) and merge per source.

    Results are merged in task order, so keys and hashes come out in shard order whatever the
    completion order was.
    """
    names = {name for t in tasks for name, _ in t.sources}
    merged = {name: Accumulator() for name in sorted(names)}
    bar = tqdm(total=len(tasks), desc="stats", unit="shard", disable=not progress)
    # Each shard's accumulator holds a 512 KB histogram: merge them in task order as soon as they
    # can be, rather than keeping one per shard until the end (2 GB at 4,000 shards).
    pending: dict[int, dict[str, Accumulator]] = {}
    done = 0

    def arrived(i: int, res: dict[str, Accumulator]) -> None:
        nonlocal done
        pending[i] = res
        while done in pending:
            for name, acc in pending.pop(done).items():
                merged[name].merge(acc)
            done += 1
        bar.update()

    if workers <= 1:
        for i, t in enumerate(tasks):
            arrived(i, scan_shard(t))
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(scan_shard, t): i for i, t in enumerate(tasks)}
            for fut in as_completed(futures):
                arrived(futures[fut], fut.result())
    bar.close()
    return merged
