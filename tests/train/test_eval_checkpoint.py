"""`eval` on a damaged checkpoint: verified against checksums.json as resuming verifies (one
function, checkpoint.problem), the damaged file named in one line, the newest complete one taken
where a stage folder is given; never torch's PytorchStreamReader traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("timm")

import torch  # noqa: E402

from vortex_data.train import checkpoint  # noqa: E402
from vortex_data.train.commands import main  # noqa: E402
from vortex_data.train.config import TrainConfig  # noqa: E402
from vortex_data.train.data import synthetic_loader  # noqa: E402
from vortex_data.train.loop import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory) -> Path:
    """A stage folder with two published checkpoints (steps 1 and 2)."""
    run = tmp_path_factory.mktemp("eval-ckpt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = TrainConfig(run_dir=str(run), loader="synthetic", steps=2, steps_per_epoch=100, ckpt_every=1,
                      batch_size=2, image_size=(64, 64), num_workers=0, warmup_steps=1, log_every=1, profile_steps=0)
    try:
        assert Trainer(cfg, synthetic_loader).run() == 0
    finally:
        torch.set_num_threads(threads)
    return run / "stage1"


@pytest.fixture
def damaged(two_steps: Path, tmp_path: Path) -> Path:
    """A copy whose newest checkpoint's train.pt is cut in half (a full disk, a killed copy)."""
    stage = shutil.copytree(two_steps, tmp_path / "stage1")
    pt = stage / "checkpoints" / "step_00000002" / "train.pt"
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    return stage


def _eval(target: Path) -> int:
    return main(["eval", "--checkpoint", str(target), "--loader", "synthetic", "--batch-size", "2",
                 "--image-size", "64", "64"])


@pytest.mark.parametrize("given", ["train.pt", "step"])
def test_truncated_checkpoint_named_in_one_line(damaged, given, capsys):
    step = damaged / "checkpoints" / "step_00000002"
    assert _eval(step / "train.pt" if given == "train.pt" else step) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "PytorchStreamReader" not in err and "Traceback" not in err
    assert f"checkpoint {step}: train.pt is " in err and "bytes, checksums.json records" in err
    assert "checkpoints/ folder" in err  # the way to the newest complete one


@pytest.mark.parametrize("given", ["stage", "checkpoints"])
def test_stage_folder_falls_back_to_the_newest_complete(damaged, given, capsys):
    target = damaged if given == "stage" else damaged / "checkpoints"
    torch.set_num_threads(1)
    assert _eval(target) == 0
    out = capsys.readouterr().out
    assert "skipped checkpoint" in out and "step_00000002" in out and "using" in out
    assert f"using {damaged / 'checkpoints' / 'step_00000001'}" in out
    assert "synth_a" in out  # the table was printed
    assert (damaged / "checkpoints" / "step_00000002").is_dir()  # a reader moves nothing aside


def test_train_pt_without_checksums_unreadable_is_one_line(damaged, tmp_path, capsys):
    alone = tmp_path / "copied.pt"
    shutil.copy(damaged / "checkpoints" / "step_00000002" / "train.pt", alone)
    assert _eval(alone) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{alone}: not a readable checkpoint" in err


def test_one_verifier_for_resume_and_eval(damaged):
    """The reader's check is the trainer's: find() (resume) and for_reading() agree."""
    found, skipped = checkpoint.find(damaged / "checkpoints")
    chosen, passed = checkpoint.for_reading(damaged)
    assert chosen == found / "train.pt" and passed == skipped
