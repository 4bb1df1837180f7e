"""Shard-build throughput and depth-codec sizes/speeds.

Usage:  python tools/bench_build.py [--frames 24] [--workers 1 2] [--samples-dir ../shared/samples]

1. Generates a DIODE-layout source of --frames synthetic 1024x768 frames (true format).
2. Builds shards with each depth codec (zst level 1/3/9, 16-bit PNG) on one worker and reports
   frames/s and bytes per sample split by field; then the default codec with each worker count.
3. Encodes/decodes one depth map per codec -- a real NYU frame if the samples folder is given,
   else a synthetic one -- and reports size and single-core decode rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from vortex_data.fixtures.diode import write_demo_diode, write_diode_tree
from vortex_data.format.manifest import load_manifest
from vortex_data.format.tar_index import iter_samples
from vortex_data.format.schema import EncodeOptions, decode_array, encode_array
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.diode import DiodeConverter

CODECS = [("zst", 1), ("zst", 3), ("zst", 9), ("png", 3)]


def field_bytes(manifest: Path) -> dict[str, float]:
    m = load_manifest(manifest)
    sizes: dict[str, int] = defaultdict(int)
    n = 0
    for shard in m.shard_paths():
        for _, members in iter_samples(shard):
            n += 1
            for ext, data in members.items():
                sizes[ext.split(".")[0]] += len(data)
    return {k: v / n for k, v in sizes.items()}


def replicate_scans(src: Path, copies: int) -> int:
    """Hard-link the generated scan into ``copies`` more scans (new frame ids, same pixels), so
    parallel runs last long enough for process start-up not to dominate; returns the frame count."""
    scan = next(src.glob("train/indoors/scene_*/scan_*"))
    for c in range(1, copies + 1):
        dst = scan.parent / f"scan_{90000 + c:05d}"
        dst.mkdir()
        for f in scan.iterdir():
            scene_scan = f"{scan.parent.name[6:]}_{scan.name[5:]}"
            os.link(f, dst / f.name.replace(scene_scan, f"{scan.parent.name[6:]}_{dst.name[5:]}", 1))
    return len(list(src.rglob("*.png")))


def bench_build(src: Path, work: Path, codec: str, level: int, workers: int, frames: int) -> tuple[float, dict]:
    out = Path(tempfile.mkdtemp(dir=work))  # a fresh folder: a reused one would resume, not rebuild
    cfg = BuildConfig(out_dir=out / "shards", manifest_dir=out / "manifests", workers=workers, shard_samples=4,
                      encode=EncodeOptions(array_codec=codec, zstd_level=level), progress=False)
    t = time.perf_counter()
    res = build_shards(DiodeConverter(src), cfg)
    dt = time.perf_counter() - t
    return frames / dt, field_bytes(res.manifests[0])


def bench_codec(depth: np.ndarray, codec: str, level: int, repeats: int = 30) -> tuple[int, float]:
    data = encode_array(depth, codec, level)
    assert np.array_equal(decode_array(data, codec), depth)
    t = time.perf_counter()
    for _ in range(repeats):
        decode_array(data, codec)
    return len(data), repeats / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--copies", type=int, default=3, help="hard-linked copies of the source for the worker runs")
    ap.add_argument("--samples-dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "src"
        write_diode_tree(src, {("train", "indoors", 1, 1): args.frames})
        print(f"source: {args.frames} DIODE-layout frames, 1024x768, train/indoors")
        print("\nbuild throughput by depth codec (1 worker):")
        print(f"{'codec':<8}{'frames/s':>10}{'rgb KB':>9}{'depth KB':>10}{'json B':>8}")
        for codec, level in CODECS:
            fps, sizes = bench_build(src, work, codec, level, 1, args.frames)
            name = f"{codec}-{level}" if codec == "zst" else "png16"
            print(f"{name:<8}{fps:>10.1f}{sizes['rgb'] / 1e3:>9.0f}{sizes['depth'] / 1e3:>10.0f}{sizes['json']:>8.0f}")
        frames = replicate_scans(src, args.copies)
        print(f"\nbuild throughput by worker count (zst-3, {frames} frames incl. hard-linked copies):")
        for w in args.workers:
            fps, _ = bench_build(src, work, "zst", 3, w, frames)
            print(f"  workers={w}: {fps:.1f} frames/s ({fps / w:.1f} per worker)")

    if args.samples_dir and (args.samples_dir / "nyu/sync_depth_00000.png").exists():
        depth = cv2.imread(str(args.samples_dir / "nyu/sync_depth_00000.png"), cv2.IMREAD_UNCHANGED)
        what = "real NYU depth frame sync_depth_00000.png (640x480 uint16 mm)"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_demo_diode(Path(tmp))
            d = np.load(next(Path(tmp).rglob("*_depth.npy")))[..., 0]
        depth = np.rint(d * 1000).clip(0, 65535).astype(np.uint16)
        what = "synthetic DIODE depth frame (1024x768)"
    print(f"\ndepth codec on one {what}, one core:")
    print(f"{'codec':<8}{'KB':>8}{'decodes/s':>11}")
    for codec, level in CODECS:
        size, rate = bench_codec(depth, codec, level)
        name = f"{codec}-{level}" if codec == "zst" else "png16"
        print(f"{name:<8}{size / 1e3:>8.0f}{rate:>11.0f}")


if __name__ == "__main__":
    main()
