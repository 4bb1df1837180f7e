"""`vortex-data preflight`: GO and NO-GO from the recipe, the manifests and a timed loader run."""

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vortex_data.cli import main
from vortex_data.preflight import check_cpus, check_walltime, config_from_args, preflight, scene_leakage

from loader_data import build, write_mixture


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    build(root, "nyu", 12, 4)
    build(root, "nyu", 6, 4, split="val")
    build(root, "diode", 8, 4, with_seg=False)
    return root


def recipe(root, tmp_path, sources=(("nyu", 0.5), ("diode", 0.5)), **common):
    mix = write_mixture(tmp_path / "mix.toml", root / "manifests", 16, sources)
    settings = {"mixture": str(mix), "batch_size": 4, "image_size": [32, 48], "num_workers": 0, "steps": 10,
                "stop_margin_s": 1.0, **common}
    path = tmp_path / "recipe.toml"
    path.write_text("[common]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return str(path)


def run(args, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["preflight", *args, "--bench-batches", "3", "--json", str(out)])
    text = capsys.readouterr().out
    return code, {c["name"]: c for c in json.loads(out.read_text())["checks"]}, text


def test_go_when_everything_fits(sets, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    code, checks, text = run(["--recipe", recipe(sets, tmp_path), "--needed-rate", "1", "--time-limit", "3600"],
                             tmp_path, capsys)
    assert code == 0 and text.rstrip().endswith("GO")
    assert checks["cpus"]["status"] == "ok" and checks["cpus"]["values"]["workers_per_rank"] == 0
    assert checks["loader"]["status"] == "ok" and checks["loader"]["values"]["measured_samples_per_s"] > 1
    # Half of an epoch of 16 is label-less: P(a batch of 4 is all label-less) = C(8,4)/C(16,4) = 70/1820.
    assert checks["labels"]["status"] == "ok"
    assert checks["labels"]["values"]["p_labelless_quota"] == pytest.approx(70 / 1820)
    assert checks["labels"]["values"]["p_labelless_iid"] == pytest.approx(0.5 ** 4)
    assert checks["leakage"]["status"] == "unknown" and "records no scenes" in checks["leakage"]["detail"]
    assert checks["walltime"]["status"] == "ok"
    code, checks, _ = run(["--recipe", recipe(sets, tmp_path), "--needed-rate", "1", "--max-labelless", "0.01"],
                          tmp_path, capsys)
    assert code == 0 and checks["labels"]["status"] == "warn"  # a warning is still GO


def test_no_go_when_the_loader_is_slower_than_training_needs(sets, tmp_path, capsys):
    code, checks, text = run(["--recipe", recipe(sets, tmp_path), "--needed-rate", "1e9"], tmp_path, capsys)
    assert code == 1 and "NO-GO (loader)" in text
    assert checks["loader"]["status"] == "fail" and checks["walltime"]["status"] == "unknown"


def test_no_go_when_the_walltime_is_below_the_stop_margin_or_from_slurm(sets, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    code, checks, _ = run(["--recipe", recipe(sets, tmp_path), "--time-limit", "0.5"], tmp_path, capsys)
    assert code == 1 and checks["walltime"]["status"] == "fail" and "stop margin" in checks["walltime"]["detail"]
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 2 * 3600))
    code, checks, _ = run(["--recipe", recipe(sets, tmp_path, steps=10**9), "--needed-rate", "1"], tmp_path, capsys)
    assert code == 0 and checks["walltime"]["status"] == "warn" and checks["walltime"]["values"]["jobs"] > 1
    assert 7000 < checks["walltime"]["values"]["time_left_s"] <= 7200


def test_no_go_without_any_labelled_sample(sets, tmp_path, capsys):
    code, checks, _ = run(["--recipe", recipe(sets, tmp_path, sources=(("diode", 1.0),))], tmp_path, capsys)
    assert code == 1 and checks["labels"]["status"] == "fail" and checks["labels"]["values"]["p_labelled_draw"] == 0


def test_no_go_when_workers_outnumber_the_cpus(sets, tmp_path):
    rep = preflight(config_from_args(_args(recipe(sets, tmp_path, num_workers=2))), needed_rate=1, bench_batches=2,
                    cpus=1)
    assert not rep.go and rep.get("cpus").status == "fail"
    assert check_cpus(8, 7).status == "ok" and check_cpus(8, 8).status == "warn" and check_cpus(8, 3, 4).status == "fail"


def test_missing_manifests_are_a_no_go_naming_the_file(tmp_path, capsys):
    code, checks, _ = run(["--recipe", recipe(tmp_path / "nothing", tmp_path)], tmp_path, capsys)
    assert code == 1 and checks["loader"]["status"] == "fail" and "nyu-train.json" in checks["loader"]["detail"]


def add_scenes(manifest, scenes):
    index = manifest.with_suffix(".parquet")
    t = pq.read_table(index)
    col = pa.array(scenes, pa.string())
    t = t.set_column(t.column_names.index("scene"), "scene", col) if "scene" in t.column_names else t.append_column("scene", col)
    pq.write_table(t, index)


def test_nyu_leakage_is_counted_when_the_indexes_record_scenes(sets, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(sets, root)
    add_scenes(root / "manifests/nyu-train.json", ["kitchen_0001"] * 6 + ["office_0002"] * 6)
    add_scenes(root / "manifests/nyu-val.json", ["office_0002"] * 2 + ["bedroom_0003"] * 4)
    code, checks, _ = run(["--recipe", recipe(root, tmp_path), "--needed-rate", "1"], tmp_path, capsys)
    assert code == 0 and checks["leakage"]["status"] == "warn"
    assert checks["leakage"]["values"]["nyu train/nyu val"] == {"leaked_frames": 2, "frames": 6}
    code, checks, _ = run(["--recipe", recipe(root, tmp_path), "--needed-rate", "1", "--fail-on-leakage"],
                          tmp_path, capsys)
    assert code == 1 and checks["leakage"]["status"] == "fail"
    assert scene_leakage(["a", "b"], ["c", "d"]) == (0, 2)
    assert scene_leakage(["kitchen_0001a"], ["kitchen_0001b", "office_0002"]) == (1, 2)  # one room, two captures


def test_a_raw_capture_source_trained_on_an_evaluation_room_is_flagged(sets, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(sets, root)
    build(root, "nyu-sync", 6, 4)
    add_scenes(root / "manifests/nyu-train.json", ["kitchen_0001"] * 6 + ["office_0002"] * 6)
    add_scenes(root / "manifests/nyu-val.json", ["bedroom_0003"] * 4 + ["study_0004"] * 2)
    add_scenes(root / "manifests/nyu-sync-train.json", ["bedroom_0003b"] * 3 + ["living_room_0009"] * 3)
    mix = recipe(root, tmp_path, sources=(("nyu", 0.5), ("nyu-sync", 0.5)))
    code, checks, text = run(["--recipe", mix, "--needed-rate", "1", "--fail-on-leakage"], tmp_path, capsys)
    values = checks["leakage"]["values"]
    assert values["nyu train/nyu val"] == {"leaked_frames": 0, "frames": 6}
    # bedroom_0003b is another capture of bedroom_0003, whose frames are in val
    assert values["nyu-sync train/nyu val"] == {"leaked_frames": 4, "frames": 6}
    assert code == 1 and checks["leakage"]["status"] == "fail" and "nyu-sync train/nyu val: 4 of 6" in text


def test_a_diode_or_femto_evaluation_scene_in_training_is_flagged_and_disjoint_sets_are_not(sets, tmp_path, capsys):
    """Every dataset is paired with its own val/test/eval manifests by exact scene name (a femto
    recording's split is "eval"); datasets of different families are never paired."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(sets, root)
    add_scenes(root / "manifests/diode-train.json", ["scene_00019"] * 4 + ["scene_00020"] * 4)
    build(root, "diode", 4, 4, with_seg=False, split="val", scenes=["scene_00020"] * 3 + ["scene_00021"])
    build(root, "femto", 4, 4, with_seg=False, scenes=["corridor_a"] * 4)
    build(root, "femto", 4, 4, with_seg=False, split="eval", scenes=["corridor_b"] * 4)
    mix = recipe(root, tmp_path, sources=(("nyu", 0.4), ("diode", 0.3), ("femto", 0.3)))
    code, checks, text = run(["--recipe", mix, "--needed-rate", "1", "--fail-on-leakage"], tmp_path, capsys)
    values = checks["leakage"]["values"]
    assert set(values) == {"nyu train/nyu val", "diode train/diode val", "femto train/femto eval"}
    assert values["nyu train/nyu val"] is None  # the synthetic NYU index records no scenes
    assert values["diode train/diode val"] == {"leaked_frames": 3, "frames": 4}
    assert values["femto train/femto eval"] == {"leaked_frames": 0, "frames": 4}
    assert code == 1 and checks["leakage"]["status"] == "fail" and "diode train/diode val: 3 of 4" in text
    add_scenes(root / "manifests/diode-val.json", ["scene_00021"] * 4)  # disjoint now
    code, checks, _ = run(["--recipe", mix, "--needed-rate", "1", "--fail-on-leakage"], tmp_path, capsys)
    assert checks["leakage"]["values"]["diode train/diode val"] == {"leaked_frames": 0, "frames": 4}
    assert code == 0 and checks["leakage"]["status"] == "unknown"  # not a fail: only NYU's scenes are unknown


def test_walltime_arithmetic():
    assert check_walltime(100, 1.0, 200.0, 60.0).status == "ok"
    c = check_walltime(1000, 1.0, 560.0, 60.0)
    assert c.status == "warn" and c.values["jobs"] == 2
    assert check_walltime(10, 1.0, 60.5, 60.0).status == "fail"
    assert check_walltime(10, None, None, 60.0).status == "unknown"


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["preflight", "--help"])
    out = capsys.readouterr().out
    assert "NO-GO" in out and "Exit code 0" in out and "--needed-rate" in out and "--time-limit" in out


def test_needed_rate_can_be_timed_from_training_steps_on_this_device(sets, tmp_path, capsys):
    pytest.importorskip("timm")
    code, checks, _ = run(["--recipe", recipe(sets, tmp_path, image_size=[64, 64], batch_size=2, amp="none"),
                           "--measure-steps", "1"], tmp_path, capsys)
    needed = checks["loader"]["values"]["needed_samples_per_s"]
    measured = checks["loader"]["values"]["measured_samples_per_s"]
    assert needed is not None and needed > 0 and (checks["loader"]["status"] == "ok") == (measured >= needed)
    assert code == (0 if checks["loader"]["status"] == "ok" else 1)


@pytest.mark.parametrize("script", ["train_srun.sbatch", "train_torchrun.sbatch"])
@pytest.mark.parametrize("verdict", [0, 1])
def test_sbatch_scripts_run_preflight_first_and_stop_on_no_go(tmp_path, script, verdict):
    """The scripts under stubbed Slurm commands: a NO-GO preflight means no training and no requeue."""
    import os
    import stat
    import subprocess
    from pathlib import Path

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    stubs = {"vortex-data": f'echo "vortex-data $*" >> {calls}; exit {verdict}',
             "srun": f'echo "srun $*" >> {calls}; while [ "${{1#-}}" != "$1" ]; do shift; done; "$@"',
             "python": f'echo "python $*" >> {calls}', "torchrun": f'echo "torchrun $*" >> {calls}',
             "scontrol": f'echo "scontrol $*" >> {calls}', "squeue": "echo"}
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1",
           "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_END_TIME": str(int(time.time()) + 3600), "RUN_DIR": str(tmp_path / "run")}
    path = Path(__file__).parents[1] / "tools" / "slurm" / script
    rc = subprocess.run(["bash", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True).returncode
    log = calls.read_text().splitlines()
    pre = [i for i, line in enumerate(log) if line.startswith("vortex-data preflight")]
    trained = [i for i, line in enumerate(log) if line.startswith(("python -m vortex_data.train", "torchrun"))]
    assert pre and pre[0] == min(pre + trained)
    if verdict:
        assert rc == 1 and not trained and not any(line.startswith("scontrol requeue") for line in log)
    else:
        assert trained and trained[0] > pre[0]


def _recording_stream(monkeypatch):
    """Replace the 'stream' loader factory by one that records each request and the loader it built."""
    from vortex_data.train import data

    made = []

    def factory(req):
        made.append((req, data.stream_loader(req)))
        return made[-1][1]

    monkeypatch.setitem(data.FACTORIES, "stream", factory)
    return made


def test_preflight_times_the_loader_the_trainer_builds(sets, tmp_path, monkeypatch):
    """Same recipe and overrides: preflight's loader and the trainer's are made from one request
    (workers, photometric on the device, decode, size, batch), so their rates cannot drift apart."""
    pytest.importorskip("timm")
    from vortex_data.preflight import measure_loader
    from vortex_data.train.loop import Trainer

    made = _recording_stream(monkeypatch)
    cfg = config_from_args(_args(recipe(sets, tmp_path, decode="device", num_workers=1, image_size=[64, 96],
                                        run_dir=str(tmp_path / "run")), batch_size=2))
    measure_loader(cfg, 2)
    Trainer(cfg, data_factory(cfg)).close()
    (pre, pre_loader), (train, _) = made
    assert pre == train and pre.photometric == "device" and pre.decode == "device"
    assert (pre.num_workers, pre.batch_size, pre.image_size) == (1, 2, (64, 96))
    assert pre_loader.spec.photometric == "device"


def data_factory(cfg):
    from vortex_data.train.data import resolve_factory

    return resolve_factory(cfg.loader)


def _args(recipe_path, **kw):
    import argparse

    base = dict(recipe=recipe_path, stage=1, mixture=None, manifest=None, manifests_dir=None, num_workers=None,
                batch_size=None, steps=None, image_size=None, decode=None)
    return argparse.Namespace(**{**base, **kw})


def test_preflight_rate_matches_the_trainers_loader_on_real_photos(nyu_photos, tmp_path, monkeypatch):
    """On real NYU photos at the training size, the rate preflight reports is the rate the
    trainer's own loader delivers (within 25 %); preflight used to time the slower CPU-photometric
    loader (about 0.4x). Each side timed three times, interleaved, best kept (a shared machine only
    ever slows a run down)."""
    pytest.importorskip("timm")
    import torch

    from vortex_data.bench.photos import build_photo_set
    from vortex_data.preflight import measure_loader
    from vortex_data.train.config import TrainConfig
    from vortex_data.train.loop import Trainer

    manifest = build_photo_set(nyu_photos, tmp_path / "photos", 48)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), mixture=None, manifest=str(manifest), batch_size=4,
                      image_size=(384, 512), num_workers=0, steps=10, profile_steps=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer(cfg, data_factory(cfg))
    try:
        def trainer_rate(batches=8, warmup=2):
            it, n = iter(trainer.loader), 0
            for i in range(warmup + batches):
                if i == warmup:
                    t0 = time.perf_counter()
                try:
                    b = next(it)
                except StopIteration:
                    it = iter(trainer.loader)
                    b = next(it)
                n += len(b["key"]) if i >= warmup else 0
            return n / (time.perf_counter() - t0)

        pre, train = [], []
        for _ in range(3):
            pre.append(measure_loader(cfg, 8))
            train.append(trainer_rate())
    finally:
        trainer.close()
        torch.set_num_threads(threads)
    assert max(pre) == pytest.approx(max(train), rel=0.25), (pre, train)


class _Buffered:
    """A loader with 2 workers x prefetch 2 whose workers filled their buffers during the two slow
    warm-up batches: those 4 batches then arrive at once, later ones every 50 ms (4 samples each)."""

    num_workers, prefetch_factor = 2, 2

    def __iter__(self):
        for i in range(1000):
            if not 2 <= i < 6:
                time.sleep(0.05)
            yield {"key": ["k"] * 4}


def test_batches_buffered_during_warm_up_are_not_timed(monkeypatch):
    from vortex_data.preflight import measure_loader
    from vortex_data.train import data
    from vortex_data.train.config import TrainConfig

    monkeypatch.setitem(data.FACTORIES, "stream", lambda req: _Buffered())
    rate = measure_loader(TrainConfig(), batches=4)
    assert 50 < rate < 85  # 4 samples / 50 ms = 80/s; timing the buffered batches would give about 320/s


def test_stratified_batching_rules_out_labelless_batches_and_coverage_comes_from_the_index(sets, tmp_path, capsys):
    """The same mixture with batching = "stratified": every batch of 4 holds 2 NYU (labelled)
    draws, so preflight reports 0 by construction, not the random plan's 70/1820."""
    path = recipe(sets, tmp_path)
    mix = tmp_path / "mix.toml"
    mix.write_text('batching = "stratified"\n' + mix.read_text())
    code, checks, _ = run(["--recipe", path, "--needed-rate", "1", "--max-labelless", "0.01"], tmp_path, capsys)
    lab = checks["labels"]
    assert code == 0 and lab["status"] == "ok", lab
    assert lab["values"]["plan_labelless"] == 0 and lab["values"]["by_construction"] is True
    assert lab["values"]["p_labelless_quota"] == pytest.approx(70 / 1820)
    assert lab["values"]["labelled_per_source"] == {"nyu": 1.0, "diode": 0.0}
    assert "none by construction" in lab["detail"] and "nyu 100%, diode 0%" in lab["detail"]


def test_per_source_source_smaller_than_a_batch_is_a_warning_naming_it(sets, tmp_path, capsys):
    """diode has 8 frames: per_source batches of 10 from it repeat each 1.25 times; preflight warns
    (still GO), naming the source and the count, with the loader's rule."""
    path = recipe(sets, tmp_path, batch_size=10)
    mix = tmp_path / "mix.toml"
    mix.write_text('batching = "per_source"\n' + mix.read_text().replace("epoch_size = 16", "epoch_size = 40"))
    code, checks, text = run(["--recipe", path, "--needed-rate", "1", "--max-labelless", "1"], tmp_path, capsys)
    rep = checks["repeats"]
    assert code == 0 and rep["status"] == "warn" and rep["values"]["repeats_in_batch"] == {"diode": 1.25}
    assert "diode each sample 1.25 times" in text and "nyu" not in rep["detail"]
