"""Two-process DDP (gloo, CPU) through torchrun: same weights on both ranks, per-rank loader state saved;
a run stopped at world size 1 resumes at world size 2 with exactly the rest of the samples and the LR curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[2]

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


def torchrun(script: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + str(REPO / "tests"), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_two_processes_gloo(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = torchrun(script, 2, str(tmp_path))
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


ELASTIC = """
import hashlib, json, os, sys
from vortex_data.train.config import TrainConfig
from vortex_data.train.data import stream_loader
from vortex_data.train.loop import run_stage
from vortex_data.train.stopping import StopController

out, mixture, steps, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rank = int(os.environ["RANK"])


class Recorded:
    # What this rank trains on, batch by batch: keys and a hash of each augmented image.
    def __init__(self, inner):
        self.inner = inner
    def state_dict(self):
        return self.inner.state_dict()
    def load_state_dict(self, state):
        self.inner.load_state_dict(state)
    def finish(self, batch):
        return self.inner.finish(batch)
    def __iter__(self):
        with open(os.path.join(out, f"seen_rank{rank}.jsonl"), "a") as f:
            for b in self.inner:
                rgb = [hashlib.sha256(b["rgb"][i].contiguous().numpy().tobytes()).hexdigest() for i in range(len(b["key"]))]
                f.write(json.dumps({"keys": b["key"], "rgb": rgb}) + "\\n")
                f.flush()
                yield b


class StopAfter(StopController):
    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0
    def reason(self):
        self.calls += 1
        return "test-stop" if self.n and self.calls >= self.n else None


cfg = TrainConfig(run_dir=out, mixture=mixture, steps=steps, steps_per_epoch=1000, ckpt_every=1000, batch_size=2,
                  image_size=(32, 32), num_workers=0, warmup_steps=4, log_every=1, profile_steps=0, seed=3)
sys.exit(run_stage(cfg, lambda req: Recorded(stream_loader(req)), StopAfter(stop_after)))
"""


def seen(run: Path, rank: int) -> list[tuple[str, str]]:
    lines = [json.loads(x) for x in (run / f"seen_rank{rank}.jsonl").read_text().splitlines()]
    return [list(zip(b["keys"], b["rgb"])) for b in lines]


def test_resume_at_another_world_size_continues_samples_and_schedule(tmp_path: Path) -> None:
    from loader_data import build, write_mixture

    build(tmp_path / "data", "nyu", 22, 5)
    mixture = write_mixture(tmp_path / "mix.toml", tmp_path / "data" / "manifests", 22)
    script = tmp_path / "elastic.py"
    script.write_text(ELASTIC)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    res = torchrun(script, 1, str(ref), str(mixture), "15", "0")  # 15 steps x 2 samples: epoch 0 (22) + 8
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = torchrun(script, 1, str(cut), str(mixture), "15", "3")  # stopped after 3 steps = 6 samples
    assert (cut / "stage1" / "STATUS").read_text().strip() == "interrupted test-stop", res.stdout[-3000:] + res.stderr[-3000:]
    res = torchrun(script, 2, str(cut), str(mixture), "15", "0")  # resumed with 2 ranks: global batch 4
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (cut / "stage1" / "STATUS").read_text().strip() == "done"

    want = [s for b in seen(ref, 0) for s in b]
    first, r0, r1 = seen(cut, 0)[:3], seen(cut, 0)[3:], seen(cut, 1)
    assert len(r0) == len(r1) == 6  # 24 samples left: 16 finish epoch 0, 8 start epoch 1
    got = [s for b in first for s in b] + [s for a, b in zip(r0, r1) for s in a + b]
    assert got == want  # every sample once, in plan order, identical augmentation, across the epoch boundary

    log = [json.loads(x) for x in (cut / "stage1" / "log.jsonl").read_text().splitlines()]
    resumed = next(r for r in log if r["event"] == "resumed")
    assert resumed["world_size"] == "1->2" and resumed["samples"] == 6
    ref_lr = {r["samples"]: r["lr_heads"] for r in (json.loads(x) for x in (ref / "stage1" / "log.jsonl").read_text().splitlines())
              if r["event"] == "step"}
    after = [r for r in log if r["event"] == "step" and r["step"] > 3]
    assert [r["samples"] for r in after] == [10, 14, 18, 22, 26, 30]
    assert all(r["lr_heads"] == ref_lr[r["samples"]] for r in after)  # the LR curve continues by samples seen
