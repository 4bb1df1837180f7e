"""Data-wait vs compute accounting, and the 'your loader starves the GPU' diagnosis."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class StepTimer:
    """Seconds spent waiting for batches and computing on them, since the last reset."""

    wait: float = 0.0
    compute: float = 0.0
    steps: int = 0

    def add(self, wait_s: float, compute_s: float) -> None:
        self.wait += wait_s
        self.compute += compute_s
        self.steps += 1

    @property
    def wait_fraction(self) -> float:
        total = self.wait + self.compute
        return self.wait / total if total > 0 else 0.0

    def reset(self) -> None:
        self.wait, self.compute, self.steps = 0.0, 0.0, 0


@dataclass
class StarvationReport:
    wait_fraction: float
    loader_samples_per_s: float
    compute_samples_per_s: float
    workers_now: int
    workers_needed: int
    starving: bool

    def message(self) -> str:
        head = "loader starves the accelerator" if self.starving else "loader keeps up"
        return (f"{head}: data wait {100 * self.wait_fraction:.0f}% of step time; loader delivers "
                f"{self.loader_samples_per_s:.1f} samples/s, compute consumes {self.compute_samples_per_s:.1f} samples/s"
                + (f"; use about {self.workers_needed} loader workers (now {self.workers_now})" if self.starving else ""))


def diagnose(timer: StepTimer, batch_size: int, workers_now: int, threshold: float = 0.1) -> StarvationReport:
    """Compare the rate the loader sustains with the rate compute could sustain.

    While starving, each step costs wait + compute, so the loader's rate is B / (wait + compute)
    per step; compute alone would take B / compute. Loader throughput scales about linearly with
    workers, hence workers_needed = ceil(workers_now * compute_rate / loader_rate).
    """
    steps = max(timer.steps, 1)
    per_step = (timer.wait + timer.compute) / steps
    loader_rate = batch_size / per_step if per_step > 0 else math.inf
    compute_rate = batch_size * steps / timer.compute if timer.compute > 0 else math.inf
    needed = max(1, workers_now) * compute_rate / loader_rate if loader_rate not in (0, math.inf) else 1
    starving = timer.wait_fraction > threshold
    return StarvationReport(timer.wait_fraction, loader_rate, compute_rate, workers_now,
                            max(workers_now, math.ceil(needed)) if starving else workers_now, starving)
