"""Evaluate a checkpoint: per-dataset depth metrics and mIoU over one ordered pass of a loader."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from vortex_data.train import checkpoint
from vortex_data.train.data import LoaderFactory, LoaderRequest
from vortex_data.train.metrics import DEPTH_METRICS, DepthMeter, SegMeter
from vortex_data.train.model import DepthSegNet
from vortex_data.train.protocol import Protocol, choose


def load_network(path: Path, device: torch.device,
                 say: Callable[[str], None] = lambda line: None) -> tuple[DepthSegNet, dict[str, Any]]:
    """The network of a checkpoint (train.pt, step directory, a stage's checkpoints/ folder or the
    stage folder: :func:`checkpoint.for_reading`, verified as resuming verifies), plus the config
    it was trained with. ``say`` gets one line per newer damaged checkpoint passed over."""
    chosen, skipped = checkpoint.for_reading(path)
    for old, why in skipped:
        say(f"WARNING skipped checkpoint {old}: {why}; using {chosen.parent}")
    shared = checkpoint.load_shared(chosen, device)
    cfg = shared["config"]
    net = DepthSegNet(cfg["max_depth"], decoder_width=cfg["decoder_width"])
    net.load_state_dict(shared["net"])
    return net.to(device).eval(), cfg


def dataset_of(key: str) -> str:
    """Keys are '<dataset>/<split>/<frame id>' (vortex_data.format.schema.make_key)."""
    return key.split("/", 1)[0]


@torch.no_grad()
def evaluate(net: DepthSegNet, loader: Any, device: torch.device, min_depth: float, max_depth: float,
             eigen_crop: bool = False, input_size: tuple[int, int] | None = None) -> dict[str, dict[str, float]]:
    """{dataset: {rmse, abs_rel, log10, d1, d2, d3, miou, seg_pixels, images}} plus an 'all' row.

    ``input_size``: the network sees the RGB resized (bilinear, antialiased) to this size; its
    depth and segmentation logits are upsampled (bilinear) back to the ground truth's size and
    scored there, so the ground truth is never resampled."""
    depth_meters: dict[str, DepthMeter] = defaultdict(lambda: DepthMeter(min_depth, max_depth, eigen_crop))
    seg_meters: dict[str, SegMeter] = defaultdict(SegMeter)
    for batch in loader:
        rgb = batch["rgb"].to(device)
        if input_size is not None and tuple(rgb.shape[-2:]) != tuple(input_size):
            rgb = F.interpolate(rgb, size=tuple(input_size), mode="bilinear", align_corners=False, antialias=True)
        out = net(rgb)
        size = tuple(batch["depth"].shape[-2:])
        if tuple(out["depth"].shape[-2:]) != size:
            out = {k: F.interpolate(out[k].float(), size=size, mode="bilinear", align_corners=False)
                   for k in ("depth", "seg")}
        # A multi-rank evaluation pass pads its last step (is_pad) so every rank has equal batches;
        # padded samples repeat real ones and must not be counted twice.
        pad = batch.get("is_pad")
        names = {i: dataset_of(k) for i, k in enumerate(batch["key"]) if pad is None or not bool(pad[i])}
        for name in sorted(set(names.values())) + ["all"]:
            idx = torch.tensor([i for i, n in names.items() if name in (n, "all")], dtype=torch.long)
            if idx.numel() == 0:
                continue
            depth_meters[name].update(out["depth"][idx].cpu(), batch["depth"][idx])
            seg_meters[name].update(out["seg"][idx].cpu(), batch["seg"][idx])
    return {name: {**depth_meters[name].result(), **seg_meters[name].result(), "images": depth_meters[name].count}
            for name in sorted(depth_meters, key=lambda n: (n == "all", n))}


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = [*DEPTH_METRICS, "miou", "images"]
    head = f"{'dataset':<16}" + "".join(f"{c:>10}" for c in cols)
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        rows.append(f"{name:<16}" + "".join(f"{r[c]:>10.4f}" if c != "images" else f"{int(r[c]):>10d}" for c in cols))
    return "\n".join(rows)


def run_evaluation(ckpt: Path, manifest: str | None, factory: LoaderFactory, batch_size: int, split: str,
                   image_size: tuple[int, int] | None, eigen_crop: bool, protocol: str = "plain",
                   announce: Callable[[str], None] = lambda line: None) -> tuple[Protocol, dict[str, dict[str, float]]]:
    """Evaluate ``split`` of ``manifest`` (a path, ``{split}`` replaced) under ``protocol``
    (:mod:`vortex_data.train.protocol`); ``announce`` gets the protocol's headline first."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, cfg = load_network(ckpt, device, say=announce)
    manifest = manifest.replace("{split}", split) if manifest else manifest
    proto = choose(protocol, manifest, tuple(cfg["image_size"]), image_size, eigen_crop,
                   (cfg["eval_min_depth"], cfg["eval_max_depth"]))
    announce(proto.headline)
    loader = factory(LoaderRequest(mixture=None, manifest=manifest, split=split, batch_size=batch_size,
                                   image_size=proto.loader_size, augment=None, seed=0, training=False))
    return proto, evaluate(net, loader, device, proto.min_depth, proto.max_depth, proto.eigen_crop, proto.input_size)
