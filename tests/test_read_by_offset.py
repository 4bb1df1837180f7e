"""Reads by the offsets the index records, the per-node memory-mapped index, and older indexes."""

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vortex_data import tar_index
from vortex_data.manifest import load_manifest
from vortex_data.mixture import Mixture, Source, read_source_index
from vortex_data.shard_reader import ShardReader
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

    monkeypatch.setattr("vortex_data.shard_reader.member_table", no_scan)
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


def test_an_index_without_offsets_is_scanned_once_and_said(built, tmp_path, caplog):
    m = load_manifest(built)
    old = built.parent / "old-nyu-train.json"  # beside the real one, so the shard paths still hold
    old.write_text(built.read_text().replace('"nyu-train.parquet"', '"old-nyu-train.parquet"'))
    pq.write_table(m.read_index().drop(["member_offset", "member_size"]), built.parent / "old-nyu-train.parquet")
    with caplog.at_level(logging.WARNING, "vortex_data.stream"):
        loader = make_loader(one_source(old), batch_size=4, size=(16, 16), augment=False,
                             cache_dir=str(tmp_path), profile=True)
        batches = list(loader)
    assert "no member offsets" in caplog.text
    new = make_loader(one_source(built), batch_size=4, size=(16, 16), augment=False, cache_dir=str(tmp_path))
    assert [k for b in batches for k in b["key"]] == [k for b in new for k in b["key"]]
    assert all(b["timing"]["opens"] <= 3 for b in batches)


def test_open_descriptors_are_bounded_and_counted(built):
    m = load_manifest(built)
    reader = ShardReader(max_open=2)
    urls = [str(s) for s in m.shard_paths()]
    for url in urls + urls[:1]:
        reader.read_group(url, list(reader.table(url))[:1])
        assert len(reader._files) <= 2
    assert reader.opens == 4  # the first shard was closed (least recently used) and opened again
    reader.close()
