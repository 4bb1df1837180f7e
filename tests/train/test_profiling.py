"""The start-of-run profile's window, as the trainer feeds it: on CUDA the compute time of a step
arrives one step late (ComputeClock reads its events then), so pairing by arrival would count the
warm-up step's compute, which on a GPU is dominated by cuDNN's algorithm search."""

import pytest

from vortex_data.train.profiling import StartProfile, diagnose


def feed(profile, steps, wait, compute, lag):
    """What Trainer.run hands the profile: step n's wait, and the compute read after step n."""
    done = None
    for n in range(1, steps + 1):
        arrived = compute[n - 1 - lag] if n - 1 - lag >= 0 else 0.0
        got = profile.add(n, wait[n - 1], arrived)
        if got is not None:
            assert done is None, "the window reports once"
            done = (n, got)
    return done


@pytest.mark.parametrize("lag", [0, 1])
def test_the_warm_up_step_stays_out_of_the_window_whatever_the_clock_lag(lag):
    k = 5
    wait = [3.0] + [0.01] * 20            # step 1 waits for the workers to start
    compute = [24.0] + [0.05] * 20        # step 1 autotunes (cuDNN): 24 s
    n, timer = feed(StartProfile(k, lag), 20, wait, compute, lag)
    assert n == k + 1 + lag
    assert timer.steps == k
    assert timer.compute == pytest.approx(k * 0.05) and timer.wait == pytest.approx(k * 0.01)
    report = diagnose(timer, batch_size=16, workers_now=2)
    assert report.compute_samples_per_s == pytest.approx(16 / 0.05)


def test_pairing_by_arrival_was_the_bug_the_window_fixes():
    """The old window (steps 2..K+1 of whatever arrived) on a one-step-late clock: the warm-up
    step's 24 s land in it, and a loader that waits 40 % of each steady step looks fine."""
    k, lag = 5, 1
    wait = [3.0] + [0.04] * 20
    compute = [24.0] + [0.06] * 20
    old_compute = sum(compute[n - 1 - lag] for n in range(2, k + 2))
    old_wait = sum(wait[n - 1] for n in range(2, k + 2))
    assert old_wait / (old_wait + old_compute) < 0.1  # the old verdict: not starving
    _, timer = feed(StartProfile(k, lag), 20, wait, compute, lag)
    assert diagnose(timer, 16, 2).starving and diagnose(timer, 16, 2).workers_needed == 4


def test_no_profile_when_turned_off():
    assert feed(StartProfile(0, 1), 10, [0.1] * 10, [0.1] * 10, 1) is None


# ---- GPU utilisation as the scheduler sees it (NVML), with NVML's contract modelled on the CPU

class FakeGpu:
    """NVML's contract for ``utilization.gpu``: the percent of the last sample period (1/6 s here,
    as on data-centre parts) in which a kernel was running. The GPU computes for ``compute_s``,
    then idles ``wait_s`` for the next batch, forever."""

    def __init__(self, compute_s: float, wait_s: float, period_s: float = 1 / 6) -> None:
        self.compute_s, self.wait_s, self.period_s = compute_s, wait_s, period_s
        self.now = 0.0

    def busy(self, t: float) -> bool:
        return t % (self.compute_s + self.wait_s) < self.compute_s

    def utilization(self) -> float:
        n = 400
        ts = [self.now - self.period_s * (i + 0.5) / n for i in range(n)]
        return round(100 * sum(self.busy(t) for t in ts) / n)  # NVML reports whole percent


class FakeNvmlModule:
    """The slice of pynvml the sampler calls."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpu: FakeGpu | None, init_error: str | None = None) -> None:
        self.gpu, self.init_error = gpu, init_error

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        assert uuid.startswith("GPU-")
        return uuid

    def nvmlDeviceGetUtilizationRates(self, handle):
        if self.gpu is None:
            raise self.NVMLError("Not Supported")
        return type("Utilization", (), {"gpu": self.gpu.utilization(), "memory": 0})()


def test_polled_mean_is_the_busy_share_where_one_reading_at_the_log_line_is_not():
    """A loader that starves the GPU 40 % of the time: polled every 0.25 s and averaged (what a
    scheduler's monitor does), NVML says ~60 %; one reading taken when the step ends (the log
    line comes right after a step) would say 100 %."""
    from vortex_data.train.profiling import GpuUtilisation

    gpu = FakeGpu(compute_s=0.222, wait_s=0.148)  # steps of 0.37 s, not in phase with the polls
    util = GpuUtilisation(gpu.utilization, period_s=0.25)
    for i in range(1, 81):  # 20 s of polling, 0.25 s apart (the thread's job; driven by hand here)
        gpu.now = 0.25 * i + 0.013
        util.poll()
    assert util.take() == pytest.approx(60, abs=3)
    assert util.take() is None  # the next interval has no sample yet
    gpu.now = 27 * 0.37 + 0.222 - 1e-3  # the end of a step: the last 1/6 s were all compute
    assert gpu.utilization() == 100


def test_unavailable_is_reported_never_raised(monkeypatch):
    import torch

    from vortex_data.train.profiling import open_gpu_utilisation

    cpu = open_gpu_utilisation(torch.device("cpu"))
    assert not cpu.available and cpu.take() is None and cpu.describe(None) == "unavailable (no CUDA device (device cpu))"
    cpu.start().stop()  # no thread, no error
    cuda = torch.device("cuda", 0)
    no_driver = open_gpu_utilisation(cuda, nvml=FakeNvmlModule(None, init_error="Driver Not Loaded"))
    assert not no_driver.available and "Driver Not Loaded" in no_driver.reason
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # the package is absent: import fails
    absent = open_gpu_utilisation(cuda)
    assert not absent.available and "nvidia-ml-py is not installed" in absent.reason
    props = type("Props", (), {"uuid": "1f2e3d4c-0000-1111-2222-333344445555"})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    mig = open_gpu_utilisation(cuda, nvml=FakeNvmlModule(None))  # a device NVML does not measure
    assert not mig.available and "Not Supported" in mig.reason
    gpu = FakeGpu(0.05, 0.0)
    nvml = FakeNvmlModule(gpu)
    ok = open_gpu_utilisation(cuda, nvml=nvml)
    gpu.now = 1.0
    ok.poll()
    assert ok.available and ok.take() == 100
    nvml.gpu = None  # NVML stops answering mid-run (driver reset): the sampler turns itself off
    ok.poll()
    assert not ok.available and ok.take() is None and "stopped answering" in ok.describe(None)


def test_prediction_and_levers():
    from vortex_data.train.profiling import StepTimer, predicted_utilisation, utilisation_advice

    assert predicted_utilisation(60.0, 100.0) == pytest.approx(60.0)
    assert predicted_utilisation(200.0, 100.0, busy_percent=80.0) == pytest.approx(80.0)
    starving = diagnose(StepTimer(wait=0.4, compute=0.6, steps=10), 16, 2)
    msg = utilisation_advice(60.0, 90.0, starving, "cpu", "none", 16)
    assert "predicted 60%" in msg and "min_gpu_util 90%" in msg
    assert "--num-workers 4" in msg and "--decode device" in msg and "--compile default" in msg and "--batch-size 32" in msg
    fed = diagnose(StepTimer(wait=0.0, compute=0.6, steps=10), 16, 8)
    msg = utilisation_advice(45.0, 90.0, fed, "device", "default", 16)
    assert "--num-workers" not in msg and "--decode" not in msg and "--compile reduce-overhead" in msg
    assert utilisation_advice(95.0, 90.0, fed, "cpu", "none", 16) is None


def test_trainer_reports_nvml_in_the_profile_each_log_line_and_status_and_warns_below_min(tmp_path, monkeypatch, capsys):
    """The real loop on the CPU with a fake NVML that reads 40 %: the profile predicts 40 %, the
    --min-gpu-util 90 warning names the levers, every step line and STATUS carry the figure."""
    pytest.importorskip("timm")
    import json

    import torch

    from vortex_data.train import loop
    from vortex_data.train.config import TrainConfig
    from vortex_data.train.data import synthetic_loader
    from vortex_data.train.profiling import GpuUtilisation

    monkeypatch.setattr(loop, "open_gpu_utilisation", lambda device: GpuUtilisation(lambda: 40, period_s=0.005))
    statuses: list[str] = []
    real_write = loop.write_status
    monkeypatch.setattr(loop, "write_status", lambda d, s: (statuses.append(s), real_write(d, s)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(run_dir=str(tmp_path), loader="synthetic", steps=4, image_size=(64, 64), batch_size=2,
                          num_workers=0, warmup_steps=1, log_every=1, profile_steps=2, min_gpu_util=90.0)
        assert loop.Trainer(cfg, synthetic_loader).run() == 0
    finally:
        torch.set_num_threads(threads)
    events = [json.loads(x) for x in (tmp_path / "stage1" / "log.jsonl").read_text().splitlines()]
    (profile,) = [e for e in events if e["event"] == "profile"]
    assert profile["gpu_util"] == 40 and profile["gpu_util_predicted"] == 40 and profile["gpu_util_source"] == "nvml"
    steps = [e for e in events if e["event"] == "step"]
    assert all(e["gpu_util"] == 40 for e in steps[1:])  # step 1's samples (warm-up) are dropped
    out = capsys.readouterr().out
    assert "GPU utilisation predicted 40%" in out and "min_gpu_util 90%" in out and "--compile default" in out
    running = [s for s in statuses if s.startswith("running\n")]
    assert running and running[-1] == "running\ngpu_util 40% at step 4 (NVML utilization.gpu, mean since the previous log line)"
    assert (tmp_path / "stage1" / "STATUS").read_text() == "done\n"


def test_trainer_on_the_cpu_reports_nvml_unavailable(tmp_path):
    pytest.importorskip("timm")
    import json

    from vortex_data.train.config import TrainConfig
    from vortex_data.train.data import synthetic_loader
    from vortex_data.train.loop import Trainer

    import torch

    cfg = TrainConfig(run_dir=str(tmp_path), loader="synthetic", steps=3, image_size=(64, 64), batch_size=2,
                      num_workers=0, warmup_steps=1, log_every=1, profile_steps=1, min_gpu_util=90.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert Trainer(cfg, synthetic_loader).run() == 0
    finally:
        torch.set_num_threads(threads)
    events = [json.loads(x) for x in (tmp_path / "stage1" / "log.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["gpu_util"].startswith("unavailable (no CUDA device")
    (profile,) = [e for e in events if e["event"] == "profile"]
    assert profile["gpu_util"] is None and profile["gpu_util_source"].startswith("upper bound from the data wait")
    assert all(e["gpu_util"] is None for e in events if e["event"] == "step")


def test_preflight_reports_the_predicted_utilisation_beside_its_data_rate_verdict():
    from vortex_data.preflight import check_rate
    from vortex_data.train.profiling import predicted_utilisation

    slow = check_rate(60.0, 100.0)
    assert slow.status == "fail" and slow.values["predicted_gpu_util"] == 60.0 == predicted_utilisation(60, 100)
    assert "(GPU utilisation at most 60%)" in slow.detail
    fast = check_rate(250.0, 100.0)
    assert fast.status == "ok" and fast.values["predicted_gpu_util"] == 100.0
