"""The compiled step on the CPU: ``train --compile default`` runs to STATUS ``done``, its losses
agree with an eager run from the same seed, and checkpoints move between compile modes.

Compile time: inductor's C++ build of EfficientViT-B1's forward and backward took more than
10 minutes on the 2-core machine these tests were written on, so the compiled run uses
``compile_backend = "aot_eager"``: dynamo captures forward + loss and AOTAutograd traces the
backward exactly as they are handed to inductor (the graph breaks, guards and functionalised
graph these tests are about), then the traced graphs run eagerly. Inductor's code generation is
torch's own; ``tools/gpu_bench.py`` runs it for real on a GPU. One compiled run (module-scoped
fixture, ~30-45 s here) serves every test that needs one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

import torch  # noqa: E402

from vortex_data.errors import InputError  # noqa: E402
from vortex_data.train import checkpoint, compiled  # noqa: E402
from vortex_data.train.config import TrainConfig, build_config  # noqa: E402
from vortex_data.train.data import synthetic_loader  # noqa: E402
from vortex_data.train.loop import Trainer  # noqa: E402
from vortex_data.train.optim import build_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
# Tolerance: aot_eager runs the decomposed graph (batch norm, GELU, softmax as primitive ops), so
# float32 rounding differs from eager's kernels; measured here: the first loss equal, the next
# two within 2e-6 relative. 1e-4 leaves room for other CPUs' vector widths, and is still far
# below what a wrong graph (a dropped term, a stale weight) changes.
LOSS_RTOL = 1e-4
FLAGS = ["--stage", "1", "--loader", "synthetic", "--image-size", "64", "64", "--batch-size", "2", "--num-workers", "0",
         "--warmup-steps", "1", "--log-every", "1", "--profile-steps", "0", "--seed", "3"]


def losses(stage_dir: Path) -> list[float]:
    events = [json.loads(x) for x in (stage_dir / "log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] == "step"]


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    """``vortex-data train --compile default`` for STEPS steps (aot_eager, see the module docstring)."""
    tmp = tmp_path_factory.mktemp("compiled")
    recipe = tmp / "recipe.toml"
    recipe.write_text('[common]\ncompile_backend = "aot_eager"\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-m", "vortex_data.cli", "train", "--recipe", str(recipe), "--compile", "default",
                          "--run-dir", str(tmp / "run"), "--steps", str(STEPS), *FLAGS],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    return res, tmp / "run" / "stage1", recipe


def test_train_compile_default_finishes_with_status_done(compiled_run):
    res, stage, _ = compiled_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (stage / "STATUS").read_text().strip() == "done"
    start = next(json.loads(x) for x in (stage / "log.jsonl").read_text().splitlines() if '"start"' in x)
    assert start["compile"] == "default"
    assert len(losses(stage)) == STEPS and all(map(lambda v: v == v and abs(v) < 1e6, losses(stage)))


def test_compiled_losses_agree_with_eager_from_the_same_seed(compiled_run, tmp_path):
    res, stage, recipe = compiled_run
    assert res.returncode == 0, res.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(run_dir=str(tmp_path), loader="synthetic", steps=STEPS, image_size=(64, 64), batch_size=2,
                          num_workers=0, warmup_steps=1, log_every=1, profile_steps=0, seed=3, compile="none")
        assert Trainer(cfg, synthetic_loader).run() == 0
    finally:
        torch.set_num_threads(threads)
    eager, comp = losses(tmp_path / "stage1"), losses(stage)
    assert comp == pytest.approx(eager, rel=LOSS_RTOL), (comp, eager)


def test_a_compiled_runs_checkpoint_resumes_eagerly(compiled_run, tmp_path):
    """Checkpoints hold the plain module's keys: a compiled run's resumes under --compile none."""
    import shutil

    res, stage, _ = compiled_run
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    shutil.copytree(stage.parent, run)
    shared = checkpoint.load_shared(checkpoint.latest(run / "stage1" / "checkpoints"))
    assert not any(compiled.COMPILED_PREFIX in k for k in shared["net"])
    cfg = TrainConfig(run_dir=str(run), loader="synthetic", steps=STEPS + 1, image_size=(64, 64), batch_size=2,
                      num_workers=0, warmup_steps=1, log_every=1, profile_steps=0, seed=3, compile="none")
    assert Trainer(cfg, synthetic_loader).run() == 0
    events = [json.loads(x) for x in (run / "stage1" / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resumed" and e["step"] == STEPS for e in events)
    assert [e["step"] for e in events if e["event"] == "step"][-1] == STEPS + 1


def test_a_state_dict_saved_from_a_compiled_module_loads(tmp_path):
    """Other code may save ``torch.compile(model).state_dict()``: every key then starts with ``_orig_mod.``."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    wrapped = torch.compile(net, backend="eager")  # compiles nothing until called
    state = wrapped.state_dict()
    assert all(k.startswith(compiled.COMPILED_PREFIX) for k in state)
    torch.save({"net": state, "kendall": {"_orig_mod.log_vars": torch.zeros(2)}}, tmp_path / "train.pt")
    shared = checkpoint.load_shared(tmp_path / "train.pt")
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict(shared["net"])  # strict: every key matches
    assert list(shared["kendall"]) == ["log_vars"]


def test_compile_setting_is_checked_and_auto_follows_the_device():
    with pytest.raises(InputError, match="compile = 'fast': must be one of"):
        build_config(None, 1, {"compile": "fast"})
    assert build_config({"common": {"compile": "reduce-overhead"}}, 1, {}).compile == "reduce-overhead"
    assert compiled.resolve_mode("auto", "cuda") == "default" and compiled.resolve_mode("auto", "cpu") == "none"
    assert compiled.resolve_mode("max-autotune", "cpu") == "max-autotune"


def test_adamw_is_fused_on_cuda_and_foreach_elsewhere():
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    assert build_optimizer(params, [], [], 1e-3, 1e-3, 0.0, cuda=True).defaults["fused"] is True
    cpu = build_optimizer(params, [], [], 1e-3, 1e-3, 0.0)
    assert cpu.defaults["foreach"] is True and not cpu.defaults["fused"]
