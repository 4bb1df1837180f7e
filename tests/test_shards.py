"""Shard writer: deterministic bytes, atomic + resumable after kill -9, SLURM parts, size caps."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from vortex_data.fixtures.diode import write_diode_tree
from vortex_data.manifest import iter_tar_samples, load_manifest, merge, verify
from vortex_data.schema import decode_sample
from vortex_data.shards import BuildConfig, build_shards
from vortex_data.sources.diode import DiodeConverter

SMALL = (96, 72)
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("diode")
    write_diode_tree(root, {("train", "indoors", 1, 1): 7, ("train", "indoors", 1, 2): 4,
                            ("val", "indoors", 2, 1): 3}, size=SMALL)
    return root


def _build(src, out, **kw):
    kw.setdefault("workers", 1)
    cfg = BuildConfig(out_dir=out / "shards", manifest_dir=out / "manifests", shard_samples=3, progress=False, **kw)
    return build_shards(DiodeConverter(src), cfg)


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and (p.suffix in (".tar", ".json", ".parquet")) and ".build" not in p.parts}


def test_builds_are_byte_identical_whatever_the_worker_count(src, tmp_path):
    _build(src, tmp_path / "a", workers=1)
    _build(src, tmp_path / "b", workers=2)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert len([k for k in a if k.endswith(".tar")]) == 5  # 11 train frames / 3 -> 4 shards, 3 val -> 1
    assert a == b


def test_shards_read_by_webdataset_with_the_same_keys(src, tmp_path):
    res = _build(src, tmp_path)
    m = load_manifest(res.manifests[0])
    urls = [str(p) for p in m.shard_paths()]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert keys == m.read_index()["key"].to_pylist()
    sample = next(iter(wds.WebDataset(urls, shardshuffle=False)))
    members = {k: v for k, v in sample.items() if not k.startswith("__")}
    out = decode_sample(members, sample["__key__"])
    assert out["depth_mm"].dtype.name == "uint16" and out["depth_mm"].max() > 255  # 16 bits survive


def test_kill_9_mid_build_then_rerun_equals_clean_build(src, tmp_path):
    _build(src, tmp_path / "clean")
    out = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "from pathlib import Path\nfrom slow_source import SlowDiode\n"
            "from vortex_data.shards import BuildConfig, build_shards\n"
            f"build_shards(SlowDiode(Path({str(src)!r})), BuildConfig(out_dir=Path({str(out / 'shards')!r}), "
            f"manifest_dir=Path({str(out / 'manifests')!r}), shard_samples=3, workers=1, progress=False))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    records = out / "shards/diode/train/.build"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(records.glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifests/diode-train.json").exists()  # it really died mid-build
    res = _build(src, out)
    assert res.groups_reused >= 2 and res.groups_built >= 1
    for m in res.manifests:
        assert verify(m).ok
    assert not list(out.rglob("*.tmp*"))
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "clean")


def test_flipped_byte_is_named_by_verify(src, tmp_path):
    res = _build(src, tmp_path)
    m = load_manifest(res.manifests[0])
    shard = m.shard_paths()[1]
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF
    shard.write_bytes(bytes(data))
    rep = verify(res.manifests[0])
    assert not rep.ok
    assert any(shard.name in p and "sha256" in p for p in rep.problems)
    assert all(shard.name in p for p in rep.problems)  # the other shards are fine


def test_resume_rebuilds_a_damaged_shard(src, tmp_path):
    res = _build(src, tmp_path)
    shard = load_manifest(res.manifests[0]).shard_paths()[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    again = _build(src, tmp_path)
    assert again.groups_built == 1
    assert verify(again.manifests[0]).ok


def test_slurm_parts_merged_equal_a_single_build(src, tmp_path):
    _build(src, tmp_path / "single")
    out = tmp_path / "array"
    parts = [_build(src, out, num_tasks=3, task_index=i).manifests for i in (2, 0, 1)]
    train_parts = sorted(p for ms in parts for p in ms if "train" in p.name)
    assert len(train_parts) == 3 and all(".part-" in p.name for p in train_parts)
    merged = merge(train_parts)
    assert merged.name == "diode-train.json"
    single = tmp_path / "single/manifests/diode-train.json"
    assert merged.read_text() == single.read_text()
    assert (out / "manifests/diode-train.parquet").read_bytes() == (tmp_path / "single/manifests/diode-train.parquet").read_bytes()
    assert verify(merged).ok


def test_merge_refuses_a_missing_part(src, tmp_path):
    ms = [_build(src, tmp_path, num_tasks=3, task_index=i).manifests for i in (0, 1)]
    with pytest.raises(ValueError, match=r"missing task indices \[2\]"):
        merge([m for part in ms for m in part if "train" in m.name])


def test_byte_cap_rolls_over_within_a_group(src, tmp_path):
    cfg = BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m", shard_samples=100,
                      shard_bytes=40_000, workers=1, progress=False)
    res = build_shards(DiodeConverter(src, domain="indoors"), cfg)
    m = load_manifest(res.manifests[0])
    assert len(m.shards) > 1 and all(s["bytes"] <= 40_000 + 60_000 for s in m.shards)
    names = [Path(s["path"]).name for s in m.shards]
    assert names[0] == "diode-train-000000.tar" and names[1] == "diode-train-000000-1.tar"
    assert sum(s["samples"] for s in m.shards) == 11
    assert verify(res.manifests[0]).ok


def test_rebuild_with_other_options_replaces_stale_shards(src, tmp_path):
    _build(src, tmp_path)
    cfg = BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "manifests", shard_samples=20,
                      workers=1, progress=False)
    res = build_shards(DiodeConverter(src), cfg)
    train_dir = tmp_path / "shards/diode/train"
    assert sorted(p.name for p in train_dir.glob("*.tar")) == ["diode-train-000000.tar"]
    assert len(list(iter_tar_samples(train_dir / "diode-train-000000.tar"))) == 11
    assert verify(res.manifests[0]).ok
