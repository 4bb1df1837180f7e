"""merge-manifests puts shards back in build order: by (group, continuation) number, not by name.

As strings, ``...-000000-1.tar`` sorts before ``...-000000.tar`` and ``-10`` before ``-2``; the
sample indices (and so what a seed streams) would then differ from a single build's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vortex_data.format.manifest import ManifestError, load_manifest, merge, shard_position
from vortex_data.format.schema import EncodeOptions
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.stream import make_loader

from loader_data import SyntheticConverter

N_GROUPS, GROUP = 12, 11  # >= 11 groups, and >= 11 continuation files in each


def _build(root: Path, num_tasks: int = 1, task_index: int = 0) -> list[Path]:
    # shard_bytes=1: every sample after a group's first rolls over to a continuation file.
    cfg = BuildConfig(out_dir=root / "shards", manifest_dir=root / "manifests", shard_samples=GROUP, shard_bytes=1,
                      encode=EncodeOptions(), workers=1, num_tasks=num_tasks, task_index=task_index, progress=False)
    conv = SyntheticConverter("synth", N_GROUPS * GROUP, size=(12, 16))
    return [Path(m) for m in build_shards(conv, cfg).manifests]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    single = _build(root / "single")[0]
    parts = [m for i in (3, 1, 0, 2) for m in _build(root / "array", num_tasks=4, task_index=i)]
    return single, merge(sorted(parts, reverse=True))


def test_shard_position_parses_group_and_continuation():
    assert shard_position("train/synth-train-000000.tar") == (0, 0)
    assert shard_position("train/synth-train-000000-1.tar") == (0, 1)
    assert shard_position("synth-train-000012-10.tar") == (12, 10)
    with pytest.raises(ManifestError, match="not-a-shard.tar"):
        shard_position("not-a-shard.tar")


def test_merged_array_build_equals_the_single_build(builds):
    single, merged = (load_manifest(p) for p in builds)
    names = [Path(s["path"]).name for s in single.shards]
    assert len(names) == N_GROUPS * GROUP and any(n.endswith("-000000-10.tar") for n in names)
    assert [s["path"] for s in merged.shards] == [s["path"] for s in single.shards]
    assert merged.read_index().column("key").to_pylist() == single.read_index().column("key").to_pylist()


def test_loader_streams_the_same_keys_for_the_same_seed(builds):
    single, merged = builds

    def keys(m: Path) -> list[str]:
        loader = make_loader(manifest=str(m), split="train", batch_size=4, size=(12, 16), seed=7)
        return [k for b in loader for k in b["key"]]

    assert keys(merged) == keys(single)
