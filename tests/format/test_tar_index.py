"""The one tar reader: member names, the key grammar, header tables, sample grouping, and every
reader of the package (verify, key listing, the loader, inspect) agreeing on a real build."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from vortex_data import inspect
from vortex_data.verify import verify
from vortex_data.format import manifest, tar_index
from vortex_data.stream import shard_reader
from vortex_data.fixtures.diode import write_diode_tree
from vortex_data.stream.mixture import read_source_index
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.diode import DiodeConverter
from vortex_data.format.tar_index import (KeyGrammarError, ShardReadError, check_key, has_end_marker, iter_samples, make_key,
                                          member_name, member_table, members, read_samples, sample_keys, split_member)


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """An uncompressed tar of (name, data) entries; data None makes a directory entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ENTRIES = [("d/s/a", None), ("d/s/a.json", b'{"k": 1}'), ("d/s/a.depth.zst", b"D" * 700),
           ("d/s/b.json", b"{}"), ("d/s/b.rgb.jpg", b"J" * 3), ("d/s/a.seg.png", b"late")]


def test_split_member_and_member_name_are_inverse():
    assert split_member("sunrgbd/train/kv1/img_0063.depth.zst") == ("sunrgbd/train/kv1/img_0063", "depth.zst")
    assert split_member("k.json") == ("k", "json")
    assert split_member("a.b/c.d.e") == ("a.b/c", "d.e")  # only the basename's first dot counts
    key = make_key("sunrgbd", "train", "kv1/b3dodata/img.0063")
    assert split_member(member_name(key, "rgb.jpg")) == (key, "rgb.jpg")


@pytest.mark.parametrize("key", ["../nyu/train/x", "/nyu/train/x", "nyu/train", "nyu//train/x", "nyu/train/a.b",
                                 "nyu/train/..", "nyu/train/x y"])
def test_check_key_refuses_keys_outside_the_grammar(key):
    with pytest.raises(KeyGrammarError, match="is not '<dataset>/<split>/<frame id>'"):
        check_key(key)


def test_make_key_output_always_passes_check_key():
    for frame in ("../../etc/passwd", "a.b.c", "x y/z", "/lead/slash/"):
        key = make_key("nyu", "train", frame)
        check_key(key)
        assert ".." not in key and not key.startswith("/")


def test_member_table_offsets_point_at_the_member_bytes():
    data = _tar(ENTRIES)
    table = member_table(io.BytesIO(data))
    assert list(table) == ["d/s/a", "d/s/b"]  # the directory entry is not a member
    assert [ext for ext, _, _ in table["d/s/a"]] == ["json", "depth.zst", "seg.png"]
    for key, rows in table.items():
        for ext, off, size in rows:
            assert data[off:off + size] == dict(ENTRIES)[member_name(key, ext)]


def test_sample_keys_group_consecutive_members_like_webdataset(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(_tar(ENTRIES))
    assert sample_keys(io.BytesIO(path.read_bytes())) == ["d/s/a", "d/s/b", "d/s/a"]
    got = list(iter_samples(path))
    assert [k for k, _ in got] == ["d/s/a", "d/s/b", "d/s/a"]
    assert got[0][1] == {"json": b'{"k": 1}', "depth.zst": b"D" * 700} and got[2][1] == {"seg.png": b"late"}
    ref = [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
           for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert ref == got
    assert [m.size for m in members(io.BytesIO(path.read_bytes()))] == [8, 700, 2, 3, 4]


def test_read_samples_refuses_a_cut_tar_naming_the_file(tmp_path):
    path = tmp_path / "x.tar"
    whole = _tar(ENTRIES)
    path.write_bytes(whole)
    assert has_end_marker(path) and len(list(read_samples(path))) == 3
    last = list(members(io.BytesIO(whole)))[-1]
    path.write_bytes(whole[:last.offset + 512])  # cut before the end-of-archive blocks: tarfile does not notice
    assert not has_end_marker(path) and len(list(iter_samples(path))) == 3
    with pytest.raises(ShardReadError, match=rf"{path}: not a complete tar shard after 3 whole samples"):
        list(read_samples(path))
    path.write_bytes(whole[:1500])  # inside the second member
    with pytest.raises(ShardReadError, match="not a complete tar shard after 0 whole samples"):
        list(read_samples(path))


def test_not_a_tar_raises_a_tar_error():
    with pytest.raises(tar_index.TAR_ERRORS):
        member_table(io.BytesIO(b"x" * 2000))


def test_the_old_names_are_the_same_objects():
    assert shard_reader.ShardReadError is ShardReadError
    assert inspect.read_samples is read_samples


def test_every_reader_sees_the_same_samples(tmp_path):
    src = tmp_path / "src"
    write_diode_tree(src, {("train", "indoors", 1, 1): 5}, size=(48, 36))
    cfg = BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "manifests", workers=1,
                      shard_samples=2, progress=False)
    m_path = build_shards(DiodeConverter(src), cfg).manifests[0]
    m = manifest.load_manifest(m_path)
    assert verify(m_path).ok
    index_keys = m.read_index()["key"].to_pylist()
    reader = shard_reader.ShardReader()
    listed, from_tables, from_reads = [], [], {}
    for shard in m.shard_paths():
        samples = dict(iter_samples(shard))
        listed += sample_keys(io.BytesIO(Path(shard).read_bytes()))
        from_tables += list(reader.table(str(shard)))
        from_reads.update(reader.read_group(str(shard), list(samples)))
        assert [r["key"] for r in inspect.shard_listing(Path(shard))] == list(samples)
        for key, got in reader.read_group(str(shard), list(samples)).items():
            assert got == samples[key]
    assert listed == from_tables == index_keys == list(from_reads)
    bare = json.loads(m_path.read_text())
    del bare["index"]  # without a Parquet index the mixture lists the tar headers
    (m_path.parent / "bare.json").write_text(json.dumps(bare))
    assert read_source_index(str(m_path.parent / "bare.json")).keys == index_keys
    reader.close()
