"""The training loop: overfitting, exact resume after SIGTERM, the CLI's stop/requeue path, stop triggers,
checkpoints that are complete or skipped, STATUS on failure, SIGTERM to a process group with loader workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("timm")

import torch  # noqa: E402

from vortex_data.train import checkpoint  # noqa: E402
from vortex_data.train.config import TrainConfig  # noqa: E402
from vortex_data.train.data import LoaderRequest, SyntheticBatches  # noqa: E402
from vortex_data.train.loop import Trainer, run_stage  # noqa: E402
from vortex_data.train.stopping import EXIT_REQUEUE, StopController  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    """Trainer.run installs process-wide handlers; put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    threads = torch.get_num_threads()
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    torch.set_num_threads(threads)


def tiny_config(run_dir: Path, **kw) -> TrainConfig:
    base = dict(run_dir=str(run_dir), loader="synthetic", steps=4, steps_per_epoch=100, ckpt_every=100,
                batch_size=2, image_size=(64, 64), num_workers=0, warmup_steps=1, log_every=1, profile_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def step_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "stage1" / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["event"] == "step"}


class SignalAtBatch(SyntheticBatches):
    """Sends this process a real signal while producing batch ``at`` (i.e. in the middle of a run)."""

    def __init__(self, at: int, sig: int, **kw) -> None:
        super().__init__(**kw)
        self.at, self.sig = at, sig

    def batch(self, i: int):
        if i == self.at:
            os.kill(os.getpid(), self.sig)
        return super().batch(i)


def synthetic(req: LoaderRequest, **kw) -> SyntheticBatches:
    return SyntheticBatches(batch_size=req.batch_size, image_size=req.image_size, seed=req.seed, rank=req.rank, **kw)


def test_overfits_two_samples(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, steps=10, lr_encoder=1e-3, lr_heads=3e-3, warmup_steps=1, min_lr_ratio=1.0)
    assert Trainer(cfg, lambda req: synthetic(req, unique=2)).run() == 0
    losses = list(step_losses(tmp_path).values())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_sigterm_checkpoint_resume_matches_uninterrupted(tmp_path: Path, sig: int) -> None:
    torch.set_num_threads(1)  # one thread: bitwise-reproducible CPU reductions
    straight = tmp_path / "straight"
    assert Trainer(tiny_config(straight), synthetic).run() == 0
    want = step_losses(straight)

    cut = tmp_path / "cut"
    first = Trainer(tiny_config(cut), lambda req: SignalAtBatch(
        1, sig, batch_size=req.batch_size, image_size=req.image_size, seed=req.seed, rank=req.rank))
    assert first.run() == EXIT_REQUEUE
    assert (cut / "stage1" / "STATUS").read_text().startswith("interrupted SIGTERM")
    ckpt = checkpoint.latest(cut / "stage1" / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000002"  # the step in flight finished first
    assert not list((cut / "stage1" / "checkpoints").glob("*.tmp"))

    assert Trainer(tiny_config(cut), synthetic).run() == 0  # the same command again resumes
    got = step_losses(cut)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        assert got[step] == want[step], (step, got, want)
    assert (cut / "stage1" / "STATUS").read_text().strip() == "done"


def test_cli_sigterm_exits_requeue_code_and_rerun_resumes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "vortex_data.train", "--recipe", "none", "--loader", "synthetic", "--run-dir",
           str(tmp_path), "--batch-size", "1", "--image-size", "64", "64", "--num-workers", "0", "--log-every", "1",
           "--profile-steps", "0", "--warmup-steps", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd + ["--steps", "10000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "stage1" / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and '"event": "step"' in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_REQUEUE, out
    ckpt = checkpoint.latest(tmp_path / "stage1" / "checkpoints")
    assert ckpt is not None, out
    done = int(ckpt.name.split("_")[1])
    rerun = subprocess.run(cmd + ["--steps", str(done + 1)], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed path={ckpt}" in rerun.stdout and f"done step={done + 1}" in rerun.stdout


def test_stop_controller_triggers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    s = StopController(time_limit_s=100, margin_s=10, clock=lambda: now[0])
    now[0] = 1089.0
    assert s.reason() is None
    now[0] = 1090.0
    assert s.reason() == "time-limit"
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1050")  # the job ends before the time limit: it wins
    assert StopController(time_limit_s=100, margin_s=10, clock=lambda: now[0]).deadline == 1040
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    stop = tmp_path / "STOP"
    s = StopController(stop_file=stop)
    assert s.reason() is None
    stop.touch()
    assert s.reason().startswith("stop-file")


def test_eval_reports_per_dataset_rows(tmp_path: Path) -> None:
    from vortex_data.train.data import synthetic_loader
    from vortex_data.train.evaluate import format_table, run_evaluation

    torch.set_num_threads(1)
    assert Trainer(tiny_config(tmp_path, steps=1), synthetic_loader).run() == 0
    ckpt = checkpoint.latest(tmp_path / "stage1" / "checkpoints")
    proto, res = run_evaluation(ckpt, None, synthetic_loader, batch_size=2, split="val", image_size=(64, 64),
                                eigen_crop=False)
    assert proto.name == "plain" and proto.loader_size == (64, 64)
    assert list(res) == ["synth_a", "synth_b", "all"]
    assert res["all"]["images"] == res["synth_a"]["images"] + res["synth_b"]["images"] == 8
    assert 0 <= res["synth_a"]["miou"] <= 1 and res["synth_b"]["miou"] != res["synth_b"]["miou"]  # no labels: NaN
    assert "synth_a" in format_table(res)


def test_eval_skips_padded_samples(tmp_path: Path) -> None:
    from vortex_data.train.data import synthetic_loader
    from vortex_data.train.evaluate import evaluate, load_network

    torch.set_num_threads(1)
    assert Trainer(tiny_config(tmp_path, steps=1), synthetic_loader).run() == 0
    net, cfg = load_network(checkpoint.latest(tmp_path / "stage1" / "checkpoints"), torch.device("cpu"))
    batches = list(synthetic_loader(LoaderRequest(mixture=None, manifest=None, split="val", batch_size=2,
                                                  image_size=(64, 64), augment=None, seed=0, training=False)))
    padded = [dict(b, is_pad=torch.tensor([False, True])) for b in batches]
    plain = evaluate(net, batches, torch.device("cpu"), 1e-3, 10.0)
    res = evaluate(net, padded, torch.device("cpu"), 1e-3, 10.0)
    assert plain["all"]["images"] == 2 * res["all"]["images"] == 8


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a full disk or a killed copy leaves


@pytest.mark.parametrize("damaged", ["train.pt", "rank_00000.pt"])
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damaged: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    straight = tmp_path / "straight"
    assert run_stage(tiny_config(straight, steps=4), synthetic) == 0
    run = tmp_path / "run"
    assert run_stage(tiny_config(run, steps=3, ckpt_every=1, keep_checkpoints=1), synthetic) == 0
    ckpts = run / "stage1" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002", "step_00000003"]  # the previous one kept
    record = json.loads((ckpts / "step_00000003" / "checksums.json").read_text())
    assert set(record["files"]) == {"train.pt", "rank_00000.pt"} and record["world_size"] == 1
    truncate(ckpts / "step_00000003" / damaged)
    killed = ckpts / "step_00000009.tmp"  # what SIGKILL during a checkpoint write leaves
    killed.mkdir()
    (killed / "train.pt").write_bytes(b"PK\x03\x04 half a zip")
    capsys.readouterr()

    assert run_stage(tiny_config(run, steps=4), synthetic) == 0
    out = capsys.readouterr().out
    assert f"skipped checkpoint {ckpts / 'step_00000003'}: {damaged} is " in out and "checksums.json records" in out
    assert f"resumed path={ckpts / 'step_00000002'}" in out
    assert (ckpts / "step_00000003.skipped" / damaged).is_file()  # kept for inspection, out of the way
    assert killed.is_dir()  # never a candidate
    got, want = step_losses(run), step_losses(straight)
    assert got[3] == want[3] and got[4] == want[4]  # step 3 redone from step 2, bit-identical
    assert (run / "stage1" / "STATUS").read_text().strip() == "done"
    assert checkpoint.latest(ckpts).name == "step_00000004"


def test_no_complete_checkpoint_fails_with_status_instead_of_starting_over(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert run_stage(tiny_config(tmp_path, steps=2, ckpt_every=1), synthetic) == 0
    ckpts = tmp_path / "stage1" / "checkpoints"
    truncate(ckpts / "step_00000002" / "train.pt")
    (ckpts / "step_00000001" / "checksums.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        run_stage(tiny_config(tmp_path, steps=3), synthetic)
    status = (tmp_path / "stage1" / "STATUS").read_text()
    assert status.startswith("failed CheckpointError: ") and "step_00000002: train.pt is" in status
    assert "step_00000001: no checksums.json" in status
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000001", "step_00000002"]  # evidence untouched


class FailAtBatch(SyntheticBatches):
    def batch(self, i: int):
        if i == 2:
            raise ValueError("shard x.tar: sample y does not decode")
        return super().batch(i)


def test_any_exception_leaves_status_failed_with_the_reason(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, steps=5)
    with pytest.raises(ValueError, match="does not decode"):
        run_stage(cfg, lambda req: FailAtBatch(batch_size=req.batch_size, image_size=req.image_size))
    assert (tmp_path / "stage1" / "STATUS").read_text() == "failed ValueError: shard x.tar: sample y does not decode\n"


def test_the_first_failure_of_a_job_is_kept(tmp_path: Path) -> None:
    """Rank 1 fails first and says why; rank 0 then only sees its peer vanish and must not overwrite that."""
    from vortex_data.train.loop import write_status

    def peer_fails_then_connection_closes(req: LoaderRequest):
        write_status(tmp_path / "stage1", "failed rank 1: ValueError: shard 7 is truncated")
        raise RuntimeError("Connection closed by peer")

    with pytest.raises(RuntimeError):
        run_stage(tiny_config(tmp_path), peer_fails_then_connection_closes)
    assert (tmp_path / "stage1" / "STATUS").read_text() == "failed rank 1: ValueError: shard 7 is truncated\n"
    os.utime(tmp_path / "stage1" / "STATUS", (0, 0))  # now a previous job's failure: replaced by this one's
    with pytest.raises(ValueError):
        run_stage(tiny_config(tmp_path), lambda req: FailAtBatch(batch_size=1, image_size=(64, 64)).batch(2))
    assert (tmp_path / "stage1" / "STATUS").read_text().startswith("failed ValueError: shard x.tar")


def test_time_limit_not_longer_than_the_stop_margin_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not longer than the stop margin"):
        StopController(time_limit_s=60, margin_s=60)
    cmd = [sys.executable, "-m", "vortex_data.train", "--recipe", "none", "--loader", "synthetic", "--run-dir",
           str(tmp_path), "--time-limit", "30", "--stop-margin-s", "60", "--steps", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--time-limit 30 s is not longer than the stop margin of 60 s" in res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "stage1" / "STATUS").read_text().startswith("failed InputError: --time-limit 30 s")
    assert not (tmp_path / "stage1" / "checkpoints").exists()  # stopped before any training


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_stop_signal_to_the_process_group_with_loader_workers_checkpoints(tmp_path: Path, sig: str) -> None:
    """What Slurm does at the walltime: SIGTERM to every process of the step, DataLoader workers
    included; torchrun forwards SIGHUP (and a closed terminal sends it to the group), which stops
    the same way: the workers survive it, the trainer checkpoints and asks to be requeued."""
    from loader_data import build, write_mixture

    build(tmp_path / "data", "nyu", 12, 4)
    mixture = write_mixture(tmp_path / "mix.toml", tmp_path / "data" / "manifests", 12)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vortex_data.train", "--recipe", "none", "--mixture", str(mixture), "--run-dir",
           str(run), "--batch-size", "2", "--image-size", "32", "32", "--num-workers", "2", "--steps", "100000",
           "--steps-per-epoch", "100000", "--ckpt-every", "100000", "--log-every", "1", "--profile-steps", "0",
           "--warmup-steps", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a Slurm step's tasks have
    log = run / "stage1" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count('"event": "step"') >= 2):
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) >= 3, workers  # the trainer and its two loader workers share the group
    os.killpg(proc.pid, getattr(signal, sig))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_REQUEUE, out
    assert "killed by signal" not in out
    assert (run / "stage1" / "STATUS").read_text().strip() == f"interrupted {sig}"
    ckpt = checkpoint.latest(run / "stage1" / "checkpoints")
    assert ckpt is not None and f"stopped reason={sig}" in out
    state = checkpoint.load_rank(ckpt, 0)["loader"]
    assert state["epoch"] * 12 + state["samples"] == 2 * int(ckpt.name.split("_")[1])  # position = steps run


class NoFinish:
    """A loader wrapper around make_loader(photometric=the request's) that forwards no finish()."""

    manifest = ""

    def __init__(self, req: LoaderRequest) -> None:
        from vortex_data.stream import make_loader

        self.inner = make_loader(manifest=self.manifest, split="train", batch_size=req.batch_size,
                                 image_size=req.image_size, seed=req.seed, training=True, photometric=req.photometric)

    def __iter__(self):
        return iter(self.inner)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def nyu_manifest(tmp_path: Path) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from loader_data import build

    return str(build(tmp_path / "data", "nyu", 6, 3))


def test_trainer_asks_for_device_photometric_and_goes_through_finish(tmp_path: Path) -> None:
    """The trainer requests raw batches and calls the loader's finish() after moving them."""
    seen = []

    class Recording(NoFinish):
        manifest = nyu_manifest(tmp_path)

        def __init__(self, req: LoaderRequest) -> None:
            assert req.photometric == "device"
            super().__init__(req)

        def finish(self, batch):
            out = self.inner.finish(batch)
            seen.append((batch["rgb"].dtype, batch["depth"].dtype, out["rgb"].dtype, out["seg"].dtype))
            return out

    torch.set_num_threads(1)
    assert Trainer(tiny_config(tmp_path / "run", steps=2), Recording).run() == 0
    assert seen == [(torch.uint8, torch.uint16, torch.float32, torch.int64)] * 2


def test_a_raw_batch_without_finish_is_a_clear_error(tmp_path: Path) -> None:
    """A loader wrapper that forgets to forward finish() must not train on uint8 RGB."""
    loader = type("NoFinish", (NoFinish,), {"manifest": nyu_manifest(tmp_path)})
    torch.set_num_threads(1)
    with pytest.raises(TypeError, match="torch.uint8 RGB.*NoFinish has none"):
        Trainer(tiny_config(tmp_path / "run", steps=1), loader).run()


def test_a_stage_run_from_python_puts_the_signal_handlers_back(tmp_path: Path) -> None:
    """run_stage installs stop handlers for SIGTERM/SIGUSR1/SIGINT while it trains; afterwards a
    Ctrl-C in the same process (a notebook, a sweep, the next test) is the caller's again, not a
    flag on a controller that is gone."""
    def mine(signum, frame):
        pass

    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        assert run_stage(tiny_config(tmp_path, steps=1), synthetic) == 0
        assert all(signal.getsignal(s) is mine for s in before)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
