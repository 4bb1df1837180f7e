"""The locality-aware epoch plan (``shuffle="blocks"``): each reader, a bounded set of shards at a time.

A global permutation touches every shard from the first batch on, so a node cache smaller than
the dataset (remote shards) is read over and over, and every batch opens ~B new shards. This
plan keeps the guarantees of :func:`vortex_data.stream.mixture.plan_epoch` (exact per-source quotas,
the same cycling rule, a pure function of its arguments, so equal batches, determinism and
elastic resume hold unchanged) and bounds the shards a reader touches. It is MosaicML
Streaming's shuffle-block idea (``py1s``) with its canonical nodes, written here:

1. the sources are interleaved by a random sequence of source labels with exactly the quota of
   each (the same kind of draw as the global plan's);
2. per source and cycle pass, the shards are put in a random order and the samples listed shard
   after shard; the passes follow each other and the list is cut to the source's quota;
3. **lanes**: the loader reads batch ``g`` of a pass (counted across ranks) in reader
   ``g mod (world size x workers)`` (:mod:`vortex_data.stream.plan`). Plan positions belong to lane
   ``(position // batch_size) mod lanes``, and each lane takes one contiguous stretch of each
   source's list, lane after lane, so a shard is read by one lane (two where a stretch ends inside
   it) instead of by every reader;
4. each lane's stretch is cut into blocks of ``block_size`` samples, each block shuffled inside,
   and the lane's positions of that source take them in that order.

So a reader's ``block_size`` consecutive draws of a source come from about
``block_size / shard size + 2`` of its shards, and with ``lanes`` equal to the number of readers
each shard is opened about once per pass over it. With another reader count the plan is the same
and only that locality is lost, so ``lanes`` is part of the plan (like MosaicML's canonical
nodes): the loader fixes it when a run starts and a resumed run keeps it, whatever its worker
count. The price of locality is shuffle quality: two samples of one shard meet in a batch far more
often than under a global shuffle (docs/benchmarks.md gives the measured figures).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .mixture import EpochPlan, MixtureError, quotas, rng_for

DEFAULT_BLOCK = 8192


def shard_spans(shard_of: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray] | None:
    """(first sample, samples) of each shard when the samples lie shard after shard (as the
    writer lists them), else None. Checked a chunk at a time: no array the size of the source."""
    n = len(shard_of)
    for lo in range(0, max(0, n - 1), chunk):
        a = np.asarray(shard_of[lo:lo + chunk + 1])
        if (a[1:] < a[:-1]).any():
            return None
    # The needles in the array's own dtype: otherwise numpy converts the whole array first.
    edges = np.searchsorted(shard_of, np.arange(int(shard_of[-1]) + 2 if n else 1, dtype=np.asarray(shard_of[:0]).dtype))
    return edges[:-1], np.diff(edges)


def shard_order(shard_of: np.ndarray, rng: np.random.Generator, take: int | None = None,
                spans: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One pass over a source's samples: its shards in random order, each shard's samples in file
    order; only the first ``take``. With ``spans`` (:func:`shard_spans`) it lists just the shards
    it takes, so a worker drawing an epoch much smaller than the source holds nothing the source's
    size (the same order as the general case)."""
    take = len(shard_of) if take is None else take
    n_shards = int(np.max(shard_of)) + 1 if len(shard_of) else 0
    perm = rng.permutation(n_shards)
    if spans is None:
        return np.argsort(perm[np.asarray(shard_of)], kind="stable")[:take]
    first, count = spans
    order = np.argsort(perm, kind="stable")  # shards by rank
    used = order[:int(np.searchsorted(np.cumsum(count[order]), take)) + 1]
    lens = count[used]
    ends = np.cumsum(lens)
    return (np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(first[used] - ends + lens, lens))[:take]


def _lane_blocks(counts: np.ndarray, block_size: int, rng: np.random.Generator) -> np.ndarray:
    """Order of a list dealt to lanes in stretches of ``counts``: each stretch cut into blocks of
    ``block_size`` and shuffled inside each block (steps 3-4 of the module docstring)."""
    k = int(counts.sum())
    lane = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(k) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.lexsort((rng.random(k), local // block_size, lane))


def plan_epoch_blocks(shard_of: Sequence[np.ndarray], weights: Sequence[float], epoch_size: int, seed: int,
                      epoch: int, block_size: int = DEFAULT_BLOCK, lanes: int = 1, batch_size: int = 1) -> EpochPlan:
    """The training plan with lane- and block-local order (see the module docstring); the same
    quotas and cycling as :func:`vortex_data.stream.mixture.plan_epoch`, only the order differs."""
    if block_size < 1 or lanes < 1 or batch_size < 1:
        raise MixtureError(f"shuffle block size, lanes and batch size must be positive, got {block_size}, "
                           f"{lanes}, {batch_size}")
    q = quotas(weights, epoch_size)
    labels = rng_for(seed, "blocks-interleave", epoch).permutation(np.repeat(np.arange(len(q)), q))
    lane = (np.arange(len(labels)) // batch_size) % lanes
    # Positions by source, then lane, then plan order (lexsort is stable): source s's k-th
    # position in this order takes the k-th entry of s's list as ordered below.
    where = np.lexsort((lane, labels))
    idx, rep = np.empty(len(labels), np.int64), np.empty(len(labels), np.int64)
    start = 0
    for s, (shards, k) in enumerate(zip(shard_of, q)):
        n = len(shards)
        if n <= 0:
            raise MixtureError(f"source {s} has no samples but a quota of {k}")
        passes = -(-k // n) if k else 0
        spans = shard_spans(shards)
        listed = np.concatenate([shard_order(shards, rng_for(seed, "blocks", epoch, s, p), min(n, k - p * n), spans)
                                 for p in range(passes)] or [np.zeros(0, np.int64)])
        counts = np.bincount(lane[labels == s], minlength=lanes)
        order = _lane_blocks(counts, block_size, rng_for(seed, "blocks-inside", epoch, s))
        mine = where[start:start + k]
        idx[mine], rep[mine] = listed[order], order // n
        start += k
    return EpochPlan(labels.astype(np.int64), idx, rep)
