"""(d) of ``vortex-data bench-loader``: every contestant side by side, interleaved round after round,
per core: the JPEG floor, the loader in each mode, its device phase, webdataset + torchvision v2,
and plain webdataset, MosaicML Streaming and LitData through this loader's transform."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..format.schema import IGNORE_INDEX, decode_rgb
from ..stream import IMAGENET_MEAN, IMAGENET_STD, RawSample, build_batch, make_loader
from ..stream.augment import AugmentConfig
from ..stream.mixture import Mixture
from .measure import cpu_per_sample, sample_members


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

    from ..format.schema import decode_array

    aspect = cfg.size[1] / cfg.size[0]
    tf = v2.Compose([
        v2.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=(cfg.ratio[0] * aspect, cfg.ratio[1] * aspect)),
        v2.RandomHorizontalFlip(cfg.flip_p), v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def member(s: dict[str, Any], name: str) -> tuple[str, bytes] | None:
        ext = next((e for e in s if e.startswith(name + ".")), None)
        return None if ext is None else (ext.split(".", 1)[1], s[ext])

    def sample(s: dict[str, Any]) -> tuple[Any, Any, Any]:
        rgb = Image.open(io.BytesIO(member(s, "rgb")[1])).convert("RGB")
        depth_mm = decode_array(*member(s, "depth")[::-1])
        seg_member = member(s, "seg")
        # A label-less sample (DIODE, most of SUN RGB-D) gets an all-ignore map, as in the loader.
        seg = decode_array(*seg_member[::-1]).copy() if seg_member else np.full(depth_mm.shape, IGNORE_INDEX, np.uint8)
        return tf(rgb, tv_tensors.Mask(torch.from_numpy(depth_mm.astype(np.float32) / 1000)),
                  tv_tensors.Mask(torch.from_numpy(seg)))

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

    from ..stream.photometric import to_device

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
