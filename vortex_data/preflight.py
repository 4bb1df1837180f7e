"""`vortex-data preflight`: will this training job run well here? A GO / NO-GO before it starts.

From the training recipe (stage, mixture, batch size, workers, steps) and the manifests it
names, on the node the job got, it reports:

* cpus      the CPUs this process may use (affinity mask and cgroup CPU quota, see
            :mod:`vortex_data.cpus`) against the processes the job starts: ranks per node x
            (loader workers + 1 main process).
* loader    the rate of the loader the trainer builds (the same function makes both), measured
            here (a short timed run, warm-up and worker-buffered batches excluded) against the
            rate training consumes (``--needed-rate``, or timed from a few training steps on the
            device present with ``--measure-steps``).
* labels    P(a training batch holds no labelled sample), from the indexes (the formulas of
            ``vortex-data stats``).
* leakage   val/test/eval frames whose scene is also in a training manifest of the same scene
            family (a dataset with itself; NYU's labelled set, nyu-sync and nyu-raw together, by
            room), from the indexes' ``scene`` column (:mod:`vortex_data.format.scenes`); "unknown"
            where an index records no scenes.
* walltime  whether the remaining steps fit the time left (``--time-limit`` or
            ``SLURM_JOB_END_TIME``), at the step time the two rates give.

Each check is ok / warn / fail / unknown. Any fail is NO-GO (exit 1); otherwise GO (exit 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .cpus import usable_cpus
from .errors import InputError

@dataclass
class Check:
    name: str
    status: str
    detail: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    checks: list[Check]

    @property
    def go(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": "GO" if self.go else "NO-GO", "checks": [asdict(c) for c in self.checks]}

    def format(self) -> str:
        lines = [f"  [{c.status:<7}] {c.name:<9} {c.detail}" for c in self.checks]
        failed = [c.name for c in self.checks if c.status == "fail"]
        lines.append("GO" if self.go else f"NO-GO ({', '.join(failed)})")
        return "\n".join(lines)


# ---------------------------------------------------------------- the checks (pure where possible)

def check_cpus(cpus: int, workers: int, ranks_per_node: int = 1) -> Check:
    procs = ranks_per_node * (workers + 1)
    v = {"cpus": cpus, "workers_per_rank": workers, "ranks_per_node": ranks_per_node, "processes": procs}
    what = f"{cpus} CPUs usable; {ranks_per_node} rank(s) x ({workers} workers + 1 main) = {procs} processes"
    if ranks_per_node * workers > cpus:
        return Check("cpus", "fail", what + ": more loader workers than CPUs; lower num_workers or ask for "
                     "more CPUs (--cpus-per-task)", v)
    if procs > cpus:
        return Check("cpus", "warn", what + ": the main processes share CPUs with the workers", v)
    return Check("cpus", "ok", what, v)


def check_rate(measured: float | None, needed: float | None, error: str | None = None) -> Check:
    v = {"measured_samples_per_s": measured, "needed_samples_per_s": needed}
    if measured is None:
        return Check("loader", "fail", f"the loader could not run: {error}", v)
    if needed is None:
        return Check("loader", "unknown", f"{measured:.1f} samples/s per rank measured; needed rate unknown "
                     "(give --needed-rate or --measure-steps)", v)
    from .train.profiling import predicted_utilisation  # at most what a scheduler's NVML poll will show

    v["predicted_gpu_util"] = round(predicted_utilisation(measured, needed), 1)
    what = f"{measured:.1f} samples/s per rank measured, training needs {needed:.1f} (GPU utilisation at most " \
           f"{v['predicted_gpu_util']:.0f}%)"
    if measured < needed:
        return Check("loader", "fail", what + ": the GPU would wait for data; add workers/CPUs or shrink "
                     "the images at build time (--resize)", v)
    return Check("loader", "ok", what, v)


def check_labels(weights: list[float], labelled: list[np.ndarray], batch: int, epoch_size: int,
                 warn_above: float, batching: str = "random", names: list[str] | None = None) -> Check:
    """From each source's labelled flags (the index): the random-plan formulas, and with another
    batching the count over the loader's own plans (0 when stratified rules it out)."""
    from .stats.mixture_risk import labelless_in_plan, p_labelled_draw, p_labelless_iid, p_labelless_quota

    fr = [float(f.mean()) if len(f) else 0.0 for f in labelled]
    p_draw = p_labelled_draw(weights, fr)
    quota = p_labelless_quota(weights, fr, batch, epoch_size)
    iid = p_labelless_iid(weights, fr, batch)
    names = names or [f"source {i}" for i in range(len(fr))]
    v = {"p_labelled_draw": p_draw, "p_labelless_quota": quota, "p_labelless_iid": iid, "batch_size": batch,
         "labelled_per_source": dict(zip(names, fr)), "batching": batching}
    coverage = ", ".join(f"{n} {f:.0%}" for n, f in zip(names, fr))
    p = quota if math.isfinite(quota) else iid
    what = f"P(batch of {batch} without labels) = {p:.3g} (exact epoch quotas; {iid:.3g} for independent draws)"
    if batching != "random":
        plan = labelless_in_plan(weights, labelled, batch, epoch_size, batching)
        v.update(plan)
        if plan["plan_labelless"] is not None:
            p = plan["plan_labelless"]
            how = "none by construction" if plan["by_construction"] else f"over {plan['plan_epochs']} epochs of its plan"
            what = (f"P(batch of {batch} without labels) = {p:.3g} with {batching} batching ({how}; {quota:.3g} with "
                    f"random batching)")
    what += f"; labelled frames per source (index): {coverage}; labelled share of draws {p_draw:.0%}"
    if p_draw == 0:
        return Check("labels", "fail", what + ": no labelled sample in the mixture, segmentation cannot learn", v)
    if p > warn_above:
        return Check("labels", "warn", what + f" > {warn_above:g}", v)
    return Check("labels", "ok", what, v)


def scene_leakage(train_scenes: list[str], other_scenes: list[str]) -> tuple[int, int]:
    """(frames of the other split whose NYU room is also in train, frames of the other split)."""
    from .convert.nyu.splits import shared_places

    return shared_places(train_scenes, other_scenes)["frames"], len(other_scenes)


def check_leakage(pairs: list[dict[str, Any]], fail: bool) -> Check:
    """pairs: the entries of :func:`vortex_data.stats.leakage.leakage` (stats.json's ``scene_leakage``)."""
    if not pairs:
        return Check("leakage", "unknown", "no training source with a val/test/eval manifest of its scene family "
                     "beside it (nothing to check)", {})
    parts, values, status = [], {}, "ok"
    for p in pairs:
        label, leaked, n = p["pair"], p["leaked_frames"], p["frames"]
        if leaked is None:
            parts.append(f"{label}: unknown ({p['unknown_because']})")
            values[label] = None
            status = "unknown" if status == "ok" else status
            continue
        values[label] = {"leaked_frames": leaked, "frames": n}
        parts.append(f"{label}: {leaked} of {n} frames from scenes also in train")
        if leaked:
            status = "fail" if fail else "warn"
    return Check("leakage", status, "; ".join(parts), values)


def check_walltime(steps: int, step_s: float | None, time_left_s: float | None, margin_s: float) -> Check:
    v = {"steps": steps, "step_s": step_s, "time_left_s": time_left_s, "stop_margin_s": margin_s}
    if time_left_s is None:
        return Check("walltime", "unknown", "no time limit (give --time-limit or run inside a Slurm job)", v)
    if time_left_s <= margin_s + (step_s or 0.0):
        return Check("walltime", "fail", f"{_dur(time_left_s)} left is not more than the stop margin {_dur(margin_s)} "
                     "plus one step: the job would stop before saving any progress", v)
    if step_s is None:
        return Check("walltime", "unknown", f"{_dur(time_left_s)} left; step time unknown", v)
    need = steps * step_s
    v["needed_s"] = need
    what = f"{steps} steps x {step_s:.3g} s = {_dur(need)}, {_dur(time_left_s - margin_s)} usable"
    if need > time_left_s - margin_s:
        jobs = math.ceil(need / (time_left_s - margin_s))
        v["jobs"] = jobs
        return Check("walltime", "warn", what + f": does not fit, about {jobs} jobs (requeues resume it)", v)
    return Check("walltime", "ok", what, v)


def _dur(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


# ---------------------------------------------------------------- measurements

def measure_loader(cfg: Any, batches: int, warmup: int = 2) -> float:
    """Samples per second the trainer's own loader (:func:`vortex_data.train.data.train_request`:
    its workers, photometric on the device, decode, size, batch) delivers to one rank here, over
    ``batches`` batches. Not timed: ``warmup`` batches (worker start, first shard opens), then the
    batches the workers buffered meanwhile (``prefetch_factor`` x workers), which arrive without
    any wait and would inflate the rate. ``finish`` (the device phase) is not timed: the trainer
    counts it as compute."""
    from .train.data import resolve_factory, train_request

    loader = resolve_factory(cfg.loader)(train_request(cfg))
    untimed = warmup + getattr(loader, "prefetch_factor", 0) * getattr(loader, "num_workers", 0)
    try:
        got, n, t0 = 0, 0, time.perf_counter()
        while got < untimed + batches:
            before = got
            for b in loader:
                got += 1
                if got == untimed:
                    t0 = time.perf_counter()
                elif got > untimed:
                    n += len(b["key"])
                if got >= untimed + batches:
                    break
            if got == before:
                raise InputError(f"{cfg.manifest or cfg.mixture}: the training loader yields no batches "
                                 f"(an epoch smaller than one batch of {cfg.batch_size}?)")
        return n / (time.perf_counter() - t0)
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()


def measure_train_rate(cfg: Any, steps: int) -> float:
    """Samples per second of the training step itself on this node's device, with synthetic batches
    (no data wait), timed after one warm-up step. Needs the [train] extra."""
    import torch

    from .train.data import synthetic_loader
    from .train.loop import Trainer

    trainer = Trainer(replace(cfg, encoder_weights=None), synthetic_loader)  # weights do not change the speed
    it = iter(trainer.loader)
    times = []
    for i in range(steps + 1):
        batch = next(it)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        if trainer.cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    trainer.close()
    return cfg.batch_size / float(np.median(times))


# ---------------------------------------------------------------- manifests -> label flags, scenes

def _train_units(cfg: Any) -> tuple[Any, list[Any]]:
    from .stream.mixture import resolve_mixture
    from .stats.compute import Unit

    mix = resolve_mixture(cfg.mixture, cfg.manifest, cfg.manifests_dir)  # as make_loader resolves it
    return mix, [Unit(s.name, Path(mix.manifest_path(s, "train")), s.key_pattern, s.weight) for s in mix.sources]


def label_inputs(cfg: Any) -> tuple[list[float], list[np.ndarray], int, str, list[str]]:
    """Weights, each source's labelled flags from its index, epoch size, batching, source names."""
    from .stream.batching import read_labelled_flags

    mix, units = _train_units(cfg)
    labelled = [read_labelled_flags(str(u.manifest), u.key_pattern) for u in units]  # as the loader reads them
    batching = getattr(cfg, "batching", None) or mix.batching
    return [u.weight for u in units], labelled, mix.epoch_size, batching, [u.name for u in units]


def leakage_inputs(cfg: Any) -> list[dict[str, Any]]:
    """Every source's train manifest against every source's val/test/eval manifest present, paired
    by scene family (a raw-capture NYU source against the labelled set's evaluation frames too)."""
    from .format.scenes import EVAL_SPLITS, Side
    from .stats.leakage import leakage

    mix, units = _train_units(cfg)
    train = [Side(f"{s.name} train", u.manifest, s.key_pattern) for s, u in zip(mix.sources, units)]
    held_out = [Side(f"{s.name} {split}", Path(mix.manifest_path(s, split)), s.key_pattern)
                for s in mix.sources for split in EVAL_SPLITS]
    return leakage(train, [h for h in held_out if h.manifest.is_file()])


# ---------------------------------------------------------------- the whole run

def time_left(time_limit_s: float | None, now: float | None = None) -> float | None:
    from .train.stopping import slurm_deadline

    now = time.time() if now is None else now
    deadline = slurm_deadline()
    left = [v for v in (time_limit_s, None if deadline is None else deadline - now) if v is not None]
    return min(left) if left else None


def preflight(cfg: Any, *, needed_rate: float | None = None, measure_steps: int = 0, bench_batches: int = 20,
              time_limit_s: float | None = None, ranks_per_node: int = 1, max_labelless: float = 0.05,
              fail_on_leakage: bool = False, cpus: int | None = None) -> Report:
    checks = [check_cpus(usable_cpus() if cpus is None else cpus, cfg.num_workers, ranks_per_node)]

    measured, error = None, None
    try:
        measured = measure_loader(cfg, bench_batches)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        error = str(e)
    if needed_rate is None and measure_steps > 0:
        try:
            needed_rate = measure_train_rate(cfg, measure_steps)
        except (ImportError, RuntimeError, OSError) as e:
            checks.append(Check("train", "unknown", f"cannot time training steps here ({e})"))
    checks.insert(1, check_rate(measured, needed_rate, error))

    try:
        weights, labelled, epoch_size, batching, names = label_inputs(cfg)
        checks.append(check_labels(weights, labelled, cfg.batch_size, epoch_size, max_labelless, batching, names))
        from .stream.batching import repeats_in_batch, repeats_warning  # per_source: a source smaller than a batch
        if rep := repeats_in_batch(names, [len(f) for f in labelled], batching, cfg.batch_size):
            checks.append(Check("repeats", "warn", str(repeats_warning(rep, cfg.batch_size)), {"repeats_in_batch": rep}))
    except (ValueError, OSError, KeyError) as e:
        checks.append(Check("labels", "unknown", f"cannot read the indexes ({e})"))

    try:
        checks.append(check_leakage(leakage_inputs(cfg), fail_on_leakage))
    except (ValueError, OSError, KeyError) as e:
        checks.append(Check("leakage", "unknown", f"cannot read the manifests ({e})"))

    rates = [r for r in (measured, needed_rate) if r]
    step_s = cfg.batch_size / min(rates) if rates else None
    checks.append(check_walltime(cfg.steps, step_s, time_left(time_limit_s), cfg.stop_margin_s))
    return Report(checks)


def add_parser(subparsers: argparse._SubParsersAction, **kw: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "preflight", **kw,
        description="Check, on the node a training job got and before it starts, whether the job can run well: "
                    "the CPUs it may use vs the loader workers it starts; the loader's rate measured here vs the rate "
                    "training needs; the chance of a batch without labels; NYU frames in val/test whose scene is in "
                    "train; whether the steps fit the walltime. Each check says ok, warn, fail or unknown. "
                    "Exit code 0 = GO (no check failed), 1 = NO-GO, 2 = the recipe or its options are unusable.",
        epilog="The rates are per rank (one training process). Example, first line of an sbatch script: "
               "vortex-data preflight --recipe v6 --stage 1 --needed-rate 120 || exit 1")
    p.add_argument("--recipe", default="v6", help="shipped training recipe or TOML path (default v6; 'none' for the command-line settings alone)")
    p.add_argument("--stage", type=int, default=1, help="recipe stage (default 1)")
    p.add_argument("--manifests", dest="manifests_dir", metavar="DIR",
                   help="folder with the datasets' manifests (default manifests/)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--mixture", help="override the recipe's mixture (file or recipe name)")
    data.add_argument("--manifest", help="one manifest instead of the recipe's mixture (as train --manifest)")
    p.add_argument("--num-workers", type=int, help="override the recipe's loader workers per rank")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size per rank")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="override the recipe's image_size")
    p.add_argument("--decode", choices=("cpu", "device"), help="override the recipe's decode (where RGB JPEGs are decoded)")
    p.add_argument("--steps", type=int, help="steps still to run (default: the recipe's steps)")
    p.add_argument("--ranks-per-node", type=int, default=int((os.environ.get("SLURM_NTASKS_PER_NODE") or "1").split("(")[0]),
                   help="training processes sharing these CPUs (default $SLURM_NTASKS_PER_NODE or 1; with torchrun "
                        "in one task give the GPUs per node)")
    p.add_argument("--needed-rate", type=float, metavar="SAMPLES_PER_S",
                   help="samples per second one training process consumes (from a previous run's log)")
    p.add_argument("--measure-steps", type=int, default=0, metavar="N",
                   help="without --needed-rate: time N training steps on this node's device with synthetic "
                        "batches to get it (needs the [train] extra; cheap on a GPU, slow on CPU)")
    p.add_argument("--bench-batches", type=int, default=20, help="batches the loader is timed over (default 20)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="seconds the job may run (default: until $SLURM_JOB_END_TIME, if set)")
    p.add_argument("--max-labelless", type=float, default=0.05,
                   help="warn when P(batch without labels) is above this (default 0.05); no labels at all fails")
    p.add_argument("--fail-on-leakage", action="store_true", help="scene leakage (an evaluation scene in a training manifest) is a fail, not a warning")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    from .train.config import build_config, load_recipe

    recipe = load_recipe(args.recipe)
    overrides = {"mixture": args.mixture, "manifest": args.manifest, "manifests_dir": args.manifests_dir,
                 "num_workers": args.num_workers, "batch_size": args.batch_size, "steps": args.steps,
                 "image_size": tuple(args.image_size) if args.image_size else None, "decode": args.decode}
    return build_config(recipe, args.stage, overrides, recipe_name=args.recipe)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    rep = preflight(cfg, needed_rate=args.needed_rate, measure_steps=args.measure_steps,
                    bench_batches=args.bench_batches, time_limit_s=args.time_limit,
                    ranks_per_node=args.ranks_per_node, max_labelless=args.max_labelless,
                    fail_on_leakage=args.fail_on_leakage)
    print(f"vortex-data preflight: recipe {args.recipe} stage {cfg.stage}, mixture {cfg.mixture or cfg.manifest}, "
          f"batch {cfg.batch_size}, {cfg.num_workers} workers")
    print(rep.format())
    if args.json:
        args.json.write_text(json.dumps(rep.as_dict(), indent=1) + "\n")
    return 0 if rep.go else 1
