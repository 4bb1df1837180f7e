"""Remote shards over HTTP: failures name the URL and the cause, the cache checks what it fetched
against the manifest, killed downloads leave nothing for good, and verify checks remote shards.

Every HTTP test uses a server on 127.0.0.1 that it starts itself (a thread, shut down at the end)
and short timeouts, so nothing here waits on the network."""

import fcntl
import json
import shutil
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vortex_data.format.integrity import SampleError
from vortex_data.format.manifest import sha256_file
from vortex_data.stream import shard_cache
from vortex_data.verify import verify
from vortex_data.stream.shard_cache import ShardCache
from vortex_data.stream.shard_reader import ShardReadError, ShardReader
from vortex_data.stream import make_loader


SIZE = (32, 48)


class Server:
    """A static file server for ``root`` on 127.0.0.1, counting GET requests per path."""

    def __init__(self, root: Path):
        self.gets: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- the http.server API
                server.gets.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def served(small_nyu_set, tmp_path, monkeypatch):
    """(server, local manifest listing the shards by http:// URL) over a private copy of the set."""
    monkeypatch.setattr(shard_cache, "HTTP_TIMEOUT_S", 10.0, raising=False)
    root = tmp_path / "www"
    shutil.copytree(small_nyu_set, root)
    srv = Server(root)
    m = json.loads((root / "manifests" / "nyu-train.json").read_text())
    for s in m["shards"]:
        s["path"] = f"{srv.url}/{(root / 'manifests' / s['path']).resolve().relative_to(root)}"
    out = tmp_path / "m"
    out.mkdir()
    (out / "nyu-train.json").write_text(json.dumps(m))
    shutil.copy(root / "manifests" / "nyu-train.parquet", out / "nyu-train.parquet")
    yield srv, out / "nyu-train.json", root
    srv.close()


def shard_urls(manifest):
    return [s["path"] for s in json.loads(manifest.read_text())["shards"]]


def keys(manifest, cache, **kw):
    loader = make_loader(manifest=str(manifest), batch_size=4, size=SIZE, training=False, cache_dir=str(cache), **kw)
    return [k for b in loader for k in b["key"]]


def test_http_shards_stream_through_the_cache(served, tmp_path):
    srv, manifest, _ = served
    assert len(keys(manifest, tmp_path / "c")) == 8
    assert sorted(srv.gets) == sorted(u[len(srv.url):] for u in shard_urls(manifest))


def test_http_404_names_the_url_and_the_status(served, tmp_path):
    srv, manifest, root = served
    url = shard_urls(manifest)[0]
    (root / url[len(srv.url) + 1:]).unlink()
    with pytest.raises(ShardReadError) as e:
        keys(manifest, tmp_path / "c")
    first = str(e.value).splitlines()[0]
    assert first.startswith(url) and "HTTP 404" in first
    assert "shell" not in first and "curl" not in first and "exit" not in first  # not webdataset's pipe repr


def test_refused_connection_names_the_url_and_the_cause(tmp_path):
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x-000000.tar"
    with pytest.raises(ShardReadError) as e:
        ShardReader(tmp_path / "c").table(url)
    assert str(e.value) == f"{url}: cannot connect (Connection refused)"


def test_a_failing_pipe_names_the_url_and_the_exit_status(tmp_path):
    with pytest.raises(ShardReadError) as e:
        ShardReader(tmp_path / "c").table("pipe:exit 3")
    assert str(e.value) == "pipe:exit 3: cannot fetch (the command exited with status 3)"


def test_killed_downloads_leave_no_temporaries_for_good(served, tmp_path):
    """A download killed mid-way leaves its locked temporary; once no process holds the lock, the
    next fetch of that shard (or any eviction pass) removes it. A live download's is kept."""
    srv, manifest, _ = served
    cache = ShardCache(tmp_path / "c")
    a, b = shard_urls(manifest)
    dead_a = cache.path_for(a).with_name(cache.path_for(a).name + ".tmp-host-999999999-0a0a0a0a")
    dead_b = cache.path_for(b).with_name(cache.path_for(b).name + ".tmp-host-999999999-0b0b0b0b")
    live = cache.path_for(b).with_name(cache.path_for(b).name + ".tmp-host-1-live")
    for p in (dead_a, dead_b, live):
        p.write_bytes(b"partial")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a writer still at work (another open file: flock sees it)
        cache.fetch(a)
        assert not dead_a.exists() and not dead_b.exists() and live.exists()
    cache.fetch(b)
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_file()) == \
        sorted(cache.path_for(u).name for u in (a, b))


def test_a_damaged_cached_shard_is_fetched_again(served, tmp_path):
    srv, manifest, _ = served
    url = shard_urls(manifest)[0]
    entry = json.loads(manifest.read_text())["shards"][0]
    expect = (entry["bytes"], entry["sha256"])
    cache = ShardCache(tmp_path / "c")
    path = cache.fetch(url, expect)
    assert len(srv.gets) == 1
    assert cache.fetch(url, expect) == path and len(srv.gets) == 1  # a good copy is used as it is
    with open(path, "r+b") as f:  # cut short (a full disk, a killed copy by older code)
        f.truncate(entry["bytes"] // 2)
    cache.fetch(url, expect)
    assert len(srv.gets) == 2 and path.stat().st_size == entry["bytes"]
    raw = bytearray(path.read_bytes())  # same size, other bytes, and no record of what was fetched
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    for rec in (tmp_path / "c" / ".locks").glob("*.sha256"):
        rec.unlink()
    cache.fetch(url, expect)
    assert len(srv.gets) == 3 and sha256_file(path) == entry["sha256"]


def test_a_remote_shard_unlike_the_manifest_is_refused_naming_the_url(served, tmp_path):
    srv, manifest, root = served
    url = shard_urls(manifest)[0]
    remote = root / url[len(srv.url) + 1:]
    remote.write_bytes(remote.read_bytes()[:-1024])
    with pytest.raises(ShardReadError) as e:
        keys(manifest, tmp_path / "c")
    assert str(e.value).startswith(url) and "differs from the one the manifest describes" in str(e.value)
    assert len([g for g in srv.gets if url.endswith(g)]) == 2  # one retry, then the error
    assert not [p for p in (tmp_path / "c").iterdir() if p.is_file()]


def test_verify_fetches_and_checks_http_shards(served):
    srv, manifest, root = served
    rep = verify(manifest)
    assert rep.ok and rep.shards_checked == 2 and rep.samples_checked == 8, rep.problems
    url = shard_urls(manifest)[1]
    remote = root / url[len(srv.url) + 1:]
    raw = bytearray(remote.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    remote.write_bytes(bytes(raw))
    rep = verify(manifest)
    assert not rep.ok and any(p.startswith(f"{url}: sha256") for p in rep.problems), rep.problems
    (root / url[len(srv.url) + 1:]).unlink()
    assert any(p.startswith(url) and "HTTP 404" in p for p in verify(manifest).problems)


def _flip(path: Path, at: int = 700) -> None:
    """One byte changed inside the first member's data, the file's size unchanged."""
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_cached_shard_changed_in_place_is_fetched_again_by_the_next_run(served, tmp_path):
    """Was: its record (size, inode) still matched, so every run failed 'the bytes changed since
    the build' and the copy was never fetched again. A write changes the copy's ctime."""
    srv, manifest, _ = served
    want = keys(manifest, tmp_path / "c")
    assert len(srv.gets) == 2
    _flip(ShardCache(tmp_path / "c").path_for(shard_urls(manifest)[0]))
    assert keys(manifest, tmp_path / "c") == want
    assert len(srv.gets) == 3


def test_a_cached_shard_failing_its_checksums_is_fetched_again_once(served, tmp_path):
    """Damage no cheap check sees (here its record is made to claim the copy is good, as after a
    disk error): the member checksums fail, the copy is hashed, found unlike the manifest and
    fetched again once, and the run goes on."""
    srv, manifest, _ = served
    want = keys(manifest, tmp_path / "c")
    cache = ShardCache(tmp_path / "c")
    url = shard_urls(manifest)[0]
    path = cache.path_for(url)
    record = cache._record(path.name)
    size, ino, _, sha = record.read_text().split()
    _flip(path)
    record.write_text(f"{size} {ino} {path.stat().st_ctime_ns} {sha}\n")
    assert keys(manifest, tmp_path / "c") == want
    assert len(srv.gets) == 3 and sha256_file(path) == sha


def test_a_remote_shard_unlike_its_index_names_the_url_and_the_cached_copy(served, tmp_path):
    """The manifest's sha256 describes the damaged shard (built that way): fetching it again cannot
    help, and the error says so, naming the URL and where its copy is."""
    srv, manifest, root = served
    url = shard_urls(manifest)[0]
    remote = root / url[len(srv.url) + 1:]
    _flip(remote)
    m = json.loads(manifest.read_text())
    m["shards"][0]["sha256"] = sha256_file(remote)
    manifest.write_text(json.dumps(m))
    with pytest.raises(SampleError) as e:
        keys(manifest, tmp_path / "c")
    cached = ShardCache(tmp_path / "c").path_for(url)
    assert url in str(e.value) and str(cached) in str(e.value) and "fetching it again cannot help" in str(e.value)
    assert len([g for g in srv.gets if url.endswith(g)]) == 1
