"""The cached files a loader reuses are checked when reused, not only when made: the sample-index
folders (sizes and XXH3-64 in meta.json, rebuilt when they do not match), their temporaries and
their share of the cache's size; and a cached remote shard that fails its checksums is fetched
again once, then the error names the URL and the cached copy."""

from __future__ import annotations

import builtins
import json
import logging
import os
import time
from pathlib import Path

import pytest

from vortex_data import temporaries
from vortex_data.format.integrity import SampleError
from vortex_data.stream import make_loader
from vortex_data.stream.sample_index import index_dir, load_source_index
from vortex_data.stream.shard_cache import ShardCache

from loader_data import build

SIZE = (32, 48)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ixset")
    return build(root, "nyu", 10, 4)


def index_folders(cache: Path) -> list[Path]:
    """The finished index folders under the cache (not temporaries)."""
    top = cache / ".index"
    return sorted(p for p in top.iterdir() if p.is_dir() and ".tmp-" not in p.name) if top.is_dir() else []


def keys(manifest: Path, cache: Path, **kw) -> list[str]:
    loader = make_loader(manifest=str(manifest), batch_size=5, size=SIZE, training=False, cache_dir=str(cache), **kw)
    return [k for b in loader for k in b["key"]]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_index_cache_file_is_found_and_the_folder_rebuilt(manifest, tmp_path, caplog, damage):
    """Was: numpy's 'mmap length is greater than file size' from a worker (a file cut short), or
    'the bytes changed since the build' for an intact shard (a flipped byte in xxh3.npy)."""
    cache = tmp_path / "c"
    want = keys(manifest, cache)
    d = index_dir(cache, str(manifest), None)
    f = d / ("offset.npy" if damage == "truncate" else "xxh3.npy")
    raw = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(bytes(raw[:len(raw) // 2]))
    else:
        raw[-3] ^= 0x10
        f.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="vortex_data.stream.sample_index"):
        assert keys(manifest, cache) == want
    assert any(str(d) in r.getMessage() and f.name in r.getMessage() and "building it again" in r.getMessage()
               for r in caplog.records)


def test_an_edited_meta_json_is_found_too(manifest, tmp_path, caplog):
    cache = tmp_path / "c"
    ix = load_source_index(str(manifest), cache)
    d = Path(ix.directory)
    meta = json.loads((d / "meta.json").read_text())
    meta["n"] = 9  # valid JSON, wrong content
    (d / "meta.json").write_text(json.dumps(meta))
    del ix
    with caplog.at_level(logging.WARNING, logger="vortex_data.stream.sample_index"):
        again = load_source_index(str(manifest), cache)
    assert len(again) == 10 and "meta.json" in caplog.text


def test_index_folders_count_in_the_cache_size_and_only_unheld_ones_are_evicted(manifest, tmp_path):
    cache = tmp_path / "c"
    other = build(tmp_path / "other", "diode", 6, 3)
    held = load_source_index(str(manifest), cache)
    dropped = load_source_index(str(other), cache)
    folders = {Path(held.directory), Path(dropped.directory)}
    assert set(index_folders(cache)) == folders
    sc = ShardCache(cache, max_bytes=1)
    assert sc.size() == sum(p.stat().st_size for d in folders for p in d.iterdir()) > 0
    del dropped  # its loader is gone: nothing holds the folder now
    sc.evict(keep=cache / "nothing")
    assert index_folders(cache) == [Path(held.directory)]  # a live index keeps its folder
    assert held.key(0) and sc.evicted == 1


def test_temporaries_of_a_killed_index_build_are_reclaimed(manifest, tmp_path):
    cache = tmp_path / "c"
    d = index_dir(cache, str(manifest), None)
    mine = d.with_name(d.name + ".tmp-host-999999-killed")  # this folder's, left by a killed build
    theirs = d.with_name("0" * 32 + ".tmp-host-999998-killed")  # another manifest's
    older = d.parent / ".tmp-abc123"  # an older version's, an hour untouched
    for p in (mine, theirs, older):
        p.mkdir(parents=True)
        (p / "key_end.npy").write_bytes(b"partial")
    old = time.time() - 2 * temporaries.ABANDONED_AFTER_S
    os.utime(older, (old, old))
    load_source_index(str(manifest), cache)
    assert not mine.exists() and not theirs.exists() and not older.exists()
    assert index_folders(cache) == [d]


def test_a_full_disk_while_writing_the_index_cache_names_the_file(manifest, tmp_path, monkeypatch):
    """Was numpy's '63000 requested and 28544 written', naming no file; /dev/full is a real full disk."""
    real_open = builtins.open

    def to_dev_full(path, mode="r", *a, **k):
        return real_open("/dev/full", mode, *a, **k) if ".npy.tmp-" in str(path) else real_open(path, mode, *a, **k)
    monkeypatch.setattr(temporaries, "open", to_dev_full, raising=False)
    with pytest.raises(OSError) as e:
        load_source_index(str(manifest), tmp_path / "c")
    assert e.value.errno == 28 and ".npy.tmp-" in e.value.filename and str(tmp_path / "c" / ".index") in str(e.value)
    assert index_folders(tmp_path / "c") == []
    assert not [p for p in (tmp_path / "c" / ".index").iterdir() if p.is_dir()]  # no temporary left either


def test_a_new_index_folder_is_evicted_against_the_loaders_cache_bytes(manifest, tmp_path, monkeypatch):
    """make_loader(cache_bytes=) is the limit a newly built index folder evicts against, not only
    the environment's: an unheld folder goes at once under a 1-byte limit."""
    monkeypatch.delenv("VORTEX_SHARD_CACHE_BYTES", raising=False)
    cache = tmp_path / "c"
    other = build(tmp_path / "other", "diode", 6, 3)
    dropped = load_source_index(str(other), cache)
    first = Path(dropped.directory)
    del dropped  # nothing holds it now
    keys(manifest, cache, cache_bytes=1)
    assert first not in index_folders(cache)
