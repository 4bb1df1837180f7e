"""TUM RGB-D sequences and ROS-style exports: association as associate.py, depth = PNG / 5, cameras."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vortex_data.convert import get_converter
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.timestamps import associate, stamp_from_name
from vortex_data.convert.tum import CAMERAS, TumConverter, load_camera
from vortex_data.errors import InputError
from vortex_data.fixtures.tum import write_ros_export, write_tum_sequence
from vortex_data.format.manifest import load_manifest


@pytest.fixture(scope="module")
def seq(tmp_path_factory) -> Path:
    return write_tum_sequence(tmp_path_factory.mktemp("tum"))


@pytest.fixture(scope="module")
def ros(tmp_path_factory) -> Path:
    return write_ros_export(tmp_path_factory.mktemp("ros") / "corridor_run1")


# ---------------------------------------------------------------- association

def reference_read_file_list(path: Path) -> dict[float, list[str]]:
    """associate.py's read_file_list, rewritten from its description: commas and tabs are spaces,
    lines starting with '#' are skipped, lines with fewer than two fields dropped, later
    timestamps replace earlier ones."""
    lines = path.read_text().replace(",", " ").replace("\t", " ").split("\n")
    rows = [[v.strip() for v in line.split(" ") if v.strip()] for line in lines if line and line[0] != "#"]
    return {float(r[0]): r[1:] for r in rows if len(r) > 1}


def reference_associate(first: list[float], second: list[float], max_difference: float) -> list[tuple[float, float]]:
    """associate.py's associate() with offset 0: every pair below max_difference, sorted by
    (difference, first, second), taken greedily when both are free; the result sorted."""
    candidates = sorted((abs(a - b), a, b) for a in first for b in second if abs(a - b) < max_difference)
    free_a, free_b, matches = set(first), set(second), []
    for _, a, b in candidates:
        if a in free_a and b in free_b:
            free_a.remove(a)
            free_b.remove(b)
            matches.append((a, b))
    return sorted(matches)


def nearest_in_turn(first: list[float], second: list[float], max_difference: float) -> list[tuple[float, float]]:
    """The pairing associate.py does NOT do: each first frame in time order takes its nearest free
    second frame (the Femto readers' old rule). The fixture must tell the two apart."""
    free, out = sorted(second), []
    for a in sorted(first):
        near = [b for b in free if abs(a - b) < max_difference]
        if near:
            b = min(near, key=lambda b: abs(a - b))
            free.remove(b)
            out.append((a, b))
    return out


def converter_pairs(conv: TumConverter) -> list[tuple[float, float]]:
    return sorted((float(f.payload[1]), float(f.payload[2])) for f in conv.enumerate(None).frames)


def test_association_equals_associate_py_on_the_fixture(seq):
    rgb = list(reference_read_file_list(seq / "rgb.txt"))
    depth = list(reference_read_file_list(seq / "depth.txt"))
    want = reference_associate(rgb, depth, 0.02)
    assert converter_pairs(TumConverter(seq, "ros-default")) == want
    assert nearest_in_turn(rgb, depth, 0.02) != want  # the fixture has a contested pair
    for max_dt in (0.004, 0.03, 0.05):
        assert converter_pairs(TumConverter(seq, "ros-default", max_dt=max_dt)) == reference_associate(rgb, depth, max_dt)


@pytest.mark.parametrize("seed", range(5))
def test_association_equals_associate_py_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    a = sorted({round(float(t), 6) for t in 1305031452 + np.cumsum(rng.uniform(0.0, 0.05, 200))})
    b = sorted({round(float(t), 6) for t in 1305031452 + np.cumsum(rng.uniform(0.0, 0.05, 150))})
    rng.shuffle(a)  # associate.py's result does not depend on the order of the lists
    got = [(a[i], b[j]) for i, j in associate(a, b, 0.02)]
    assert sorted(got) == reference_associate(a, b, 0.02)


def test_association_is_strict_at_max_dt():
    # associate.py keeps |a - b| < max_difference: a pair exactly max_dt apart is not one.
    assert associate([0, 100], [20, 110], 20) == [(1, 1)]
    assert associate([0.0, 1.0], [0.5, 1.25], 0.5) == [(1, 1)]
    # The Femto readers' tolerance is inclusive and goes through the same rule.
    from vortex_data.convert.femto.recording import pair_by_time
    caps = pair_by_time([(0, "d")], [(5_000, "c")], 5_000)
    assert [(c.depth_loc, c.color_loc) for c in caps] == [("d", "c")]


def test_every_frame_written_or_rejected_with_a_reason(seq):
    conv = TumConverter(seq, "ros-default")
    en = conv.enumerate(None)
    n_rgb, n_depth = len(reference_read_file_list(seq / "rgb.txt")), len(reference_read_file_list(seq / "depth.txt"))
    assert n_rgb + n_depth == 2 * len(en.frames) + len(en.rejected)
    assert {r.code for r in en.rejected} == {"unpaired"}
    by_kind = sorted(r.file.split("/")[0] for r in en.rejected)
    assert by_kind == ["depth"] * 2 + ["rgb"] * 3  # two dropped depth frames + the contested one; 2 orphan depths
    contested = [r for r in en.rejected if "paired with a closer" in r.reason]
    assert len(contested) == 2 and all("--max-dt 0.02" in r.reason for r in contested)
    rep = en.report["sequences"][seq.name]
    assert rep["pairs"] == len(en.frames) and rep["colour_unpaired"] == 3 and rep["layout"] == "lists"


def test_comments_bad_lines_and_duplicates_are_counted(seq, tmp_path):
    s = tmp_path / "seq"
    shutil.copytree(seq, s)
    lines = (s / "rgb.txt").read_text().splitlines()
    first = lines[3]
    lines += ["", "# a comment at the end", "not-a-time rgb/x.png", "1305031460.0", first.replace(".png", "_b.png")]
    (s / "rgb.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(s / first.split()[1], s / first.split()[1].replace(".png", "_b.png"))
    en = TumConverter(s, "ros-default").enumerate(None)
    codes = sorted(r.code for r in en.rejected)
    assert codes.count("bad-line") == 2 and codes.count("duplicate-timestamp") == 1
    dup = next(r for r in en.rejected if r.code == "duplicate-timestamp")
    assert "line 4" in dup.reason and dup.file == first.split()[1]
    # As associate.py: the later line of a timestamp is the one used.
    assert any(f.files[0].endswith("_b.png") for f in en.frames)
    listed = sum(1 for f in ("rgb.txt", "depth.txt") for line in (s / f).read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    assert listed == 2 * len(en.frames) + len(en.rejected)


# ---------------------------------------------------------------- samples

def test_depth_mm_is_the_png_divided_by_5(seq):
    conv = TumConverter(seq, "fr1")
    en = conv.enumerate(None)
    for ref in en.frames[:3]:
        s = conv.load(ref)
        s.validate()
        png = cv2.imread(str(seq / ref.files[1]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and (png == 0).any() and (png % 5 != 0).any()
        np.testing.assert_array_equal(s.depth_mm, np.rint(png / 5).astype(np.uint16))
        rgb = cv2.cvtColor(cv2.imread(str(seq / ref.files[0])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(s.rgb, rgb)
        assert s.meta["scene"] == seq.name and s.key == f"tum/train/{seq.name}/{ref.payload[1].replace('.', '_')}"
    # fr1 is for 640x480: its intrinsics are rescaled to the 160x120 images; distortion recorded.
    assert s.intrinsics.fx == pytest.approx(517.3 / 4) and s.intrinsics.cy == pytest.approx((255.3 + 0.5) / 4 - 0.5)
    assert s.meta["distortion"] == list(CAMERAS["fr1"].distortion) and s.meta["tum_depth_correction"] == 1.035


def test_build_writes_one_split_with_the_sequence_as_scene(seq, tmp_path):
    cfg = BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "manifests", workers=1, progress=False)
    result = build_shards(TumConverter(seq, "ros-default", split="eval"), cfg)
    assert [m.name for m in result.manifests] == ["tum-eval.json"]
    m = load_manifest(result.manifests[0])
    # An input frame is a pair or an image left unpaired: 7 + 5 of the 10 colour + 9 depth images.
    assert (m.totals["written"], m.totals["rejected_by_code"], m.totals["input_frames"]) == (7, {"unpaired": 5}, 12)
    import pyarrow.parquet as pq
    assert set(pq.read_table(m.index_path(), columns=["scene"]).column("scene").to_pylist()) == {seq.name}
    assert TumConverter(seq, "ros-default", split="eval").enumerate({"train"}).frames == []


def test_ros_export_names_parse_as_nanoseconds(ros):
    conv = TumConverter(ros, str(ros / "camera.toml"))
    en = conv.enumerate(None)
    assert en.report["sequences"]["corridor_run1"]["layout"] == "folders"
    assert len(en.frames) == 7 and len(en.rejected) == 5
    s = conv.load(en.frames[0])
    assert s.meta["color_timestamp"] == "1712345678.004047286"
    assert abs(s.meta["dt_s"]) < 0.02
    png = cv2.imread(str(ros / en.frames[0].files[1]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(s.depth_mm, png)  # depth_scale 1000: the PNG is millimetres
    assert s.intrinsics.fx == pytest.approx(131.25) and s.meta["scene"] == "corridor_run1"


def test_a_folder_of_sequences_keeps_each_its_scene(seq, ros, tmp_path):
    parent = tmp_path / "recordings"
    shutil.copytree(seq, parent / seq.name)
    shutil.copytree(ros, parent / ros.name)
    (parent / "notes").mkdir()  # not a sequence: ignored
    conv = TumConverter(parent, "ros-default")
    en = conv.enumerate(None)
    assert sorted(en.report["sequences"]) == sorted([seq.name, ros.name]) and len(en.frames) == 14
    assert all(f.files[0].split("/")[0] in (seq.name, ros.name) for f in en.frames)
    assert {r.file.split("/")[0] for r in en.rejected} == {seq.name, ros.name} and len(en.rejected) == 10
    scenes = {conv.load(f).meta["scene"] for f in (en.frames[0], en.frames[-1])}
    assert scenes == {seq.name, ros.name}
    with pytest.raises(InputError, match="nor a folder of them"):
        TumConverter(parent / "notes", "fr1").enumerate(None)


@pytest.mark.parametrize("stem, ns", [
    ("1712345678.004047286", 1712345678_004047286),   # ROS <sec>.<nsec>
    ("1305031452.791720", 1305031452_791720000),      # TUM <sec>.<usec>
    ("color_1712345678004047", 1712345678004047_000),  # Femto dump <prefix>_<us>
    ("1712345678004047", 1712345678004047_000),        # plain <us>
    ("depth", None),
    ("1.0123456789", None),                           # finer than a nanosecond
])
def test_stamp_from_name(stem, ns):
    assert stamp_from_name(stem) == ns


# ---------------------------------------------------------------- cameras and options

def test_camera_file_and_its_errors(tmp_path):
    good = tmp_path / "cam.toml"
    good.write_text("fx = 500\nfy = 501.5\ncx = 320\ncy = 240\ndepth_scale = 1000\ndistortion = [0.1, -0.2, 0, 0, 0.01]\n")
    cam = load_camera(good)
    assert (cam.fx, cam.fy, cam.depth_scale, cam.size) == (500.0, 501.5, 1000.0, None)
    assert cam.distortion == (0.1, -0.2, 0.0, 0.0, 0.01)
    cases = {"fx = 1\nfy = 1\ncx = 0\ncy = 0\n": "'depth_scale' must be a number",
             "fx = 1\nfy = 1\ncx = 0\ncy = 0\ndepth_scale = 5000\nfocal = 3\n": "unknown keys",
             "fx = 0\nfy = 1\ncx = 0\ncy = 0\ndepth_scale = 5000\n": "'fx' must be > 0",
             "fx = 1\nfy = 1\ncx = 0\ncy = 0\ndepth_scale = 5000\ndistortion = [1, 2]\n": "4, 5 or 8 numbers",
             "fx = [": "not valid TOML"}
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(InputError, match=message):
            load_camera(good)
    with pytest.raises(InputError, match="ros-default, fr1, fr2, fr3"):
        load_camera(tmp_path / "nope.toml")


def test_cli_options_and_refusals(seq, tmp_path, capsys):
    cls = get_converter("tum")
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser.add_argument_group("tum"))
    conv = cls.from_args(seq, parser.parse_args(["--camera", "fr3", "--max-dt", "0.01", "--sequence-split", "val"]))
    assert (conv.camera.name, conv.max_dt, conv.split) == ("fr3", 0.01, "val")
    json.dumps(conv.options())
    with pytest.raises(InputError, match="needs --camera"):
        cls.from_args(seq, parser.parse_args([]))
    with pytest.raises(InputError, match="--max-dt must be a positive"):
        TumConverter(seq, "fr1", max_dt=0)
    with pytest.raises(InputError, match="not a TUM sequence"):
        TumConverter(tmp_path, "fr1").enumerate(None)
    # From the command line: one line naming the flag and the choices, exit 2.
    from vortex_data.cli import main
    assert main(["build-shards", "--dataset", "tum", "--src", str(seq), "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --camera" in err[0] and "fr1" in err[0]
