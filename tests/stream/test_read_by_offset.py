"""Reads by the offsets the index records, the per-node memory-mapped index, and older indexes."""

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vortex_data.errors import InputError
from vortex_data.format import tar_index
from vortex_data.format.integrity import SampleError
from vortex_data.format.manifest import load_manifest
from vortex_data.stream.mixture import Mixture, Source, read_source_index
from vortex_data.stream.shard_reader import ShardReader
from vortex_data.stream import make_loader

from loader_data import build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("offsets")
    build(root, "nyu", 11, 4)  # shards of 4, 4, 3
    return root / "manifests" / "nyu-train.json"


def one_source(manifest, epoch_size=8):
    return Mixture((Source("nyu", str(manifest), 1.0),), epoch_size, "t")


def test_the_index_records_where_every_member_lies(built):
    m = load_manifest(built)
    rows = m.read_index().to_pylist()
    for shard in m.shard_paths():
        table = tar_index.member_table(io.BytesIO(Path(shard).read_bytes()))
        for r in (r for r in rows if Path(r["shard"]).name == shard.name):
            want = {ext: (off, size) for ext, off, size in table[r["key"]]}
            got = {ext: (off, dict(r["member_size"])[ext]) for ext, off in dict(r["member_offset"]).items()}
            assert got == want


def test_the_loader_reads_by_offset_without_scanning_a_header(built, monkeypatch, tmp_path):
    want = [k for b in make_loader(one_source(built), batch_size=4, size=(16, 16), augment=False,
                                   cache_dir=str(tmp_path)) for k in b["key"]]

    def no_scan(_):
        raise AssertionError("a tar header scan")

    monkeypatch.setattr("vortex_data.stream.shard_reader.member_table", no_scan)
    loader = make_loader(one_source(built), batch_size=4, size=(16, 16), augment=False, cache_dir=str(tmp_path))
    assert [k for b in loader for k in b["key"]] == want and len(want) == 8


def test_the_spec_is_small_and_the_arrays_are_memory_mapped(built, tmp_path):
    loader = make_loader(one_source(built), batch_size=4, size=(16, 16), cache_dir=str(tmp_path))
    ix = loader.spec.indices[0]
    assert isinstance(ix.shard_of, np.memmap) and Path(ix.directory).parent == tmp_path / ".index"
    assert len(pickle.dumps(ix)) < 1000  # the folder's name, not the samples
    copy = pickle.loads(pickle.dumps(ix))
    assert list(copy.keys) == list(ix.keys) and copy.spans(3) == ix.spans(3) and copy.checksums[3] == ix.checksums[3]
    again = read_source_index(str(built), "nyu", None, str(tmp_path))
    assert again.directory == ix.directory  # a second loader on the node maps the same folder


def _older_index(built: Path, drop: list[str], name: str = "old") -> Path:
    """A manifest beside the real one (so the shard paths still hold) whose index lacks ``drop``."""
    m = load_manifest(built)
    old = built.parent / f"{name}-nyu-train.json"
    old.write_text(built.read_text().replace('"nyu-train.parquet"', f'"{name}-nyu-train.parquet"'))
    pq.write_table(m.read_index().drop(drop), built.parent / f"{name}-nyu-train.parquet")
    return old


def test_an_index_without_offsets_is_refused_then_scanned_once_when_allowed(built, tmp_path, caplog):
    old = _older_index(built, ["member_offset", "member_size"])
    with pytest.raises(InputError, match=r"old-nyu-train.json: the index has no member offsets.*"
                                         r"vortex-data reindex .*old-nyu-train.json.*allow_unchecked_index"):
        make_loader(one_source(old), batch_size=4, size=(16, 16), cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, "vortex_data.stream"):
        loader = make_loader(one_source(old), batch_size=4, size=(16, 16), augment=False,
                             cache_dir=str(tmp_path), profile=True, allow_unchecked_index=True)
        batches = list(loader)
    assert "no member offsets" in caplog.text
    new = make_loader(one_source(built), batch_size=4, size=(16, 16), augment=False, cache_dir=str(tmp_path))
    assert [k for b in batches for k in b["key"]] == [k for b in new for k in b["key"]]
    assert all(b["timing"]["opens"] <= 3 for b in batches)


def test_reindex_upgrades_an_older_index_in_place_from_shards_that_match(built, tmp_path, monkeypatch):
    from vortex_data.cli import main

    old = _older_index(built, ["member_offset", "member_size", "member_xxh3_64", "dataset", "split"], "older")
    with pytest.raises(InputError, match="no member checksums or member offsets"):
        make_loader(one_source(old), batch_size=4, size=(16, 16), cache_dir=str(tmp_path))
    monkeypatch.setenv("VORTEX_DATA_ALLOW_UNCHECKED_INDEX", "1")  # the opt-out without an argument
    make_loader(one_source(old), batch_size=4, size=(16, 16), cache_dir=str(tmp_path))
    monkeypatch.delenv("VORTEX_DATA_ALLOW_UNCHECKED_INDEX")
    assert main(["reindex", str(old)]) == 0
    assert load_manifest(old).read_index().equals(load_manifest(built).read_index())
    loader = make_loader(one_source(old), batch_size=4, size=(16, 16), augment=False, cache_dir=str(tmp_path))
    new = make_loader(one_source(built), batch_size=4, size=(16, 16), augment=False, cache_dir=str(tmp_path))
    assert [k for b in loader for k in b["key"]] == [k for b in new for k in b["key"]]


def test_reindex_gives_a_manifest_without_an_index_the_index_a_build_writes(built, tmp_path):
    import json
    import shutil

    from vortex_data.verify import reindex

    root = tmp_path / "bare"
    shutil.copytree(built.parent.parent, root)
    manifest = root / "manifests" / "nyu-train.json"
    data = json.loads(manifest.read_text())
    del data["index"]
    manifest.write_text(json.dumps(data))
    (root / "manifests" / "nyu-train.parquet").unlink()
    with pytest.raises(InputError, match="no member checksums or member offsets.*vortex-data reindex"):
        make_loader(one_source(manifest), batch_size=4, size=(16, 16), cache_dir=str(tmp_path))
    assert reindex(manifest) == 11
    assert load_manifest(manifest).read_index().equals(load_manifest(built).read_index())


def test_reindex_refuses_a_shard_that_changed_since_the_build(built, tmp_path):
    import shutil

    from vortex_data.verify import reindex

    root = tmp_path / "copy"
    shutil.copytree(built.parent.parent, root)
    shard = load_manifest(root / "manifests" / "nyu-train.json").shard_paths()[1]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{shard.name}: does not match the manifest's size and sha256.*build-shards"):
        reindex(root / "manifests" / "nyu-train.json")


def _with_rows(built: Path, tmp_path: Path, change) -> Path:
    """A copy of the set whose index has ``change(table) -> table`` applied."""
    import shutil

    root = tmp_path / "changed"
    shutil.copytree(built.parent.parent, root)
    m = load_manifest(root / "manifests" / "nyu-train.json")
    pq.write_table(change(m.read_index()), m.index_path())
    return m.path


def test_verify_and_the_loader_name_an_offset_that_is_off_by_one_block(built, tmp_path):
    import pyarrow as pa

    from vortex_data.verify import verify

    def shift(t):
        rows = t.to_pylist()
        rows[5]["member_offset"] = [(e, o + 512 if e == "depth.npy.zst" else o) for e, o in rows[5]["member_offset"]]
        return pa.Table.from_pylist(rows, schema=t.schema)

    changed = _with_rows(built, tmp_path, shift)
    key = load_manifest(changed).read_index()["key"][5].as_py()
    rep = verify(changed, decode=False)
    wrong = [p for p in rep.problems if "offset" in p]
    assert len(wrong) == 1 and f"sample {key!r} member '{key}.depth.npy.zst'" in wrong[0]
    assert "nyu-train-000001.tar" in wrong[0] and "the tar header says offset" in wrong[0]
    assert str(int(wrong[0].split("the index says offset ")[1].split()[0]) - 512) in wrong[0].split("tar header")[1]
    loader = make_loader(one_source(changed, 11), batch_size=11, size=(16, 16), augment=False,
                         cache_dir=str(tmp_path / "c"))
    with pytest.raises(SampleError) as e:
        list(loader)
    msg = str(e.value)
    assert f"{key}.depth.npy.zst" in msg and "the index of" in msg and "nyu-train.json does not match the shard" in msg
    assert "vortex-data verify" in msg and "bytes changed" not in msg


def test_rows_swapped_with_their_offsets_are_caught_by_the_key_in_the_metadata(built, tmp_path):
    import pyarrow as pa

    def swap(t):
        rows = t.to_pylist()
        for col in ("member_offset", "member_size", "member_xxh3_64"):  # what a row points at and expects
            rows[1][col], rows[2][col] = rows[2][col], rows[1][col]
        return pa.Table.from_pylist(rows, schema=t.schema)

    changed = _with_rows(built, tmp_path, swap)
    loader = make_loader(one_source(changed, 11), batch_size=11, size=(16, 16), augment=False,
                         cache_dir=str(tmp_path / "c"))
    with pytest.raises(SampleError, match=r"nyu/train/frame_0000[12].*\.json.*belongs to sample "
                                          r"'nyu/train/frame_0000[12]'.*does not match the shard"):
        list(loader)
    from vortex_data.verify import verify
    assert any("offset" in p for p in verify(changed, decode=False).problems)


def test_open_descriptors_are_bounded_and_counted(built):
    m = load_manifest(built)
    reader = ShardReader(max_open=2)
    urls = [str(s) for s in m.shard_paths()]
    for url in urls + urls[:1]:
        reader.read_group(url, list(reader.table(url))[:1])
        assert len(reader._files) <= 2
    assert reader.opens == 4  # the first shard was closed (least recently used) and opened again
    reader.close()


def test_block_shuffle_keeps_quotas_and_reads_few_shards_at_a_time():
    from vortex_data.stream.block_shuffle import plan_epoch_blocks
    from vortex_data.stream.mixture import plan_epoch

    shard_of = [np.repeat(np.arange(40), 25), np.repeat(np.arange(6), 10)]  # 1000 and 60 samples
    a = plan_epoch_blocks(shard_of, [0.7, 0.3], 1500, seed=3, epoch=2, block_size=100)
    g = plan_epoch([1000, 60], [0.7, 0.3], 1500, seed=3, epoch=2)
    assert np.bincount(a.source).tolist() == np.bincount(g.source).tolist() == [1050, 450]
    for s, n in ((0, 1000), (1, 60)):  # the global plan's cycling rule: each sample floor/ceil(q/n) times
        counts = np.bincount(a.index[a.source == s], minlength=n)
        assert counts.max() - counts.min() <= 1 and counts.sum() == (1050, 450)[s]
    b = plan_epoch_blocks(shard_of, [0.7, 0.3], 1500, seed=3, epoch=2, block_size=100)
    assert all(np.array_equal(x, y) for x, y in ((a.source, b.source), (a.index, b.index), (a.repeat, b.repeat)))
    big = a.source == 0
    shards = shard_of[0][a.index[big]]
    per_block = [len(set(shards[i:i + 100].tolist())) for i in range(0, 1000, 100)]
    assert max(per_block) <= 100 // 25 + 2  # a block's samples come from a handful of shards
    assert len(set(shard_of[0][g.index[g.source == 0][:100]].tolist())) > 20  # the global plan: nearly all


def test_the_loader_resumes_exactly_with_block_shuffle(built, tmp_path):
    kw = dict(batch_size=2, size=(16, 16), cache_dir=str(tmp_path), shuffle="blocks", shuffle_block=4)
    full = [k for b in make_loader(one_source(built, 10), **kw) for k in b["key"]]
    first = make_loader(one_source(built, 10), **kw)
    it = iter(first)
    head = [k for _ in range(2) for k in next(it)["key"]]
    state = first.state_dict()
    second = make_loader(one_source(built, 10), **{**kw, "batch_size": 3})
    second.load_state_dict(state)
    rest = [k for b in second for k in b["key"]]
    assert head + rest == full[:len(head) + len(rest)] and len(head) + len(rest) >= 9
    with pytest.raises(ValueError, match="fingerprint"):
        make_loader(one_source(built, 10), batch_size=2, size=(16, 16), cache_dir=str(tmp_path)).load_state_dict(state)


def test_version_1_shards_are_read_as_before_once_reindexed(tmp_path):
    """Shards as version 1 wrote them (``depth.zst``, no ``seg`` member without labels, converter
    fields at the top of the JSON, no key in it) decode and load the same; reindex gives their index
    offsets and checksums."""
    import hashlib
    import json
    import tarfile

    from vortex_data.format.schema import decode_sample
    from vortex_data.verify import reindex, verify

    manifest = build(tmp_path / "v2", "diode", 5, 4, with_seg=False)
    want = list(make_loader(one_source(manifest, 5), batch_size=5, size=(16, 16), augment=False,
                            cache_dir=str(tmp_path / "c2")))
    raw = json.loads(manifest.read_text())
    m = load_manifest(manifest)
    for entry, shard in zip(raw["shards"], m.shard_paths()):
        out = io.BytesIO()
        with tarfile.open(shard) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
            for info in src:
                data = src.extractfile(info).read()
                if info.name.endswith(".seg.npy.zst"):
                    continue
                if info.name.endswith(".json"):
                    meta = json.loads(data)
                    meta = {**{k: v for k, v in meta.items() if k not in ("extra", "key", "scene")},
                            **json.loads(meta["extra"]), "schema_version": 1}
                    data = json.dumps(meta, sort_keys=True).encode()
                info.name, info.size = info.name.replace(".depth.npy.zst", ".depth.zst"), len(data)
                dst.addfile(info, io.BytesIO(data))
        shard.write_bytes(out.getvalue())
        entry["bytes"], entry["sha256"] = len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()
    raw["schema_version"] = 1
    manifest.write_text(json.dumps(raw))
    assert reindex(manifest) == 5 and verify(manifest).ok
    got = make_loader(one_source(manifest, 5), batch_size=5, size=(16, 16), augment=False,
                      cache_dir=str(tmp_path / "c1"))
    got = list(got)
    assert len(got) == len(want) == 1
    for a, b in zip(want, got):
        assert a["key"] == b["key"] and not b["has_seg"].any() and (b["seg"] == 255).all()
        assert np.array_equal(a["depth"], b["depth"]) and np.array_equal(a["rgb"], b["rgb"])
    key, members = next(tar_index.iter_samples(m.shard_paths()[0]))
    assert set(members) == {"json", "rgb.jpg", "depth.zst"} and decode_sample(members, key)["meta"]["synthetic"]
