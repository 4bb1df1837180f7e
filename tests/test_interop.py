"""docs/interop.md's snippets, run on shards built from the demo's sources (every dataset), give what
vortex-data's own decoder gives: Hugging Face datasets, webdataset, DuckDB and plain tarfile."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.demo import DEMO_SOURCES, _writer, converter_from_cli
from vortex_data.format.manifest import load_manifest
from vortex_data.format.schema import META_FIELDS, decode_sample, extra_fields
from vortex_data.format.tar_index import iter_samples

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"
# A field each converter records beyond the common ones (in ``extra``).
OWN_FIELD = {"diode": "scan", "nyu": "scene_type", "sunrgbd": "subset", "femto": "capture_index", "tum": "sequence",
             "nyu-raw": "raw_depth_filename"}


def snippet(heading: str) -> str:
    """The python block under a ``## <heading>`` of docs/interop.md."""
    section = DOC.read_text().split(f"## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """Every demo source built into ``shards/`` and ``manifests/`` (the folder the snippets run in)."""
    out = tmp_path_factory.mktemp("interop")
    for dataset, target, extra in DEMO_SOURCES:
        root = out / "sources" / dataset
        converter = converter_from_cli(dataset, _writer(target)(root), [a.format(root=root) for a in extra])
        build_shards(converter, BuildConfig(out_dir=out / "shards", manifest_dir=out / "manifests", workers=1,
                                            shard_samples=4, progress=False))
    return out


@pytest.fixture(scope="module")
def ours(demo) -> dict[str, dict]:
    """key -> vortex-data's decoding of the sample."""
    return {k: decode_sample(m, k) for p in sorted(demo.glob("shards/**/*.tar")) for k, m in iter_samples(p)}


def run(heading: str, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    ns: dict = {"__name__": "interop_snippet"}
    exec(compile(snippet(heading), f"{DOC}:{heading}", "exec"), ns)
    return ns


def test_hugging_face_datasets_keeps_every_sample_label_map_and_field(demo, ours, monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the [interop] extra")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # not the user's cache
    datasets.disable_progress_bars()
    ns = run("Hugging Face `datasets`", demo, monkeypatch)
    ds = ns["ds"]
    written = sum(load_manifest(m).totals["written"] for m in demo.glob("manifests/*.json"))
    assert ds.num_rows == written == len(ours) and sorted(ds["__key__"]) == sorted(ours)
    seen = set()
    for row in ds:
        want = ours[str(row["__key__"])]
        assert np.array_equal(row["seg.npy.zst"], want["seg"])  # all 255 where the frame has no labels
        assert np.array_equal(row["depth.npy.zst"], want["depth_mm"])
        assert sorted(row["json"]) == sorted(META_FIELDS) and row["json"]["has_seg"] == want["has_seg"]
        extra = json.loads(row["json"]["extra"])
        assert extra == extra_fields(want["meta"]) and OWN_FIELD[row["json"]["dataset"]] in extra
        seen.add(row["json"]["dataset"])
    assert seen == set(OWN_FIELD) and any(not r["has_seg"] for r in ours.values())
    assert ns["depth_m"].max() > 0 and ns["seg"].shape == ns["depth_m"].shape


def test_webdataset_with_the_one_line_decoder_gives_our_arrays(demo, ours, monkeypatch):
    ns = run("`webdataset`", demo, monkeypatch)
    n = 0
    for s in ns["ds"]:
        want = ours[s["__key__"]]
        assert np.array_equal(s["depth.npy.zst"], want["depth_mm"]) and np.array_equal(s["seg.npy.zst"], want["seg"])
        assert np.array_equal(s["rgb.jpg"], want["rgb"]) and s["json"]["key"] == s["__key__"]
        n += 1
    assert n == len(ours)


def test_duckdb_groups_the_indexes_by_dataset_and_split(demo, monkeypatch):
    pytest.importorskip("duckdb", reason="the [interop] extra")
    ns = run("DuckDB over the indexes", demo, monkeypatch)
    want = sorted((m.dataset, m.split, m.totals["written"], m.totals["labelled"])
                  for m in map(load_manifest, demo.glob("manifests/*.json")))
    assert ns["counts"].fetchall() == want and len(want) == len(list(demo.glob("manifests/*.json"))) >= 7
    # every sample names its scene, and no scene is on both sides of a dataset's split
    both = ns["duckdb"].sql("SELECT dataset, scene, count(DISTINCT split) AS n, count(*) FILTER (scene IS NULL) AS none "
                            "FROM 'manifests/*.parquet' GROUP BY ALL HAVING n > 1 OR none > 0").fetchall()
    assert both == []


def test_plain_tarfile_numpy_and_zstandard_give_our_arrays(demo, ours, monkeypatch):
    ns = run("Plain `tarfile`, numpy and zstandard", demo, monkeypatch)
    got = {k: v for p in sorted(demo.glob("shards/**/*.tar")) for k, v in ns["samples"](p)}
    assert list(got) == list(ours)
    for key, s in got.items():
        want = ours[key]
        assert np.array_equal(s["depth.npy.zst"], want["depth_mm"]) and np.array_equal(s["seg.npy.zst"], want["seg"])
        assert np.array_equal(s["rgb.jpg"], want["rgb"]) and s["json"]["scene"] == want["meta"]["scene"]
