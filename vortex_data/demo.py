"""`vortex-data demo`: the whole pipeline on small generated sources in their true formats."""

from __future__ import annotations

import argparse
import importlib
import shutil
import time
from pathlib import Path
from typing import Callable

from .inspect import format_summary, manifest_summary
from .manifest import verify
from .shards import BuildConfig, build_shards
from .sources import get_converter

# (dataset, "module:function" writing a demo source under a folder and returning --src, extra
# build-shards arguments; "{root}" is the folder the source was written to)
DEMO_SOURCES: list[tuple[str, str, list[str]]] = [
    ("diode", "vortex_data.fixtures.diode:write_demo_diode", []),
    ("nyu", "vortex_data.fixtures.nyu:write_demo_nyu_source", []),
    ("sunrgbd", "vortex_data.fixtures.sunrgbd:write_demo_sunrgbd", ["--split-file", "{root}/allsplit.mat"]),
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
    from .stats import demo_stats
    print("== stats: depth/label/RGB statistics, label-less batch risk, near-duplicates")
    demo_stats(manifests, out / "stats", workers=workers)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {out}")
    return manifests
