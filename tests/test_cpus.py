"""The CPUs a process may use: its affinity mask and its cgroup's CPU quota (cgroup v2 and v1)."""

from __future__ import annotations

import os

import pytest

from vortex_data import cpus


def tree(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_cgroup_v2_cpu_max_of_the_group_and_its_ancestors(tmp_path):
    root = tree(tmp_path / "fs", {"cpu.max": "max 100000\n", "slurm/cpu.max": "300000 100000\n",
                                  "slurm/job_7/cpu.max": "150000 100000\n", "slurm/job_7/step_0/cpu.max": "max 100000\n"})
    proc = tree(tmp_path, {"self_cgroup": "0::/slurm/job_7/step_0\n"}) / "self_cgroup"
    assert cpus.cgroup_cpu_quota(root, proc) == 1.5  # the tightest of the ancestors' quotas
    (root / "slurm/job_7/cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_quota(root, proc) == 3.0
    (root / "slurm/cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_quota(root, proc) is None  # no quota anywhere


def test_cgroup_v2_inside_a_container_namespace(tmp_path):
    """A container's /proc/self/cgroup may name a path its /sys/fs/cgroup does not show: the mount's root is its group."""
    root = tree(tmp_path / "fs", {"cpu.max": "200000 100000\n"})
    proc = tree(tmp_path, {"self_cgroup": "0::/docker/abc123\n"}) / "self_cgroup"
    assert cpus.cgroup_cpu_quota(root, proc) == 2.0


def test_cgroup_v1_cfs_quota(tmp_path):
    root = tree(tmp_path / "fs", {"cpu,cpuacct/job/cpu.cfs_quota_us": "250000\n",
                                  "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
                                  "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    proc = tree(tmp_path, {"self_cgroup": "12:memory:/job\n4:cpu,cpuacct:/job\n1:name=systemd:/\n"}) / "self_cgroup"
    assert cpus.cgroup_cpu_quota(root, proc) == 2.5
    (root / "cpu,cpuacct/job/cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.cgroup_cpu_quota(root, proc) is None
    assert cpus.cgroup_cpu_quota(root, tmp_path / "absent") is None  # not Linux, or no cgroup fs


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity (Linux)")
def test_usable_cpus_is_the_affinity_mask_lowered_to_the_quota(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    root = tree(tmp_path / "fs", {"cpu.max": "50000 100000\n"})
    monkeypatch.setattr(cpus, "CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "PROC_SELF_CGROUP", tree(tmp_path, {"c": "0::/\n"}) / "c")
    assert cpus.usable_cpus() == 1  # half a CPU of quota still runs one process
    (root / "cpu.max").write_text(f"{100000 * (affinity + 4)} 100000\n")
    assert cpus.usable_cpus() == affinity  # a quota above the mask does not add cores
    (root / "cpu.max").write_text("max 100000\n")
    assert cpus.usable_cpus() == affinity


def test_preflight_counts_the_quota_not_the_cores(tmp_path, monkeypatch):
    """A job in a cgroup allowed 1 CPU with 2 loader workers is a NO-GO on CPUs, whatever the node's cores."""
    from vortex_data.preflight import preflight
    from vortex_data.train.config import TrainConfig

    monkeypatch.setattr(cpus, "CGROUP_ROOT", tree(tmp_path / "fs", {"cpu.max": "100000 100000\n"}))
    monkeypatch.setattr(cpus, "PROC_SELF_CGROUP", tree(tmp_path, {"c": "0::/\n"}) / "c")
    rep = preflight(TrainConfig(mixture=None, manifest=str(tmp_path / "none.json"), num_workers=2), bench_batches=1)
    assert rep.get("cpus").values["cpus"] == 1 and rep.get("cpus").status == "fail"
