"""``vortex-data bench-loader``: throughput of the streaming loader against its baselines.

Measured in one run, on the same samples:

* the loader (shards -> read -> decode -> V5 augmentation -> collate), per stage, over several
  epochs, with peak RSS and RSS drift between epoch 1 and the last;
* (a) the floor: decoding only the RGB JPEGs;
* (b) the old layout, one file per field in a directory tree (16-bit PNG depth), through the same
  decode/augment/collate in the same photometric mode, on local disk and with a simulated
  metadata latency per file open;
* (c) a plain webdataset pipeline with its stock decoders (which turn 16-bit PNG depth into
  8 bits: reported, since that silently ruins depth);
* file opens per 1,000 samples for each layout;
* (d) side by side, interleaved (round after round, medians reported), per core: the JPEG decode
  floor; the loader's CPU cost per sample in each mode (photometric cpu/device, decode
  cpu/device: what the DataLoader workers spend); the device phase (``loader.finish``) per batch
  on the device it runs on here; webdataset + torchvision.transforms.v2 as most users would
  write it (PIL decode, joint RandomResizedCrop + flip through tv_tensors, ColorJitter,
  Normalize; depth decoded by this package's schema, since webdataset has no zstd decoder);
  plain webdataset, MosaicML Streaming and LitData (when installed: ``pip install -e '.[bench]'``)
  reading the same samples, each in its own format, through this loader's transform.

``--photos DIR`` builds the benchmark set from real NYU frames in DIR (see
:mod:`vortex_data.bench.photos`: every sample a perturbed copy, JPEG q95, ~100 KB at 640x480),
which is what the published figures use; synthetic fixtures flatter every decode figure.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..format.schema import decode_rgb, decode_sample, encode_array
from ..stream import RawSample, build_batch, keep_freed_memory, make_loader
from ..stream.augment import AugmentConfig
from ..stream.mixture import Mixture, Source, read_source_index
from .measure import Clock, peak_rss_mb, rate, rss_mb, sample_members
from .side_by_side import bench_side_by_side, report_side_by_side


def add_parser(subparsers: argparse._SubParsersAction, **kw: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-loader", **kw,
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifests", nargs="*", type=Path, metavar="MANIFEST")
    p.add_argument("--photos", type=Path, metavar="DIR",
                   help="build the benchmark set from the real NYU frames in DIR (rgb_N.jpg + sync_depth_N.png)")
    p.add_argument("--photo-samples", type=int, default=256, help="samples in the --photos set")
    p.add_argument("--set-dir", type=Path, help="write the --photos set here (default: a temporary directory)")
    p.add_argument("--photometric", choices=("cpu", "device"), default="device",
                   help="loader mode for the per-epoch figures (the trainer uses 'device'; its device phase is "
                        "timed separately in (d))")
    p.add_argument("--decode", choices=("cpu", "device"), default="cpu", help="where RGB JPEGs are decoded")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the side-by-side comparison (d)")
    p.add_argument("--compare-samples", type=int, default=128, help="samples per contestant per round in (d)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0 = in-process, one core)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--target-rate", type=float, default=0.0, help="images/s the trainer needs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=256, help="epoch size (and baseline sample count)")
    p.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="training size")
    p.add_argument("--latency-ms", type=float, nargs="*", default=[0.0, 2.0, 10.0],
                   help="simulated per-open latencies for the directory-tree baseline")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(func=run)
    return p


# ---------------------------------------------------------------- measurement helpers

# ---------------------------------------------------------------- the loader itself

def bench_stream(mixture: Mixture, args: argparse.Namespace) -> dict[str, Any]:
    cfg = AugmentConfig(size=tuple(args.size))
    loader = make_loader(mixture, batch_size=args.batch_size, augment=cfg, num_workers=args.workers,
                         seed=0, profile=True, photometric=args.photometric, decode=args.decode)
    stages = {"read": 0.0, "decode": 0.0, "augment": 0.0, "collate": 0.0}
    wall, cpu, rss, opens = [], [], [], {}
    n = 0
    for epoch in range(args.epochs):
        count = 0
        with Clock() as c:
            for b in loader:
                count += len(b["key"])
                t = b["timing"]
                for k in stages:
                    stages[k] += t[k]  # per batch (read: the window's read time shared by its batches)
                opens[(epoch, t["worker"])] = t["opens"]
        wall.append(rate(count, c.wall))
        cpu.append(rate(count, c.cpu))
        rss.append(rss_mb())
        n += count
    return {"samples_per_s": wall, "samples_per_cpu_s": cpu,
            "stage_ms_per_sample": {k: 1000 * v / n for k, v in stages.items()},
            "rss_mb_after_epoch": rss, "peak_rss_mb": peak_rss_mb(),
            "opens_per_1000": 1000 * sum(opens.values()) / n, "samples": n}


# ---------------------------------------------------------------- baselines

def bench_jpeg_floor(samples: list[tuple[str, dict[str, bytes]]]) -> float:
    """RGB decodes per CPU second."""
    jpegs = [m[e] for _, m in samples for e in m if e.startswith("rgb.")]
    with Clock() as c:
        for data in jpegs:
            decode_rgb(data)
    return rate(len(jpegs), c.cpu)


def write_tree(samples: list[tuple[str, dict[str, bytes]]], root: Path) -> list[str]:
    """The old layout: <root>/<key>/{meta.json, rgb.jpg, depth.png (16-bit), seg.png}."""
    for key, m in samples:
        d = root / key
        d.mkdir(parents=True, exist_ok=True)
        dec = decode_sample(m, key)
        (d / "meta.json").write_bytes(m["json"])
        rgb_ext = next(e for e in m if e.startswith("rgb."))
        (d / rgb_ext).write_bytes(m[rgb_ext])
        (d / "depth.png").write_bytes(encode_array(dec["depth_mm"], "png"))
        if dec["has_seg"]:
            (d / "seg.png").write_bytes(encode_array(dec["seg"], "png"))
    return [k for k, _ in samples]


def tree_reader(root: Path, latency_s: float) -> Callable[[str], dict[str, bytes]]:
    """Reads one sample's files; ``latency_s`` is slept per open to model a network filesystem."""
    def read(key: str) -> dict[str, bytes]:
        members = {}
        for f in sorted((root / key).iterdir()):  # listing + one open per field, like the old loader
            if latency_s:
                time.sleep(latency_s)
            members[f.name.replace("meta.json", "json")] = f.read_bytes()
        return members
    return read


def run_pipeline(keys: list[str], read: Callable[[str], dict[str, bytes]], cfg: AugmentConfig,
                 batch: int, photometric: str = "cpu") -> dict[str, float]:
    """Same decode/augment/collate as the loader (in the same photometric mode), over ``read``,
    on one core: samples per CPU second and per wall second (the latter includes simulated open
    latency)."""
    with Clock() as c:
        _pipeline(keys, read, cfg, batch, photometric)
    return {"per_cpu_s": rate(len(keys), c.cpu), "per_wall_s": rate(len(keys), c.wall)}


def _pipeline(keys: list[str], read: Callable[[str], dict[str, bytes]], cfg: AugmentConfig, batch: int,
              photometric: str) -> None:
    for i in range(0, len(keys), batch):
        samples = [RawSample(key, read(key)) for key in keys[i:i + batch]]
        b = build_batch(samples, cfg, True, 0, 0, photometric=photometric)
        if photometric == "cpu":
            b["seg"].long()  # the same work as the loader


def bench_stock_webdataset(urls: Iterable[str], limit: int) -> dict[str, Any]:
    import webdataset as wds

    ds = wds.WebDataset(list(urls), shardshuffle=False, empty_check=False).decode("rgb8")
    n, depth_bits = 0, set()
    with Clock() as c:
        for s in ds:
            n += 1
            for k, v in s.items():
                if k.startswith("depth.") and isinstance(v, np.ndarray):
                    depth_bits.add(v.dtype.itemsize * 8)
            if n >= limit:
                break
    return {"samples_per_cpu_s": rate(n, c.cpu), "decode_only": True,
            "depth_png_decoded_bits": sorted(depth_bits)}


# ---------------------------------------------------------------- the command

def mixture_of(manifests: list[Path], epoch_size: int) -> Mixture:
    sources = tuple(Source(f"{i}:{m.stem}", str(m.resolve()), 1.0) for i, m in enumerate(manifests))
    return Mixture(sources, epoch_size, "bench")


def run(args: argparse.Namespace) -> int:
    tmp_set = None
    if args.photos is not None:
        from .photos import build_photo_set

        out = args.set_dir or Path(tempfile.mkdtemp(prefix="vortex-bench-photos-"))
        tmp_set = None if args.set_dir else out
        args.manifests = [*args.manifests, build_photo_set(args.photos, out, args.photo_samples)]
    if not args.manifests:
        raise SystemExit("bench-loader: give MANIFEST(s) or --photos DIR")
    try:
        return _run(args)
    finally:
        if tmp_set is not None:
            shutil.rmtree(tmp_set, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    keep_freed_memory()  # the allocator policy of a DataLoader worker, for the in-process figures
    mixture = mixture_of(args.manifests, args.samples)
    cfg = AugmentConfig(size=tuple(args.size))
    samples = sample_members(mixture, min(args.samples, 200))
    urls = [u for s in mixture.sources for u in read_source_index(mixture.manifest_path(s, "train")).shards]
    res: dict[str, Any] = {"workers": args.workers, "batch_size": args.batch_size, "size": list(args.size)}
    res["stream"] = bench_stream(mixture, args)
    res["jpeg_floor_per_s"] = bench_jpeg_floor(samples)
    tmp = Path(tempfile.mkdtemp(prefix="vortex-bench-tree-"))
    try:
        keys = write_tree(samples, tmp)
        files = sum(1 for _ in tmp.rglob("*") if _.is_file())
        res["tree"] = {f"{ms:g}ms": run_pipeline(keys, tree_reader(tmp, ms / 1000), cfg, args.batch_size,
                                                 args.photometric) for ms in args.latency_ms}
        res["tree_opens_per_1000"] = 1000 * files / len(keys)
        res["shards_one_core_same_samples"] = run_pipeline_shards(samples, cfg, args.batch_size, args.photometric)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["webdataset_stock"] = bench_stock_webdataset(urls, len(samples))
    if args.rounds > 0:
        res["side_by_side"] = bench_side_by_side(mixture, urls, args)
    report(res, args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def run_pipeline_shards(samples: list[tuple[str, dict[str, bytes]]], cfg: AugmentConfig, batch: int,
                        photometric: str = "cpu") -> dict[str, float]:
    """The loader's per-sample work on one core with reading excluded (members already in memory)."""
    mem = dict(samples)
    return run_pipeline(list(mem), mem.__getitem__, cfg, batch, photometric)


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    s = res["stream"]
    per_core = s["samples_per_cpu_s"][-1]
    floor = res["jpeg_floor_per_s"]
    png = res["tree"]["0ms"]["per_cpu_s"] if "0ms" in res["tree"] else next(iter(res["tree"].values()))["per_cpu_s"]
    print(f"loader ({args.workers} workers, batch {args.batch_size}, {args.size[0]}x{args.size[1]}, V5 augmentation, "
          f"photometric={args.photometric}, decode={args.decode}; the device phase is not in these figures)")
    print("  samples/s per epoch (wall): " + " / ".join(f"{r:.1f}" for r in s["samples_per_s"]))
    print("  samples per CPU second (= per core): " + " / ".join(f"{r:.1f}" for r in s["samples_per_cpu_s"]))
    print("  per-sample stage time (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_ms_per_sample"].items()))
    r = s["rss_mb_after_epoch"]
    print(f"  peak RSS {s['peak_rss_mb']:.0f} MiB; RSS after epoch 1 {r[0]:.0f} MiB, after epoch {len(r)} {r[-1]:.0f} MiB"
          f" ({100 * (r[-1] / r[0] - 1):+.1f} %)")
    print(f"  file opens per 1,000 samples: shards {s['opens_per_1000']:.2f}; "
          f"directory tree {res['tree_opens_per_1000']:.0f}")
    print(f"(a) RGB JPEG decode floor: {floor:.1f} img per CPU s; loader {per_core:.1f} = {per_core / floor:.2f}x floor")
    for k, v in res["tree"].items():
        print(f"(b) directory tree (16-bit PNG depth), {k} per open: {v['per_cpu_s']:.1f} per CPU s, "
              f"{v['per_wall_s']:.1f} per wall s; loader {per_core / min(v['per_cpu_s'], v['per_wall_s']):.2f}x")
    print(f"    loader = {per_core / png:.2f}x the 16-bit PNG baseline per core (local disk)")
    w = res["webdataset_stock"]
    bits = w["depth_png_decoded_bits"]
    print(f"(c) webdataset stock decoders, decode only (no augmentation): {w['samples_per_cpu_s']:.1f} per CPU s; "
          + (f"16-bit PNG depth came out as {bits} bit" if bits else "zst depth left undecoded (bytes)"))
    if "side_by_side" in res:
        report_side_by_side(res["side_by_side"])
    if args.target_rate:
        need = math.ceil(args.target_rate / per_core)
        have = max(1, args.workers)
        print(f"target {args.target_rate:.0f} img/s: {'keeps up' if have >= need else 'falls short'} with {have} "
              f"core(s); needs {need} worker core(s) at {per_core:.1f} img/s each")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vortex-data")
    args = add_parser(parser.add_subparsers()).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
