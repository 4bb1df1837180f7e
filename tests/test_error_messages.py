"""Every failure names its cause: the file (or URL, shard, key, member, recipe key) and why, with
exit code 2 for unusable input, and a traceback kept only for bugs. One reproduction per case
(see docs/reliability.md, 'Messages that name their cause')."""

import builtins
import json
import re
import tarfile
from pathlib import Path

import pytest

from vortex_data import temporaries
from vortex_data.cli import main
from vortex_data.errors import InputError
from vortex_data.format.integrity import SampleError
from vortex_data.format.manifest import load_manifest
from vortex_data.stream.shard_reader import ShardReader, ShardReadError
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.base import RejectFrame
from vortex_data.stream import make_loader

from loader_data import SyntheticConverter, build

REPO = Path(__file__).resolve().parents[1]
SIZE = (32, 48)


def keys(manifest, **kw):
    loader = make_loader(manifest=str(manifest), batch_size=4, size=SIZE, training=False, **kw)
    return [k for b in loader for k in b["key"]]


def one_line_error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vortex-data {command}: error: "), err
    return err[0]


# ---------------------------------------------------------------- the loader

def test_a_worker_error_keeps_its_own_message_up_to_status(nyu_copy):
    """torch re-raises a worker's exception as 'Caught SampleError in DataLoader worker process 0.'
    plus the worker's traceback as text: STATUS (the first line) named no cause."""
    from vortex_data.train.loop import failure_status

    m = load_manifest(nyu_copy)
    shard, key = m.shard_paths()[0], m.read_index().column("key")[1].as_py()
    with tarfile.open(shard) as tf:
        info = tf.getmember(f"{key}.rgb.jpg")
    raw = bytearray(shard.read_bytes())
    raw[info.offset_data + info.size // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(SampleError) as e:
        keys(nyu_copy, num_workers=1)
    first = str(e.value).splitlines()[0]
    assert shard.name in first and f"{key}.rgb.jpg" in first and "checksum" in first
    assert first.endswith("(in DataLoader worker process 0)")
    status = failure_status(e.value, 0)
    assert status.startswith("failed SampleError: ") and f"{key}.rgb.jpg" in status and "Caught" not in status
    assert "Traceback" in str(e.value.__cause__)  # the worker's traceback is still there for a bug hunt


def test_loader_state_without_epoch_is_a_clear_error(nyu_copy):
    loader = make_loader(manifest=str(nyu_copy), batch_size=4, size=SIZE)
    state = loader.state_dict()
    del state["epoch"]
    with pytest.raises(InputError, match=r"loader state \(version 2\) lacks 'epoch'.*not a StreamLoader.state_dict"):
        loader.load_state_dict(state)


def test_a_flipped_byte_in_a_tar_header_is_reported_as_a_damaged_header_at_its_offset(nyu_copy):
    """tarfile stops listing silently at a bad header past the first, so a header scan used to say
    'sample listed in the index is not in the shard'. The loader reads by the index's offsets and
    parses no header, so it only scans (and meets the damage) for an index without offsets."""
    shard = load_manifest(nyu_copy).shard_paths()[0]
    with tarfile.open(shard) as tf:
        header = tf.getmembers()[5].offset  # the second sample's second member
    want = keys(nyu_copy)
    raw = bytearray(shard.read_bytes())
    raw[header + 10] ^= 0x01  # inside the member name: the header checksum no longer matches
    shard.write_bytes(bytes(raw))
    assert keys(nyu_copy) == want  # every member's bytes are intact (and checked against the index)
    with pytest.raises(ShardReadError) as e:
        ShardReader().table(str(shard))  # the scan a shard gets when its index predates offsets
    msg = str(e.value)
    assert msg.startswith(str(shard.name)) or shard.name in msg.split(":")[0]
    assert f"damaged tar header at byte offset {header} (bad checksum)" in msg and "not in the shard" not in msg
    assert main(["inspect", "shard", str(shard)]) == 2


# ---------------------------------------------------------------- recipes and the train / preflight CLIs

@pytest.mark.parametrize("command", ["train", "preflight"])
def test_recipe_toml_syntax_error_names_the_file(tmp_path, capsys, command):
    recipe = tmp_path / "mine.toml"
    recipe.write_text("[common\nsteps = 10\n")
    assert main([command, "--recipe", str(recipe), "--manifests", str(tmp_path)]) == 2
    line = one_line_error(capsys, command)
    assert f"{recipe}: not a valid TOML recipe" in line and "line 1" in line


@pytest.mark.parametrize("command", ["train", "preflight"])
def test_a_setting_of_the_wrong_type_names_the_recipe_and_key_and_exits_2(tmp_path, capsys, command):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('[common]\nbatch_size = 2\n[stage1]\nsteps = "ten"\n')
    assert main([command, "--recipe", str(recipe), "--manifests", str(tmp_path)]) == 2
    assert one_line_error(capsys, command).endswith(f"{recipe}: [stage1] steps = 'ten': must be an integer")


# ---------------------------------------------------------------- writing

def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    """A write that fails with ENOSPC names no file ('[Errno 28] No space left on device'); the
    shard being written goes to /dev/full here, a real full disk."""
    real_open = builtins.open

    def to_dev_full(path, mode="r", *a, **k):
        if ".tar.tmp-" in str(path):
            return real_open("/dev/full", mode, *a, **k)
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr(temporaries, "open", to_dev_full, raising=False)
    cfg = BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "manifests", shard_samples=4, workers=1,
                      progress=False)
    with pytest.raises(OSError) as e:
        build_shards(SyntheticConverter("nyu", 4), cfg)
    assert e.value.errno == 28 and ".tar.tmp-" in e.value.filename
    assert str(tmp_path / "shards" / "nyu" / "train") in str(e.value)


def test_a_full_disk_while_checkpointing_names_the_file(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from vortex_data.train import checkpoint

    real_open = builtins.open
    monkeypatch.setattr(checkpoint, "open", lambda p, m="r", *a, **k: real_open("/dev/full", m), raising=False)
    with pytest.raises(OSError) as e:
        checkpoint._atomic_torch_save({"w": torch.zeros(100_000)}, tmp_path / "train.pt")
    assert e.value.errno == 28 and e.value.filename == str(tmp_path / "train.pt.part")


# ---------------------------------------------------------------- converters

def test_femto_8_bit_depth_png_is_bad_value_like_sun_rgbd(tmp_path):
    import cv2
    import numpy as np

    from vortex_data.fixtures.femto import demo_calibration, write_frame_dump
    from vortex_data.convert.femto.converter import FemtoConverter

    rec = write_frame_dump(tmp_path / "rec", demo_calibration(), n_frames=1)
    depth = sorted((rec / "depth").iterdir())[0]
    cv2.imwrite(str(depth), np.full((288, 320), 100, np.uint8))  # a viewer's 8-bit export: not millimetres
    conv = FemtoConverter(rec)
    with pytest.raises(RejectFrame) as e:
        conv.load(conv.enumerate(None).frames[0])
    assert e.value.code == "bad-value" and depth.name in e.value.reason and "16-bit" in e.value.reason


# ---------------------------------------------------------------- stats

class AllRejected(SyntheticConverter):
    def load(self, ref):
        raise RejectFrame("bad-value", f"frame {ref.frame_id}: unusable", "frame.png")


def test_stats_on_0_written_samples_says_it_cannot_compute_anything(tmp_path, capsys):
    cfg = BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "manifests", shard_samples=4, workers=1,
                      progress=False)
    manifest = build_shards(AllRejected("nyu", 3), cfg).manifests[0]
    assert main(["stats", str(manifest), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"]) == 2
    line = one_line_error(capsys, "stats")
    assert f"{manifest}: no written samples, so no statistics can be computed" in line and "NaN" not in line


def test_stats_on_1_sample_says_what_it_cannot_compute_and_writes_no_nan(tmp_path, capsys):
    manifest = build(tmp_path, "nyu", 1, 4)
    assert main(["stats", str(manifest), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and "exact quotas not computed: the epoch of 1 samples is smaller than one batch of 8" in out
    text = (tmp_path / "out" / "stats.json").read_text()
    assert "NaN" not in text
    risk = json.loads(text)["mixture"]["label_risk"]
    assert risk["simulated_quota"] is None and risk["closed_form_quota"] is None and "smaller than one batch" in risk["quota_note"]


# ---------------------------------------------------------------- dependency floors

# (distribution, lowest version with the API, the API as the code spells it, where)
API_FLOORS = [
    ("opencv-python-headless", (4, 11), "cv2.IMREAD_COLOR_RGB", "vortex_data/format/schema.py"),
    ("numpy", (2, 0), "np.bitwise_count", "vortex_data/stats/phash.py"),
    ("webdataset", (0, 2, 96), "empty_check=False", "vortex_data/bench/side_by_side.py"),
    ("torchvision", (0, 19), "decode_jpeg(list(", "vortex_data/stream/photometric.py"),
]


@pytest.mark.parametrize("dist,version,api,where", API_FLOORS)
def test_dependency_floors_admit_no_version_without_the_apis_used(dist, version, api, where):
    from vortex_data._toml import tomllib

    assert api in (REPO / where).read_text(), f"{where} no longer uses {api}: relax or drop this floor"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    spec = next(r for r in reqs if re.match(rf"{re.escape(dist)}\b", r))
    floor = re.search(r">=\s*([0-9.]+)", spec)
    assert floor, f"{spec}: no lower bound, but {api} needs {dist} >= {'.'.join(map(str, version))}"
    assert tuple(int(x) for x in floor.group(1).split(".")) >= version, \
        f"{spec} admits versions without {api} (needs >= {'.'.join(map(str, version))})"


INTERNAL = {"RejectFrame"}  # a converter's signal to the shard writer, which lists the frame as rejected


def test_every_error_class_of_the_package_is_one_the_cli_reports_as_a_line():
    """An error class defined in the package but outside VortexError would reach a user as a
    traceback (the CLI turns only VortexError and OSError into one-line messages): three such
    classes slipped in when the label, stage hand-off and index work landed side by side."""
    import importlib
    import inspect
    import pkgutil

    import vortex_data
    from vortex_data.errors import VortexError

    strays = []
    for info in pkgutil.walk_packages(vortex_data.__path__, "vortex_data."):
        if info.name.endswith("__main__"):  # running it is the command line itself
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (rerun-sdk, timm) that is not installed
            continue
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                    and not issubclass(obj, VortexError) and obj.__qualname__ not in INTERNAL):
                strays.append(f"{info.name}.{name}")
    assert not strays, strays
