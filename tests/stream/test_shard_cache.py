"""The node-local shard cache: one download per shard across workers and ranks, eviction, cleanup at exit."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from vortex_data.stream.shard_cache import ShardCache, default_cache_dir, parse_bytes, release
from vortex_data.stream import make_loader

from loader_data import build

SIZE = (32, 48)
TESTS = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-sets")
    build(root, "nyu", 13, 5)  # shards of 5, 5, 3
    return root / "manifests"


def pipe_manifest(local, out_dir, counter):
    """nyu-train as `pipe:` URLs whose command appends the shard's name to ``counter`` (one line per download)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json.loads((local / "nyu-train.json").read_text())
    for s in data["shards"]:
        p = (local / s["path"]).resolve()
        s["path"] = f"pipe:echo {p.name} >> {counter}; cat {p}"
    (out_dir / "nyu-train.json").write_text(json.dumps(data))
    (out_dir / "nyu-train.parquet").write_bytes((local / "nyu-train.parquet").read_bytes())
    return out_dir / "nyu-train.json"


def downloads(counter):
    return Counter(counter.read_text().split()) if counter.exists() else Counter()


def all_keys(loader):
    return [k for b in loader for k in b["key"]]


def test_three_workers_on_one_pipe_url_download_each_shard_once(local, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("VORTEX_SHARD_CACHE", raising=False)
    (tmp_path / "tmp").mkdir()
    counter = tmp_path / "downloads.txt"
    manifest = pipe_manifest(local, tmp_path / "remote", counter)
    loader = make_loader(manifest=str(manifest), batch_size=1, size=SIZE, training=False, num_workers=3,
                         window_batches=1)
    got = all_keys(loader)
    want = all_keys(make_loader(manifest=str(local / "nyu-train.json"), batch_size=1, size=SIZE, training=False))
    assert got == want and len(got) == 13
    assert downloads(counter) == Counter({"nyu-train-000000.tar": 1, "nyu-train-000001.tar": 1,
                                          "nyu-train-000002.tar": 1})
    cache = tmp_path / "tmp" / "vortex-shards-4242"  # the node's default folder, shared by all workers
    assert default_cache_dir() == (cache, True)
    assert len([p for p in cache.iterdir() if p.name.endswith(".tar")]) == 3
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    loader.close()
    assert release(cache) and not cache.exists()  # what the atexit hook does for the last user


RANK = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from vortex_data.stream import make_loader
rank, manifest, done = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
loader = make_loader(manifest=manifest, batch_size=1, size=(32, 48), training=False, num_workers=2,
                     window_batches=1, rank=rank, world_size=2)
keys = [k for b in loader for k in b["key"]]
(done / f"rank{{rank}}").write_text("\\n".join(keys))
deadline = time.time() + 60
while len(list(done.glob("rank*"))) < 2 and time.time() < deadline:  # like ranks before a barrier
    time.sleep(0.05)
"""


def test_two_ranks_with_workers_share_one_download_and_the_last_removes_the_cache(local, tmp_path):
    counter = tmp_path / "downloads.txt"
    manifest = pipe_manifest(local, tmp_path / "remote", counter)
    done = tmp_path / "done"
    done.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path), "SLURM_JOB_ID": "777",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("VORTEX_SHARD_CACHE", None)
    script = RANK.format(tests=str(TESTS))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(manifest), str(done)], env=env)
             for r in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    keys = (done / "rank0").read_text().split() + (done / "rank1").read_text().split()
    assert len(keys) == 14 and len(set(keys)) == 13  # 13 samples, one pad to keep the ranks equal
    assert set(downloads(counter).values()) == {1} and len(downloads(counter)) == 3
    assert not (tmp_path / "vortex-shards-777").exists()  # temporary: gone once both ranks exited


def test_explicit_cache_dir_is_kept_after_exit(local, tmp_path):
    counter = tmp_path / "downloads.txt"
    manifest = pipe_manifest(local, tmp_path / "remote", counter)
    cache = tmp_path / "keep"
    code = ("from vortex_data.stream import make_loader\n"
            f"l = make_loader(manifest={str(manifest)!r}, batch_size=4, size=(32, 48), training=False, "
            f"cache_dir={str(cache)!r})\n"
            "print(sum(len(b['key']) for b in l))\n")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert out.stdout.strip() == "13"
    assert len(list(cache.glob("*.tar"))) == 3
    assert set(downloads(counter).values()) == {1}  # the second run started warm


def test_size_limit_evicts_least_recently_used_but_never_the_shard_just_fetched(local, tmp_path):
    shards = sorted((local.parent / "shards/nyu/train").glob("*.tar"))
    sizes = [p.stat().st_size for p in shards]
    counter = tmp_path / "downloads.txt"
    urls = [f"pipe:echo {p.name} >> {counter}; cat {p}" for p in shards]
    cache = ShardCache(tmp_path / "c", max_bytes=sizes[0] + sizes[1] + 10)
    first = cache.fetch(urls[0])
    time.sleep(0.01)
    cache.fetch(urls[1])
    time.sleep(0.01)
    cache.fetch(urls[0])  # a use makes shard 0 recent again, so shard 1 is now the oldest
    time.sleep(0.01)
    cache.fetch(urls[2])
    held = {p.name.split("-", 1)[1] for p in cache.cached()}
    assert held == {shards[0].name, shards[2].name} and cache.size() <= cache.max_bytes
    assert cache.evicted == 1 and first.exists()
    tiny = ShardCache(tmp_path / "t", max_bytes=1)  # smaller than any shard: keeps just the last one
    tiny.fetch(urls[0])
    tiny.fetch(urls[1])
    assert [p.name.split("-", 1)[1] for p in tiny.cached()] == [shards[1].name]
    assert downloads(counter)[shards[0].name] == 2  # once per cache


def test_failed_download_leaves_nothing_and_names_the_url(tmp_path):
    from vortex_data.stream.shard_reader import ShardReadError, ShardReader

    reader = ShardReader(tmp_path / "c")
    with pytest.raises(ShardReadError, match="no-such-file.tar"):
        reader.table("pipe:cat /nonexistent/no-such-file.tar")
    assert not [p for p in (tmp_path / "c").iterdir() if p.is_file()]


def test_parse_bytes():
    assert parse_bytes("512M") == 512 * 2**20 and parse_bytes("2G") == 2 * 2**30 and parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="size"):
        parse_bytes("lots")
