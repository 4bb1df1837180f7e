"""Shuffle quality against read locality: the global plan and the block plan side by side.

Usage:  python tools/bench_shuffle.py [--samples 200000] [--shard 256] [--batch 16] [--blocks 2048 8192 65536]
                                     [--readers 2]

For one source of --samples samples in shards of --shard, it draws epoch 0 of each plan and
prints, per plan:

* distinct shards in a batch (mean; --batch at most): how mixed a batch is;
* same-shard pairs per batch (mean): pairs of samples of one shard meeting in a batch;
* a shard's spread: the plan positions between the first and last sample of a shard, as a
  fraction of the epoch (median over shards; ~1 for a uniform shuffle);
* shards touched per 1,000 consecutive plan positions (mean): the working set of a node cache;
* the same for one reader (--readers readers, each taking every readers-th batch, as the loader
  deals batches to ranks x workers; the block plans with that many lanes), and the shards a
  reader touches over the epoch per 1,000 of its samples: its file opens when each stays open
  while it is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vortex_data

from vortex_data.stream.block_shuffle import plan_epoch_blocks  # noqa: E402
from vortex_data.stream.mixture import plan_epoch  # noqa: E402


def figures(shards: np.ndarray, batch: int, readers: int) -> dict[str, float]:
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
    mine = shards[(np.arange(n) // batch) % readers == 0]  # reader 0's samples, in its order
    own = [len(np.unique(mine[i:i + 1000])) for i in range(0, len(mine) - 999, 1000)]
    return {"distinct shards / batch": float(distinct.mean()), "same-shard pairs / batch": float(pairs.mean()),
            "shard spread (epoch fraction)": float(np.median((last - first) / n)),
            "shards per 1,000 positions": float(np.mean(touched)),
            "reader: shards per 1,000": float(np.mean(own)),
            "reader: shards / 1,000 of epoch": len(np.unique(mine)) / len(mine) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--shard", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2048, 8192, 65536])
    ap.add_argument("--readers", type=int, default=2, help="readers (ranks x workers) = the block plans' lanes")
    args = ap.parse_args()
    shard_of = np.arange(args.samples) // args.shard
    plans = {"global": plan_epoch([args.samples], [1.0], args.samples, 0, 0)}
    for blk in args.blocks:
        plans[f"blocks {blk}"] = plan_epoch_blocks([shard_of], [1.0], args.samples, 0, 0, blk, args.readers, args.batch)
    rows = {name: figures(shard_of[p.index], args.batch, args.readers) for name, p in plans.items()}
    keys = list(next(iter(rows.values())))
    print(f"{args.samples:,} samples, {-(-args.samples // args.shard):,} shards of {args.shard}, batch {args.batch}, "
          f"{args.readers} readers")
    print("plan".ljust(16) + "".join(f"{k:>32}" for k in keys))
    for name, r in rows.items():
        print(name.ljust(16) + "".join(f"{r[k]:>32.3f}" for k in keys))


if __name__ == "__main__":
    main()
