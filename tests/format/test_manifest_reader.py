"""The one manifest reader: load_manifest reads a path, a file:// URL or a remote URL, checks the
schema version, and every other reader of a manifest (the loader's sample index, mixtures)
goes through it. One test of "is it remote?"."""

import json

import pytest

from vortex_data.format.manifest import ManifestError, is_remote, join_url, load_manifest, local_path
from vortex_data.stream.mixture import MixtureError, manifest_mixture, read_source_index

from loader_data import build


def test_is_remote_and_local_path():
    assert is_remote("pipe:curl -s http://h/a.tar") and is_remote("http://h/a.tar") and is_remote("s3://b/a.tar")
    assert not is_remote("file:///data/a.tar") and not is_remote("/data/a.tar") and not is_remote("a.tar")
    assert local_path("file:///data/a.tar") == "/data/a.tar" and local_path("/data/a.tar") == "/data/a.tar"
    assert join_url("http://h/m/x.json", "s/a.tar") == "http://h/m/s/a.tar"
    assert join_url("/m/x.json", "s/a.tar") == "/m/s/a.tar"


def test_a_file_url_reads_like_the_path(tmp_path):
    path = build(tmp_path, "nyu", 3, 2)
    a, b = load_manifest(path), load_manifest(f"file://{path}")
    assert a == b and b.path == path and b.index == a.index_name
    assert len(read_source_index(f"file://{path}")) == 3


def test_every_reader_refuses_another_schema_version(tmp_path):
    path = build(tmp_path, "nyu", 3, 2)
    raw = json.loads(path.read_text())
    raw["schema_version"] += 1
    other = path.with_name("other-nyu-train.json")
    other.write_text(json.dumps(raw))
    for read in (load_manifest, read_source_index, manifest_mixture):
        with pytest.raises((ManifestError, MixtureError), match=r"other-nyu-train\.json: schema version"):
            read(str(other))
