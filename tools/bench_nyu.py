"""Frames per second of the NYU v7.3 converter (enumerate + load of every frame, one process).

    python tools/bench_nyu.py --frames 32 [--mat path.mat] [--depth raw] [--uncompressed]

Without --mat it writes a synthetic fixture in the real layout (gzip-compressed like MATLAB's own
v7.3 files: the real 1,449-frame file is 2.97 GB against 6.2 GB of raw arrays) to a temp folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from vortex_data.fixtures.nyu import NyuFrame, synthetic_frames, write_nyu_mat
from vortex_data.convert.nyu.converter import NyuConverter


def fixture_frames(n: int, distinct: int = 4):
    """n frames cycling through a few renders (rendering is slower than converting), each shifted."""
    base = synthetic_frames(min(n, distinct), seed=0)
    for i in range(n):
        b = base[i % len(base)]
        yield NyuFrame(rgb=np.roll(b.rgb, i, axis=1), depth_m=b.depth_m, labels=b.labels,
                       raw_depth_m=b.raw_depth_m, scene=f"bench_{i:04d}")


def bench(path: Path, depth: str) -> dict[str, float]:
    t0 = time.perf_counter()
    conv = NyuConverter(path, depth=depth)
    refs = conv.enumerate(None).frames
    t1 = time.perf_counter()
    for ref in refs:
        conv.load(ref)
    t2 = time.perf_counter()
    return {"frames": len(refs), "enumerate_s": t1 - t0, "load_s": t2 - t1,
            "frames_per_s": len(refs) / (t2 - t0), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--mat", type=Path, help="an existing labeled .mat (default: write a fixture)")
    ap.add_argument("--depth", choices=("filled", "raw"), default="filled")
    ap.add_argument("--uncompressed", action="store_true", help="fixture without gzip")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.mat
        if path is None:
            path = write_nyu_mat(Path(tmp) / "nyu_depth_v2_labeled.mat", fixture_frames(args.frames), n_frames=args.frames,
                                 compression=None if args.uncompressed else "gzip")
        r = bench(path, args.depth)
        print(f"{r['frames']} frames from {path.name} ({os.path.getsize(path) / 2**20:.0f} MiB): "
              f"enumerate {r['enumerate_s']:.2f} s, load {r['load_s']:.2f} s, "
              f"{r['frames_per_s']:.1f} frames/s, peak RSS {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
