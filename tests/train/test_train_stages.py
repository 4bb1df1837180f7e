"""Stage hand-off: stage 2 starts only from a stage 1 that finished (STATUS ``done``) and whose
final checkpoint verifies; otherwise a clear error naming what is missing. ``--init-from`` stays possible."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("timm")

import torch  # noqa: E402

from vortex_data.train import checkpoint  # noqa: E402
from vortex_data.train.commands import main  # noqa: E402
from vortex_data.train.config import TrainConfig  # noqa: E402
from vortex_data.train.data import synthetic_loader  # noqa: E402
from vortex_data.train.loop import run_stage  # noqa: E402
from vortex_data.train.stopping import EXIT_REQUEUE  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_and_pytests_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    torch.set_num_threads(threads)


def config(run_dir: Path, stage: int, **kw) -> TrainConfig:
    base = dict(run_dir=str(run_dir), stage=stage, loader="synthetic", steps=3, steps_per_epoch=100, ckpt_every=1,
                batch_size=1, image_size=(64, 64), num_workers=0, warmup_steps=1, log_every=1, profile_steps=0,
                init_from_stage=1 if stage == 2 else None)
    return TrainConfig(**{**base, **kw})


def stage2_fails(run: Path, match: str) -> str:
    with pytest.raises(checkpoint.StageHandOffError, match=match):
        run_stage(config(run, 2), synthetic_loader)
    status = (run / "stage2" / "STATUS").read_text()
    assert status.startswith("failed StageHandOffError: stage 2 starts from stage 1's final checkpoint, but ")
    assert not (run / "stage2" / "checkpoints").exists()  # nothing trained
    return status


def test_stage_2_refuses_a_stage_1_stopped_early_and_init_from_still_works(tmp_path: Path) -> None:
    run = tmp_path / "run"
    stop = tmp_path / "stop"
    stop.touch()  # stage 1 stops after its first step of 3, checkpointed
    assert run_stage(config(run, 1, stop_file=str(stop)), synthetic_loader) == EXIT_REQUEUE
    status = stage2_fails(run, r"did not finish: .*STATUS says 'interrupted stop-file ")
    assert "run stage 1 to the end first" in status and "--init-from CKPT" in status
    # An explicit checkpoint is the user's choice, finished stage or not.
    first = run / "stage1" / "checkpoints" / "step_00000001"
    assert run_stage(replace(config(run, 2), init_from=str(first)), synthetic_loader) == 0
    assert '"event": "initialised", "time":' in (run / "stage2" / "log.jsonl").read_text()
    assert str(first) in (run / "stage2" / "log.jsonl").read_text()


def test_stage_2_refuses_a_damaged_final_checkpoint_instead_of_an_older_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_stage(config(run, 1), synthetic_loader) == 0
    final = run / "stage1" / "checkpoints" / "step_00000003"
    data = (final / "train.pt").read_bytes()
    (final / "train.pt").write_bytes(data[: len(data) // 2])
    stage2_fails(run, r"step_00000003 does not verify: train.pt is \d+ bytes, checksums.json records \d+")


def test_stage_2_without_stage_1_names_the_missing_status(tmp_path: Path) -> None:
    stage2_fails(tmp_path, r"stage1/STATUS does not exist \(stage 1 never ran in this run directory\)")


def test_stage_2_starts_from_the_final_checkpoint_of_a_finished_stage_1(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert run_stage(config(run, 1), synthetic_loader) == 0
    assert run_stage(config(run, 2), synthetic_loader) == 0
    assert f"initialised path={run / 'stage1' / 'checkpoints' / 'step_00000003'}" in capsys.readouterr().out


def test_the_cli_says_what_is_missing_without_a_traceback(tmp_path: Path, capsys) -> None:
    code = main(["train", "--recipe", "v6", "--stage", "2", "--loader", "synthetic", "--run-dir", str(tmp_path),
                 "--batch-size", "1", "--image-size", "64", "64", "--num-workers", "0", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "stage1/STATUS does not exist" in err and "Traceback" not in err


def test_init_from_a_damaged_train_pt_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    """--init-from given the train.pt file itself (not its folder) is verified against the
    checksums.json beside it, as eval verifies it: a truncated copy was a torch traceback."""
    run = tmp_path / "run"
    assert run_stage(config(run, 1, steps=1), synthetic_loader) == 0
    pt = run / "stage1" / "checkpoints" / "step_00000001" / "train.pt"
    pt.write_bytes(pt.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match=r"--init-from: checkpoint .*step_00000001: .*damaged"):
        run_stage(replace(config(run, 2), init_from=str(pt)), synthetic_loader)
