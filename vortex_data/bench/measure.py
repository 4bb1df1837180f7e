"""Clocks, memory figures and the sample inputs every figure of ``vortex-data bench-loader`` shares.

Rates per core are samples per CPU second: on a shared machine wall time measures the
neighbours as much as the code, CPU time does not (much).
"""

from __future__ import annotations

import os
import resource
import time
from typing import Callable

from ..stream.mixture import Mixture, read_source_index
from ..stream.shard_reader import ShardReader


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process and of its largest finished child (workers), MiB."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (finished DataLoader workers).

    Rates per core are samples per CPU second: on a shared machine wall time measures the
    neighbours as much as the code, CPU time does not (much).
    """
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + live_children_cpu_seconds()


def live_children_cpu_seconds() -> float:
    """CPU time of this process's children that are still running (persistent DataLoader
    workers are not reaped between epochs, so RUSAGE_CHILDREN does not see them yet)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0.0
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/children") as f:
                pids = f.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                if fields[0] != "Z":  # a zombie's time is counted once it is reaped
                    total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
            except (OSError, IndexError, ValueError):
                continue
    return total / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall and CPU seconds over a block."""

    def __enter__(self) -> "Clock":
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, cpu_seconds() - self.cpu0


def cpu_per_sample(fn: Callable[[], int]) -> float:
    """CPU seconds of this process per item ``fn`` reports (one core: no workers, one thread)."""
    t0 = time.process_time()
    n = fn()
    return (time.process_time() - t0) / max(n, 1)


def sample_members(mixture: Mixture, limit: int) -> list[tuple[str, dict[str, bytes]]]:
    """Up to ``limit`` encoded samples from the mixture's shards (for the baselines)."""
    out: list[tuple[str, dict[str, bytes]]] = []
    reader = ShardReader()
    for s in mixture.sources:
        ix = read_source_index(mixture.manifest_path(s, "train"), s.name)
        for url in ix.shards:
            for key, members in reader.read_group(url, list(reader.table(url))).items():
                out.append((key, members))
                if len(out) >= limit:
                    return out
    return out
