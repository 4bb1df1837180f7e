"""What the loader's read-time checks cost next to decoding: XXH3-64 of every member, and the key the
json member records (integrity.key_mismatch), vs decode_sample.

    python tools/bench_integrity.py manifests/nyu-train.json [--samples 64]
    python tools/bench_integrity.py --rgb frame.jpg --depth depth.png   # one real frame, encoded as shards store it

Prints microseconds per sample for each and the ratios (the checks' share of decode time).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from vortex_data.format.integrity import check_members, key_mismatch, member_checksums
from vortex_data.format.manifest import ManifestError, load_manifest
from vortex_data.format.tar_index import iter_samples
from vortex_data.format.schema import Sample, decode_sample, encode_sample
from vortex_data.format.geometry import Intrinsics


def from_manifest(path: Path, n: int) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for shard in load_manifest(path).shard_paths():
        for key, members in iter_samples(shard):
            out.append((key, members))
            if len(out) >= n:
                return out
    return out


def _read(path: Path, flags: int) -> np.ndarray:
    im = cv2.imread(str(path), flags)
    if im is None:
        raise SystemExit(f"{path}: not a readable image (missing, or not a format OpenCV decodes)")
    return im


def from_files(rgb: Path, depth: Path) -> list[tuple[str, dict[str, bytes]]]:
    im = cv2.cvtColor(_read(rgb, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    d = _read(depth, cv2.IMREAD_UNCHANGED).astype(np.uint16)
    h, w = d.shape
    s = Sample("bench/train/frame", im, d, Intrinsics(500.0, 500.0, w / 2, h / 2))
    return [(s.key, dict(encode_sample(s)))]


def bench(samples: list[tuple[str, dict[str, bytes]]], reps: int) -> tuple[float, float, float]:
    sums = [member_checksums(m.items()) for _, m in samples]
    t0 = time.perf_counter()
    for _ in range(reps):
        for (key, m), want in zip(samples, sums):
            check_members("bench", key, m, want)
    t_check = (time.perf_counter() - t0) / (reps * len(samples))
    t0 = time.perf_counter()
    for _ in range(reps):
        for key, m in samples:
            assert key_mismatch(key, m) is None
    t_key = (time.perf_counter() - t0) / (reps * len(samples))
    t0 = time.perf_counter()
    for _ in range(reps):
        for key, m in samples:
            decode_sample(m, key)
    t_decode = (time.perf_counter() - t0) / (reps * len(samples))
    return t_check, t_key, t_decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path, nargs="?")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--rgb", type=Path)
    ap.add_argument("--depth", type=Path)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    if (a.rgb is None) != (a.depth is None) or (a.rgb is None and a.manifest is None):
        ap.error("give a MANIFEST, or --rgb and --depth together")
    try:
        samples = from_files(a.rgb, a.depth) if a.rgb else from_manifest(a.manifest, a.samples)
    except (ManifestError, OSError) as e:  # the message names the file and the problem
        raise SystemExit(str(e)) from None
    size = np.mean([sum(len(v) for v in m.values()) for _, m in samples])
    t_check, t_key, t_decode = bench(samples, a.reps)
    print(f"{len(samples)} samples, {size / 1024:.0f} KiB encoded each: checksum check {t_check * 1e6:.1f} us, "
          f"key check {t_key * 1e6:.2f} us, decode {t_decode * 1e6:.0f} us per sample -> checksums = "
          f"{100 * t_check / t_decode:.2f} %, key = {100 * t_key / t_decode:.3f} % of decode time")


if __name__ == "__main__":
    main()
