"""Stage 1, the plan: which plan positions each rank, batch and worker takes (pure functions).

How an epoch is split (everything here is a pure function of seed, epoch, rank, world size):

* The epoch plan (:mod:`vortex_data.stream.mixture`) is one ordered list of samples, identical on all
  ranks. A pass over the epoch starts at plan position ``s`` (0, or where a resumed run left
  off); global step ``j`` takes plan positions ``s + [j*W*B, (j+1)*W*B)``; rank ``r`` gets the
  ``r``-th slice of ``B``. Every rank therefore has exactly the same number of batches
  (``floor((N - s) / (W*B))`` for training, which drops the tail; evaluation pads by wrapping
  around and marks padding in ``is_pad``), whatever the shard counts: no DDP hang.
* DataLoader worker ``w`` of ``K`` produces the rank's batches ``w, w + K, w + 2K, ...`` of the pass;
  the DataLoader hands batches out round-robin by worker, so the output order is the batch order
  for any ``K`` (more workers than shards is fine: work is split by batch, not by shard).

:class:`LoaderSpec` is the loader's whole configuration, frozen and picklable, so that it can
travel to DataLoader workers (fork or spawn) and every stage reads its settings from one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .augment import AugmentConfig
from .batching import plan_batched, source_quotas
from .block_shuffle import DEFAULT_BLOCK, plan_epoch_blocks
from .mixture import EpochPlan, SourceIndex, plan_sequential

PHOTOMETRIC = ("cpu", "device")
SHUFFLE = ("global", "blocks")
DECODE = ("cpu", "device")


def batches_per_rank(n_samples: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Batches each rank yields for ``n_samples`` plan positions (same on every rank)."""
    step = batch_size * world_size
    return n_samples // step if drop_last else -(-n_samples // step)


def batch_first(j: int, rank: int, world_size: int, batch_size: int, offset: int = 0) -> int:
    """Plan position of the first sample of rank ``rank``'s batch ``j`` of a pass starting at ``offset``."""
    return offset + (j * world_size + rank) * batch_size


def batch_positions(j: int, rank: int, world_size: int, batch_size: int, n_samples: int,
                    offset: int = 0) -> np.ndarray:
    """Plan positions of rank ``rank``'s batch ``j``; positions past the end wrap around (padding)."""
    start = batch_first(j, rank, world_size, batch_size, offset)
    return np.arange(start, start + batch_size) % n_samples


def pad_mask(first: int, batch_size: int, n_samples: int) -> np.ndarray:
    """Which samples of the batch starting at (unwrapped) plan position ``first`` are padding:
    :func:`batch_positions` wraps with modulo, so padding is where the position passes the end."""
    return (first + np.arange(batch_size)) >= n_samples


def worker_batches(start: int, total: int, worker: int, num_workers: int) -> range:
    """The batches worker ``worker`` of ``num_workers`` produces, from batch ``start`` on."""
    return range(start + worker, total, max(1, num_workers))


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a worker needs, picklable."""

    indices: tuple[SourceIndex, ...]
    weights: tuple[float, ...]
    epoch_size: int
    train: bool
    augmenting: bool
    augment: AugmentConfig
    batch_size: int
    seed: int
    rank: int
    world_size: int
    drop_last: bool
    trim_pad: bool
    window_batches: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cache_dir: str | None
    profile: bool
    on_error: str = "raise"
    """A sample failing its checksum or decode: 'raise', or 'skip' (replace it, count it, log it)."""
    cache_bytes: int | None = None
    """Size limit of the remote-shard cache (None: $VORTEX_SHARD_CACHE_BYTES or half the free space)."""
    photometric: str = "cpu"
    decode: str = "cpu"
    batching: str = "random"
    """Batch composition of the training plan (:mod:`vortex_data.stream.batching`), in blocks of batch_size."""
    strata_order: tuple[int, ...] | None = None
    """Sources in the order stratified batching deals extra seats (labelled sources first)."""
    shuffle: str = "global"
    """Training order: 'global' (one uniform permutation) or 'blocks' (:mod:`vortex_data.stream.block_shuffle`)."""
    shuffle_block: int = DEFAULT_BLOCK
    shuffle_lanes: int = 1
    """Readers the block plan deals shards to (:mod:`vortex_data.stream.block_shuffle`); part of the plan."""

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's plan: the mixture plan when training, one ordered pass otherwise."""
        sizes = [len(ix) for ix in self.indices]
        if self.train and self.shuffle == "blocks":
            return plan_epoch_blocks([ix.shard_of for ix in self.indices], self.weights, self.epoch_size,
                                     self.seed, epoch, self.shuffle_block, self.shuffle_lanes, self.batch_size)
        if self.train:
            return plan_batched(sizes, self.weights, self.epoch_size, self.seed, epoch, self.batching,
                                self.batch_size, self.strata_order)
        return plan_sequential(sizes)

    def plan_len(self, epoch: int) -> int:
        """``len(self.plan(epoch))`` without drawing the plan (state_dict and batch counts need only this)."""
        if self.train:
            return int(sum(source_quotas(self.weights, self.epoch_size, self.batching, self.batch_size)))
        return sum(len(ix) for ix in self.indices)

    @property
    def step(self) -> int:
        """Plan positions one step of all ranks consumes."""
        return self.world_size * self.batch_size

    def batches(self, epoch: int, offset: int = 0) -> int:
        """Batches per rank in the pass over ``epoch`` from plan position ``offset``."""
        return batches_per_rank(self.plan_len(epoch) - offset, self.batch_size, self.world_size, self.drop_last)
