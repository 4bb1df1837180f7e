"""The NYU v7.3 converter (sources/nyu.py) on fixture .mat files in MATLAB's true layout."""

from __future__ import annotations

import json
import os
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from vortex_data.fixtures.nyu import NyuFrame, mat73_header, synthetic_frame, write_demo_nyu, write_nyu_mat
from vortex_data.fixtures.scene import CEILING, DOOR, FLOOR, FURNITURE, OBJECT, WALL
from vortex_data.format.schema import IGNORE_INDEX
from vortex_data.convert.base import RejectFrame
from vortex_data.convert.nyu.splits import (SplitError, make_split, place_of, official_split, random80_split, scene_overlap,
                                            scenes80_split)
from vortex_data.convert.nyu.converter import NYU_INTRINSICS, NyuConverter, NyuFileError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_frames(samples_dir):
    """The two real NYU frames as the labeled file would hold them (depth in metres)."""
    frames = []
    for n in ("00000", "00050"):
        rgb = cv2.cvtColor(cv2.imread(str(samples_dir / "nyu" / f"rgb_{n}.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mm = cv2.imread(str(samples_dir / "nyu" / f"sync_depth_{n}.png"), cv2.IMREAD_UNCHANGED)
        assert rgb.shape == (480, 640, 3) and mm.dtype == np.uint16 and mm.shape == (480, 640)
        labels = np.zeros((480, 640), np.uint16)
        labels[240:, :320] = 11  # raw 'floor' in the bottom-left quadrant: mapping orientation is checked too
        frames.append(NyuFrame(rgb=rgb, depth_m=(mm / 1000.0).astype(np.float32), labels=labels,
                               scene=f"real_{n}", scene_type="test"))
    return frames


@pytest.fixture(scope="module")
def real_mat(tmp_path_factory, real_frames):
    return write_nyu_mat(tmp_path_factory.mktemp("nyu") / "nyu_depth_v2_labeled.mat", real_frames)


@pytest.fixture(scope="module")
def demo_mat(tmp_path_factory):
    return write_demo_nyu(tmp_path_factory.mktemp("demo") / "nyu_depth_v2_labeled.mat", n_frames=3, seed=1)


def load_all(conv: NyuConverter):
    return [conv.load(ref) for ref in conv.enumerate(None).frames]


# ------------------------------------------------------------------ the fixture is a real v7.3 layout

def test_fixture_has_matlab_v73_layout(real_mat, real_frames):
    head = real_mat.read_bytes()[:512]
    assert head.startswith(b"MATLAB 7.3 MAT-file, Platform: ")
    assert b"Created on: " in head[:116] and head[116:124] == b"\x00" * 8
    assert head[124:126] == b"\x00\x02" and head[126:128] == b"IM"  # version 0x0200 little-endian, endian 'IM'
    assert mat73_header() == head[:128]
    with h5py.File(real_mat, "r") as f:
        assert f.userblock_size == 512
        assert f["images"].shape == (2, 3, 640, 480) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (2, 640, 480) and f["depths"].dtype == np.float32
        assert f["labels"].dtype == np.uint16 and f["names"].shape == (1, 894)
        assert f["accelData"].shape == (4, 2)
        assert f["images"].attrs["MATLAB_class"] == b"uint8" and f["depths"].attrs["MATLAB_class"] == b"single"
        assert f["scenes"].attrs["MATLAB_class"] == b"cell"
        ref = f["names"][0, 10]
        assert f[ref].attrs["MATLAB_class"] == b"char" and f[ref].shape == (5, 1)
        assert "".join(map(chr, f[ref][:, 0])) == "floor"
        # Column-major: MATLAB img(y, x, c) is h5py [c, x, y]. Check an asymmetric pixel directly.
        rgb = real_frames[0].rgb
        ys, xs = np.random.default_rng(0).integers(0, 480, 50), np.random.default_rng(1).integers(0, 640, 50)
        stored = f["images"][0]
        np.testing.assert_array_equal(stored[:, xs, ys].T, rgb[ys, xs])
        assert not np.array_equal(stored[:, 639 - xs, ys].T, rgb[ys, xs])  # a mirrored writer would fail
    with pytest.raises((NotImplementedError, ValueError)):
        scipy.io.loadmat(real_mat)  # v7.3 is HDF5, which scipy refuses: it is not a v5 file


# ------------------------------------------------------------------ real frames come out exactly

def test_real_frames_round_trip_exactly_and_upright(real_mat, samples_dir):
    conv = NyuConverter(real_mat)
    samples = load_all(conv)
    assert [s.key for s in samples] == [f"nyu/{r.split}/{r.frame_id}" for r in conv.enumerate(None).frames]
    for s, n in zip(samples, ("00000", "00050")):
        jpg = cv2.cvtColor(cv2.imread(str(samples_dir / "nyu" / f"rgb_{n}.jpg")), cv2.COLOR_BGR2RGB)
        mm = cv2.imread(str(samples_dir / "nyu" / f"sync_depth_{n}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(s.rgb, jpg)
        assert np.abs(s.depth_mm.astype(int) - mm.astype(int)).max() <= 1
        np.testing.assert_array_equal(s.depth_mm > 0, mm > 0)
        # A mirrored or upside-down reading would not match: the real images are not symmetric.
        assert not np.array_equal(np.fliplr(s.rgb), jpg) and not np.array_equal(np.flipud(s.rgb), jpg)
        assert s.seg[470, 10] == FLOOR and s.seg[10, 630] == IGNORE_INDEX
        assert (s.seg[240:, :320] == FLOOR).all() and (s.seg[:240] == IGNORE_INDEX).all()
        assert s.intrinsics == NYU_INTRINSICS and s.meta["scene"] == f"real_{n}"
        s.validate()


def test_raw_depth_keeps_holes(demo_mat):
    filled = load_all(NyuConverter(demo_mat))
    raw = load_all(NyuConverter(demo_mat, depth="raw"))
    for f, r in zip(filled, raw):
        assert (f.depth_mm > 0).all()
        assert (r.depth_mm[:44] == 0).all() and 0.02 < (r.depth_mm[44:471, 40:601] == 0).mean() < 0.1
        valid = r.depth_mm > 0
        np.testing.assert_array_equal(r.depth_mm[valid], f.depth_mm[valid])


def test_synthetic_labels_map_back_to_scene_classes(tmp_path):
    from vortex_data.fixtures.scene import random_room, random_view, render
    frame = synthetic_frame(7)
    path = write_nyu_mat(tmp_path / "s.mat", [frame])
    s = load_all(NyuConverter(path))[0]
    rng = np.random.default_rng(7)
    room = random_room(rng)
    _, depth, seg = render(room, random_view(rng, 518.8579, 519.46961, 325.58245, 253.73617, 640, 480), noise_seed=7)
    np.testing.assert_array_equal(s.seg[8:], seg[8:])
    assert (s.seg[:8] == IGNORE_INDEX).all()
    assert set(np.unique(s.seg[8:])) <= {FLOOR, WALL, CEILING, DOOR, FURNITURE, OBJECT}
    assert np.abs(s.depth_mm.astype(np.int64) - np.rint(depth * 1000).astype(np.int64)).max() == 0


# ------------------------------------------------------------------ splits and options

def test_random80_counts_and_determinism():
    a = random80_split(1449, seed=0)
    assert (len(a["train"]), len(a["val"])) == (1159, 290)
    assert sorted(a["train"] + a["val"]) == list(range(1, 1450))
    assert a == random80_split(1449, seed=0) and a != random80_split(1449, seed=1)
    assert len(random80_split(7, 0)["train"]) == round(0.8 * 7)


def nyu_like_scenes(n_scenes: int, seed: int = 0) -> list[str]:
    """Frames come several to a scene and consecutive, as in NYU's labeled set."""
    counts = np.random.default_rng(seed).integers(1, 7, n_scenes)
    return [f"room_{j:04d}" for j, c in enumerate(counts) for _ in range(c)]


def test_scenes80_keeps_every_scene_on_one_side():
    scenes = nyu_like_scenes(120)
    split = scenes80_split(scenes, seed=0)
    assert sorted(split["train"] + split["val"]) == list(range(1, len(scenes) + 1))
    side = {s: set() for s in scenes}
    for name, frames in (("train", split["train"]), ("val", split["val"])):
        for i in frames:
            side[scenes[i - 1]].add(name)
    assert all(len(v) == 1 for v in side.values())
    assert scene_overlap(scenes, split["train"], split["val"]) == {"frames": 0, "scenes": 0}
    assert len(split["train"]) == round(0.8 * len(scenes))      # enough scenes to hit 80 % exactly
    assert split == scenes80_split(scenes, seed=0) and split != scenes80_split(scenes, seed=1)


def test_scenes80_is_as_close_to_80_percent_as_whole_scenes_allow():
    scenes = [f"s{j}" for j, c in enumerate([7, 5, 5, 3, 11, 2, 9]) for _ in range(c)]  # 42 frames
    counts = [7, 5, 5, 3, 11, 2, 9]
    target = 0.8 * len(scenes)
    best = min(abs(sum(c) - target) for k in range(1, len(counts)) for c in combinations(counts, k))
    for seed in range(5):
        n_train = len(scenes80_split(scenes, seed)["train"])
        assert abs(n_train - target) == best


def test_scenes80_keeps_captures_of_one_room_together():
    """kitchen_0001a and kitchen_0001b are two recordings of one kitchen: never split across."""
    scenes = [f"room_{j:04d}{c}" for j in range(40) for c in "ab"[: 1 + j % 2] for _ in range(2)]
    assert place_of("basement_0001a") == place_of("basement_0001b") == "basement_0001"
    assert place_of("living_room_0038") == "living_room_0038"
    for seed in range(4):
        split = scenes80_split(scenes, seed)
        train = {place_of(scenes[i - 1]) for i in split["train"]}
        val = {place_of(scenes[i - 1]) for i in split["val"]}
        assert train and val and not train & val
        assert scene_overlap(scenes, split["train"], split["val"]) == {"frames": 0, "scenes": 0}
    naive = random80_split(len(scenes), seed=0)
    assert scene_overlap(scenes, naive["train"], naive["val"])["frames"] > 0


def test_scenes80_of_one_scene_is_all_train():
    assert scenes80_split(["a"] * 5, seed=0) == {"train": [1, 2, 3, 4, 5], "val": []}
    assert len(scenes80_split(["a", "b"], seed=0)["val"]) == 1
    with pytest.raises(SplitError):
        scenes80_split([], seed=0)


def test_random80_puts_the_same_scenes_on_both_sides():
    """The reproduction: four frames per scene, random80 splits half the scenes across train/val."""
    scenes = [f"room_{j:03d}" for j in range(50) for _ in range(4)]
    split = random80_split(len(scenes), seed=0)
    overlap = scene_overlap(scenes, split["train"], split["val"])
    assert overlap["frames"] > 0 and overlap["scenes"] >= 15
    assert scene_overlap(scenes, *(scenes80_split(scenes, 0)[k] for k in ("train", "val")))["frames"] == 0


@pytest.fixture(scope="module")
def scene_mat(tmp_path_factory):
    base = synthetic_frame(5)
    scenes = ["kitchen_0001"] * 3 + ["bedroom_0002"] * 4 + ["office_0003"] * 2 + ["bathroom_0004"]
    return write_nyu_mat(tmp_path_factory.mktemp("scenes") / "nyu_depth_v2_labeled.mat",
                         [replace(base, scene=s) for s in scenes]), scenes


def test_fixture_scenes_cell_is_matlab_v73(scene_mat):
    path, scenes = scene_mat
    with h5py.File(path, "r") as f:
        cell = f["scenes"]
        assert cell.shape == (1, len(scenes)) and cell.dtype == h5py.ref_dtype
        assert cell.attrs["MATLAB_class"] == b"cell"
        ref = cell[0, 3]
        assert f[ref].name.startswith("/#refs#/") and f[ref].attrs["MATLAB_class"] == b"char"
        assert f[ref].dtype == np.uint16 and f[ref].shape == (len(scenes[3]), 1)
        assert "".join(map(chr, f[ref][:, 0])) == scenes[3]


def test_scenes80_is_the_default_and_the_manifest_records_scenes(scene_mat):
    path, scenes = scene_mat
    conv = NyuConverter(path)
    opts = conv.options()
    assert opts["split_scheme"] == "scenes80" and opts["split_seed"] == 0
    train_scenes, val_scenes = opts["split_scenes"]["train"], opts["split_scenes"]["val"]
    assert not set(train_scenes) & set(val_scenes) and set(train_scenes) | set(val_scenes) == set(scenes)
    assert sorted(train_scenes) == train_scenes
    for split, idx in opts["split_indices"].items():
        assert {scenes[i - 1] for i in idx} == set(opts["split_scenes"][split])
    assert len(opts["split_indices"]["train"]) == 8                # 3 + 4 + 1 of 10 frames: exactly 80 %
    report = conv.enumerate(None).report
    assert report["held_out_frames_sharing_a_train_scene"] == 0 and report["scenes_on_both_sides"] == 0
    json.dumps(opts)


def test_the_index_records_each_frames_scene_and_preflight_finds_no_leakage(scene_mat, tmp_path):
    import pyarrow.parquet as pq

    from vortex_data.format.manifest import load_manifest
    from vortex_data.preflight import scene_leakage
    from vortex_data.convert.shards import BuildConfig, build_shards

    path, scenes = scene_mat
    res = build_shards(NyuConverter(path), BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m",
                                                       workers=1, progress=False))
    got = {}
    for m in res.manifests:
        man = load_manifest(m)
        got[man.split] = pq.read_table(man.index_path(), columns=["scene"]).column("scene").to_pylist()
    assert sorted(got["train"] + got["val"]) == sorted(scenes)
    assert scene_leakage(got["train"], got["val"]) == (0, len(got["val"]))
    res = build_shards(NyuConverter(path, split_scheme="random80"),
                       BuildConfig(out_dir=tmp_path / "r", manifest_dir=tmp_path / "rm", workers=1, progress=False))
    rnd = {load_manifest(m).split: pq.read_table(load_manifest(m).index_path()).column("scene").to_pylist()
           for m in res.manifests}
    report = load_manifest(next(m for m in res.manifests if load_manifest(m).split == "val")).report
    assert scene_leakage(rnd["train"], rnd["val"])[0] == report["held_out_frames_sharing_a_train_scene"]


def test_random80_report_counts_frames_sharing_a_train_scene(scene_mat):
    path, scenes = scene_mat
    conv = NyuConverter(path, split_scheme="random80", split_seed=0)
    split = conv.split_indices()
    assert split == random80_split(len(scenes), 0)                  # the seed's exact split, unchanged
    expected = scene_overlap(scenes, split["train"], split["val"])
    report = conv.enumerate(None).report
    assert report["held_out_frames_sharing_a_train_scene"] == expected["frames"] > 0
    assert report["scenes_on_both_sides"] == expected["scenes"]
    assert "split_scenes" not in conv.options()


def test_official_split_matches_real_splits_mat(samples_dir):
    m = scipy.io.loadmat(samples_dir / "nyu" / "splits.mat")
    shipped = official_split(1449)
    assert (len(shipped["train"]), len(shipped["test"])) == (795, 654)
    assert shipped["train"] == sorted(m["trainNdxs"].ravel().tolist())
    assert shipped["test"] == sorted(m["testNdxs"].ravel().tolist())
    assert official_split(1449, samples_dir / "nyu" / "splits.mat") == shipped
    with pytest.raises(SplitError, match="1..6"):
        official_split(6)


def test_bad_splits_file_is_named(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": [1, 2, 3], "test": [3, 4]}))
    with pytest.raises(SplitError, match="overlap") as info:
        make_split("official", 4, splits_file=path)
    assert str(path) in str(info.value)


def test_options_record_split_indices_and_enumerate_follows_them(demo_mat, tmp_path):
    conv = NyuConverter(demo_mat, split_scheme="random80", split_seed=3)
    opts = conv.options()
    assert opts["split_scheme"] == "random80" and opts["split_seed"] == 3
    frames = conv.enumerate(None).frames
    assert [r.frame_id for r in frames] == ["0001", "0002", "0003"]
    for split, idx in opts["split_indices"].items():
        assert sorted(int(r.frame_id) for r in frames if r.split == split) == idx
    json.dumps(opts)
    assert [r.split for r in conv.enumerate({"val"}).frames] == ["val"]
    with pytest.raises(ValueError, match="'test'"):
        conv.enumerate({"test"})
    sf = tmp_path / "splits.json"
    sf.write_text(json.dumps({"train": [1, 3], "test": [2]}))
    official = NyuConverter(demo_mat, split_scheme="official", splits_file=sf)
    assert [(r.split, r.frame_id) for r in official.enumerate(None).frames] == \
        [("train", "0001"), ("test", "0002"), ("train", "0003")]
    assert official.options()["splits_file"] == str(sf)


# ------------------------------------------------------------------ errors

def test_truncated_file_names_the_file(demo_mat, tmp_path):
    bad = tmp_path / "nyu_depth_v2_labeled.mat"
    bad.write_bytes(demo_mat.read_bytes()[: demo_mat.stat().st_size // 2])
    with pytest.raises(NyuFileError, match="truncated") as info:
        NyuConverter(bad).enumerate(None)
    assert str(bad) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_folder_as_src_names_the_file_it_wants(demo_mat, tmp_path, capsys):
    """Was "[Errno 21] Is a directory"; now one line naming the file, and the path to give when
    the folder holds it."""
    from vortex_data.cli import main

    rc = main(["build-shards", "--dataset", "nyu", "--src", str(tmp_path), "--out", str(tmp_path / "o"),
               "--manifests", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "is a folder" in err and "nyu_depth_v2_labeled.mat" in err and "Errno" not in err
    (tmp_path / "nyu_depth_v2_labeled.mat").symlink_to(demo_mat)
    with pytest.raises(NyuFileError, match=f"give --src {tmp_path / 'nyu_depth_v2_labeled.mat'}"):
        NyuConverter(tmp_path).enumerate(None)


@pytest.mark.parametrize("omit, depth", [("labels", "filled"), ("depths", "filled"), ("rawDepths", "raw"),
                                         ("scenes", "filled")])
def test_missing_key_names_file_and_key(tmp_path, omit, depth):
    path = write_nyu_mat(tmp_path / "m.mat", [synthetic_frame(0)], omit=(omit,))
    with pytest.raises(NyuFileError, match=f"'{omit}'") as info:
        NyuConverter(path, depth=depth).enumerate(None)
    assert str(path) in str(info.value)


def test_v5_mat_is_recognised(samples_dir):
    with pytest.raises(NyuFileError, match="v5"):
        NyuConverter(samples_dir / "nyu" / "splits.mat").enumerate(None)


def test_bad_frames_are_rejected_with_reasons(tmp_path):
    good, bad_labels, no_depth = synthetic_frame(0), synthetic_frame(1), synthetic_frame(2)
    bad_labels.labels[5, 5] = 900
    no_depth.depth_m[:] = 0
    path = write_nyu_mat(tmp_path / "m.mat", [good, bad_labels, no_depth])
    conv = NyuConverter(path)
    refs = conv.enumerate(None).frames
    assert len(refs) == 3  # enumeration lists every frame; load decides
    conv.load(refs[0])
    with pytest.raises(RejectFrame) as info:
        conv.load(refs[1])
    assert info.value.code == "bad-value" and "900" in info.value.reason and "0002" in info.value.reason
    with pytest.raises(RejectFrame) as info:
        conv.load(refs[2])
    assert info.value.code == "no-valid-depth" and str(path) in info.value.reason


# ------------------------------------------------------------------ processes and memory

def _load_keys(args):
    conv, ref = args
    s = conv.load(ref)
    return s.key, int(s.depth_mm.sum())


def test_pickles_and_loads_in_worker_processes(demo_mat):
    conv = NyuConverter(demo_mat)
    refs = conv.enumerate(None).frames
    conv.load(refs[0])  # the parent now holds an open handle; workers must open their own
    clone = pickle.loads(pickle.dumps(conv))
    assert clone._h5 is None
    expected = [(s.key, int(s.depth_mm.sum())) for s in load_all(conv)]
    # spawn, as the shard writer uses: fork after torch or h5py started threads can deadlock.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(_load_keys, [(conv, r) for r in refs]) == expected


MEASURE = textwrap.dedent("""
    import resource, sys
    from vortex_data.convert.nyu.converter import NyuConverter
    conv = NyuConverter(sys.argv[1])
    refs = conv.enumerate(None).frames[: int(sys.argv[2])]
    for ref in refs:
        conv.load(ref)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
""")


def _many_frames(n: int):
    base = synthetic_frame(0)
    for i in range(n):
        yield NyuFrame(rgb=np.roll(base.rgb, i, axis=1), depth_m=base.depth_m, labels=base.labels,
                       raw_depth_m=base.raw_depth_m, scene=f"room_{i}")


def test_memory_stays_flat_with_frame_count(tmp_path):
    # Two files, so that reading a whole dataset instead of one frame would show up as growth.
    paths = {n: write_nyu_mat(tmp_path / f"nyu_{n}.mat", _many_frames(n), n_frames=n, compression=None)
             for n in (40, 160)}

    def peak_kib(n: int) -> int:
        out = subprocess.run([sys.executable, "-c", MEASURE, str(paths[n]), str(n)], check=True, capture_output=True,
                             text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak_kib(40), peak_kib(160)
    frame_bytes = 640 * 480 * (3 + 4 + 2)  # images + depths + labels as stored
    extra_mib = 120 * frame_bytes / 2**20
    growth_mib = (large - small) / 1024
    assert extra_mib > 300
    assert growth_mib < 25, f"peak RSS grew {growth_mib:.1f} MiB for {extra_mib:.0f} MiB more frame data"


def test_float_stored_labels_are_accepted_only_when_whole(tmp_path):
    frame = synthetic_frame(0)
    path = write_nyu_mat(tmp_path / "m.mat", [frame, synthetic_frame(1)])
    with h5py.File(path, "r+") as f:
        labels = f["labels"][()].astype(np.float64)
        del f["labels"]
        labels[1, 3, 3] = 2.5
        f.create_dataset("labels", data=labels)
    conv = NyuConverter(path)
    refs = conv.enumerate(None).frames
    want = load_all(NyuConverter(write_nyu_mat(tmp_path / "ok.mat", [frame])))[0].seg
    np.testing.assert_array_equal(conv.load(refs[0]).seg, want)
    with pytest.raises(RejectFrame, match="non-integer"):
        conv.load(refs[1])


def test_loaded_sample_survives_the_shard_encoding(demo_mat):
    from vortex_data.format.schema import EncodeOptions, decode_sample, encode_sample
    s = load_all(NyuConverter(demo_mat))[0]
    out = decode_sample(dict(encode_sample(s, EncodeOptions(rgb_codec="png"))), key=s.key)
    np.testing.assert_array_equal(out["rgb"], s.rgb)
    np.testing.assert_array_equal(out["depth_mm"], s.depth_mm)
    np.testing.assert_array_equal(out["seg"], s.seg)
    assert out["meta"]["intrinsics"]["fx"] == pytest.approx(518.8579) and out["meta"]["scene"] == s.meta["scene"]


# ------------------------------------------------------------------ up-front validation and odd names

def _rewrite(path: Path, key: str, data: np.ndarray) -> None:
    with h5py.File(path, "r+") as f:
        del f[key]
        f.create_dataset(key, data=data)


@pytest.mark.parametrize("key, data, message", [
    ("images", np.zeros((2, 3, 640, 480), np.uint16), r"'images' has dtype uint16, expected uint8"),
    ("accelData", np.zeros((3, 2)), r"'accelData' is \(3, 2\) float64, expected \(4, 2\)"),
    ("accelData", np.zeros((2, 4)), r"'accelData' is \(2, 4\)"),
    ("depths", np.zeros((2, 640, 480), np.uint16), r"'depths' has dtype uint16, expected floating-point"),
    ("rawRgbFilenames", np.zeros((1, 5)), r"'rawRgbFilenames' is \(1, 5\)"),
])
def test_bad_dataset_layout_is_named_before_any_frame(tmp_path, key, data, message):
    path = write_nyu_mat(tmp_path / "m.mat", [synthetic_frame(0), synthetic_frame(1)])
    _rewrite(path, key, data)
    with pytest.raises(NyuFileError, match=message) as info:
        NyuConverter(path).enumerate(None)
    assert str(path) in str(info.value)


def test_non_utf8_file_name_builds_with_an_escaped_manifest(tmp_path):
    from vortex_data.format.manifest import load_manifest
    from vortex_data.verify import verify
    from vortex_data.convert.shards import BuildConfig, build_shards
    good = write_nyu_mat(tmp_path / "m.mat", [synthetic_frame(0), synthetic_frame(1)])
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/nyu_\xff.mat"))
    os.rename(good, odd)
    res = build_shards(NyuConverter(odd), BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m",
                                                      workers=1, progress=False))
    for path in res.manifests:
        text = path.read_bytes().decode("utf-8")
        assert "\\udc" not in text
        assert verify(path).ok
    assert sum(load_manifest(p).totals["written"] for p in res.manifests) == 2
