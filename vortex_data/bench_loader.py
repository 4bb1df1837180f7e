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
:mod:`vortex_data.bench_photos`: every sample a perturbed copy, JPEG q95, ~100 KB at 640x480),
which is what the published figures use; synthetic fixtures flatter every decode figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .augment import AugmentConfig
from .mixture import Mixture, Source, read_source_index
from .schema import decode_rgb, decode_sample, encode_array
from .shard_reader import ShardReader
from .stream import IMAGENET_MEAN, IMAGENET_STD, RawSample, build_batch, keep_freed_memory, make_loader


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-loader", help="measure loader throughput against its baselines",
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

def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process and of its largest finished child (workers), MiB."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (finished DataLoader workers).

    Rates per core are samples per CPU second: on a shared machine wall time measures the
    neighbours as much as the code, CPU time does not (much).
    """
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + live_children_cpu_seconds()


def live_children_cpu_seconds() -> float:
    """CPU time of this process's children that are still running (persistent DataLoader
    workers are not reaped between epochs, so RUSAGE_CHILDREN does not see them yet)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0.0
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/children") as f:
                pids = f.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                if fields[0] != "Z":  # a zombie's time is counted once it is reaped
                    total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
            except (OSError, IndexError, ValueError):
                continue
    return total / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall and CPU seconds over a block."""

    def __enter__(self) -> "Clock":
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, cpu_seconds() - self.cpu0


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

def sample_members(mixture: Mixture, limit: int) -> list[tuple[str, dict[str, bytes]]]:
    """Up to ``limit`` encoded samples from the mixture's shards (for the baselines)."""
    out: list[tuple[str, dict[str, bytes]]] = []
    reader = ShardReader()
    for s in mixture.sources:
        ix = read_source_index(mixture.manifest_path(s, "train"), s.name)
        for url in ix.shards:
            for key, members in reader.read_group(url, list(reader.table(url))).items():
                out.append((key, members))
                if len(out) >= limit:
                    return out
    return out


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


# ---------------------------------------------------------------- (d) side by side, interleaved

def cpu_per_sample(fn: Callable[[], int]) -> float:
    """CPU seconds of this process per item ``fn`` reports (one core: no workers, one thread)."""
    t0 = time.process_time()
    n = fn()
    return (time.process_time() - t0) / max(n, 1)


def tv2_baseline(urls: list[str], cfg: AugmentConfig, batch: int, limit: int) -> Callable[[], int]:
    """webdataset + torchvision.transforms.v2, what most users would write: PIL decode, joint
    RandomResizedCrop + flip over image and masks (tv_tensors), ColorJitter, Normalize, then
    torch.stack per batch. Depth is decoded by the schema (webdataset has no zstd decoder)."""
    import io

    import torch
    import webdataset as wds
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from .schema import decode_array

    aspect = cfg.size[1] / cfg.size[0]
    tf = v2.Compose([
        v2.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=(cfg.ratio[0] * aspect, cfg.ratio[1] * aspect)),
        v2.RandomHorizontalFlip(cfg.flip_p), v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def member(s: dict[str, Any], name: str) -> tuple[str, bytes]:
        ext = next(e for e in s if e.startswith(name + "."))
        return ext.split(".", 1)[1], s[ext]

    def sample(s: dict[str, Any]) -> tuple[Any, Any, Any]:
        rgb = Image.open(io.BytesIO(member(s, "rgb")[1])).convert("RGB")
        depth = tv_tensors.Mask(torch.from_numpy(decode_array(*member(s, "depth")[::-1]).astype(np.float32) / 1000))
        seg = tv_tensors.Mask(torch.from_numpy(decode_array(*member(s, "seg")[::-1]).copy()))
        return tf(rgb, depth, seg)

    def run() -> int:
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(sample)
        n, buf = 0, []
        for x in ds:
            buf.append(x)
            n += 1
            if len(buf) == batch or n >= limit:
                [torch.stack(t) for t in zip(*buf)]
                buf = []
            if n >= limit:
                break
        return n
    return run


def through_our_transform(items: Callable[[], Iterable[tuple[str, dict[str, bytes]]]], cfg: AugmentConfig,
                          batch: int) -> Callable[[], int]:
    """Another reader's samples (key, member bytes) through this loader's CPU phase
    (photometric="device", the trainer's mode), batch by batch: the readers compared on equal terms."""
    def run() -> int:
        n, buf = 0, []
        for key, members in items():
            buf.append(RawSample(key, members))
            n += 1
            if len(buf) == batch:
                build_batch(buf, cfg, True, 0, 0, photometric="device")
                buf = []
        if buf:
            build_batch(buf, cfg, True, 0, 0, photometric="device")
        return n
    return run


def peer_readers(members: list[tuple[str, dict[str, bytes]]], urls: list[str], root: Path) -> dict[str, Callable[[], Iterable]]:
    """Plain webdataset, MosaicML Streaming (MDS) and LitData over the same samples, each written
    in its own format under ``root``; the last two only when installed (the ``[bench]`` extra)."""
    import webdataset as wds

    def plain_wds() -> Iterable[tuple[str, dict[str, bytes]]]:
        for x in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            yield x["__key__"], {k: v for k, v in x.items() if not k.startswith("__")}
            # (webdataset's own tar reader, no decoding: the bytes go to our transform)

    out: dict[str, Callable[[], Iterable]] = {"webdataset": plain_wds}
    exts = sorted({e for _, m in members for e in m})
    cols = {e.replace(".", "_"): e for e in exts}

    def rows() -> Iterable[dict[str, Any]]:
        for key, m in members:
            yield {"key": key, **{c: m.get(e, b"") for c, e in cols.items()}}

    def unpack(x: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
        return x["key"], {e: bytes(x[c]) for c, e in cols.items() if len(x[c])}

    try:
        from streaming import MDSWriter, StreamingDataset

        with MDSWriter(out=str(root / "mds"), columns={"key": "str", **{c: "bytes" for c in cols}}) as w:
            for r in rows():
                w.write(r)
        mds = StreamingDataset(local=str(root / "mds"), shuffle=False, batch_size=1)
        out["MosaicML Streaming (MDS)"] = lambda: (unpack(x) for x in mds)
    except ImportError:
        pass
    try:
        import litdata
        from litdata.streaming.writer import BinaryWriter

        (root / "litdata").mkdir()
        w = BinaryWriter(str(root / "litdata"), chunk_bytes="64MB")
        for i, r in enumerate(rows()):
            w.add_item(i, r)
        w.done()
        w.merge()
        lit = litdata.StreamingDataset(input_dir=str(root / "litdata"))
        out["LitData"] = lambda: (unpack(x) for x in lit)
    except ImportError:
        pass
    return out


def bench_side_by_side(mixture: Mixture, urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every contestant once per round, ``args.rounds`` rounds; medians of per-sample CPU cost."""
    import torch

    from .photometric import to_device

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: the device phase on this CPU, torch ops single-threaded
    try:
        cfg = AugmentConfig(size=tuple(args.size))
        n, b = args.compare_samples, args.batch_size
        mix = Mixture(mixture.sources, n, "bench")
        members = sample_members(mixture, n)
        jpegs = [m[e] for _, m in members for e in m if e.startswith("rgb.")]
        modes = {"photometric=cpu": ("cpu", "cpu"), "photometric=device": ("device", "cpu"),
                 "decode=device": ("device", "device")}
        if not all("rgb.jpg" in m for _, m in members):
            del modes["decode=device"]  # needs JPEG RGB
        loaders = {k: make_loader(mix, batch_size=b, augment=cfg, seed=0, photometric=p, decode=d)
                   for k, (p, d) in modes.items()}
        raw = {k: list(loaders[k]) for k in modes if k != "photometric=cpu"}  # inputs of the device phase

        def epoch(loader: Any) -> Callable[[], int]:
            return lambda: sum(len(x["key"]) for x in loader)

        def finish(k: str) -> Callable[[], int]:
            return lambda: sum(1 for x in raw[k] if loaders[k].finish(to_device(x, "cpu")) is not None)

        contestants: dict[str, Callable[[], int]] = {"jpeg floor (cv2 decode)": lambda: sum(1 for j in jpegs if decode_rgb(j) is not None)}
        contestants.update({f"loader {k}": epoch(v) for k, v in loaders.items()})
        contestants.update({f"device phase {k} (per batch, CPU)": finish(k) for k in raw})
        try:
            contestants["webdataset + torchvision v2"] = tv2_baseline(urls, cfg, b, n)
        except ImportError as e:  # torchvision or PIL missing: report without it
            print(f"(d) webdataset + torchvision v2 skipped: {e}")
        peers_dir = Path(tempfile.mkdtemp(prefix="vortex-bench-peers-"))
        try:
            for name, items in peer_readers(members, urls, peers_dir).items():
                contestants[f"{name} + our transform (photometric=device)"] = through_our_transform(items, cfg, b)
            rounds: dict[str, list[float]] = {k: [] for k in contestants}
            for _ in range(args.rounds):
                for k, fn in contestants.items():
                    rounds[k].append(cpu_per_sample(fn))
        finally:
            shutil.rmtree(peers_dir, ignore_errors=True)
        med = {k: float(np.median(v)) for k, v in rounds.items()}
        return {"samples": n, "batch_size": b, "rounds": args.rounds, "data": [str(m.manifest) for m in mixture.sources],
                "ms_per_item_median": {k: 1000 * v for k, v in med.items()},
                "ms_per_item_rounds": {k: [1000 * x for x in v] for k, v in rounds.items()}}
    finally:
        torch.set_num_threads(torch_threads)


# ---------------------------------------------------------------- the command

def mixture_of(manifests: list[Path], epoch_size: int) -> Mixture:
    sources = tuple(Source(f"{i}:{m.stem}", str(m.resolve()), 1.0) for i, m in enumerate(manifests))
    return Mixture(sources, epoch_size, "bench")


def run(args: argparse.Namespace) -> int:
    tmp_set = None
    if args.photos is not None:
        from .bench_photos import build_photo_set

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


def report_side_by_side(sb: dict[str, Any]) -> None:
    med = sb["ms_per_item_median"]
    floor = med["jpeg floor (cv2 decode)"]
    tv2 = med.get("webdataset + torchvision v2")
    print(f"(d) side by side, one core, {sb['samples']} samples x {sb['rounds']} interleaved rounds, medians "
          f"(per sample unless marked per batch of {sb['batch_size']}):")
    for k, ms in med.items():
        if "per batch" in k:
            print(f"    {k}: {ms:.1f} ms per batch ({ms / sb['batch_size']:.2f} ms per sample)")
            continue
        line = f"    {k}: {ms:.2f} ms = {1000 / ms:.0f} per CPU s; {floor / ms:.2f}x the JPEG floor"
        if tv2 and k != "webdataset + torchvision v2":
            line += f"; {tv2 / ms:.1f}x webdataset + torchvision v2"
        print(line)
    ours = med.get("loader photometric=device")
    peers = {k: v for k, v in med.items() if "+ our transform" in k}
    if ours and peers:
        print("    same transform, reader only: loader photometric=device = "
              + ", ".join(f"{v / ours:.2f}x {k.split(' + ')[0]}" for k, v in peers.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vortex-data")
    args = add_parser(parser.add_subparsers()).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
