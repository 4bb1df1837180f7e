"""The `vortex-data` command line, as a user types it."""

import json

import cv2
import pytest

from vortex_data.cli import main
from vortex_data.fixtures.diode import write_diode_tree


@pytest.fixture()
def built(tmp_path):
    write_diode_tree(tmp_path / "src", {("train", "indoors", 1, 1): 3, ("val", "indoors", 2, 1): 2}, size=(64, 48))
    rc = main(["build-shards", "--dataset", "diode", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "shards"),
               "--manifests", str(tmp_path / "manifests"), "--workers", "1", "--no-progress", "--shard-samples", "2"])
    assert rc == 0
    return tmp_path


def test_build_inspect_verify(built, capsys):
    capsys.readouterr()
    assert main(["inspect", "manifest", str(built / "manifests/diode-train.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["written"] == 3 and summary["index"]["sizes"] == ["64x48"]
    assert main(["inspect", "manifest", str(built / "manifests/diode-train.json")]) == 0
    assert "3 = 3 written + 0 rejected" in capsys.readouterr().out
    assert main(["verify", str(built / "manifests/diode-train.json"), str(built / "manifests/diode-val.json"),
                 "--no-progress"]) == 0


def test_verify_exit_code_names_the_bad_shard(built, capsys):
    shard = built / "shards/diode/val/diode-val-000000.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["verify", str(built / "manifests/diode-val.json"), "--no-progress"]) == 1
    assert "diode-val-000000.tar" in capsys.readouterr().out


def test_inspect_shard_lists_and_dumps(built, capsys):
    shard = built / "shards/diode/train/diode-train-000000.tar"
    assert main(["inspect", "shard", str(shard)]) == 0
    out = capsys.readouterr().out
    assert "2 samples" in out
    key = out.splitlines()[0].split()[0]
    assert main(["inspect", "shard", str(shard), "--dump", key, "--to", str(built / "dump")]) == 0
    names = sorted(p.name for p in (built / "dump").iterdir())
    assert len(names) == 5
    depth = cv2.imread(str(next((built / "dump").glob("*_depth_mm.png"))), cv2.IMREAD_UNCHANGED)
    assert depth.dtype.name == "uint16" and depth.shape == (48, 64)


def test_bad_source_is_a_clear_error(tmp_path, capsys):
    rc = main(["build-shards", "--dataset", "diode", "--src", str(tmp_path / "missing"), "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing" in err and "DIODE root" in err


def test_help_on_every_subcommand(capsys):
    for argv in (["--help"], ["build-shards", "--help"], ["build-shards", "--dataset", "diode", "--help"],
                 ["inspect", "manifest", "--help"], ["inspect", "shard", "--help"], ["verify", "--help"],
                 ["merge-manifests", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--domain" in capsys.readouterr().out


def test_slurm_array_environment_drives_the_part(tmp_path, monkeypatch, capsys):
    write_diode_tree(tmp_path / "src", {("train", "indoors", 1, 1): 4}, size=(32, 24))
    common = ["build-shards", "--dataset", "diode", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "s"),
              "--manifests", str(tmp_path / "m"), "--workers", "1", "--no-progress", "--shard-samples", "1"]
    for task in ("0", "1"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        assert main(common) == 0
    parts = sorted((tmp_path / "m").glob("diode-train.part-*.json"))
    assert len(parts) == 2
    assert main(["merge-manifests", *map(str, parts)]) == 0
    assert main(["verify", str(tmp_path / "m/diode-train.json"), "--no-progress"]) == 0


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "verify: OK" in out and "FAILED" not in out
    # The stats report's mixture is the training one: eval splits are listed as sources, never weighted.
    stats = json.loads((tmp_path / "demo" / "stats" / "stats.json").read_text())
    split = {x["name"]: x["split"] for x in stats["sources"]}
    weighted = [x["name"] for x in stats["mixture"]["sources"] if x["weight"] > 0]
    assert weighted and {split[n] for n in weighted} == {"train"}
    assert {"val", "test", "eval"} <= set(split.values())


@pytest.mark.parametrize("where", ["inside the last member", "before the end-of-archive blocks"])
def test_inspect_shard_on_a_truncated_tar_is_a_clear_error(built, capsys, where):
    import tarfile
    shard = built / "shards/diode/train/diode-train-000000.tar"
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + (last.size // 2 if where.startswith("inside") else -(-last.size // 512) * 512)
    shard.write_bytes(shard.read_bytes()[:end])
    capsys.readouterr()
    for extra in ([], ["--dump", "diode/train/none", "--to", str(built / "d")]):
        assert main(["inspect", "shard", str(shard), *extra]) == 2
        err = capsys.readouterr().err
        assert str(shard) in err and "not a complete tar shard" in err and "Traceback" not in err


def test_a_subcommand_help_is_written_once():
    """A subcommand defined beside its code gets its one-line help from cli.PLUGINS, whether it is
    only listed (`vortex-data --help`) or registered by its own module (the command in use)."""
    import argparse

    from vortex_data.cli import PLUGINS, build_parser

    for name, (_, _, help_text) in PLUGINS.items():
        for argv in ([], [name]):
            parser = build_parser(argv)
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            listed = {a.dest: a.help for a in sub._choices_actions}
            assert listed[name] == help_text, (name, argv)
