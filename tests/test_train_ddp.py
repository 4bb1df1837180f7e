"""Two-process DDP (gloo, CPU) through torchrun: same weights on both ranks, per-rank loader state saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import hashlib, json, os, sys
import torch
from vortex_data.train.config import TrainConfig
from vortex_data.train.data import synthetic_loader
from vortex_data.train.loop import Trainer

out = sys.argv[1]
cfg = TrainConfig(run_dir=out, loader="synthetic", steps=3, steps_per_epoch=100, ckpt_every=100, batch_size=1,
                  image_size=(64, 64), num_workers=0, warmup_steps=1, log_every=1, profile_steps=0)
trainer = Trainer(cfg, synthetic_loader)
code = trainer.run()
digest = hashlib.sha256()
# parameters only: BN running stats are per-rank until DDP re-broadcasts them at the next forward
for t in trainer.module.parameters():
    digest.update(t.detach().cpu().contiguous().numpy().tobytes())
rank = trainer.dist.rank
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"code": code, "digest": digest.hexdigest(), "first": next(trainer.module.parameters()).flatten()[:4].tolist(), "world": trainer.dist.world_size,
               "loader": trainer.loader.state_dict()}, f)
trainer.close()
"""


def test_ddp_two_processes_gloo(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["code"] == 0 and r["world"] == 2 for r in ranks)
    # Different data on each rank, identical weights after 3 averaged steps.
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["loader"] == ranks[1]["loader"] == {"index": 3}
    ckpt = tmp_path / "stage1" / "checkpoints" / "step_00000003"
    assert (ckpt / "train.pt").is_file() and (ckpt / "rank_00000.pt").is_file() and (ckpt / "rank_00001.pt").is_file()
    log = [json.loads(x) for x in (tmp_path / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == [1, 2, 3]  # rank 0 logs alone
