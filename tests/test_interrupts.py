"""Ctrl-C: build-shards, stats and train stop promptly with one line saying what was kept and
that a rerun resumes (exit 130, no traceback); a closed output pipe is not an error.

Real signals on real subprocesses: SIGINT goes to the command's process group (what a terminal's
Ctrl-C does) once it has started work, and every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vortex_data.convert.diode import DiodeConverter
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.errors import EXIT_INTERRUPTED
from vortex_data.fixtures.diode import write_diode_tree
from vortex_data.verify import verify

TESTS = Path(__file__).parent
REPO = TESTS.parent
GROUPS = 24


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}


def _start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the command never started its work"
        time.sleep(0.02)


def _ctrl_c(proc: subprocess.Popen) -> tuple[str, str, float]:
    """SIGINT to the whole group, as a terminal's Ctrl-C; (stdout, stderr, seconds to exit)."""
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return out, err, time.monotonic() - t


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("diode")
    write_diode_tree(root, {("train", "indoors", 1, 1): GROUPS}, size=(64, 48))
    return root


def test_ctrl_c_stops_a_build_at_once_and_a_rerun_resumes(src, tmp_path):
    """Today's build ran on through the queued groups (6 -> 22 of 24) before noticing; now the
    groups in flight stop, one line says how many are kept, and the rerun keeps exactly those."""
    out = tmp_path / "out"
    args = ["build-shards", "--dataset", "diode", "--src", str(src), "--out", str(out / "shards"),
            "--manifests", str(out / "manifests"), "--workers", "2", "--shard-samples", "1", "--no-progress"]
    proc = _start("import os; os.environ.setdefault('VORTEX_TEST_FRAME_DELAY', '0.25')\n"
                  "from vortex_data import convert\nconvert.CONVERTERS['diode'] = 'slow_source:SlowDiode'\n"
                  f"from vortex_data.cli import main\nraise SystemExit(main({args!r}))\n")
    records = out / "shards/diode/train/.build"
    _wait_for(lambda: len(list(records.glob("*.json"))) >= 2, proc)
    _, err, took = _ctrl_c(proc)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    kept = len(list(records.glob("*.json")))
    assert kept <= 2 + 2 + 2 < GROUPS, kept  # at most what the two workers had in hand
    assert f"interrupted: {kept} of {GROUPS} shard groups" in err and "rerun the same command to resume" in err
    assert took < 15, took
    res = build_shards(DiodeConverter(src), BuildConfig(out_dir=out / "shards", manifest_dir=out / "manifests",
                                                        shard_samples=1, workers=1, progress=False))
    assert res.groups_reused == kept and res.groups_built == GROUPS - kept
    assert all(verify(m).ok for m in res.manifests)
    assert not list(out.rglob("*.tmp-*"))


def test_ctrl_c_stops_stats_without_scanning_the_remaining_shards(src, tmp_path):
    """stats used to scan every remaining shard before it saw the interrupt."""
    built = build_shards(DiodeConverter(src), BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "m",
                                                          shard_samples=1, workers=1, progress=False))
    started = tmp_path / "started.txt"
    args = ["stats", str(built.manifests[0]), "--workers", "2", "--out", str(tmp_path / "stats"), "--no-progress"]
    # A slower shard scan (the stand-in for big shards), logged as each starts; the pool's workers
    # are forked, so they run this patched function.
    proc = _start("import time\nimport vortex_data.stats.scan as scan\norig = scan.scan_shard\n"
                  f"def slow(task):\n    open({str(started)!r}, 'a').write('x')\n    time.sleep(0.4)\n"
                  "    return orig(task)\nscan.scan_shard = slow\n"
                  f"from vortex_data.cli import main\nraise SystemExit(main({args!r}))\n")
    _wait_for(lambda: started.exists() and len(started.read_text()) >= 2, proc)
    _, err, took = _ctrl_c(proc)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted: stopped after scanning" in err and f"of {GROUPS} shards" in err and "rerun" in err
    assert len(started.read_text()) <= 6 < GROUPS  # the queued shards were never started
    assert took < 10, took
    assert not (tmp_path / "stats").exists()


def test_a_closed_output_pipe_is_not_an_error(tmp_path):
    """`vortex-data build-shards ... | head -1` after a completed build: the reader left early."""
    write_diode_tree(tmp_path / "src", {("train", "indoors", 1, 1): 2}, size=(64, 48))
    args = ["build-shards", "--dataset", "diode", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "s"),
            "--manifests", str(tmp_path / "m"), "--workers", "1", "--no-progress"]
    cmd = [sys.executable, "-m", "vortex_data.cli", *args]
    assert subprocess.run(cmd, env=_env(), capture_output=True, timeout=120).returncode == 0
    read, write = os.pipe()
    os.close(read)  # `head` already gone: every write the command makes meets a closed pipe
    try:
        res = subprocess.run(cmd, env=_env(), stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_ctrl_c_stops_training_after_the_step_with_a_checkpoint_and_exit_130(tmp_path):
    """Training already stopped after the step on SIGINT, but exited 75 (the requeue code meant
    for Slurm) with no word on what a person at the terminal should do next."""
    pytest.importorskip("timm")
    run = tmp_path / "run"
    args = ["train", "--recipe", "none", "--loader", "synthetic", "--run-dir", str(run), "--batch-size", "2",
            "--image-size", "32", "32", "--steps", "100000", "--steps-per-epoch", "100000", "--ckpt-every", "100000",
            "--log-every", "1", "--profile-steps", "0", "--warmup-steps", "1"]
    proc = _start(f"from vortex_data.cli import main\nraise SystemExit(main({args!r}))\n")
    log = run / "stage1" / "log.jsonl"
    _wait_for(lambda: log.exists() and log.read_text().count('"event": "step"') >= 2, proc, 120)
    out, err, took = _ctrl_c(proc)
    assert proc.returncode == EXIT_INTERRUPTED, out + err
    assert "Traceback" not in err, err
    assert (run / "stage1" / "STATUS").read_text().strip() == "interrupted SIGINT"
    line = [x for x in out.splitlines() if "interrupted (Ctrl-C)" in x]
    assert len(line) == 1 and "rerun the same command to resume" in line[0], out
    assert str(run / "stage1" / "checkpoints") in line[0] and list((run / "stage1" / "checkpoints").glob("step_*"))
    assert took < 30, took


def test_ctrl_c_before_the_training_loop_is_interrupted_not_failed(tmp_path, capsys):
    """Ctrl-C while the model or the loader is still being built (before the loop's stop handler):
    was a KeyboardInterrupt traceback and STATUS 'failed KeyboardInterrupt'."""
    pytest.importorskip("timm")
    from vortex_data.train.config import TrainConfig
    from vortex_data.train.loop import run_stage

    def factory(req):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the loader is being built
        time.sleep(5)
        raise AssertionError("the signal did not arrive")

    cfg = TrainConfig(run_dir=str(tmp_path), loader="synthetic", steps=2, batch_size=2, image_size=(32, 32),
                      num_workers=0, profile_steps=0)
    assert run_stage(cfg, factory) == EXIT_INTERRUPTED
    assert (tmp_path / "stage1" / "STATUS").read_text().strip() == "interrupted SIGINT"
    assert "interrupted (Ctrl-C) before training started" in capsys.readouterr().out


def test_ctrl_c_in_the_sbatch_entry_point_is_one_line(monkeypatch, capsys):
    """`python -m vortex_data.train` (what the sbatch scripts run): a Ctrl-C outside a stage's own
    handling (loading the recipe, between stages) was a KeyboardInterrupt traceback."""
    pytest.importorskip("timm")
    from vortex_data.train import commands

    def interrupted(args):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, under Python's default handler
        time.sleep(5)
        raise AssertionError("the signal did not arrive")

    monkeypatch.setattr(commands, "run_train", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = commands.main(["--recipe", "v6"])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt escaped main (a traceback for the user)")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "python -m vortex_data.train train: interrupted"


def test_a_loader_after_a_worker_error_makes_no_noise(nyu_copy, small_nyu_set):
    """A loader whose worker failed is left as cyclic garbage (the caught error's traceback holds
    it); the next loader's forked workers used to inherit it and collect it themselves, printing
    'Exception ignored in ... _MultiProcessingDataLoaderIter.__del__ ... can only test a child process'.
    In a fresh process, as a user's script would run it (pytest's own collections hide it)."""
    from vortex_data.format.manifest import load_manifest

    shard = load_manifest(nyu_copy).shard_paths()[0]
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 0xFF  # inside the first member's data: its checksum fails in a worker
    shard.write_bytes(bytes(raw))
    code = ("from vortex_data.stream import make_loader\n"
            "def keys(m):\n"
            "    loader = make_loader(manifest=m, batch_size=4, size=(32, 48), training=False, num_workers=2)\n"
            "    return [k for b in loader for k in b['key']]\n"
            "try:\n"
            f"    keys({str(nyu_copy)!r})\n"
            "except Exception as e:\n"
            "    assert 'checksum' in str(e), e\n"
            f"print(len(keys({str(small_nyu_set / 'manifests' / 'nyu-train.json')!r})))\n")
    res = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "8", res.stderr
    assert "can only test a child process" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
