"""`vortex-data demo`: the whole pipeline on small generated sources in their true formats."""

from __future__ import annotations

import argparse
import importlib
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .convert import get_converter
from .convert.shards import BuildConfig, build_shards
from .inspect import format_summary, manifest_summary
from .verify import verify

if TYPE_CHECKING:
    from .stream.mixture import Mixture

# (dataset, "module:function" writing a demo source under a folder and returning --src, extra
# build-shards arguments; "{root}" is the folder the source was written to)
DEMO_SOURCES: list[tuple[str, str, list[str]]] = [
    ("diode", "vortex_data.fixtures.diode:write_demo_diode", []),
    ("nyu", "vortex_data.fixtures.nyu:write_demo_nyu_source", []),
    ("sunrgbd", "vortex_data.fixtures.sunrgbd:write_demo_sunrgbd", ["--split-file", "{root}/allsplit.mat"]),
    ("femto", "vortex_data.fixtures.femto:write_demo_femto", []),
    ("tum", "vortex_data.fixtures.tum:write_demo_tum", ["--camera", "ros-default"]),
    # The demo's raw scene is rendered, not one of NYU's rooms: there is no evaluation room to leave out.
    ("nyu-raw", "vortex_data.fixtures.nyu_raw:write_demo_nyu_raw", ["--allow-eval-scenes"]),
]


def _writer(target: str) -> Callable[[Path], Path]:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def converter_from_cli(dataset: str, src: Path, extra: list[str]):
    cls = get_converter(dataset)
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser.add_argument_group(dataset))
    return cls.from_args(src, parser.parse_args(extra))


def run_demo(out: Path, workers: int = 2, keep: bool = False) -> list[Path]:
    if out.exists() and not keep:
        shutil.rmtree(out)
    t0 = time.perf_counter()
    manifests: list[Path] = []
    for dataset, target, extra in DEMO_SOURCES:
        print(f"== {dataset}: generating a small source in its native layout")
        root = out / "sources" / dataset
        src = _writer(target)(root)
        converter = converter_from_cli(dataset, src, [a.format(root=root) for a in extra])
        cfg = BuildConfig(out_dir=out / "shards", manifest_dir=out / "manifests", workers=workers, shard_samples=4)
        result = build_shards(converter, cfg)
        for m in result.manifests:
            print(format_summary(manifest_summary(m)))
            rep = verify(m)
            status = "OK" if rep.ok else "FAILED"
            print(f"verify: {status} ({rep.shards_checked} shards, {rep.samples_checked} samples decoded)")
            for p in rep.problems:
                print("  " + p)
            if not rep.ok:
                raise SystemExit(1)
            print()
        manifests += result.manifests
    from .stats.compute import demo_stats
    print("== stats: depth/label/RGB statistics, label-less batch risk, near-duplicates")
    # The mixture is the one the demo trains on (training splits only); eval splits are reported, unweighted.
    demo_stats(manifests, out / "stats", workers=workers, mixture=stats_mixture(out / "manifests"))
    demo_stream(out / "manifests")
    demo_stream(out / "manifests", "stage2_raw", "labelled NYU + NYU raw captures, stratified", batches=2)
    demo_look(out / "manifests", out)
    demo_train(out / "manifests", out / "train")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {out}")
    return manifests


def stats_mixture(manifests_dir: Path) -> Mixture:
    """The stats report's mixture: the shipped stage-1 recipe on the demo's training splits."""
    from .stats.mixture_risk import read_mixture

    return read_mixture("stage1", "train", manifests_dir)


def demo_stream(manifests_dir: Path, mixture: str = "stage1", what: str = "SUN RGB-D + DIODE indoor + NYU",
                batches: int = 3) -> None:
    """Stream a few augmented batches of a shipped mixture and count samples per source."""
    from collections import Counter

    from .stream import make_loader

    print(f"== stream: the {mixture} mixture ({what}), V5 augmentation")
    loader = make_loader(mixture, split="train", batch_size=8, image_size=(240, 320), seed=0,
                         manifests_dir=str(manifests_dir))
    counts: Counter[str] = Counter()
    for i, batch in zip(range(batches), loader):
        counts.update(loader.source_names[d] for d in batch["dataset"].tolist())
        print(f"batch {i}: rgb {tuple(batch['rgb'].shape)} depth {tuple(batch['depth'].shape)} "
              f"seg {tuple(batch['seg'].shape)} labelled {int(batch['has_seg'].sum())}/{len(batch['key'])}")
    print("samples per source:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print()


def demo_look(manifests_dir: Path, out: Path) -> None:
    """A contact sheet of what the trainer receives, and Rerun recordings when rerun-sdk is there."""
    from importlib.util import find_spec

    from .show import show

    print("== show: a contact sheet of two stage1 training batches (after loader.finish)")
    sheet = show("stage1", out / "show" / "stage1-train.png", batches=2, batch_size=4, manifests_dir=str(manifests_dir))
    print(f"contact sheet: {sheet}")
    if find_spec("rerun") is None:
        print("== export rerun: skipped (install the [viz] extra for rerun-sdk: pip install -e '.[viz]')")
        return
    from .export_rerun import export

    print("== export rerun: NYU (labels, frame index) and Femto Bolt (sensor time line) as .rrd recordings")
    for name in ("nyu-train", "femto-eval"):
        rrd = out / "rerun" / f"{name}.rrd"
        n = export(manifests_dir / f"{name}.json", rrd, limit=8)
        print(f"{rrd}: {n} samples (open with: rerun {rrd})")
    print()


def demo_train(manifests_dir: Path, run_dir: Path) -> None:
    """A few CPU steps of both training stages from the demo shards, then evaluation on NYU val."""
    from importlib.util import find_spec

    if find_spec("timm") is None:
        print("== train: skipped (install the [train] extra for EfficientViT-B1: pip install -e '.[train]')")
        return
    # The trainer's own command line, not vortex_data.cli: the CLI imports this module.
    from .train.commands import main

    print("== train: stage 1 (mixture) then stage 2 (NYU, V5), a few CPU steps each, then eval")
    common = ["--manifests", str(manifests_dir), "--run-dir", str(run_dir), "--batch-size", "2",
              "--image-size", "96", "128", "--num-workers", "0"]
    code = main(["train", "--recipe", "v6", *common, "--steps", "4", "--steps-per-epoch", "2", "--warmup-steps", "1",
                 "--ckpt-every", "2", "--profile-steps", "2", "--log-every", "2"])
    if code != 0:
        raise SystemExit(f"demo training exited with {code}")
    code = main(["eval", "--checkpoint", str(run_dir / "stage2" / "checkpoints"),
                 "--manifest", str(manifests_dir / "nyu-val.json"), "--batch-size", "2", "--image-size", "96", "128"])
    if code != 0:
        raise SystemExit(f"demo evaluation exited with {code}")
