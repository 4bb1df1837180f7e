"""The locality-aware epoch plan (``shuffle="blocks"``): a bounded set of shards at a time.

A global permutation touches every shard from the first batch on, so a node cache smaller than
the dataset (remote shards) is read over and over, and every batch opens ~B new shards. This
plan keeps the guarantees of :func:`vortex_data.stream.mixture.plan_epoch` (exact per-source quotas,
the same cycling rule, a pure function of seed and epoch, so equal batches, determinism and
elastic resume hold unchanged) and bounds the shards a stretch of the plan reads. It is MosaicML
Streaming's shuffle-block idea (``py1s``), written here:

1. per source and cycle pass, the shards are put in a random order and the samples listed shard
   after shard;
2. that list is cut into blocks of ``block_size`` samples, and each block is shuffled inside;
3. the sources are interleaved by a random sequence of source labels with exactly the quota of
   each (the same kind of draw as the global plan's), each source's samples in their block order.

So ``block_size`` consecutive draws of a source come from about ``block_size / shard size + 2``
of its shards. The price is shuffle quality: two samples of one shard meet in a batch far more
often than under a global shuffle (docs/benchmarks.md gives the measured figures).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .mixture import EpochPlan, MixtureError, quotas, rng_for

DEFAULT_BLOCK = 8192


def block_order(shard_of: np.ndarray, block_size: int, rng: np.random.Generator) -> np.ndarray:
    """One pass over a source's samples: shards in random order, cut into blocks of
    ``block_size`` samples, each block shuffled inside (steps 1-2 of the module docstring)."""
    shard_of = np.asarray(shard_of)
    n_shards = int(shard_of.max()) + 1 if len(shard_of) else 0
    rank = rng.permutation(n_shards)[shard_of]
    listed = np.argsort(rank, kind="stable")  # shard after shard, each in file order
    block = np.arange(len(listed)) // max(1, block_size)
    return listed[np.lexsort((rng.random(len(listed)), block))]


def plan_epoch_blocks(shard_of: Sequence[np.ndarray], weights: Sequence[float], epoch_size: int, seed: int,
                      epoch: int, block_size: int = DEFAULT_BLOCK) -> EpochPlan:
    """The training plan with block-local order (see the module docstring); same quotas and
    cycling as :func:`vortex_data.stream.mixture.plan_epoch`, only the order differs."""
    if block_size < 1:
        raise MixtureError(f"shuffle block size must be positive, got {block_size}")
    q = quotas(weights, epoch_size)
    idx_parts, rep_parts = [], []
    for s, (shards, k) in enumerate(zip(shard_of, q)):
        n = len(shards)
        if n <= 0:
            raise MixtureError(f"source {s} has no samples but a quota of {k}")
        passes = -(-k // n) if k else 0
        order = [block_order(shards, block_size, rng_for(seed, "blocks", epoch, s, p)) for p in range(passes)]
        idx_parts.append(np.concatenate(order)[:k].astype(np.int64) if order else np.zeros(0, np.int64))
        rep_parts.append(np.repeat(np.arange(passes), n)[:k].astype(np.int64))
    labels = rng_for(seed, "blocks-interleave", epoch).permutation(np.repeat(np.arange(len(q)), q))
    # the k-th occurrence of source s takes source s's k-th draw
    take = np.empty(len(labels), np.int64)
    order = np.argsort(labels, kind="stable")
    take[order] = np.arange(len(labels))
    idx, rep = np.concatenate(idx_parts), np.concatenate(rep_parts)
    return EpochPlan(labels.astype(np.int64), idx[take], rep[take])
