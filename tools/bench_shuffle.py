"""Shuffle quality against read locality: the global plan and the block plan side by side.

Usage:  python tools/bench_shuffle.py [--samples 200000] [--shard 256] [--batch 16] [--blocks 2048 8192 65536]

For one source of --samples samples in shards of --shard, it draws epoch 0 of each plan and
prints, per plan:

* distinct shards in a batch (mean; --batch at most): how mixed a batch is;
* same-shard pairs per batch (mean): pairs of samples of one shard meeting in a batch;
* a shard's spread: the plan positions between the first and last sample of a shard, as a
  fraction of the epoch (median over shards; ~1 for a uniform shuffle);
* shards touched per 1,000 consecutive plan positions (mean): the working set a reader (and a
  node cache) must hold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vortex_data

from vortex_data.stream.block_shuffle import plan_epoch_blocks  # noqa: E402
from vortex_data.stream.mixture import plan_epoch  # noqa: E402


def figures(shards: np.ndarray, batch: int) -> dict[str, float]:
    n = len(shards)
    b = shards[: n - n % batch].reshape(-1, batch)
    srt = np.sort(b, axis=1)
    distinct = 1 + (np.diff(srt, axis=1) != 0).sum(axis=1)
    pairs = np.array([sum(c * (c - 1) // 2 for c in np.unique(row, return_counts=True)[1]) for row in b[:2000]])
    order = np.argsort(shards, kind="stable")
    pos = np.arange(n)[order]
    starts = np.flatnonzero(np.r_[True, np.diff(shards[order]) != 0])
    first, last = np.minimum.reduceat(pos, starts), np.maximum.reduceat(pos, starts)
    touched = [len(np.unique(shards[i:i + 1000])) for i in range(0, n - 999, 1000)]
    return {"distinct shards / batch": float(distinct.mean()), "same-shard pairs / batch": float(pairs.mean()),
            "shard spread (epoch fraction)": float(np.median((last - first) / n)),
            "shards per 1,000 positions": float(np.mean(touched))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--shard", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2048, 8192, 65536])
    args = ap.parse_args()
    shard_of = np.arange(args.samples) // args.shard
    plans = {"global": plan_epoch([args.samples], [1.0], args.samples, 0, 0)}
    for blk in args.blocks:
        plans[f"blocks {blk}"] = plan_epoch_blocks([shard_of], [1.0], args.samples, 0, 0, blk)
    rows = {name: figures(shard_of[p.index], args.batch) for name, p in plans.items()}
    keys = list(next(iter(rows.values())))
    print(f"{args.samples:,} samples, {-(-args.samples // args.shard):,} shards of {args.shard}, batch {args.batch}")
    print("plan".ljust(16) + "".join(f"{k:>32}" for k in keys))
    for name, r in rows.items():
        print(name.ljust(16) + "".join(f"{r[k]:>32.3f}" for k in keys))


if __name__ == "__main__":
    main()
