"""Shard writer: deterministic bytes, atomic + resumable after kill -9, SLURM parts, size caps,
staggered array tasks, changed sources, orphaned workers, and every frame written or rejected."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from vortex_data.fixtures.diode import write_diode_tree
from vortex_data.format.manifest import load_manifest, merge
from vortex_data.verify import verify
from vortex_data.format.tar_index import iter_samples
from vortex_data.format.schema import decode_sample
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.diode import DiodeConverter

SMALL = (96, 72)
TESTS = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("diode")
    write_diode_tree(root, {("train", "indoors", 1, 1): 7, ("train", "indoors", 1, 2): 4,
                            ("val", "indoors", 2, 1): 3}, size=SMALL)
    return root


def _build(src, out, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("shard_samples", 3)
    cfg = BuildConfig(out_dir=out / "shards", manifest_dir=out / "manifests", progress=False, **kw)
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
            "from vortex_data.convert.shards import BuildConfig, build_shards\n"
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
    assert len(list(iter_samples(train_dir / "diode-train-000000.tar"))) == 11
    assert verify(res.manifests[0]).ok


# ---------------------------------------------------------------- cluster-scale reliability

def _task_script(src: Path, out: Path, shard_samples: int, num_tasks: int = 1, task_index: int = 0,
                 workers: int = 1) -> str:
    return (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "from pathlib import Path\nfrom slow_source import SlowDiode\n"
            "from vortex_data.convert.shards import BuildConfig, build_shards\n"
            f"build_shards(SlowDiode(Path({str(src)!r})), BuildConfig(out_dir=Path({str(out / 'shards')!r}), "
            f"manifest_dir=Path({str(out / 'manifests')!r}), shard_samples={shard_samples}, workers={workers}, "
            f"num_tasks={num_tasks}, task_index={task_index}, progress=False))\n")


def _start(code: str, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "VORTEX_TEST_FRAME_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)


def test_staggered_array_tasks_leave_each_other_alone(src, tmp_path):
    """Two real array tasks on one output folder, the second starting while the first writes a
    shard: both finish and the merged manifests equal a single build's bytes."""
    _build(src, tmp_path / "single", shard_samples=6)
    out = tmp_path / "array"
    first = _start(_task_script(src, out, 6, num_tasks=2, task_index=0), delay=0.4)
    train = out / "shards/diode/train"
    deadline = time.time() + 60
    while time.time() < deadline and not list(train.glob("*.tmp*")):
        time.sleep(0.02)
    assert list(train.glob("*.tmp*")), "task 0 never started writing"
    second = _start(_task_script(src, out, 6, num_tasks=2, task_index=1), delay=0.4)
    errs = [p.communicate(timeout=120)[1] for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), errs
    for split in ("train", "val"):
        parts = sorted((out / "manifests").glob(f"diode-{split}.part-*.json"))
        merged = merge(parts)
        assert merged.read_text() == (tmp_path / f"single/manifests/diode-{split}.json").read_text()
        assert verify(merged).ok
    assert not list(out.rglob("*.tmp*"))
    assert _tree_bytes(out / "shards") == _tree_bytes(tmp_path / "single/shards")


def test_cleanup_spares_live_temporaries_and_removes_abandoned_ones(src, tmp_path):
    import fcntl
    train = tmp_path / "shards/diode/train"
    (train / ".build").mkdir(parents=True)
    # Another task's group (3, with num_tasks=2 and this task 0): a live writer holds its lock.
    live = train / "diode-train-000003.tar.tmp-t1-otherhost-4242"
    held = open(live, "wb")
    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    # An old, unlocked temporary of another task's group: its writer is gone.
    dead = train / "diode-train-000001.tar.tmp-t1-otherhost-4243"
    dead.write_bytes(b"partial")
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    # A fresh, unlocked temporary of another task's group may be a writer on another node: kept.
    fresh = train / ".build/diode-train-000001.json.tmp-t1-otherhost-4244"
    fresh.write_bytes(b"{}")
    # This task's own group: removed whatever its age.
    own = train / "diode-train-000002.tar.tmp-t0-thishost-99"
    own.write_bytes(b"partial")
    try:
        _build(src, tmp_path, num_tasks=2, task_index=0)
        assert live.exists() and fresh.exists()
        assert not dead.exists() and not own.exists()
    finally:
        held.close()


def test_changed_source_frame_rebuilds_exactly_its_group(tmp_path):
    root = tmp_path / "src"
    write_diode_tree(root, {("train", "indoors", 1, 1): 7, ("train", "indoors", 1, 2): 4}, size=SMALL)
    first = _build(root, tmp_path)
    assert first.groups_built == 4
    shards = tmp_path / "shards/diode/train"
    before = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    # Frame 5 (group 1) gets a new depth map of the same size: content changed, size did not.
    depth = sorted((root / "train/indoors").rglob("*_depth.npy"))[4]
    arr = np.load(depth)
    np.save(depth, arr * 1.5)
    os.utime(depth, ns=(depth.stat().st_atime_ns, depth.stat().st_mtime_ns + 1_000_000_000))
    again = _build(root, tmp_path)
    assert (again.groups_built, again.groups_reused) == (1, 3)
    after = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    assert [n for n in sorted(after) if after[n] != before[n]] == ["diode-train-000001.tar"]
    assert verify(again.manifests[0]).ok


def test_truncated_then_restored_frame_is_rebuilt(tmp_path):
    root = tmp_path / "src"
    write_diode_tree(root, {("train", "indoors", 1, 1): 4}, size=SMALL)
    _build(root, tmp_path / "clean")
    rgb = sorted((root / "train/indoors").rglob("*.png"))[1]
    good = rgb.read_bytes()
    rgb.write_bytes(good[: len(good) // 2])
    broken = _build(root, tmp_path / "out")
    assert load_manifest(broken.manifests[0]).totals["rejected"] == 1
    rgb.write_bytes(good)
    restored = _build(root, tmp_path / "out")
    assert restored.groups_built == 1
    m = load_manifest(restored.manifests[0])
    assert m.totals["rejected"] == 0 and m.totals["written"] == 4
    assert _tree_bytes(tmp_path / "out") == _tree_bytes(tmp_path / "clean")


def _children(pid: int) -> list[int]:
    """Pool workers (spawned interpreters) whose parent is pid, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_pool_workers_exit_when_the_build_is_killed(src, tmp_path):
    proc = _start(_task_script(src, tmp_path, 1, workers=2), delay=0.5)
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and not (len(workers) == 2 and list(tmp_path.rglob(".build/*.json"))):
        workers = _children(proc.pid) or workers
        time.sleep(0.05)
    assert len(workers) == 2, "the pool never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # 14 one-frame groups at 0.5 s each were queued: orphans would keep converting for seconds
    # and then hang; workers that die with their parent are gone almost at once.
    deadline = time.time() + 3
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "pool workers outlived their killed parent"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_worker_defaults_follow_the_cpu_allocation():
    """A process pinned to one CPU (as a SLURM task given one CPU is) defaults to one worker,
    in the library and in both CLIs, whatever the node's core count."""
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from vortex_data.convert.shards import BuildConfig\nfrom vortex_data.cli import build_parser\n"
            "b = build_parser(['build-shards', '--dataset', 'diode']).parse_args("
            "['build-shards', '--dataset', 'diode', '--src', 'x'])\n"
            "s = build_parser(['stats']).parse_args(['stats', 'm.json', '--out', 'o'])\n"
            "print(BuildConfig().workers, b.workers, s.workers)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1", "1"]


# ---------------------------------------------------------------- every frame written or rejected

class _Exploding(DiodeConverter):
    """A converter bug that strikes one frame: an unexpected exception, not a RejectFrame."""

    def load(self, ref):
        if ref.files[0].endswith("scan_00001/00001_00001_indoors_010_010.png"):
            raise IndexError("index 4 is out of bounds for axis 0 with size 4")
        return super().load(ref)


def test_unexpected_exception_in_load_rejects_only_that_frame(src, tmp_path):
    cfg = BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m", shard_samples=3, workers=1,
                      progress=False)
    res = build_shards(_Exploding(src), cfg)
    m = load_manifest(res.manifests[0])
    errors = [r for r in m.rejected if r["code"] == "error"]
    assert len(errors) == 1 and m.totals["input_frames"] == m.totals["written"] + 1
    assert "IndexError" in errors[0]["reason"] and "out of bounds" in errors[0]["reason"]
    assert errors[0]["file"].endswith("scan_00001/00001_00001_indoors_010_010.png") and errors[0]["file"] in errors[0]["reason"]


def test_non_utf8_file_names_are_rejected_not_crashed(tmp_path):
    root = tmp_path / "src"
    write_diode_tree(root, {("train", "indoors", 1, 1): 3}, size=SMALL)
    scan = next((root / "train/indoors").glob("scene_*/scan_*"))
    stem = sorted(p.name for p in scan.glob("*_depth_mask.npy"))[1][: -len("_depth_mask.npy")]
    for f in list(scan.glob(stem + "*")):
        bad = os.fsencode(f.name).replace(stem.encode(), stem.encode() + b"\xff")
        os.rename(os.fsencode(f), os.fsencode(scan) + b"/" + bad)
    # The build runs in a child process: a crash inside OpenCV would be a signal, not an exception.
    code = ("from pathlib import Path\nfrom vortex_data.convert.shards import BuildConfig, build_shards\n"
            "from vortex_data.convert.diode import DiodeConverter\n"
            f"build_shards(DiodeConverter(Path({str(root)!r})), BuildConfig(out_dir=Path({str(tmp_path / 's')!r}), "
            f"manifest_dir=Path({str(tmp_path / 'm')!r}), workers=2, shard_samples=1, progress=False))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = tmp_path / "m/diode-train.json"
    text = manifest.read_bytes().decode("utf-8")  # valid UTF-8, no lone surrogates
    assert "\\udc" not in text
    m = load_manifest(manifest)
    assert m.totals["written"] == 2 and m.totals["rejected"] == 1
    (rej,) = m.rejected
    assert rej["code"] == "bad-name" and "\\xff" in rej["reason"] and "\\xff" in rej["file"]
    assert verify(manifest).ok


def test_a_crashed_worker_is_a_clear_error_and_the_rerun_resumes(src, tmp_path):
    from slow_source import CrashingDiode
    from vortex_data.convert.shards import BuildError
    cfg = BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m", shard_samples=3, workers=2,
                      progress=False)
    with pytest.raises(BuildError, match=r"a worker process died .* shard groups unfinished \(.*diode-"):
        build_shards(CrashingDiode(src), cfg)
    rerun = build_shards(DiodeConverter(src), cfg)
    assert all(verify(m).ok for m in rerun.manifests)
