"""How the package's costs grow with the number of samples, on tiny frames (pixels cost ~nothing).

Usage:  python tools/bench_scale.py [--sizes 10000 50000 200000] [--work DIR] [--workers 2]

For each size N it builds a dataset of N tiny frames (8x8, JPEG RGB + depth + labels) through the
package's own writer (default shard size, 256 samples a shard; ``--shard-samples`` for others) and prints, each phase in a fresh
process so its peak RSS is its own:

* build-shards: time and peak RSS (the writer's pool processes included);
* make_loader: time, RSS added, the size of the spec pickled to each DataLoader worker, and the
  time of a second make_loader in the same process (what another rank on the node pays);
* the mixture loader (batch 16, ``--shuffle`` global or blocks, an epoch of 4,096 samples drawn from the N):
  per-batch time in epochs 0 and 1, in-process and with ``--workers`` persistent workers; a
  worker's memory after epoch 1 as RSS, PSS and private (its own dirty pages: a forked worker's
  RSS and even its anonymous RSS count the pages it still shares with the main process); file opens
  per 1,000 samples (with ``--shuffle blocks`` the loader's default lanes, one per worker);
* ``vortex-data verify`` and ``vortex-data stats`` (1 worker, up to ``--stats-max``): time and peak RSS;

then the growth exponent of each figure between consecutive sizes (log ratio of the figure over
log ratio of N: 0 = flat, 1 = linear). Datasets are kept in --work for reruns (a rerun resumes
the build, so its build figure is only the check). It measures the checkout it lives in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vortex_data

import numpy as np  # noqa: E402

from vortex_data.convert.shards import DEFAULT_SHARD_SAMPLES  # noqa: E402
from vortex_data.format.schema import Sample  # noqa: E402

from vortex_data.format.geometry import Intrinsics
from vortex_data.convert.base import Converter, Enumeration, FrameRef  # noqa: E402

BATCH = 16
EPOCH = 4096
SIDE = 8


class TinyConverter(Converter):
    """N synthetic 8x8 frames in one split: what the writer, index and loader see, minus pixels."""

    name = "tiny"
    description = "tiny synthetic frames for the scale benchmark"
    splits = ("train",)

    def __init__(self, src: Path, n: int):
        self.src, self.n = src, n

    @classmethod
    def from_args(cls, src, args):  # pragma: no cover - not a CLI converter
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"n": self.n}

    def enumerate(self, splits):
        return Enumeration([FrameRef("train", f"{i:07d}", ()) for i in range(self.n)])

    def load(self, ref: FrameRef) -> Sample:
        i = int(ref.frame_id)
        rng = np.random.default_rng(i)
        rgb = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
        depth = rng.integers(500, 5000, (SIDE, SIDE), dtype=np.uint16)
        seg = rng.integers(0, 6, (SIDE, SIDE), dtype=np.uint8)
        return Sample("", rgb, depth, Intrinsics(10.0, 10.0, 4.0, 4.0), seg if i % 2 else None,
                      {"dataset": "tiny", "split": "train", "frame": ref.frame_id})


# ---------------------------------------------------------------- phases (each in its own process)

def peak_rss_mb() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def phase_build(d: Path, n: int, shard_samples: int) -> dict:
    from vortex_data.convert.shards import BuildConfig, build_shards

    (d / "src").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    build_shards(TinyConverter(d / "src", n), BuildConfig(out_dir=d / "shards", manifest_dir=d / "manifests",
                                                          shard_samples=shard_samples, workers=1, progress=False))
    return {"build_s": time.perf_counter() - t, "build_peak_mb": peak_rss_mb()}


def _rss_mb(pid: int) -> tuple[float, float, float]:
    """(RSS, PSS, private) of a process in MB, from /proc/<pid>/smaps. Private: the dirty pages of
    its private mappings (heap, anonymous memory, copied-on-write pages), what the process alone
    costs. Not the kernel's Private_* of shared file mappings: the memory-mapped index, freshly
    written, counts as 'private dirty' in the one worker that maps a page until writeback, yet
    it is page cache that the node holds once."""
    rss = pss = private = 0.0
    shared_map = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):  # a mapping's first line: range, permissions, ...
            shared_map = rest[3:4] == "s"
        elif head == "Rss:":
            rss += float(rest.split()[0])
        elif head == "Pss:":
            pss += float(rest.split()[0])
        elif head == "Private_Dirty:" and not shared_map:
            private += float(rest.split()[0])
    return rss / 1024, pss / 1024, private / 1024


def _epoch_times(loader, epochs: int = 2) -> tuple[list[float], int]:
    """Mean seconds per batch of each epoch (the first two left out: worker start-up), and the
    file opens the loader reported. A mean, not a median: a shard's first read may cost more."""
    out, opens = [], {}
    for _ in range(epochs):
        times, t = [], time.perf_counter()
        for b in loader:
            now = time.perf_counter()
            times.append(now - t)
            t = now
            tm = b.get("timing", {})
            if "opens" in tm:  # cumulative per worker within the epoch
                w = (loader.epoch, tm.get("worker", 0))
                opens[w] = max(opens.get(w, 0), tm["opens"])
        out.append(float(np.mean(times[2:] or times)))
    return out, sum(opens.values())


def phase_loader(d: Path, n: int, workers: int, shuffle: str = "global") -> dict:
    from vortex_data.stream.mixture import Mixture, Source
    from vortex_data.stream import make_loader

    manifest = str(d / "manifests" / "tiny-train.json")
    mix = Mixture((Source("tiny", manifest, 1.0),), EPOCH, "scale")
    res: dict[str, Any] = {}
    kw = {} if shuffle == "global" else {"shuffle": shuffle}
    # A fresh cache folder: make_loader's first call builds the mapped index there, as the first
    # loader of a job on a node does (the default folder may still hold another run's).
    kw["cache_dir"] = tempfile.mkdtemp(prefix="bench-scale-cache-")
    rss0 = _rss_mb(os.getpid())[0]
    t = time.perf_counter()
    loader = make_loader(mix, batch_size=BATCH, size=(SIDE, SIDE), num_workers=0, profile=True, **kw)
    res["make_loader_s"] = time.perf_counter() - t
    res["make_loader_mb"] = _rss_mb(os.getpid())[0] - rss0
    res["spec_kb"] = len(pickle.dumps(loader.spec)) / 1024
    t = time.perf_counter()  # a second loader on the node (another rank) finds what the first prepared
    make_loader(mix, batch_size=BATCH, size=(SIDE, SIDE), num_workers=0, **kw)
    res["make_loader_again_s"] = time.perf_counter() - t
    (res["batch0_ms"], res["batch1_ms"]), _ = _epoch_times(loader)
    loader = make_loader(mix, batch_size=BATCH, size=(SIDE, SIDE), num_workers=workers, profile=True, **kw)
    (res["wbatch0_ms"], res["wbatch1_ms"]), opens = _epoch_times(loader)
    for k in ("batch0_ms", "batch1_ms", "wbatch0_ms", "wbatch1_ms"):
        res[k] *= 1000
    res["opens_per_1k"] = opens / (2 * EPOCH) * 1000
    kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == os.getpid()]
    rss = [_rss_mb(p) for p in kids]
    res["worker_rss_mb"] = max((r[0] for r in rss), default=float("nan"))
    res["worker_pss_mb"] = max((r[1] for r in rss), default=float("nan"))
    res["worker_private_mb"] = max((r[2] for r in rss), default=float("nan"))
    loader.close()
    shutil.rmtree(kw["cache_dir"], ignore_errors=True)
    return res


def _ppid(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def phase_verify(d: Path, n: int) -> dict:
    from vortex_data.verify import verify

    t = time.perf_counter()
    rep = verify(d / "manifests" / "tiny-train.json")
    assert rep.ok, rep.problems[:3]
    return {"verify_s": time.perf_counter() - t, "verify_peak_mb": peak_rss_mb()}


def phase_stats(d: Path, n: int) -> dict:
    from vortex_data.stats.compute import compute_stats

    t = time.perf_counter()
    compute_stats([d / "manifests" / "tiny-train.json"], workers=1, progress=False)
    return {"stats_s": time.perf_counter() - t, "stats_peak_mb": peak_rss_mb()}


PHASES = {"build": phase_build, "loader": phase_loader, "verify": phase_verify, "stats": phase_stats}


def run_phase(name: str, d: Path, n: int, workers: int, shuffle: str, shard_samples: int) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--dir", str(d), "--sizes", str(n), "--workers", str(workers),
           "--shuffle", shuffle, "--shard-samples", str(shard_samples)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


COLUMNS = [("build_s", "build s", "{:.1f}"), ("build_peak_mb", "build MB", "{:.0f}"),
           ("make_loader_s", "make_loader s", "{:.2f}"), ("make_loader_mb", "+MB", "{:.0f}"),
           ("make_loader_again_s", "again s", "{:.2f}"),
           ("spec_kb", "spec KB", "{:.1f}"), ("batch0_ms", "ms/batch e0", "{:.1f}"),
           ("batch1_ms", "e1", "{:.1f}"), ("wbatch0_ms", "workers e0", "{:.1f}"), ("wbatch1_ms", "e1", "{:.1f}"),
           ("worker_rss_mb", "worker MB", "{:.0f}"), ("worker_pss_mb", "PSS", "{:.0f}"),
           ("worker_private_mb", "private", "{:.0f}"),
           ("opens_per_1k", "opens/1k", "{:.1f}"), ("verify_s", "verify s", "{:.1f}"),
           ("verify_peak_mb", "MB", "{:.0f}"), ("stats_s", "stats s", "{:.1f}"), ("stats_peak_mb", "MB", "{:.0f}")]


def report(rows: dict[int, dict]) -> None:
    sizes = sorted(rows)
    print("figure".ljust(16) + "".join(f"{n:>12,}" for n in sizes) + "".join(
        f"{f'exp {a // 1000}k-{b // 1000}k':>14}" for a, b in zip(sizes, sizes[1:])))
    for key, label, fmt in COLUMNS:
        vals = [rows[n].get(key) for n in sizes]
        if all(v is None for v in vals):
            continue
        line = f"{label:<16}" + "".join(f"{fmt.format(v) if v is not None else '-':>12}" for v in vals)
        for (a, va), (b, vb) in zip(zip(sizes, vals), zip(sizes[1:], vals[1:])):
            ok = va and vb and va > 0 and vb > 0
            line += f"{(math.log(vb / va) / math.log(b / a)) if ok else float('nan'):>14.2f}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--work", type=Path, help="folder for the datasets (default: a temporary one, removed)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the worker figures")
    ap.add_argument("--stats-max", type=int, default=50_000,
                    help="run the stats phase only up to this size (it costs ~3 ms of CPU a frame)")
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    ap.add_argument("--shuffle", choices=("global", "blocks"), default="global",
                    help="the loader's training order (make_loader(shuffle=...))")
    ap.add_argument("--shard-samples", type=int, default=DEFAULT_SHARD_SAMPLES,
                    help=f"samples per shard of the built datasets (default {DEFAULT_SHARD_SAMPLES}, the writer's)")
    ap.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        extra = {"loader": (args.workers, args.shuffle), "build": (args.shard_samples,)}.get(args.phase, ())
        print(json.dumps(PHASES[args.phase](args.dir, args.sizes[0], *extra)))
        return
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-scale-")
        args.work = Path(tmp.name)
    rows: dict[int, dict] = {}
    for n in args.sizes:
        d = args.work / (f"n{n}" if args.shard_samples == DEFAULT_SHARD_SAMPLES else f"n{n}-s{args.shard_samples}")
        rows[n] = {"samples": n}
        phases = args.phases if "build" in args.phases or (d / "manifests").is_dir() else ["build", *args.phases]
        for ph in phases:
            if ph == "stats" and n > args.stats_max:
                continue
            rows[n].update(run_phase(ph, d, n, args.workers, args.shuffle, args.shard_samples))
            print(f"{n:>9,} {ph}: " + ", ".join(f"{k}={v:.3g}" for k, v in rows[n].items() if k != "samples"),
                  flush=True)
    print()
    report(rows)
    print(json.dumps(rows))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
