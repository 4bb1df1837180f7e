"""NYU Depth V2 labeled converter: synthetic v7.3 files with known truth, plus the real small files."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from vortex_data.fixtures.nyu_labeled import NYU40_NAMES, make_nyu_source, write_matlab_v73
from vortex_data.fixtures.scene import CEILING, DOOR, FLOOR, FURNITURE, OBJECT, WALL
from vortex_data.schema import IGNORE_INDEX, EncodeOptions, decode_sample, encode_sample
from vortex_data.sources import RejectFrame, get_converter
from vortex_data.sources.nyu import EIGEN_CROP, INTRINSICS, NyuConverter
from vortex_data.sources.nyu_classes import ClassMappingError, load_nyu40_lut
from vortex_data.sources.nyu_mat import LabeledFileError
from vortex_data.sources.nyu_splits import SplitError, holdout_splits, official_splits


@pytest.fixture(scope="module")
def nyu_src(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nyu")
    return folder, make_nyu_source(folder, n_frames=6, seed=3)


def copy_src(nyu_src, tmp_path: Path) -> Path:
    folder, _ = nyu_src
    dst = tmp_path / "src"
    shutil.copytree(folder, dst)
    return dst


def load_all(conv: NyuConverter):
    enum = conv.enumerate(None)
    return enum, [(ref, conv.load(ref)) for ref in enum.frames]


# ---------------------------------------------------------------- conversion against known truth

def test_official_split_enumeration(nyu_src):
    folder, truth = nyu_src
    enum = NyuConverter(folder).enumerate(None)
    assert [(r.split, r.payload) for r in enum.frames] == \
        [("train", i) for i in truth.train] + [("test", i) for i in truth.test]
    assert [r.frame_id for r in enum.frames if r.split == "test"] == [f"{i + 1:04d}" for i in truth.test]
    assert enum.rejected == []
    assert enum.report == {"frames_in_file": 6, "split_counts": {"train": 3, "test": 3}}
    only_test = NyuConverter(folder).enumerate({"test"})
    assert {r.split for r in only_test.frames} == {"test"}


def test_frames_match_truth_pixel_for_pixel(nyu_src):
    folder, truth = nyu_src
    _, loaded = load_all(NyuConverter(folder))
    assert len(loaded) == 6
    for ref, s in loaded:
        i = ref.payload
        s.validate()
        assert s.key == f"nyu/{ref.split}/{i + 1:04d}"
        # Exact equality also rules out rot90-style axis handling, which mirrors the image.
        np.testing.assert_array_equal(s.rgb, truth.rgb[i])
        assert np.abs(s.depth_mm.astype(np.float64) / 1000 - truth.depth_m[i]).max() <= 0.0005 + 1e-6
        assert (s.depth_mm > 0).all()
        np.testing.assert_array_equal(s.seg, truth.seg[i])
        assert s.intrinsics == INTRINSICS
        assert s.meta["scene"] == truth.scenes[i] and s.meta["frame_index"] == i + 1
        assert len(s.meta["accel"]) == 4 and s.meta["depth_source"] == "depths"


def test_seg_covers_all_six_classes_and_ignore(nyu_src):
    folder, truth = nyu_src
    _, loaded = load_all(NyuConverter(folder))
    seen = set(np.unique(np.concatenate([s.seg.ravel() for _, s in loaded])).tolist())
    assert {FLOOR, WALL, CEILING, IGNORE_INDEX} <= seen
    assert seen <= {FLOOR, WALL, CEILING, DOOR, FURNITURE, OBJECT, IGNORE_INDEX}


def test_raw_depth_keeps_holes(nyu_src):
    folder, truth = nyu_src
    _, loaded = load_all(NyuConverter(folder, depth="raw"))
    for ref, s in loaded:
        raw = truth.raw_depth_m[ref.payload]
        np.testing.assert_array_equal(s.depth_mm == 0, raw == 0)
        assert s.meta["depth_source"] == "rawDepths"
        assert np.abs(s.depth_mm[raw > 0] / 1000 - raw[raw > 0]).max() <= 0.0005 + 1e-6


def test_eigen_crop_moves_principal_point(nyu_src):
    folder, truth = nyu_src
    conv = NyuConverter(folder, crop="eigen")
    ref = conv.enumerate({"train"}).frames[0]
    s = conv.load(ref)
    rows, cols = EIGEN_CROP
    assert s.rgb.shape == (427, 561, 3) and s.depth_mm.shape == (427, 561) and s.seg.shape == (427, 561)
    np.testing.assert_array_equal(s.rgb, truth.rgb[ref.payload][rows, cols])
    np.testing.assert_array_equal(s.seg, truth.seg[ref.payload][rows, cols])
    assert s.intrinsics.cx == pytest.approx(INTRINSICS.cx - 40) and s.intrinsics.cy == pytest.approx(INTRINSICS.cy - 44)
    assert s.intrinsics.fx == INTRINSICS.fx and s.meta["original_size"] == [640, 480]


def test_no_labels_needs_no_mapping_file(nyu_src, tmp_path):
    src = copy_src(nyu_src, tmp_path)
    (src / "classMapping40.mat").unlink()
    conv = NyuConverter(src, labels=False)
    enum, loaded = load_all(conv)
    assert all(s.seg is None for _, s in loaded)
    with pytest.raises(ClassMappingError, match="classMapping40.mat: class mapping file not found"):
        NyuConverter(src).enumerate(None)


def test_encoded_sample_round_trips(nyu_src):
    folder, truth = nyu_src
    conv = NyuConverter(folder)
    ref = conv.enumerate(None).frames[0]
    s = conv.load(ref)
    out = decode_sample(dict(encode_sample(s, EncodeOptions(rgb_codec="png"))), s.key)
    np.testing.assert_array_equal(out["rgb"], truth.rgb[ref.payload])
    np.testing.assert_array_equal(out["depth_mm"], s.depth_mm)
    np.testing.assert_array_equal(out["seg"], truth.seg[ref.payload])
    assert out["meta"]["intrinsics"]["fx"] == pytest.approx(INTRINSICS.fx)


def _load_in_worker(blob: bytes, ref):
    conv = pickle.loads(blob)
    s = conv.load(ref)
    return s.key, s.depth_mm.sum(dtype=np.int64)


def test_converter_pickles_after_use_and_loads_in_another_process(nyu_src):
    folder, _ = nyu_src
    conv = NyuConverter(folder)
    ref = conv.enumerate(None).frames[1]
    here = conv.load(ref)  # opens the HDF5 file in this process
    blob = pickle.dumps(conv)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        key, total = pool.submit(_load_in_worker, blob, ref).result(timeout=60)
    assert key == here.key and total == here.depth_mm.sum(dtype=np.int64)


def test_registry_and_command_line_options(nyu_src):
    folder, _ = nyu_src
    cls = get_converter("nyu")
    assert cls is NyuConverter
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser.add_argument_group("nyu"))
    args = parser.parse_args(["--nyu-depth", "raw", "--nyu-crop", "eigen", "--nyu-split-scheme", "holdout",
                              "--nyu-split-seed", "7"])
    conv = cls.from_args(folder, args)
    assert conv.options() == {"depth": "raw", "crop": "eigen", "labels": True, "split_scheme": "holdout",
                              "val_fraction": 0.2, "split_seed": 7}
    assert {r.split for r in conv.enumerate(None).frames} == {"train", "val"}


# ---------------------------------------------------------------- splits

def test_holdout_split_is_seeded_disjoint_and_complete():
    a = holdout_splits(1449, 0.2, seed=0)
    assert (a["train"].size, a["val"].size) == (1159, 290)
    assert np.array_equal(np.sort(np.concatenate([a["train"], a["val"]])), np.arange(1449))
    b = holdout_splits(1449, 0.2, seed=0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], holdout_splits(1449, 0.2, seed=1)["val"])


def test_official_split_file_errors(tmp_path):
    path = tmp_path / "splits.mat"
    scipy.io.savemat(path, {"trainNdxs": np.array([[1], [2], [3]], np.uint16), "testNdxs": np.array([[3], [4]], np.uint16)})
    with pytest.raises(SplitError, match="1 frames are in both train and test"):
        official_splits(path, 4)
    with pytest.raises(SplitError, match=r"indices 1\.\.3, but the labeled file has 2 frames"):
        official_splits(path, 2)
    with pytest.raises(SplitError, match="split file not found"):
        official_splits(tmp_path / "absent.mat", 4)


def test_frame_in_no_split_is_rejected_not_dropped(nyu_src, tmp_path):
    src = copy_src(nyu_src, tmp_path)
    _, truth = nyu_src
    scipy.io.savemat(src / "splits.mat", {"trainNdxs": (np.array(truth.train[1:], np.uint16) + 1)[:, None],
                                          "testNdxs": (np.array(truth.test, np.uint16) + 1)[:, None]})
    enum = NyuConverter(src).enumerate(None)
    assert len(enum.frames) == 5
    assert [(r.frame, r.code) for r in enum.rejected] == [(f"{truth.train[0] + 1:04d}", "no-split")]


def test_official_scheme_has_no_val_split(nyu_src):
    folder, _ = nyu_src
    with pytest.raises(ValueError, match="not \\['val'\\]"):
        NyuConverter(folder).enumerate({"val"})


# ---------------------------------------------------------------- bad input

def test_missing_or_wrong_kind_of_labeled_file(nyu_src, tmp_path):
    src = copy_src(nyu_src, tmp_path)
    (src / "nyu_depth_v2_labeled.mat").unlink()
    with pytest.raises(LabeledFileError, match="nyu_depth_v2_labeled.mat: labeled file not found"):
        NyuConverter(src).enumerate(None)
    shutil.copy(src / "splits.mat", src / "nyu_depth_v2_labeled.mat")  # a MATLAB v5 file
    with pytest.raises(LabeledFileError, match="not an HDF5 / MATLAB v7.3 file"):
        NyuConverter(src).enumerate(None)


def test_row_major_images_are_refused(tmp_path):
    # A file written without MATLAB's dimension reversal has images (N, 480, 640, 3).
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = np.zeros((1, 480, 640, 3), np.uint8)
        f["depths"] = np.ones((1, 480, 640), np.float32)
        f["labels"] = np.zeros((1, 480, 640), np.uint16)
    with pytest.raises(LabeledFileError, match=r"'images' is \(1, 480, 640, 3\) uint8, expected \(N, 3, 640, 480\)"):
        NyuConverter(tmp_path, labels=False, split_scheme="holdout").enumerate(None)


def _write_single_frame(folder: Path, depth: np.ndarray, labels: np.ndarray) -> None:
    write_matlab_v73(folder / "nyu_depth_v2_labeled.mat", {
        "images": np.zeros((480, 640, 3, 2), np.uint8),
        "depths": np.stack([depth, depth], -1), "labels": np.stack([labels, labels], -1)}, {})


def test_frame_without_valid_depth_is_rejected(nyu_src, tmp_path):
    src = copy_src(nyu_src, tmp_path)
    _write_single_frame(src, np.full((480, 640), np.nan, np.float32), np.zeros((480, 640), np.uint16))
    conv = NyuConverter(src, split_scheme="holdout", val_fraction=0.5)
    ref = conv.enumerate(None).frames[0]
    with pytest.raises(RejectFrame) as e:
        conv.load(ref)
    assert e.value.code == "no-valid-depth" and "has no valid depth" in e.value.reason


def test_label_id_beyond_894_is_rejected(nyu_src, tmp_path):
    src = copy_src(nyu_src, tmp_path)
    labels = np.ones((480, 640), np.uint16)
    labels[10, 10] = 900
    _write_single_frame(src, np.ones((480, 640), np.float32), labels)
    conv = NyuConverter(src, split_scheme="holdout", val_fraction=0.5)
    with pytest.raises(RejectFrame) as e:
        conv.load(conv.enumerate(None).frames[0])
    assert e.value.code == "bad-value" and "label ids span 1..900, expected 0..894" in e.value.reason


def test_mapping_with_unknown_class_names_is_refused(tmp_path):
    names = np.empty((1, 40), object)
    names[0, :] = NYU40_NAMES[:39] + ["spaceship"]
    scipy.io.savemat(tmp_path / "m.mat", {"mapClass": np.ones((1, 894), np.uint8), "className": names})
    with pytest.raises(ClassMappingError, match=r"m.mat: unknown NYU-40 class names \['spaceship'\]"):
        load_nyu40_lut(tmp_path / "m.mat")


# ---------------------------------------------------------------- real files

def test_real_class_mapping(samples_dir):
    path = samples_dir / "nyu" / "classMapping40.mat"
    mat = scipy.io.loadmat(str(path))
    assert [str(n[0]) for n in mat["className"][0]] == NYU40_NAMES
    raw_names = [str(n[0]) for n in mat["allClassName"][0]]
    lut = load_nyu40_lut(path)
    assert lut[0] == IGNORE_INDEX and lut.shape == (895,) and set(lut[1:].tolist()) <= set(range(6))

    def cls(raw_name: str) -> int:
        return int(lut[raw_names.index(raw_name) + 1])

    assert (cls("floor"), cls("wall"), cls("ceiling"), cls("door")) == (FLOOR, WALL, CEILING, DOOR)
    assert (cls("bed"), cls("chair"), cls("book"), cls("bottle")) == (FURNITURE, FURNITURE, OBJECT, OBJECT)
    assert cls("window") == WALL and cls("floor mat") == FLOOR
    # Known entries of the real table (raw id -> NYU-40): floor -> 2, ceiling -> 22.
    assert mat["mapClass"][0, raw_names.index("floor")] == 2 and mat["mapClass"][0, raw_names.index("ceiling")] == 22


def test_real_official_split(samples_dir):
    splits = official_splits(samples_dir / "nyu" / "splits.mat", 1449)
    assert (splits["train"].size, splits["test"].size) == (795, 654)
    assert np.array_equal(np.sort(np.concatenate([splits["train"], splits["test"]])), np.arange(1449))


def test_intrinsics_match_real_annotations(samples_dir):
    ann = json.loads((samples_dir / "nyu" / "test_annotations.json").read_text())
    fx, fy, cx, cy = ann["files"][0]["cam_in"]
    assert (INTRINSICS.fx, INTRINSICS.fy, INTRINSICS.cx, INTRINSICS.cy) == pytest.approx((fx, fy, cx, cy), abs=1e-3)


@pytest.mark.parametrize("frame", ["00000", "00050"])
def test_eigen_crop_holds_the_real_projected_depth(samples_dir, frame):
    depth = cv2.imread(str(samples_dir / "nyu" / f"sync_depth_{frame}.png"), cv2.IMREAD_UNCHANGED)
    assert depth.shape == (480, 640) and depth.dtype == np.uint16
    inside = np.zeros(depth.shape, bool)
    inside[EIGEN_CROP] = True
    valid = depth > 0
    assert valid[inside].sum() / valid.sum() > 0.97  # nearly all real depth lies in the crop
    assert valid[inside].mean() > 0.9
