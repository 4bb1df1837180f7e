"""How many CPUs this process may use: the default for every worker count.

Two limits apply on a cluster node or in a container: the affinity mask (the cores a SLURM task
or cpuset was given) and the cgroup's CPU bandwidth quota (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1), which caps CPU time without hiding any core:
a container with ``--cpus=2`` on a 64-core node sees 64 cores in its affinity mask.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def usable_cpus() -> int:
    """CPUs in this process's affinity mask (os.cpu_count() where affinity is unknown: macOS,
    Windows), lowered to the cgroup CPU quota rounded up (a quota of 1.5 CPUs keeps 2 processes
    busy, throttled)."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return n if quota is None else max(1, min(n, math.ceil(quota)))


def cgroup_cpu_quota(root: Path | None = None, self_cgroup: Path | None = None) -> float | None:
    """CPUs' worth of time this process's cgroup may use (quota / period), the tightest over the
    group and its ancestors; None when no quota is set or none can be read (not Linux, no cgroup fs)."""
    root = CGROUP_ROOT if root is None else root
    self_cgroup = PROC_SELF_CGROUP if self_cgroup is None else self_cgroup
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2: "0::/path", one unified hierarchy
            limits += [q for d in _groups(root, path) if (q := _v2_quota(d)) is not None]
        elif "cpu" in controllers.split(","):  # cgroup v1: "N:cpu,cpuacct:/path"
            mount = root / controllers
            mount = mount if mount.is_dir() else root / "cpu"
            limits += [q for d in _groups(mount, path) if (q := _v1_quota(d)) is not None]
    return min(limits) if limits else None


def _groups(mount: Path, path: str) -> list[Path]:
    """The group's folder and its ancestors up to the mount. Inside a cgroup namespace (a
    container) /proc/self/cgroup may name a path the mount does not show: the mount's root is
    then the process's own group."""
    parts = [p for p in path.strip().split("/") if p]
    out = [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in out if d.is_dir()]


def _v2_quota(group: Path) -> float | None:
    try:
        quota, period = (group / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(group: Path) -> float | None:
    try:
        quota = int((group / "cpu.cfs_quota_us").read_text())
        period = int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
