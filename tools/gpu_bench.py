#!/usr/bin/env python3
"""The GPU side, measured: what the trainer's data path and EfficientViT-B1 do on an accelerator.

Builds the real-photo set (``vortex-data bench-loader --photos`` builds the same one: real NYU
frames, perturbed per sample, JPEG q95), then reports

  (a) compute ceiling: training images/s with batches already on the device (bf16 autocast,
      channels-last, the trainer's own ``train_step``), per image size and batch size;
  (b) the streaming loader feeding that step: images/s and the data-wait fraction for 2, 4, 8
      and 16 workers, with the device phase (``photometric="device"``) and with JPEG decode on
      the device too (``decode="device"``);
  (c) ``loader.finish`` per batch in both modes, and the device JPEG decode rate (nvJPEG on CUDA)
      next to OpenCV's on one CPU core;
  (d) peak device memory of every configuration;
  (e) a real training run (the trainer's loop, checkpoints and all): loss falls, no NaN;
  (f) the workers the trainer's start-of-run profile says are needed (run with 2 workers) next
      to the fewest workers with which (b) kept the data wait under the profile's threshold;
  (h) the compiled step: eager against each ``--compile`` mode, for the ceiling and for the
      loader-fed step at 2 and 4 workers, with NVML's GPU utilisation (as a scheduler polls it)
      beside images/s and the first step's time (the compilation); and ``loader.finish`` before
      this change (a copy of the old code, below), now eagerly and now compiled;
  (l) loss curves: the trainer's loop for ``curve_steps`` steps eagerly and compiled (``default``),
      same seed and data, compared at the end against the curve's own step-to-step noise.

Every figure comes from one process on one machine; the JSON (``--out``) holds them all, and a
table is printed. Sections stop early when ``--budget`` seconds are spent, and the JSON is
rewritten after each section, so a run cut short still leaves what it measured.

    python tools/gpu_bench.py --photos ../shared/samples/nyu --out gpu_bench.json
    python tools/gpu_bench.py --photos ../shared/samples/nyu --device cpu --quick   # end to end, < 1 min
    python tools/gpu_bench.py --photos ../shared/samples/nyu --sections hl --out docs/gpu/gpu_bench_4.json

``--quick`` compiles with the ``eager`` backend (dynamo's capture only: inductor's C++ build of the
model takes many minutes on a small CPU), so on a CPU section (h) checks the path, not the speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing (the package needs no build step)
    sys.path.insert(0, str(REPO))

from vortex_data.bench.photos import build_photo_set  # noqa: E402
from vortex_data.cpus import usable_cpus  # noqa: E402
from vortex_data.format.schema import IGNORE_INDEX  # noqa: E402
from vortex_data.stream import photometric  # noqa: E402
from vortex_data.train.config import TrainConfig  # noqa: E402
from vortex_data.train.data import stream_loader, train_request  # noqa: E402
from vortex_data.train.loop import Trainer, run_stage  # noqa: E402
from vortex_data.train.profiling import ComputeClock, GpuUtilisation, StepTimer, diagnose  # noqa: E402
from vortex_data.train.profiling import open_gpu_utilisation  # noqa: E402

MODES = {"device-photometric": "cpu", "device-decode": "device"}
"""Loader mode name -> make_loader's ``decode`` (both with ``photometric="device"``, as the trainer)."""


@dataclasses.dataclass
class Plan:
    """What one run measures; ``--quick`` shrinks every part so a CPU finishes in under a minute."""

    photos: int
    sizes: list[tuple[int, int]]
    batches: list[int]
    loader_sizes: list[tuple[int, int]]
    loader_batches: list[int]
    workers: list[int]
    ceiling_steps: int
    loader_timed_steps: int
    finish_batches: int
    train_steps: int
    train_batch: int
    train_size: tuple[int, int]
    train_workers: int
    compile_modes: list[str]
    compile_backend: str
    compile_size: tuple[int, int]
    compile_batch: int
    compile_workers: list[int]
    curve_steps: int


FULL = Plan(photos=2048, sizes=[(480, 640), (384, 512)], batches=[16, 32], loader_sizes=[(384, 512), (480, 640)],
            loader_batches=[16, 32], workers=[2, 4, 8, 16], ceiling_steps=50, loader_timed_steps=40,
            finish_batches=20, train_steps=200, train_batch=16, train_size=(384, 512), train_workers=2,
            compile_modes=["none", "default", "reduce-overhead", "max-autotune"], compile_backend="inductor",
            compile_size=(384, 512), compile_batch=16, compile_workers=[2, 4], curve_steps=2000)
QUICK = Plan(photos=24, sizes=[(64, 96)], batches=[2], loader_sizes=[(64, 96)], loader_batches=[2], workers=[1],
             ceiling_steps=3, loader_timed_steps=3, finish_batches=2, train_steps=8, train_batch=2,
             train_size=(64, 96), train_workers=1, compile_modes=["none", "default"], compile_backend="eager",
             compile_size=(64, 96), compile_batch=2, compile_workers=[],  # (b) runs the loader-fed step already
             curve_steps=6)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Free what the previous configuration left (its trainer is garbage by now), then start a
    new peak: otherwise leftovers would count in the next configuration's figure."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torchvision": torchvision.__version__, "cpus": usable_cpus(), "device": str(device),
                           "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


def config(run_dir: Path, manifest: Path | None, size: tuple[int, int], batch: int, workers: int,
           steps: int, device: torch.device, **kw: Any) -> TrainConfig:
    """The trainer's configuration for one measurement: the v6 recipe's optimiser and precision
    (bf16 autocast, channels-last), one manifest instead of a mixture."""
    return TrainConfig(run_dir=str(run_dir), mixture=None, manifest=None if manifest is None else str(manifest),
                       image_size=size, batch_size=batch, num_workers=workers, steps=steps,
                       steps_per_epoch=max(steps, 1), ckpt_every=10**9, amp="bf16", channels_last=True,
                       warmup_steps=min(20, max(1, steps // 10)), profile_steps=0, **kw)


class ResidentBatches:
    """One finished batch, already on the device, handed out forever: the compute ceiling's loader."""

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def resident_batch(size: tuple[int, int], batch: int, device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    h, w = size
    depth = torch.rand(batch, 1, h, w, generator=g) * 8 + 0.5
    seg = torch.randint(0, 6, (batch, h, w), generator=g)
    seg[:, : h // 8] = IGNORE_INDEX
    return {"rgb": torch.randn(batch, 3, h, w, generator=g).to(device),
            "depth": depth.to(device), "seg": seg.to(device), "has_seg": torch.ones(batch, dtype=torch.bool)}


def timed_steps(trainer: Trainer, warm: int, timed: int, budget: Budget,
                util: GpuUtilisation | None = None) -> dict[str, Any]:
    """``warm`` then ``timed`` steps of the trainer's own step: wall images/s, data-wait fraction
    (wait in ``next()`` vs compute by CUDA events, as the trainer's profile counts them), the
    first step's seconds (compilation, autotuning) and, with ``util``, NVML's mean utilisation
    over the timed steps."""
    device, b = trainer.device, trainer.cfg.batch_size
    it = iter(trainer.loader)
    clock, timer = ComputeClock(trainer.cuda), StepTimer()
    trainer.module.train()
    n = 0
    t_start = 0.0
    first_step_s = 0.0
    for i in range(warm + timed):
        if i == 1:
            sync(device)
            first_step_s = time.perf_counter() - t_first
        if i == warm:
            sync(device)
            t_start = time.perf_counter()
            if util is not None:
                util.take("bench")
        if i == 0:
            t_first = time.perf_counter()
        t0 = time.perf_counter()
        it, batch = trainer.next_batch(it)
        t1 = time.perf_counter()
        clock.start()
        trainer.train_step(batch)
        compute = clock.stop()
        if i >= warm:
            timer.add(t1 - t0, compute)
            n += 1
            if budget.left() < 0 and n >= 5:
                break
    sync(device)
    wall = time.perf_counter() - t_start
    out = {"steps": n, "images_per_s": round(n * b / wall, 1), "wall_s": round(wall, 3),
           "data_wait_fraction": round(timer.wait_fraction, 4), "first_step_s": round(first_step_s, 2), "timer": timer}
    if util is not None:
        util.poll()  # at least one sample inside the window, however short
        out["gpu_util"] = _round(util.take("bench"), 1)
    return out


def run_ceiling(plan: Plan, device: torch.device, tmp: Path, budget: Budget) -> list[dict[str, Any]]:
    rows = []
    for size in plan.sizes:
        for b in plan.batches:
            if budget.left() < 0:
                rows.append({"size": list(size), "batch": b, "skipped": "time budget spent"})
                continue
            data = resident_batch(size, b, device)
            reset_peak(device)
            trainer = Trainer(config(tmp / "ceiling", None, size, b, 0, 10**6, device),
                              lambda req, d=data: ResidentBatches(d))
            r = timed_steps(trainer, warm=max(3, plan.ceiling_steps // 5), timed=plan.ceiling_steps, budget=budget)
            r.pop("timer")
            rows.append({"size": list(size), "batch": b, **r, "peak_gib": _round(peak_gib(device), 2)})
            print(f"[gpu_bench] ceiling {size[0]}x{size[1]} b{b}: {r['images_per_s']} img/s", flush=True)
            del trainer
    return rows


def run_breakdown(plan: Plan, device: torch.device, tmp: Path) -> dict[str, Any]:
    """(g) where one training step's time goes, on a resident batch at the last ceiling size: the
    forward pass (with the loss), backward and optimiser step each timed with a synchronise
    around it; then the profiler's sum of device kernel time against the step's wall time (how
    busy the GPU is) and its count of kernel launches and host-device synchronisations."""
    from torch.profiler import ProfilerActivity, profile

    size, b = plan.sizes[-1], plan.batches[-1]
    data = resident_batch(size, b, device)
    trainer = Trainer(config(tmp / "breakdown", None, size, b, 0, 10**6, device), lambda req: ResidentBatches(data))
    trainer.module.train()
    autocast = (torch.autocast("cuda", dtype=trainer.amp_dtype) if trainer.amp_dtype
                else torch.autocast("cpu", enabled=False))
    phases: dict[str, list[float]] = {"forward_ms": [], "backward_ms": [], "optimizer_ms": []}
    for i in range(max(4, plan.ceiling_steps // 3)):
        rgb, depth, seg = trainer.to_device(data)
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            total, _ = trainer.model(rgb, depth, seg)
        sync(device)
        t1 = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        sync(device)
        t2 = time.perf_counter()
        trainer.optimizer.step()
        sync(device)
        t3 = time.perf_counter()
        if i >= 2:
            for k, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[k].append(1000 * seconds)
    out: dict[str, Any] = {"size": list(size), "batch": b, **{k: round(statistics.median(v), 2) for k, v in phases.items()}}
    steps = 5
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(data)
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") if device.type == "cuda" else 0
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync"))
    out.update(step_ms=round(1000 * wall / steps, 2), device_kernel_ms_per_step=round(kernel_us / 1000 / steps, 2),
               gpu_busy_fraction=round(kernel_us / 1e6 / wall, 3) if device.type == "cuda" else None,
               kernel_launches_per_step=round(launches / steps), sync_or_copy_calls_per_step=round(syncs / steps))
    print(f"[gpu_bench] breakdown {out}", flush=True)
    return out


def run_loader(plan: Plan, manifest: Path, device: torch.device, tmp: Path, budget: Budget,
               threshold: float) -> list[dict[str, Any]]:
    rows = []
    for size in plan.loader_sizes:
        for b in plan.loader_batches:
            for mode, decode in MODES.items():
                for w in plan.workers:
                    row: dict[str, Any] = {"size": list(size), "batch": b, "mode": mode, "workers": w}
                    if budget.left() < 0:
                        rows.append({**row, "skipped": "time budget spent"})
                        continue
                    reset_peak(device)
                    trainer = Trainer(config(tmp / "loader", manifest, size, b, w, 10**6, device, decode=decode),
                                      stream_loader)
                    # Warm-up drains what the workers buffer before timing (prefetch 2 per worker),
                    # so the timed rate is the sustained one.
                    r = timed_steps(trainer, warm=max(plan.loader_timed_steps // 4, 2 * w),
                                    timed=max(plan.loader_timed_steps, 4 * w), budget=budget)
                    rep = diagnose(r.pop("timer"), b, w, threshold)
                    trainer.loader.close()
                    rows.append({**row, **r, "profile_workers_needed": rep.workers_needed,
                                 "peak_gib": _round(peak_gib(device), 2)})
                    print(f"[gpu_bench] loader {size[0]}x{size[1]} b{b} {mode} w{w}: {r['images_per_s']} img/s, "
                          f"wait {100 * r['data_wait_fraction']:.0f}%", flush=True)
                    del trainer
    return rows


def median_ms(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def run_device_phase(plan: Plan, manifest: Path, device: torch.device, tmp: Path) -> dict[str, Any]:
    """``finish`` per batch in both modes (batches read in-process, pinned, moved once; the cost
    timed is the device phase alone), then the device JPEG decoder against OpenCV."""
    import cv2
    from torchvision.io import decode_jpeg

    out: dict[str, Any] = {}
    size, b = plan.train_size, plan.train_batch
    jpegs: list[torch.Tensor] = []
    for mode, decode in MODES.items():
        loader = stream_loader(train_request(config(tmp, manifest, size, b, 0, 1, device, decode=decode)))
        it = iter(loader)
        raws = [photometric.to_device(next(it), device) for _ in range(plan.finish_batches)]
        if decode == "device":
            jpegs = [j for r in raws for j in r["jpeg"]]
        for r in raws[:2]:
            loader.finish(r)  # warm-up (kernels, nvJPEG handles)
        times = []
        for r in raws:
            times.append(median_ms(lambda r=r: loader.finish(r), device, 3))
        ms = statistics.median(times)
        out[f"finish_ms_{mode}"] = round(ms, 3)
        out[f"finish_images_per_s_{mode}"] = round(b / (ms / 1000), 1)
    n = len(jpegs)
    target = "cuda" if device.type == "cuda" else "cpu"
    decode_jpeg(jpegs[:b], device=target)
    ms = median_ms(lambda: decode_jpeg(jpegs, device=target), device, 5)
    out["device_decode_images_per_s"] = round(n / (ms / 1000), 1)
    out["device_decode_batch"] = n
    arrays = [j.numpy() for j in jpegs]
    t0 = time.process_time()
    for a in arrays:
        cv2.imdecode(a, cv2.IMREAD_COLOR)
    cpu = time.process_time() - t0
    out["opencv_decode_images_per_cpu_s"] = round(n / cpu, 1) if cpu > 0 else None
    out["jpeg_kb_mean"] = round(float(np.mean([a.size for a in arrays])) / 1024, 1)
    print(f"[gpu_bench] finish {out}", flush=True)
    return out


def run_training(plan: Plan, manifest: Path, device: torch.device, tmp: Path, threshold: float) -> dict[str, Any]:
    """The trainer's own loop (run_stage: checkpoints, STATUS, log) for ``train_steps`` steps with
    ``train_workers`` workers, so its start-of-run profile has something to say."""
    reset_peak(device)
    cfg = config(tmp / "train", manifest, plan.train_size, plan.train_batch, plan.train_workers,
                 plan.train_steps, device)
    cfg = dataclasses.replace(cfg, profile_steps=min(20, max(2, plan.train_steps // 4)), log_every=max(1, plan.train_steps // 20),
                              starve_threshold=threshold, ckpt_every=plan.train_steps)
    t0 = time.perf_counter()
    code = run_stage(cfg, stream_loader)
    wall = time.perf_counter() - t0
    events = [json.loads(line) for line in (cfg.stage_dir / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    profile = next((e for e in events if e["event"] == "profile"), None)
    k = max(1, len(losses) // 4)
    first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
    finite = all(math.isfinite(v) for v in losses)
    return {"exit_code": code, "status": (cfg.stage_dir / "STATUS").read_text().strip(), "steps": plan.train_steps,
            "batch": plan.train_batch, "size": list(plan.train_size), "workers": plan.train_workers,
            "wall_s": round(wall, 1), "loss_first_quarter": round(first, 4), "loss_last_quarter": round(last, 4),
            "loss_falls": last < first, "all_finite": finite, "losses": [round(v, 4) for v in losses],
            "profile": profile, "peak_gib": _round(peak_gib(device), 2)}


def workers_verdict(loader_rows: list[dict[str, Any]], train: dict[str, Any], threshold: float) -> dict[str, Any]:
    """(f): the profile's recommendation against the fewest workers that (b) shows keeping up."""
    size, b = train["size"], train["batch"]
    rows = [r for r in loader_rows if "skipped" not in r and r["size"] == size and r["batch"] == b
            and r["mode"] == "device-photometric"]
    ok = sorted(r["workers"] for r in rows if r["data_wait_fraction"] <= threshold)
    prof = train.get("profile") or {}
    return {"size": size, "batch": b, "mode": "device-photometric", "threshold": threshold,
            "profile_workers_now": prof.get("workers_now"), "profile_workers_needed": prof.get("workers_needed"),
            "profile_wait_fraction": prof.get("wait_fraction"),
            "measured_fewest_workers_keeping_up": ok[0] if ok else None,
            "measured_workers": sorted(r["workers"] for r in rows)}


def run_compile(plan: Plan, manifest: Path, device: torch.device, tmp: Path, budget: Budget,
                util: GpuUtilisation) -> dict[str, Any]:
    """(h): every compile mode against eager, on the ceiling (resident batch) and fed by the
    streaming loader (``photometric="device"``, CPU decode) at ``compile_workers`` workers."""
    size, b = plan.compile_size, plan.compile_batch
    rows = []
    for mode in plan.compile_modes:
        for workers in [0, *plan.compile_workers]:  # 0: the ceiling
            row: dict[str, Any] = {"mode": mode, "backend": plan.compile_backend, "size": list(size), "batch": b,
                                   "feed": "resident" if workers == 0 else f"loader w{workers}"}
            if budget.left() < 0:
                rows.append({**row, "skipped": "time budget spent"})
                continue
            reset_peak(device)
            kw = dict(compile=mode, compile_backend=plan.compile_backend)
            if workers == 0:
                data = resident_batch(size, b, device)
                trainer = Trainer(config(tmp / "compile", None, size, b, 0, 10**6, device, **kw),
                                  lambda req, d=data: ResidentBatches(d))
                steps = plan.ceiling_steps
            else:
                trainer = Trainer(config(tmp / "compile", manifest, size, b, workers, 10**6, device, **kw),
                                  stream_loader)
                steps = max(plan.loader_timed_steps, 4 * workers)
            try:
                r = timed_steps(trainer, warm=max(3, 2 * workers), timed=steps, budget=budget, util=util)
            except Exception as e:  # noqa: BLE001 - one mode failing (e.g. CUDA graphs) must not lose the others
                rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})
                print(f"[gpu_bench] compile {mode} {row['feed']}: {rows[-1]['error']}", flush=True)
                continue
            finally:
                close = getattr(trainer.loader, "close", None)
                if close is not None:
                    close()
            r.pop("timer")
            rows.append({**row, **r, "peak_gib": _round(peak_gib(device), 2)})
            print(f"[gpu_bench] compile {mode} {row['feed']}: {r['images_per_s']} img/s, gpu_util {r.get('gpu_util')}, "
                  f"first step {r['first_step_s']} s", flush=True)
            del trainer
            torch._dynamo.reset()  # each configuration compiles from scratch (its first step says how long)
    eager = {r["feed"]: r["images_per_s"] for r in rows if r["mode"] == "none" and "images_per_s" in r}
    for r in rows:
        if "images_per_s" in r and eager.get(r["feed"]):
            r["speedup_vs_eager"] = round(r["images_per_s"] / eager[r["feed"]], 3)
    return {"rows": rows, "finish": run_finish_before_after(plan, manifest, device, tmp)}


def run_curves(plan: Plan, manifest: Path, device: torch.device, tmp: Path) -> dict[str, Any]:
    """(l): ``run_stage`` eagerly and compiled (``default``) on the same data from the same seed,
    ``curve_steps`` steps each at the compile section's size and batch, 4 workers (1 with --quick).
    "Within noise": the last quarters' mean losses differ by less than the eager last quarter's
    standard deviation (step-to-step spread of one curve)."""
    size, b = plan.compile_size, plan.compile_batch
    curves: dict[str, list[float]] = {}
    out: dict[str, Any] = {"size": list(size), "batch": b, "steps": plan.curve_steps}
    for mode in ("none", "default"):
        cfg = config(tmp / f"curve-{mode}", manifest, size, b, 1 if plan.curve_steps < 100 else 4, plan.curve_steps,
                     device, compile=mode, compile_backend=plan.compile_backend)
        cfg = dataclasses.replace(cfg, log_every=1, ckpt_every=plan.curve_steps)
        t0 = time.perf_counter()
        code = run_stage(cfg, stream_loader)
        events = [json.loads(line) for line in (cfg.stage_dir / "log.jsonl").read_text().splitlines()]
        curves[mode] = [e["loss"] for e in events if e["event"] == "step"]
        util = [e["gpu_util"] for e in events if e["event"] == "step" and e.get("gpu_util") is not None]
        out[mode] = {"exit_code": code, "wall_s": round(time.perf_counter() - t0, 1),
                     "gpu_util_mean": round(statistics.mean(util), 1) if util else None}
        torch._dynamo.reset()
    k = max(2, plan.curve_steps // 4)
    eager_last, comp_last = curves["none"][-k:], curves["default"][-k:]
    noise = statistics.stdev(eager_last)
    diff = statistics.mean(comp_last) - statistics.mean(eager_last)
    out.update(eager_last_quarter_mean=round(statistics.mean(eager_last), 4),
               compiled_last_quarter_mean=round(statistics.mean(comp_last), 4), difference=round(diff, 4),
               eager_last_quarter_std=round(noise, 4), within_noise=abs(diff) < noise,
               first_loss_relative_difference=round(abs(curves["default"][0] - curves["none"][0]) / abs(curves["none"][0]), 6),
               losses={m: [round(v, 4) for v in c] for m, c in curves.items()})
    print(f"[gpu_bench] curves {({k: v for k, v in out.items() if k != 'losses'})}", flush=True)
    return out


def finish_before(batch: dict[str, Any], mean: Any, std: Any) -> torch.Tensor:
    """``loader.finish``'s RGB as it was before the fused device phase (kept here to time it
    against the new one on the same card): jitter per operation on index-selected subsets with
    the selections made on the host, then normalisation in float64."""
    from vortex_data.stream.photometric import ADJUST

    factors, order, x = batch["jitter"].cpu(), batch["jitter_order"].cpu(), batch["rgb"]
    applied = ~torch.isnan(factors)
    for step in range(order.shape[1]):
        y = x.clone()
        for op, fn in ADJUST.items():
            sel = (order[:, step] == op) & applied[:, op]
            if int(sel.sum()):
                idx = sel.nonzero().flatten().to(x.device, non_blocking=True)
                y.index_copy_(0, idx, fn(x.index_select(0, idx), factors[sel, op]))
        x = y
    m = torch.tensor(mean, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return x.to(torch.float64).div_(255.0).sub_(m).div_(s).to(torch.float32).contiguous(memory_format=torch.channels_last)


def run_finish_before_after(plan: Plan, manifest: Path, device: torch.device, tmp: Path) -> dict[str, Any]:
    """``finish`` per batch of ``compile_batch`` at ``compile_size`` (photometric on the device,
    CPU decode): before (:func:`finish_before`), now eagerly, now compiled (the trainer's
    default on CUDA), each the median over ``finish_batches`` batches; and how far the compiled
    RGB is from the eager one, in grey levels."""
    size, b = plan.compile_size, plan.compile_batch
    loader = stream_loader(train_request(config(tmp, manifest, size, b, 0, 1, device)))
    it = iter(loader)
    raws = [photometric.to_device(next(it), device) for _ in range(plan.finish_batches)]
    mean, std = loader.spec.mean, loader.spec.std
    ways = {"before": lambda r: finish_before(r, mean, std),
            "eager": lambda r: photometric.finish_batch(r, mean, std, compiled=False)["rgb"],
            "compiled": lambda r: photometric.finish_batch(r, mean, std, compiled=True)["rgb"]}
    if device.type != "cuda":
        ways.pop("compiled")  # inductor's C++ build on a small CPU takes minutes; the GPU run measures it
    out: dict[str, Any] = {"size": list(size), "batch": b}
    for name, fn in ways.items():
        for r in raws[:2]:
            fn(r)  # warm-up (compilation, kernels)
        out[f"{name}_ms"] = round(statistics.median(median_ms(lambda r=r: fn(r), device, 3) for r in raws), 3)
    if "compiled" in ways:
        std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
        diff = max(float(((ways["compiled"](r) - ways["eager"](r)) * std_t * 255).abs().max()) for r in raws)
        out["compiled_vs_eager_max_grey_levels"] = round(diff, 3)
    out["before_vs_eager_max_abs"] = max(float((ways["before"](r) - ways["eager"](r)).abs().max()) for r in raws)
    print(f"[gpu_bench] finish before/after {out}", flush=True)
    return out


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)


def table(result: dict[str, Any]) -> str:
    lines = [f"environment: {json.dumps(result['environment'])}", "",
             "(a) compute ceiling, batches resident on the device (bf16, channels-last)",
             f"{'size':>9} {'batch':>5} {'img/s':>8} {'peak GiB':>8}"]
    for r in result.get("ceiling", []):
        s = f"{r['size'][0]}x{r['size'][1]}"
        lines.append(f"{s:>9} {r['batch']:>5} " + ("skipped" if "skipped" in r else
                                                   f"{r['images_per_s']:>8} {str(r['peak_gib']):>8}"))
    lines += ["", "(b) streaming loader -> trainer step (photometric='device')",
              f"{'size':>9} {'batch':>5} {'mode':>19} {'workers':>7} {'img/s':>8} {'wait %':>6} {'peak GiB':>8}"]
    for r in result.get("loader", []):
        s = f"{r['size'][0]}x{r['size'][1]}"
        head = f"{s:>9} {r['batch']:>5} {r['mode']:>19} {r['workers']:>7} "
        lines.append(head + ("skipped" if "skipped" in r else
                             f"{r['images_per_s']:>8} {100 * r['data_wait_fraction']:>6.1f} {str(r['peak_gib']):>8}"))
    if "device_phase" in result:
        lines += ["", f"(c) device phase: {json.dumps(result['device_phase'])}"]
    if "breakdown" in result:
        lines += ["", f"(g) one step: {json.dumps(result['breakdown'])}"]
    if "training" in result:
        t = {k: v for k, v in result["training"].items() if k != "losses"}
        lines += ["", f"(e) training run: {json.dumps(t)}"]
    if "workers" in result:
        lines += ["", f"(f) workers: {json.dumps(result['workers'])}"]
    if "compile" in result:
        lines += ["", "(h) compiled step (NVML utilisation as a scheduler polls it; first step = compilation)",
                  f"{'mode':>16} {'feed':>10} {'img/s':>8} {'x eager':>7} {'gpu %':>6} {'wait %':>6} {'1st step s':>10}"]
        for r in result["compile"]["rows"]:
            head = f"{r['mode']:>16} {r['feed']:>10} "
            if "images_per_s" not in r:
                lines.append(head + r.get("skipped", r.get("error", "")))
                continue
            lines.append(head + f"{r['images_per_s']:>8} {str(r.get('speedup_vs_eager')):>7} {str(r.get('gpu_util')):>6} "
                                f"{100 * r['data_wait_fraction']:>6.1f} {r['first_step_s']:>10}")
        lines += [f"finish before/after: {json.dumps(result['compile']['finish'])}"]
    if "curves" in result:
        lines += ["", "(l) loss curves, eager vs compiled: " + json.dumps({k: v for k, v in result["curves"].items()
                                                                         if k != "losses"})]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Sections: (a) compute ceiling, (b) loader-fed steps, (c) device phase, "
                                       "(d) peak memory (in each), (e) a 200-step training run, (f) workers needed.")
    p.add_argument("--photos", type=Path, required=True, help="folder with real NYU frames (rgb_N.jpg + sync_depth_N.png)")
    p.add_argument("--out", type=Path, default=Path("gpu_bench.json"), help="JSON results (rewritten after each section)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda (default when present) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and counts: the whole path in under a minute on a CPU")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which remaining measurements are skipped")
    p.add_argument("--workers", type=int, nargs="+", help="loader worker counts for (b) (default 2 4 8 16)")
    p.add_argument("--set-dir", type=Path, help="build the photo set here (default: a temporary folder)")
    p.add_argument("--sections", default="agcebh", help="which of a, b, c, e, g (one step's time by phase), h (compile "
                                                        "modes, NVML, finish before/after), l (loss curves eager vs "
                                                        "compiled) to run (d is part of each; f needs b and e)")
    p.add_argument("--compile-modes", nargs="+", help="modes for (h) (default: none default reduce-overhead max-autotune; "
                                                      "max-autotune's compilation takes minutes)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (use --device cpu)")
    plan = dataclasses.replace(QUICK if args.quick else FULL)
    if args.workers:
        plan.workers = args.workers
    if args.compile_modes:
        plan.compile_modes = args.compile_modes
    threshold = TrainConfig.starve_threshold
    budget = Budget(args.budget)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels once
    result: dict[str, Any] = {"environment": environment(device), "plan": dataclasses.asdict(plan),
                              "command": " ".join(["python", "tools/gpu_bench.py", *(argv or sys.argv[1:])])}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))

    with tempfile.TemporaryDirectory(prefix="vortex-gpu-bench-") as tmpname:
        tmp = Path(tmpname)
        manifest = Path()
        if set(args.sections) & set("bcehl"):
            t0 = time.perf_counter()
            manifest = build_photo_set(args.photos, args.set_dir or tmp / "photos", plan.photos, workers=usable_cpus())
            result["photo_set"] = {"samples": plan.photos, "build_s": round(time.perf_counter() - t0, 1)}
            print(f"[gpu_bench] photo set: {plan.photos} frames in {result['photo_set']['build_s']} s", flush=True)
            save()
        if "a" in args.sections:
            result["ceiling"] = run_ceiling(plan, device, tmp, budget)
            save()
        if "g" in args.sections:
            result["breakdown"] = run_breakdown(plan, device, tmp)
            save()
        if "c" in args.sections:
            result["device_phase"] = run_device_phase(plan, manifest, device, tmp)
            save()
        if "e" in args.sections:
            result["training"] = run_training(plan, manifest, device, tmp, threshold)
            save()
        if "b" in args.sections:
            result["loader"] = run_loader(plan, manifest, device, tmp, budget, threshold)
            save()
        if "h" in args.sections:
            util = open_gpu_utilisation(device, period_s=0.1).start()
            result["compile"] = {"gpu_util_source": "nvml" if util.available else util.describe(None),
                                 **run_compile(plan, manifest, device, tmp, budget, util)}
            util.stop()
            save()
        if "l" in args.sections:
            result["curves"] = run_curves(plan, manifest, device, tmp)
            save()
        if "training" in result and "loader" in result:
            result["workers"] = workers_verdict(result["loader"], result["training"], threshold)
        result["total_s"] = round(time.perf_counter() - budget.t0, 1)
        save()
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
