"""The sbatch scripts' requeue decision, run by bash with a real trainer behind them.

Only Slurm's own commands are replaced (no cluster here): ``srun`` runs its command, ``torchrun``
is torch's launcher, ``scontrol requeue`` is recorded. The trainer and its STATUS are real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tools" / "slurm"
TINY = ["--loader", "synthetic", "--image-size", "64", "64", "--batch-size", "1", "--num-workers", "0",
        "--steps", "3", "--profile-steps", "0", "--warmup-steps", "1"]


@pytest.fixture()
def slurm(tmp_path: Path):
    """Run a script as sbatch would, with stand-ins for srun/scontrol/squeue on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        # srun <options> command...: run the command (one task)
        "srun": 'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n',
        "scontrol": 'if [ "$1" = requeue ]; then echo "$*" >> "$REQUEUE_LOG"; else echo localhost; fi\n',
        "squeue": "exit 0\n",
        "torchrun": f'exec "{sys.executable}" -m torch.distributed.run "$@"\n',
        "python": f'exec "{sys.executable}" "$@"\n',
    }
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    requeues = tmp_path / "requeues.log"

    def run(script: str, *args: str, restarts: int = 0, max_requeues: int = 3) -> tuple[subprocess.CompletedProcess, str, list[str]]:
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}",
               "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "SLURM_JOB_ID": "4242",
               "SLURM_JOB_NODELIST": "localhost", "SLURM_GPUS_ON_NODE": "1", "SLURM_RESTART_COUNT": str(restarts),
               "MAX_REQUEUES": str(max_requeues), "RUN_DIR": str(tmp_path / "run"), "STAGE": "1",
               "REQUEUE_LOG": str(requeues), "MASTER_PORT": "29517",
               "PREFLIGHT": "0"}  # preflight has its own tests (test_preflight.py); these test the requeue logic
        env.pop("SLURM_JOB_END_TIME", None)
        res = subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        status = (tmp_path / "run" / "stage1" / "STATUS").read_text().strip()
        calls = requeues.read_text().splitlines() if requeues.exists() else []
        requeues.unlink(missing_ok=True)
        return res, status, calls

    return run, tmp_path


@pytest.mark.parametrize("script", ["train_srun.sbatch", "train_torchrun.sbatch"])
def test_interrupted_requeues_at_most_max_requeues_times(slurm, script: str) -> None:
    run, tmp = slurm
    (tmp / "STOP").touch()  # the trainer stops after its first step, with a checkpoint
    res, status, calls = run(script, *TINY, "--recipe", "none", "--stop-file", str(tmp / "STOP"))
    assert status.startswith("interrupted stop-file"), res.stdout + res.stderr
    assert calls == ["requeue 4242"]
    res, status, calls = run(script, *TINY, "--recipe", "none", "--stop-file", str(tmp / "STOP"), restarts=3)
    assert status.startswith("interrupted stop-file") and calls == []  # the limit: no endless requeue
    assert "not requeueing: already restarted 3 times (MAX_REQUEUES=3)" in res.stdout


def test_failed_run_never_requeues_even_over_a_stale_interrupted(slurm) -> None:
    run, tmp = slurm
    (tmp / "run" / "stage1").mkdir(parents=True)
    (tmp / "run" / "stage1" / "STATUS").write_text("interrupted SIGUSR1\n")  # left by the previous job
    res, status, calls = run("train_srun.sbatch", *TINY, "--recipe", "none", "--time-limit", "1")
    assert res.returncode != 0 and calls == []
    assert status.startswith("failed InputError: --time-limit 1 s is not longer than the stop margin")


def test_trainer_dying_without_a_status_is_recorded_as_failed(slurm) -> None:
    run, tmp = slurm
    # A loader factory that SIGKILLs its own process, as the kernel's OOM killer would: no Python runs after it.
    (tmp / "oom_kill.py").write_text("import os, signal\n\ndef factory(req):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    res, status, calls = run("train_srun.sbatch", *TINY, "--recipe", "none", "--loader", "oom_kill:factory")
    assert calls == [] and res.returncode != 0
    assert status == f"failed exit code {res.returncode} without a final status (killed, out of memory or crashed)"


def test_finished_run_does_not_requeue(slurm) -> None:
    run, _ = slurm
    res, status, calls = run("train_srun.sbatch", *TINY, "--recipe", "none")
    assert res.returncode == 0 and status == "done" and calls == [], res.stdout + res.stderr
