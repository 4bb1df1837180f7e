"""Seconds per 1,000 samples for `vortex-data stats` on this machine.

Builds N synthetic DIODE-layout frames at the given resolution (JPEG RGB, zstd depth), half in
the train and half in the val split (two manifests), then times compute_stats (index read +
streaming pass + duplicate search) and the HTML rendering.

    python tools/bench_stats.py --frames 60 --size 640x480 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vortex_data.fixtures.diode import write_diode_tree
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.diode import DiodeConverter
from vortex_data.stats import compute_stats, write_outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="640x480", help="WxH of the generated frames")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Two manifests (train, val), so the frames are hashed and searched for near-duplicates as
        # in any report of more than one source.
        write_diode_tree(root / "src", {("train", "indoors", 1, 1): args.frames - args.frames // 2,
                                        ("val", "indoors", 1, 1): args.frames // 2}, size=(w, h))
        cfg = BuildConfig(out_dir=root / "shards", manifest_dir=root / "manifests", workers=args.workers,
                          shard_samples=16, progress=False)
        manifests = build_shards(DiodeConverter(root / "src"), cfg).manifests
        t0 = time.perf_counter()
        stats = compute_stats(manifests, workers=args.workers, progress=False)
        t1 = time.perf_counter()
        _, html = write_outputs(stats, root / "report")
        t2 = time.perf_counter()
        size = html.stat().st_size
    print(f"{args.frames} frames {w}x{h}, {args.workers} workers: statistics {t1 - t0:.2f} s, report {t2 - t1:.2f} s; "
          f"{(t1 - t0) / args.frames * 1000:.1f} s per 1,000 samples (+ {t2 - t1:.1f} s fixed for the HTML)")
    print(f"report.html {size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
