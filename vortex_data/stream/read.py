"""Stage 2, read a window: the encoded members of a window of plan positions, grouped by shard.

A worker reads ``window_batches`` batches at a time: their samples are grouped by shard and read
in file order at the offsets the index records (descriptors kept open by the :class:`ShardReader`), so a shard
is read sequentially however the plan shuffles it. Memory bound: ``window_batches * B`` encoded
samples per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .mixture import EpochPlan, SourceIndex
from .shard_reader import ShardReader

Window = dict[tuple[int, str], Mapping[str, bytes]]
"""(source, key) -> that sample's encoded members."""


@dataclass(frozen=True)
class RawSample:
    """One encoded sample as read from its shard, with where it came from in the plan."""

    key: str
    members: Mapping[str, bytes]
    source: int = 0
    repeat: int = 0
    shard: str = ""


def read_window(reader: ShardReader, indices: Sequence[SourceIndex], plan: EpochPlan,
                positions: np.ndarray) -> Window:
    """Encoded members of the given plan positions, read grouped by shard in file order."""
    groups: dict[tuple[int, int], dict[str, list | None]] = {}
    for p in positions:
        src, idx = int(plan.source[p]), int(plan.index[p])
        ix = indices[src]
        groups.setdefault((src, int(ix.shard_of[idx])), {})[ix.key(idx)] = ix.spans(idx)
    raw: Window = {}
    for (src, shard), spans in sorted(groups.items()):
        got = reader.read_group(indices[src].shards[shard], list(spans), spans)
        for key, members in got.items():
            raw[(src, key)] = members
    return raw
