"""tools/gpu_bench.py end to end on the CPU (``--quick``), and the import path it needs on a bare
GPU machine: the loader, the trainer and the photo set import without the optional libraries
(PyAV, rosbags, webdataset, matplotlib) that such a machine may lack."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = ("av", "rosbags", "webdataset", "matplotlib")
IMPORT_WITHOUT_OPTIONALS = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on this machine")
sys.meta_path.insert(0, Block())
import vortex_data.stream, vortex_data.train.loop, vortex_data.bench.photos, vortex_data.convert.shards
sys.argv = ["gpu_bench.py", "--help"]
import runpy
try:
    runpy.run_path("tools/gpu_bench.py", run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
print("imported")
"""


def test_the_gpu_path_imports_without_optional_libraries():
    code = f"BLOCKED = {BLOCKED!r}\n" + IMPORT_WITHOUT_OPTIONALS
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "imported" in res.stdout


def test_quick_cpu_run_measures_every_section(tmp_path, nyu_photos):
    pytest.importorskip("timm")
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, "tools/gpu_bench.py", "--photos", str(nyu_photos), "--device", "cpu",
                          "--quick", "--out", str(out), "--set-dir", str(tmp_path / "set")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["environment"]["device"] == "cpu"
    assert r["photo_set"]["samples"] == 24
    (ceiling,) = r["ceiling"]
    assert ceiling["images_per_s"] > 0 and ceiling["steps"] == 3
    assert {row["mode"] for row in r["loader"]} == {"device-photometric", "device-decode"}
    for row in r["loader"]:
        assert row["images_per_s"] > 0 and 0 <= row["data_wait_fraction"] <= 1 and row["profile_workers_needed"] >= 1
    phase = r["device_phase"]
    assert phase["finish_ms_device-photometric"] > 0 and phase["device_decode_images_per_s"] > 0
    assert phase["jpeg_kb_mean"] > 30  # real-photo JPEGs, not the ray-cast fixtures' small ones
    t = r["training"]
    assert t["status"] == "done" and t["exit_code"] == 0 and t["all_finite"]
    assert len(t["losses"]) == t["steps"] and t["profile"]["event"] == "profile"
    assert r["workers"]["profile_workers_needed"] >= 1
    b = r["breakdown"]
    assert b["forward_ms"] > 0 and b["backward_ms"] > 0 and b["step_ms"] > 0
    assert "(a) compute ceiling" in res.stdout and "(f) workers" in res.stdout
    c = r["compile"]  # (h): eager vs compiled (the eager backend on a CPU), NVML unavailable here, finish before/after
    assert [(row["mode"], row["feed"]) for row in c["rows"]] == [("none", "resident"), ("default", "resident")]
    assert all(row["images_per_s"] > 0 and row["gpu_util"] is None for row in c["rows"])
    assert c["rows"][1]["speedup_vs_eager"] > 0 and c["gpu_util_source"].startswith("unavailable (no CUDA device")
    assert c["finish"]["before_ms"] > 0 and c["finish"]["eager_ms"] > 0
    assert c["finish"]["before_vs_eager_max_abs"] == 0.0  # the fused phase gives the old phase's values
    assert "(h) compiled step" in res.stdout
