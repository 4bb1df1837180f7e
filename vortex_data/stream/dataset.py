"""The stages composed: a rank's batches of one epoch, as a DataLoader ``IterableDataset``.

plan (:mod:`.plan`) -> read a window grouped by shard (:mod:`.read`) -> check each sample and
replace bad ones (:mod:`.checked`) -> decode and CPU geometry (:mod:`.batch`) -> collate
(:mod:`.collate`); the device phase (``loader.finish``) comes after the DataLoader. Each worker
holds one copy: its shard reader (open handles, parsed tar tables) and its place in the epochs.
Memory bound per worker: ``window_batches * B`` encoded samples plus one decoded batch.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .batch import build_batch
from .checked import CheckedSamples
from .collate import trim
from .mixture import EpochPlan
from .plan import LoaderSpec, batch_first, batch_positions, pad_mask, worker_batches
from .read import read_window
from .shard_reader import ShardReader
from .workers import keep_freed_memory


class EpochDataset(IterableDataset):
    """A rank's batches of ``epoch`` from global plan position ``offset`` on, split over DataLoader workers.

    Each ``iter()`` runs one epoch from where the dataset stands and then moves on to the start of
    the next, so the same object (in-process) or the same persistent DataLoader workers (each
    holding a copy) serve epoch after epoch while keeping their shard reader.
    ``state_dict()``: ``epoch`` and ``samples``, the global plan position after the batches this
    copy has yielded (in-process, where one copy yields every batch, that is the resume position);
    :class:`vortex_data.stream.StreamLoader` counts what reaches the caller across workers and
    rebuilds the dataset whenever the position it wants is not the one the copies will produce next.
    """

    def __init__(self, spec: LoaderSpec, epoch: int, offset: int):
        self.spec, self.epoch, self.offset = spec, epoch, offset
        self.reader = ShardReader(spec.cache_dir, cache_bytes=spec.cache_bytes,
                                  expected={u: d for ix in spec.indices for u, d in ix.remote_digests().items()})
        self.checked = CheckedSamples(spec, self.reader)
        self.worker = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["samples"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._epoch(self.epoch, self.offset)

    def _epoch(self, epoch: int, offset: int) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            keep_freed_memory()  # this worker process's allocator (the main process's is the user's)
        self.worker = wid
        opens0 = self.reader.opens
        plan = s.plan(epoch)
        n = len(plan)
        mine = list(worker_batches(0, s.batches(epoch, offset), wid, nw))
        for w0 in range(0, len(mine), s.window_batches):
            window = mine[w0:w0 + s.window_batches]
            pos = [batch_positions(j, s.rank, s.world_size, s.batch_size, n, offset) for j in window]
            t0 = time.perf_counter()
            raw = read_window(self.reader, s.indices, plan, np.concatenate(pos))
            t_read = (time.perf_counter() - t0) / len(window)
            for j, p in zip(window, pos):
                first = batch_first(j, s.rank, s.world_size, s.batch_size, offset)
                batch = self._batch(plan, epoch, p, raw, n, t_read, first, self.reader.opens - opens0)
                self.offset = min(n, offset + (j + 1) * s.step)  # delivered: counted before the yield
                yield batch
        self.epoch, self.offset = epoch + 1, 0

    def _batch(self, plan: EpochPlan, epoch: int, positions: np.ndarray, raw: dict, n: int, t_read: float,
               first: int, opens: int) -> dict[str, Any]:
        s = self.spec
        timing: dict[str, float] = {}
        batch = self.checked.batch(plan, epoch, positions, raw, lambda samples: build_batch(
            samples, s.augment, s.augmenting, s.seed, epoch, photometric=s.photometric, decode=s.decode,
            mean=s.mean, std=s.std, timing=timing))
        batch["is_pad"] = torch.from_numpy(pad_mask(first, len(positions), n))
        if s.trim_pad and bool(batch["is_pad"].any()):
            batch = trim(batch, ~batch["is_pad"])
        if s.profile:
            batch["timing"] = {"read": t_read, **timing, "opens": opens, "worker": self.worker}
        skipped = self.checked.take_skipped()
        if skipped:
            batch["skipped"] = skipped
        return batch
