"""How many CPUs this process may use: the default for every worker count."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs in this process's affinity mask (what a SLURM task or cgroup was given), not the
    node's core count; falls back to os.cpu_count() where affinity is unknown (macOS, Windows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
