"""The walltime-safe training loop: resume, train, checkpoint, stop cleanly, profile the loader.

One :class:`Trainer` per process; under torchrun (or one srun task per GPU) every rank runs the
same loop and DistributedDataParallel averages gradients. The loop never dies mid-step on a
signal: the handler only records it, every rank agrees on stopping via an all-reduce, then the
checkpoint is written and :func:`Trainer.run` returns EXIT_REQUEUE.

``<stage dir>/STATUS`` always ends up saying how the process ended: ``done``, ``interrupted
<reason>`` (checkpointed, rerun to resume: the only status the sbatch scripts requeue) or
``failed <reason>`` (any exception, see :func:`run_stage`).

Progress is counted in samples: the learning-rate schedule and the stage's end follow samples
seen (:class:`~vortex_data.train.optim.SampleSchedule`), and the streaming loader's state is a
global position in its epoch plan, so a run may resume at another world size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vortex_data.errors import EXIT_INTERRUPTED
from vortex_data.train import checkpoint, compiled, distributed
from vortex_data.train.config import TrainConfig
from vortex_data.train.data import LoaderFactory, StatefulLoader, train_request
from vortex_data.train.losses import MultiTaskLoss
from vortex_data.train.model import DepthSegNet
from vortex_data.train.optim import SampleSchedule, build_optimizer
from vortex_data.stream import photometric
from vortex_data.train.profiling import (ComputeClock, StartProfile, StepTimer, diagnose, open_gpu_utilisation,
                                         utilisation_profile)
from vortex_data.train.stopping import EXIT_REQUEUE, StopController

log = logging.getLogger("vortex_data.train")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def pick_device(info: distributed.DistInfo) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


class Trainer:
    """Builds model, optimiser, schedule and loader for one stage and runs it to the end or a stop."""

    def __init__(self, cfg: TrainConfig, factory: LoaderFactory, stopper: StopController | None = None) -> None:
        self.cfg = cfg
        # First, so that an impossible time limit is reported before any model or data is built.
        self.stopper = stopper or StopController(cfg.time_limit_s, cfg.stop_margin_s, cfg.stop_file)
        self.dist = distributed.env_info()
        self.device = pick_device(self.dist)
        self.dist = distributed.init(self.device.type)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
        net = DepthSegNet(cfg.max_depth, decoder_width=cfg.decoder_width, encoder_weights=cfg.encoder_weights)
        self.module = MultiTaskLoss(net, cfg.smooth_weight).to(self.device)
        if self.cuda and cfg.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(net.encoder_parameters(), net.head_parameters(),
                                         list(self.module.kendall.parameters()), cfg.lr_encoder, cfg.lr_heads,
                                         cfg.weight_decay, cuda=self.cuda)
        self.global_batch = cfg.batch_size * self.dist.world_size
        # warmup_steps / steps count steps of the global batch the stage starts with (restore()
        # keeps the checkpoint's), so a resume at another world size continues by samples seen.
        self.scheduler = SampleSchedule(self.optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio,
                                        reference_batch=self.global_batch)
        self.amp_dtype = AMP_DTYPES[cfg.amp] if self.cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.loader: StatefulLoader = factory(train_request(cfg, self.dist.rank, self.dist.world_size))
        self.step = 0
        self.saved_step: int | None = None  # step of the checkpoint last written or restored
        self.compile_mode = compiled.resolve_mode(cfg.compile, self.device.type)
        # What the step calls: compiled lazily (the first step compiles) unless compile is none; DDP
        # first under several ranks (run()). Checkpoints hold self.module: they do not depend on the mode.
        self.model: nn.Module = compiled.compile_model(self.module, self.compile_mode, cfg.compile_backend)
        # NVML's utilization.gpu, polled on a thread (rank 0 reports it); unavailable off CUDA.
        self.gpu_util = open_gpu_utilisation(self.device)

    # ------------------------------------------------------------ state

    def shared_state(self) -> dict[str, Any]:
        return {"net": self.module.net.state_dict(), "kendall": self.module.kendall.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "world_size": self.dist.world_size,
                "config": self.cfg.as_dict()}  # samples seen live in the scheduler's state

    def rank_state(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "rng": checkpoint.rng_state(), "step": self.step}

    def save(self) -> Path:
        path = checkpoint.save(self.cfg.ckpt_dir, self.step, self.shared_state(), self.rank_state(), self.dist,
                               self.cfg.keep_checkpoints)
        self.saved_step = self.step
        self.info("checkpoint", path=str(path))
        return path

    def restore(self, path: Path) -> None:
        """Everything needed to continue exactly where the checkpoint left off."""
        shared = checkpoint.load_shared(path, self.device)
        self.module.net.load_state_dict(shared["net"])
        self.module.kendall.load_state_dict(shared["kendall"])
        self.optimizer.load_state_dict(shared["optimizer"])
        self.scheduler.load_state_dict(shared["scheduler"])
        self.scaler.load_state_dict(shared["scaler"])
        self.step = self.saved_step = int(shared["step"])
        saved_world = int(shared["world_size"])
        same_world = saved_world == self.dist.world_size
        # The streaming loader's state is the global position in the epoch plan, the same on every
        # rank, so at another world size rank 0's continues every new rank exactly. RNG streams
        # belong to the old ranks; new ones keep their seeded start.
        rank = self.dist.rank if same_world else 0
        mine = checkpoint.load_rank(path, rank)
        if mine is None:
            raise checkpoint.CheckpointError(f"{path}: no rank_{rank:05d}.pt")
        self.loader.load_state_dict(mine["loader"])
        if same_world:
            checkpoint.set_rng_state(mine["rng"])
        self.info("resumed", path=str(path), step=self.step, samples=self.scheduler.samples,
                  world_size=f"{saved_world}->{self.dist.world_size}")

    def initialise_from(self, path: Path) -> None:
        """Stage-2 start: network and Kendall weights only; optimiser, schedule and data start fresh."""
        shared = checkpoint.load_shared(path, self.device)
        self.module.net.load_state_dict(shared["net"])
        self.module.kendall.load_state_dict(shared["kendall"])
        self.info("initialised", path=str(path))

    def init_source(self) -> Path | None:
        """Where a fresh stage takes its network from: ``init_from`` as given (a ``train.pt``, a step
        directory, a stage's checkpoints: verified as ``eval`` verifies them,
        :func:`checkpoint.for_reading`), or the final checkpoint of stage ``init_from_stage``,
        which must have finished (STATUS ``done``) and verify (rank 0 checks, every rank uses it)."""
        if self.cfg.init_from:
            try:
                return checkpoint.for_reading(Path(self.cfg.init_from))[0]
            except checkpoint.CheckpointError as e:
                raise checkpoint.CheckpointError(f"--init-from: {e}") from None
        if not self.cfg.init_from_stage:
            return None
        choice: tuple[str, str] = ("ok", "")
        if self.dist.is_main:
            try:
                src = Path(self.cfg.run_dir) / f"stage{self.cfg.init_from_stage}"
                choice = ("ok", str(checkpoint.finished_stage(src, self.cfg.init_from_stage, self.cfg.stage)))
            except checkpoint.StageHandOffError as e:
                choice = ("error", str(e))
        kind, value = distributed.broadcast_object(choice)  # type: ignore[misc]
        if kind == "error":
            raise checkpoint.StageHandOffError(value)
        return Path(value)

    def find_checkpoint(self) -> Path | None:
        """Rank 0 picks the newest complete checkpoint and every rank resumes from that one.
        Newer damaged ones are named with the reason and set aside as ``<name>.skipped``; if
        checkpoints exist but none is complete, CheckpointError (rather than starting over)."""
        choice: tuple[str, str | None] = ("ok", None)
        if self.dist.is_main:
            found, skipped = checkpoint.find(self.cfg.ckpt_dir)
            if found is None and skipped:
                choice = ("error", checkpoint.no_complete_message(self.cfg.ckpt_dir, skipped))
            else:
                for path, why in skipped:
                    aside = checkpoint.set_aside(path)
                    self.info("checkpoint_skipped", path=str(path), reason=why, moved_to=str(aside))
                    print(f"[train] WARNING skipped checkpoint {path}: {why}; falling back to {found}", flush=True)
                choice = ("ok", None if found is None else str(found))
        kind, value = distributed.broadcast_object(choice)  # type: ignore[misc]
        if kind == "error":
            raise checkpoint.CheckpointError(value)
        return None if value is None else Path(value)

    def finished(self) -> bool:
        """The stage is done once it has seen steps x (the stage's first global batch) samples."""
        return self.scheduler.samples >= self.scheduler.total_samples

    # ------------------------------------------------------------ logging

    def info(self, event: str, **fields: Any) -> None:
        """One JSON line in <stage dir>/log.jsonl (rank 0) and a readable line on stdout."""
        if not self.dist.is_main:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self.cfg.stage_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cfg.stage_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[train] {event} " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items()), flush=True)

    def write_status(self, status: str) -> None:
        """<stage dir>/STATUS: 'running', 'done' or 'interrupted <reason>' (sbatch scripts requeue on the
        last); 'failed <reason>' comes from run_stage."""
        if self.dist.is_main:
            write_status(self.cfg.stage_dir, status)

    # ------------------------------------------------------------ training

    def to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Asynchronous copy, then the loader's device phase (colour jitter, normalisation, depth
        to metres, labels to int64) on the device; loaders without one deliver finished batches."""
        batch = photometric.to_device(batch, self.device)
        finish = getattr(self.loader, "finish", None)
        if finish is not None:
            batch = finish(batch)
        rgb = batch["rgb"]
        if not rgb.is_floating_point():  # a wrapper that dropped finish() would train on raw uint8
            raise TypeError(f"the loader delivered {rgb.dtype} RGB: a loader made with photometric='device' "
                            f"must be finished with its finish(batch); {type(self.loader).__name__} has none")
        if self.cuda and self.cfg.channels_last:
            rgb = rgb.contiguous(memory_format=torch.channels_last)
        return rgb, batch["depth"].float(), batch["seg"].long()

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        rgb, depth, seg = self.to_device(batch)
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be overwritten now
        with autocast:
            total, parts = self.model(rgb, depth, seg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.advance(self.global_batch)
        return parts

    def next_batch(self, it: Any) -> tuple[Any, dict[str, Any]]:
        """The next batch, starting a new pass when a finite loader runs out."""
        try:
            return it, next(it)
        except StopIteration:
            it = iter(self.loader)
            return it, next(it)

    def run(self) -> int:
        """Train until cfg.steps steps' worth of samples (see :meth:`finished`); returns 0 when done,
        EXIT_REQUEUE after a requested stop, EXIT_INTERRUPTED (130) after Ctrl-C (SIGINT)."""
        cfg = self.cfg
        self.stopper.install()  # before the (possibly long) restore: a signal then stops after one step
        latest = self.find_checkpoint()
        if latest is not None:
            self.restore(latest)
        elif (src := self.init_source()) is not None:
            self.initialise_from(src)
        if self.dist.enabled:
            ddp = nn.parallel.DistributedDataParallel(self.module, device_ids=[self.device.index] if self.cuda else None)
            self.model = compiled.compile_model(ddp, self.compile_mode, self.cfg.compile_backend)
        self.write_status("running")  # an exception turns it into 'failed' (run_stage); a hard kill leaves it
        self.module.train()
        self.info("start", stage=cfg.stage, step=self.step, steps=cfg.steps, world_size=self.dist.world_size,
                  samples=self.scheduler.samples, total_samples=self.scheduler.total_samples,
                  device=str(self.device), amp=str(self.amp_dtype), compile=self.compile_mode,
                  gpu_util=self.gpu_util.describe(None) if not self.gpu_util.available else "sampled (NVML)")
        self.gpu_util.start() if self.dist.is_main else None  # rank 0 reports it
        it = iter(self.loader)
        clock = ComputeClock(self.cuda)  # CUDA events, read a step late: no per-step synchronize
        epoch_timer, start_profile = StepTimer(), StartProfile(cfg.profile_steps, clock.lag)
        first_step = self.step
        while not self.finished():
            t0 = time.perf_counter()
            it, batch = self.next_batch(it)
            t1 = time.perf_counter()
            clock.start()
            parts = self.train_step(batch)
            compute = clock.stop()
            self.step += 1
            epoch_timer.add(t1 - t0, compute)
            if self.step - first_step == 1:  # the warm-up step (compilation, autotuning) stays out of every figure
                self.gpu_util.take("log"), self.gpu_util.take("profile")
            self.profile(start_profile.add(self.step - first_step, t1 - t0, compute))
            if self.step % cfg.log_every == 0 or self.finished():
                self.log_step(parts, t1 - t0, compute)
            if self.step % cfg.steps_per_epoch == 0:
                self.info("epoch", epoch=self.step // cfg.steps_per_epoch, step=self.step,
                          data_wait_fraction=round(epoch_timer.wait_fraction, 4),
                          wait_s=round(epoch_timer.wait, 3), compute_s=round(epoch_timer.compute, 3),
                          skipped_samples=len(getattr(self.loader, "skipped", ())))
                epoch_timer.reset()
            if self.step % cfg.steps_per_epoch == 0 or self.step % cfg.ckpt_every == 0:
                self.save()
            reason = self.stopper.reason()
            if distributed.any_true(reason is not None, self.device) and not self.finished():
                return self.stop_early(reason or "another rank stopped")
        if self.saved_step != self.step:
            self.save()
        self.write_status("done")
        self.info("done", step=self.step)
        return 0

    def stop_early(self, reason: str) -> int:
        if self.saved_step != self.step:
            self.save()
        self.write_status(f"interrupted {reason}")
        # Ctrl-C is a person at a terminal: the shell's status for it, and a line saying what was kept.
        code = EXIT_INTERRUPTED if reason == "SIGINT" else EXIT_REQUEUE
        self.info("stopped", reason=reason, step=self.step, exit_code=code)
        if code == EXIT_INTERRUPTED and self.dist.is_main:
            print(f"[train] interrupted (Ctrl-C) after step {self.step}: its checkpoint is kept in "
                  f"{self.cfg.ckpt_dir}; rerun the same command to resume", flush=True)
        return code

    def profile(self, timer: StepTimer | None) -> None:
        """Once the start-of-run profile's window is complete (:class:`StartProfile`), report
        whether data starves compute."""
        if timer is None:
            return
        cfg = self.cfg
        report = diagnose(timer, cfg.batch_size, cfg.num_workers, cfg.starve_threshold)
        fields, messages = utilisation_profile(report, self.gpu_util, cfg.min_gpu_util, cfg.decode, self.compile_mode,
                                               cfg.batch_size)
        self.info("profile", steps=timer.steps, **{key: round(v, 4) if isinstance(v, float) else v
                                                    for key, v in vars(report).items()}, **fields)
        for message in ([report.message()] if report.starving else []) + messages:
            log.warning(message)
            if self.dist.is_main:
                print(f"[train] WARNING {message}", flush=True)

    def log_step(self, parts: dict[str, torch.Tensor], wait_s: float, compute_s: float) -> None:
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        s = self.module.kendall.log_vars.detach().cpu().tolist()
        util = self.gpu_util.take("log")
        self.info("step", step=self.step, samples=self.scheduler.samples, **{k: float(v) for k, v in parts.items()},
                  lr_encoder=lrs.get("encoder"), lr_heads=lrs.get("heads"), s_depth=s[0], s_seg=s[1],
                  wait_s=round(wait_s, 4), compute_s=round(compute_s, 4),
                  gpu_util=None if util is None else round(util, 1))
        # STATUS keeps its first line for the sbatch scripts (head -n 1); the second is for people.
        self.write_status(f"running\ngpu_util {self.gpu_util.describe(util)} at step {self.step} "
                          f"(NVML utilization.gpu, mean since the previous log line)")

    def close(self) -> None:
        self.stopper.uninstall()
        self.gpu_util.stop()
        distributed.shutdown()


def write_status(stage_dir: Path, status: str) -> None:
    """Replace <stage dir>/STATUS atomically (the sbatch scripts read it while it may be rewritten)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / f"STATUS.{os.getpid()}.part"
    tmp.write_text(status + "\n")
    os.replace(tmp, stage_dir / "STATUS")


def failure_status(exc: BaseException, rank: int) -> str:
    """'failed <type>: <first line of the message>' ('failed rank R: ...' off rank 0), one line."""
    text = str(exc).strip()
    reason = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    return (f"failed {reason}" if rank == 0 else f"failed rank {rank}: {reason}")[:1000]


def run_stage(cfg: TrainConfig, factory: LoaderFactory, stopper: StopController | None = None) -> int:
    """Build the Trainer and run it; on *any* exception STATUS says 'failed <reason>' before the
    exception propagates (so nothing requeues a run that cannot succeed). The first failure
    recorded during this job wins: a rank that only lost its peer does not overwrite the cause."""
    started = time.time()
    rank = distributed.env_info().rank
    trainer: Trainer | None = None
    try:
        trainer = Trainer(cfg, factory, stopper)
        return trainer.run()
    except KeyboardInterrupt:  # Ctrl-C before the loop's stop handler was installed: nothing new to keep
        write_status(cfg.stage_dir, "interrupted SIGINT")
        if rank == 0:
            print(f"[train] interrupted (Ctrl-C) before training started; {cfg.ckpt_dir} is unchanged; "
                  "rerun the same command to resume", flush=True)
        return EXIT_INTERRUPTED
    except BaseException as e:
        status = cfg.stage_dir / "STATUS"
        try:
            recorded = status.stat().st_mtime >= started and status.read_text().startswith("failed")
        except OSError:
            recorded = False
        if not recorded:
            write_status(cfg.stage_dir, failure_status(e, rank))
        raise
    finally:
        if trainer is not None:
            trainer.close()


def _fmt(v: Any) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)
