"""Data-wait vs compute accounting, and the 'your loader starves the GPU' diagnosis."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any


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


class StartProfile:
    """The start-of-run profile's window: the data wait of steps 2..K+1 and the compute of the
    same steps (step 1 is warm-up: cuDNN's algorithm search, allocator growth, worker start).

    ``lag`` is how many steps late the compute time arrives: 1 for :class:`ComputeClock` on CUDA
    (it reads each step's events one step later), 0 on the CPU. Pairing by arrival instead of by
    step put step 1's compute into the window on CUDA: measured on an H200, a first step of ~24 s
    of cuDNN autotuning (cudnn.benchmark on) made the profile report 12.7 samples/s of compute
    where the steps ran at ~250, so it could not see a starving loader.
    """

    def __init__(self, steps: int, lag: int) -> None:
        self.steps, self.lag = steps, lag
        self.timer = StepTimer()

    def add(self, steps_run: int, wait_s: float, compute_s: float) -> StepTimer | None:
        """Feed step ``steps_run`` (1-based, of this process); the timer once the window is complete."""
        k = self.steps
        if k <= 0:
            return None
        if 2 <= steps_run <= k + 1:
            self.timer.wait += wait_s
        if 2 <= steps_run - self.lag <= k + 1:  # the compute read now is step (steps_run - lag)'s
            self.timer.compute += compute_s
            self.timer.steps += 1
        return self.timer if steps_run == k + 1 + self.lag else None


class ComputeClock:
    """Compute seconds per training step without a per-step ``torch.cuda.synchronize()``.

    On CUDA each step is bracketed by two timing events and read one step later: by then the
    previous step has usually finished, and waiting for it (``Event.synchronize``) leaves the
    current step queued, so copies and compute keep overlapping. On the CPU it is wall time.
    ``stop()`` returns the time of the most recent step that has been read (0.0 before that).
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.lag = 1 if cuda else 0
        """Steps by which :meth:`stop`'s figure trails the step just run."""
        self._t0 = 0.0
        self._pending: tuple[Any, Any] | None = None
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            import torch

            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self._t0
        import torch

        end = torch.cuda.Event(enable_timing=True)
        end.record()
        prev, self._pending = self._pending, (self._start, end)
        if prev is None:
            return 0.0
        prev[1].synchronize()
        return prev[0].elapsed_time(prev[1]) / 1000.0


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
