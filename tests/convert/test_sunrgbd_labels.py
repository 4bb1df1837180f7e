"""SUN RGB-D's 37-class toolbox labels: matching by SUNRGBDMeta, 37 -> 6, frames without labels,
bad arrays, the build report and the memory bound of reading one frame at a time."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from vortex_data.cli import main
from vortex_data.fixtures.sunrgbd import write_allsplit_mat, write_sunrgbd_tree
from vortex_data.fixtures.sunrgbd_toolbox import SEG37_NAMES, toolbox_order, write_toolbox
from vortex_data.convert.labels import NYU40_GROUPS, OBJECT, nyu40_table, sun37_to_6_lut
from vortex_data.format.schema import IGNORE_INDEX, NUM_CLASSES
from vortex_data.format.tar_index import make_key
from vortex_data.convert.base import RejectFrame
from vortex_data.convert.sunrgbd import SunRgbdConverter
from vortex_data.convert.sunrgbd.toolbox import ToolboxError, ToolboxLabels

SCALE = 0.2
SUBSETS = ("kv1/NYUdata", "kv1/b3dodata", "kv2/kinect2data", "realsense/sa", "xtion/sun3ddata")
# seg37list spellings that differ from classMapping40.mat's NYU-40 names.
SUN_SPELLING = {"floor_mat": "floor mat", "fridge": "refridgerator", "tv": "television",
                "shower_curtain": "shower curtain", "night_stand": "night stand"}


def independent_6(labels37: np.ndarray) -> np.ndarray:
    """37-class ids -> 6 classes from the class *names* (seg37list spelled as NYU-40, then the
    name groups), not through the converter's lookup table."""
    lut = np.full(38, IGNORE_INDEX, np.uint8)
    group_of = {name: cls for cls, names in NYU40_GROUPS.items() for name in names}
    for k, name in enumerate(SEG37_NAMES, start=1):
        lut[k] = group_of.get(SUN_SPELLING.get(name, name), OBJECT)
    return lut[labels37]


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "SUNRGBD"
    frames = write_sunrgbd_tree(src, frames_per_subset=2, seed=5, scale=SCALE, subsets=SUBSETS)
    return tmp_path, src, frames


def _load_all(conv):
    en = conv.enumerate(None)
    out, rejected = {}, list(en.rejected)
    for ref in en.frames:
        try:
            out[ref.frame_id] = conv.load(ref)
        except RejectFrame as e:
            rejected.append((ref.frame_id, e))
    return en, out, rejected


def test_seg37_names_are_nyu40_classes_1_to_37():
    names_40 = nyu40_table().names_40
    assert [SUN_SPELLING.get(n, n) for n in SEG37_NAMES] == list(names_40[:37])
    # One table: the SUN lookup is the NYU-40 one cut at 37 (0 = void -> ignore).
    assert sun37_to_6_lut()[0] == IGNORE_INDEX and len(sun37_to_6_lut()) == 38


def test_labels_match_toolbox_arrays_in_toolbox_order(tree):
    root, src, frames = tree
    write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames], seed=1)
    assert list(toolbox_order(len(frames), 1)) != sorted(toolbox_order(len(frames), 1))
    conv = SunRgbdConverter(src)
    en, out, rejected = _load_all(conv)
    assert not rejected and en.report["frames_without_labels"] == 0
    assert en.report["labels"].endswith("found beside --src")
    by_folder = {f.folder: f for f in frames}
    assert set(out) == {f.folder for f in frames if f.subset != "kv1/NYUdata"}  # the NYU overlap stays out
    for folder, s in out.items():
        expect = independent_6(by_folder[folder].labels37)
        assert s.seg.shape == s.depth_mm.shape == s.rgb.shape[:2]
        assert np.array_equal(s.seg, expect), folder
        assert s.meta["label_source"] == "sunrgbd37->nyu40->6"
        assert (s.seg == IGNORE_INDEX).any() and len(set(np.unique(s.seg)) - {IGNORE_INDEX}) >= 4


def test_build_counts_labelled_pixels_per_class(tree, tmp_path, capsys):
    root, src, frames = tree
    write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames], seed=2)
    folders = [f.folder for f in frames]
    write_allsplit_mat(root / "allsplit.mat", folders[0::2], folders[1::2])
    rc = main(["build-shards", "--dataset", "sunrgbd", "--src", str(src), "--split-file", str(root / "allsplit.mat"),
               "--out", str(tmp_path / "shards"), "--manifests", str(tmp_path / "man"), "--workers", "2"])
    assert rc == 0
    expected = np.zeros(NUM_CLASSES + 1, np.int64)
    for f in frames:
        if f.subset != "kv1/NYUdata":
            counts = np.bincount(independent_6(f.labels37).ravel(), minlength=256)
            expected += np.r_[counts[:NUM_CLASSES], counts[IGNORE_INDEX]]
    got = np.zeros(NUM_CLASSES + 1, np.int64)
    labelled = 0
    for split in ("train", "test"):
        m = json.loads((tmp_path / "man" / f"sunrgbd-{split}.json").read_text())
        assert m["report"]["labels"].endswith("found beside --src")
        assert m["totals"]["labelled"] == m["totals"]["written"]
        labelled += m["totals"]["labelled"]
        rows = pq.read_table(tmp_path / "man" / f"sunrgbd-{split}.parquet").to_pydict()
        assert all(rows["has_seg"])
        got += np.r_[np.sum(rows["class_pixels"], axis=0), sum(rows["ignore_pixels"])]
    assert labelled == len(frames) - 2
    assert np.array_equal(got, expected), (got, expected)


def test_frame_without_label_entry_is_written_depth_only(tree):
    root, src, frames = tree
    missing = frames[3].folder
    entries = [(f.folder, f.labels37) for f in frames if f.folder != missing]
    write_toolbox(root / "SUNRGBDtoolbox", entries + [("kv2/kinect2data/not_on_disk", frames[0].labels37)])
    en, out, rejected = _load_all(SunRgbdConverter(src))
    assert not rejected
    assert en.report["frames_without_labels"] == 1 and en.report["frames_without_labels_examples"] == [missing]
    assert out[missing].seg is None and out[missing].depth_mm.any()
    assert sum(s.seg is not None for s in out.values()) == len(out) - 1


def test_shape_mismatch_is_a_rejection_naming_the_file(tree):
    root, src, frames = tree
    bad = frames[2].folder
    entries = [(f.folder, f.labels37[:-3] if f.folder == bad else f.labels37) for f in frames]
    write_toolbox(root / "SUNRGBDtoolbox", entries)
    _, out, rejected = _load_all(SunRgbdConverter(src))
    assert [(fid, e.code) for fid, e in rejected] == [(bad, "bad-shape")]
    reason = rejected[0][1].reason
    assert "SUNRGBD2Dseg.mat" in reason and "entry" in reason and bad not in out


def test_row_references_integer_labels_and_values_beyond_37(tree):
    root, src, frames = tree
    odd = frames[2]
    labels = odd.labels37.copy()
    labels[-2:] = 40  # not a SUN class: ignored and counted, never wrapped into a class
    entries = [(f.folder, labels if f is odd else f.labels37) for f in frames]
    write_toolbox(root / "SUNRGBDtoolbox", entries, dtype="uint8", refs_shape="row")
    _, out, rejected = _load_all(SunRgbdConverter(src))
    assert not rejected
    s = out[odd.folder]
    assert (s.seg[-2:] == IGNORE_INDEX).all() and s.meta["label_pixels_outside_37"] == 2 * labels.shape[1]
    assert np.array_equal(s.seg[:-2], independent_6(odd.labels37)[:-2])


def test_non_integer_labels_rejected(tree):
    root, src, frames = tree
    write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames])
    seg = root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBD2Dseg.mat"
    with h5py.File(seg, "r+") as f:
        target = f[f["SUNRGBD2Dseg/seglabel"][0, 0]]
        arr = target[()]
        arr[0, 0] = 1.5
        target[...] = arr
    _, _, rejected = _load_all(SunRgbdConverter(src))
    assert [e.code for _, e in rejected] == ["bad-value"] and "non-integer" in rejected[0][1].reason


def test_label_modes_and_toolbox_option(tree, tmp_path):
    root, src, frames = tree
    elsewhere = tmp_path / "tools" / "SUNRGBDtoolbox"
    # No toolbox beside --src: depth only, and the report says so.
    en, out, _ = _load_all(SunRgbdConverter(src))
    assert "no SUNRGBDtoolbox" in en.report["labels"] and all(s.seg is None for s in out.values())
    write_toolbox(elsewhere, [(f.folder, f.labels37) for f in frames])
    en, out, _ = _load_all(SunRgbdConverter(src, toolbox=elsewhere))
    assert en.report["labels"].endswith("given by --toolbox") and all(s.seg is not None for s in out.values())
    en, out, _ = _load_all(SunRgbdConverter(src, labels="none", toolbox=None))
    assert en.report["labels"].startswith("off") and "frames_without_labels" not in en.report
    assert all(s.seg is None for s in out.values())
    with pytest.raises(FileNotFoundError, match="SUNRGBD2Dseg.mat"):
        SunRgbdConverter(src, toolbox=tmp_path / "nowhere")


def test_cli_bad_toolbox_exits_2_naming_the_file(tree, tmp_path, capsys):
    root, src, frames = tree
    write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames[:-1]])
    seg = root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBD2Dseg.mat"
    with h5py.File(seg, "r+") as f:
        del f["SUNRGBD2Dseg/seglabel"]
    rc = main(["build-shards", "--dataset", "sunrgbd", "--src", str(src), "--out", str(tmp_path / "o"), "--manifests", str(tmp_path / "om")])
    err = capsys.readouterr().err
    assert rc == 2 and "SUNRGBD2Dseg.mat" in err and "seglabel" in err and "Traceback" not in err
    with pytest.raises(ToolboxError, match="seglabel"):
        ToolboxLabels(root / "SUNRGBDtoolbox")


def test_entry_count_must_match_meta(tree):
    root, src, frames = tree
    write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames])
    from vortex_data.fixtures.sunrgbd_toolbox import write_meta_mat
    write_meta_mat(root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBDMeta.mat", [f.folder for f in frames[:-1]])
    with pytest.raises(ToolboxError, match="entry i must belong to frame i"):
        SunRgbdConverter(src)


PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from vortex_data.convert.sunrgbd.toolbox import ToolboxLabels
    labels = ToolboxLabels(Path(sys.argv[1]))
    n = 0
    for folder, entry in labels.entry_of.items():
        seg, _ = labels.seg6(entry, (480, 640))
        n += int(seg[0, 0] != 255)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_peak_memory_flat_as_frames_grow(tmp_path):
    """Reading 200 frames costs no more memory than reading 20: one frame at a time, never the
    whole file (200 float64 640x480 arrays would be 490 MB)."""
    rng = np.random.default_rng(0)
    peaks = {}
    for n in (20, 200):
        frames = [(f"kv2/kinect2data/f{i:04d}", np.broadcast_to(rng.integers(0, 38, (1, 640)), (480, 640)))
                  for i in range(n)]
        toolbox = write_toolbox(tmp_path / f"tb{n}", frames)
        run = subprocess.run([sys.executable, "-c", PEAK_RSS, str(toolbox)], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[2])
        peaks[n] = int(run.stdout.split()[-1]) * 1024
    assert peaks[200] - peaks[20] < 40e6, peaks


def test_labels_file_changed_past_its_first_mib_at_the_same_size_is_a_new_build(tmp_path):
    """A label array past the first MiB of SUNRGBD2Dseg.mat rewritten in place (same size): the
    rerun must write the new labels. A size + first-MiB identity kept every group with the old ones."""
    root, src = tmp_path, tmp_path / "SUNRGBD"
    frames = write_sunrgbd_tree(src, frames_per_subset=3, seed=5, scale=0.3, subsets=SUBSETS[1:4])
    toolbox = write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames], compression=None)
    seg = toolbox / "Metadata" / "SUNRGBD2Dseg.mat"
    args = ["build-shards", "--dataset", "sunrgbd", "--src", str(src), "--out", str(tmp_path / "shards"),
            "--manifests", str(tmp_path / "man"), "--workers", "1"]
    assert main(args) == 0
    size = seg.stat().st_size
    with h5py.File(seg, "r+") as f:  # the entry stored last in the file, well past its first MiB
        targets = [f[r] for r in f["SUNRGBD2Dseg/seglabel"][:, 0]]
        entry = max(range(len(targets)), key=lambda i: targets[i].id.get_offset())
        assert targets[entry].id.get_offset() > 1 << 20
        targets[entry][...] = np.ones(targets[entry].shape)  # every pixel 'wall'
    folder = [f.folder for f in frames][toolbox_order(len(frames), 0)[entry]]
    assert seg.stat().st_size == size and not folder.startswith("kv1/NYUdata")
    assert main(args) == 0
    rows = pq.read_table(tmp_path / "man" / "sunrgbd-train.parquet").to_pylist()
    row = next(r for r in rows if r["key"] == make_key("sunrgbd", "train", folder))
    wall = sun37_to_6_lut()[1]
    assert row["class_pixels"][wall] == row["width"] * row["height"] == sum(row["class_pixels"])


def test_input_identity_covers_the_whole_file_and_is_hashed_once(tmp_path, monkeypatch):
    from vortex_data.convert import base

    path = tmp_path / "big.mat"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes())
    path.write_bytes(data)
    calls = []
    from vortex_data.format import manifest

    monkeypatch.setattr(manifest, "sha256_file", lambda p: calls.append(p) or hashlib.sha256(p.read_bytes()).hexdigest())
    first = base.input_sha256(path)
    assert base.input_sha256(path) == first and len(calls) == 1  # once per build, not per caller
    data[(2 << 20) + 5] ^= 1  # past the first MiB, same size
    path.write_bytes(data)
    assert base.input_sha256(path) != first and len(calls) == 2


def test_a_toolbox_of_another_copy_stops_the_build(tree, tmp_path, capsys):
    """SUNRGBDMeta.mat in reverse order: most frames' label arrays differ in size from their images,
    so the build stops naming the file and the cure (was: 4 frames written with another frame's
    labels, the rest rejected as bad-shape, exit 0)."""
    from vortex_data.fixtures.sunrgbd_toolbox import write_meta_mat, write_seg_mat

    root, src, frames = tree
    meta_dir = root / "SUNRGBDtoolbox" / "Metadata"
    write_seg_mat(meta_dir / "SUNRGBD2Dseg.mat", [f.labels37 for f in frames])
    write_meta_mat(meta_dir / "SUNRGBDMeta.mat", [f.folder for f in frames][::-1])
    rc = main(["build-shards", "--dataset", "sunrgbd", "--src", str(src), "--out", str(tmp_path / "o"),
               "--manifests", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "SUNRGBDMeta.mat" in err
    assert "toolbox does not match this SUN RGB-D copy" in err and "--toolbox" in err
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").glob("*.json"))
    with pytest.raises(ToolboxError, match=r"\d+ of \d+ labelled frames"):
        SunRgbdConverter(src).enumerate(None)


def test_report_names_the_toolbox_folder_and_each_file(tree):
    """Only SUNRGBDMeta.mat missing: the report says that one is missing (it said "no
    SUNRGBD2Dseg.mat"), names the folder looked at and lists both files."""
    root, src, frames = tree
    toolbox = write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames])
    (toolbox / "Metadata" / "SUNRGBDMeta.mat").unlink()
    en = SunRgbdConverter(src).enumerate(None)
    said = en.report["labels"]
    assert "Metadata/SUNRGBDMeta.mat missing" in said and str(toolbox) in said and "depth only" in said
    assert "SUNRGBD2Dseg.mat missing" not in said
    assert en.report["toolbox_files"] == {str(toolbox / "Metadata/SUNRGBD2Dseg.mat"): "found",
                                          str(toolbox / "Metadata/SUNRGBDMeta.mat"): "missing"}
    with pytest.raises(FileNotFoundError, match="SUNRGBDMeta.mat: not found") as info:
        SunRgbdConverter(src, toolbox=toolbox)
    assert "SUNRGBD2Dseg.mat" not in str(info.value).split(":")[0]


def test_a_symlinked_src_finds_the_toolbox_beside_the_link(tree, tmp_path):
    """One rule, documented: the toolbox is looked for beside --src as given, not beside the
    target of a symlink (it was the target's folder)."""
    root, src, frames = tree
    work = tmp_path / "work"
    work.mkdir()
    (work / "SUNRGBD").symlink_to(src)
    write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, f.labels37) for f in frames])  # beside the target only
    en = SunRgbdConverter(work / "SUNRGBD").enumerate(None)
    assert "depth only" in en.report["labels"] and str(work / "SUNRGBDtoolbox") in en.report["labels"]
    (root / "SUNRGBDtoolbox").rename(work / "SUNRGBDtoolbox")
    conv = SunRgbdConverter(work / "SUNRGBD")
    en, out, rejected = _load_all(conv)
    assert en.report["labels"] == f"{work / 'SUNRGBDtoolbox' / 'Metadata/SUNRGBD2Dseg.mat'} found beside --src"
    assert not rejected and all(s.seg is not None for s in out.values())


def test_an_empty_label_entry_writes_the_frame_depth_only(tree, tmp_path):
    """MATLAB's [] for a frame's labels (a (0, 0) array flagged MATLAB_empty): the frame is
    written without labels, not rejected (it was 'bad-value': not a 2-D array)."""
    root, src, frames = tree
    empty = frames[2].folder
    write_toolbox(root / "SUNRGBDtoolbox", [(f.folder, None if f.folder == empty else f.labels37) for f in frames])
    en, out, rejected = _load_all(SunRgbdConverter(src))
    assert not rejected and out[empty].seg is None and out[empty].depth_mm.any()
    assert out[empty].meta["label_source"].startswith("none") and out[empty].meta["label_entry"] >= 1
    assert sum(s.seg is None for s in out.values()) == 1
    rc = main(["build-shards", "--dataset", "sunrgbd", "--src", str(src), "--out", str(tmp_path / "o"),
               "--manifests", str(tmp_path / "m")])
    m = json.loads((tmp_path / "m" / "sunrgbd-train.json").read_text())
    assert rc == 0 and m["totals"]["rejected"] == 0 and m["totals"]["labelled"] == m["totals"]["written"] - 1


def test_an_empty_or_wrong_src_folder_fails_naming_the_layout(tmp_path, capsys):
    """An empty --src wrote nothing and exited 0; now exit 2 naming the layout, and the folder one
    level down when the user gave the parent of SUNRGBD/."""
    (tmp_path / "empty").mkdir()
    args = ["build-shards", "--dataset", "sunrgbd", "--out", str(tmp_path / "o"), "--manifests", str(tmp_path / "m")]
    rc = main([*args, "--src", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and "no SUN RGB-D frame folder" in err and "kv2/kinect2data" in err and "intrinsics.txt" in err
    write_sunrgbd_tree(tmp_path / "data" / "SUNRGBD", frames_per_subset=1, seed=1, scale=0.1, subsets=SUBSETS[1:2])
    rc = main([*args, "--src", str(tmp_path / "data")])
    assert rc == 2 and f"give --src {tmp_path / 'data' / 'SUNRGBD'}" in capsys.readouterr().err
