"""When to stop early: signals, a time limit, the SLURM job end time, a stop file.

A stop is only *requested* here; the loop finishes the current step, checkpoints and exits
with EXIT_REQUEUE, so nothing is ever killed mid-write.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any
from pathlib import Path

from ..errors import InputError

EXIT_REQUEUE = 75
"""sysexits EX_TEMPFAIL: 'try again later' - the run stopped early with a checkpoint and wants requeueing."""

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP")
"""Slurm sends SIGTERM (or SIGUSR1 with --signal); torchrun forwards SIGTERM, SIGINT and SIGHUP to its workers."""


def slurm_deadline(env: dict[str, str] | None = None) -> float | None:
    """Unix time the SLURM job ends, from SLURM_JOB_END_TIME when the scheduler (or the sbatch script) sets it."""
    value = (os.environ if env is None else env).get("SLURM_JOB_END_TIME", "").strip()
    try:
        return float(value) if value else None
    except ValueError:
        return None


class StopController:
    """Collects stop requests; :meth:`reason` says why (None = keep going).

    ``time_limit_s`` counts from construction; ``margin_s`` is subtracted from every deadline
    and should cover one step plus one checkpoint write. A time limit not longer than the margin
    is an error: the run would stop after its first step.
    """

    def __init__(self, time_limit_s: float | None = None, margin_s: float = 60.0, stop_file: str | Path | None = None,
                 clock=time.time) -> None:
        if time_limit_s is not None and time_limit_s <= margin_s:
            raise InputError(f"--time-limit {time_limit_s:g} s is not longer than the stop margin of {margin_s:g} s "
                             f"(stop_margin_s): the run would stop after its first step; give a longer time "
                             f"limit or a smaller --stop-margin-s")
        self._clock = clock
        self._signal: str | None = None
        self._previous: dict[int, Any] = {}
        self.stop_file = Path(stop_file) if stop_file else None
        deadlines = [d for d in (slurm_deadline(), None if time_limit_s is None else clock() + time_limit_s) if d]
        self.deadline = min(deadlines) - margin_s if deadlines else None

    def install(self) -> None:
        """Handle the STOP_SIGNALS by requesting a stop (main thread only: Python's rule)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for name in STOP_SIGNALS:
            num = getattr(signal, name)
            self._previous.setdefault(num, signal.signal(num, self._on_signal))

    def uninstall(self) -> None:
        """Put back the handlers :meth:`install` replaced: a stage run from Python (a notebook, a
        test, a sweep) must not leave Ctrl-C setting the flag of a controller that is gone."""
        if threading.current_thread() is not threading.main_thread():
            return
        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signal = signal.Signals(signum).name

    def request(self, why: str) -> None:
        self._signal = why

    def reason(self) -> str | None:
        if self._signal:
            return self._signal
        if self.deadline is not None and self._clock() >= self.deadline:
            return "time-limit"
        if self.stop_file is not None and self.stop_file.exists():
            return f"stop-file {self.stop_file}"
        return None
