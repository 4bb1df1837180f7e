"""Data-wait vs compute accounting, the 'your loader starves the GPU' diagnosis, and GPU utilisation (NVML)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


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


# ---------------------------------------------------------------- GPU utilisation, as the scheduler sees it

class GpuUtilisation:
    """NVML's ``utilization.gpu``, polled and averaged the way a cluster's monitor does.

    NVML's contract (``nvmlDeviceGetUtilizationRates``): the percent of time, over the past sample
    period (1/6 s to 1 s depending on the product), during which one or more kernels was
    executing on the GPU. A single kernel on one SM counts as 100 %, an idle gap between kernels
    (a host synchronisation, launch overhead, a data wait) as 0. Schedulers that kill jobs for low
    utilisation poll this figure (nvidia-smi, DCGM) and average it; so does this class: a daemon
    thread calls :meth:`poll` every ``period_s`` and :meth:`take` returns the mean of the samples
    since the same reader's previous :meth:`take` (readers: the log lines, the start profile's
    window). ``read`` None: unavailable, ``reason`` says why.
    """

    def __init__(self, read: Callable[[], float] | None, reason: str = "", period_s: float = 0.25) -> None:
        self.read, self.reason, self.period_s = read, reason, period_s
        self._sum, self._count = 0.0, 0
        self._marks: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.read is not None

    def poll(self) -> None:
        """One sample; an NVML error turns the sampler off (reported as unavailable, never raised)."""
        if self.read is None:
            return
        try:
            value = float(self.read())
        except Exception as e:  # noqa: BLE001 - a monitor must not stop training
            self.read, self.reason = None, f"NVML stopped answering ({type(e).__name__}: {e})"
            return
        with self._lock:
            self._sum += value
            self._count += 1

    def take(self, reader: str = "log") -> float | None:
        """Mean utilisation (percent) since ``reader``'s previous take (or since the start); None
        when unavailable or no sample came in between."""
        with self._lock:
            total, count = self._sum, self._count
        before_sum, before_count = self._marks.get(reader, (0.0, 0))
        self._marks[reader] = (total, count)
        n = count - before_count
        return (total - before_sum) / n if n and self.available else None

    def start(self) -> "GpuUtilisation":
        if self.available and self._thread is None:
            def loop() -> None:
                while not self._stop.wait(self.period_s):
                    self.poll()
            self._thread = threading.Thread(target=loop, name="nvml-utilisation", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def describe(self, value: float | None) -> str:
        if value is not None:
            return f"{value:.0f}%"
        return f"unavailable ({self.reason})" if not self.available else "no sample yet"


def open_gpu_utilisation(device: Any, nvml: Any = None, period_s: float = 0.25) -> GpuUtilisation:
    """The sampler for ``device`` (a torch.device): NVML through the ``nvidia-ml-py`` package
    (``import pynvml``, the ``[train]`` extra), the GPU found by its UUID (so CUDA_VISIBLE_DEVICES
    does not matter). Not a CUDA device, the package absent, no driver, a device NVML does not
    measure (a MIG slice): unavailable, with the reason. ``nvml`` replaces the module (tests)."""
    if getattr(device, "type", str(device)) != "cuda":
        return GpuUtilisation(None, f"no CUDA device (device {device})", period_s)
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return GpuUtilisation(None, "nvidia-ml-py is not installed (pip install -e .[train])", period_s)
    try:
        nvml.nvmlInit()
        import torch

        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        nvml.nvmlDeviceGetUtilizationRates(handle)  # a device NVML cannot measure fails here, once
    except Exception as e:  # noqa: BLE001 - NVMLError_*, a missing driver library, an old torch
        return GpuUtilisation(None, f"NVML: {type(e).__name__}: {e}", period_s)
    return GpuUtilisation(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu, "", period_s)


def predicted_utilisation(loader_samples_per_s: float, compute_samples_per_s: float,
                          busy_percent: float | None = None) -> float:
    """GPU utilisation (percent) a job will show: the share of time compute runs (the loader's
    rate over the compute's, at most 1: while the GPU waits for data it runs no kernel) times
    how busy NVML finds the GPU while it computes (``busy_percent``; None: assumed 100, so the
    figure is an upper bound). The trainer's profile and ``preflight`` both use this."""
    share = 1.0 if compute_samples_per_s <= 0 or math.isinf(compute_samples_per_s) else \
        min(1.0, loader_samples_per_s / compute_samples_per_s)
    return 100.0 * share * (100.0 if busy_percent is None else busy_percent) / 100.0


def utilisation_advice(predicted: float, min_util: float, report: StarvationReport, decode: str,
                       compile_mode: str, batch_size: int) -> str | None:
    """The start-of-run warning when ``predicted`` is below ``min_util``, naming the levers that
    apply: more loader workers or decode on the device when the loader starves the GPU; compile
    and a larger batch when the step itself leaves the GPU idle (launch overhead, host syncs)."""
    if predicted >= min_util:
        return None
    levers = []
    if report.starving:
        levers.append(f"more loader workers (--num-workers {report.workers_needed}, now {report.workers_now})")
        if decode != "device":
            levers.append("JPEG decode on the GPU (--decode device)")
    if compile_mode in ("none", "default"):
        levers.append(f"--compile {'default' if compile_mode == 'none' else 'reduce-overhead'} (now {compile_mode})")
    levers.append(f"a larger batch (--batch-size {2 * batch_size}, now {batch_size})")
    return (f"GPU utilisation predicted {predicted:.0f}% (NVML utilization.gpu, as the scheduler sees it) is below "
            f"min_gpu_util {min_util:.0f}%; levers: " + "; ".join(levers))


def utilisation_profile(report: StarvationReport, util: GpuUtilisation, min_util: float | None, decode: str,
                        compile_mode: str, batch_size: int) -> tuple[dict[str, Any], list[str]]:
    """The start-of-run profile's utilisation fields and warnings: what the scheduler will see is
    NVML's mean over the profile's window (``util``'s ``profile`` reader) when it is measured,
    else the bound the data wait sets (the GPU runs no kernel while it waits for a batch)."""
    measured = util.take("profile")
    predicted = measured if measured is not None else predicted_utilisation(
        report.loader_samples_per_s, report.compute_samples_per_s)
    fields = {"gpu_util": None if measured is None else round(measured, 1), "gpu_util_predicted": round(predicted, 1),
              "gpu_util_source": "nvml" if measured is not None else
              f"upper bound from the data wait; NVML {util.describe(None)}"}
    advice = None if min_util is None else utilisation_advice(predicted, min_util, report, decode, compile_mode,
                                                              batch_size)
    return fields, [advice] if advice else []
