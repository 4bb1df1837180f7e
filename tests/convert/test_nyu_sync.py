"""nyu-sync: the BTS/AdaBins synchronised export, its frame list, and no evaluation room in training."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from vortex_data.cli import main
from vortex_data.convert import get_converter
from vortex_data.convert.nyu import eval_scenes as evs
from vortex_data.convert.nyu.converter import NYU_INTRINSICS
from vortex_data.convert.nyu.splits import make_split, place_of
from vortex_data.convert.nyu.sync import NyuSyncConverter
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.fixtures.nyu import NyuFrame, write_nyu_mat
from vortex_data.fixtures.nyu_sync import list_line, sync_paths, write_list, write_sync_tree
from vortex_data.format.manifest import load_manifest
from vortex_data.format.schema import decode_sample
from vortex_data.format.tar_index import iter_samples

ALLOW = evs.EvalScenes({}, allowed=True)  # nothing to exclude: the converter alone


def build(conv, tmp_path, name="b"):
    res = build_shards(conv, BuildConfig(out_dir=tmp_path / name / "s", manifest_dir=tmp_path / name / "m",
                                         workers=1, progress=False))
    (path,) = res.manifests
    return load_manifest(path)


def shard_samples(m):
    out = {}
    for shard in m.shard_paths():
        for key, members in iter_samples(shard):
            out[key] = decode_sample(members, key)
    return out


def index_scenes(m):
    return pq.read_table(m.index_path(), columns=["scene"]).column("scene").to_pylist()


# ---------------------------------------------------------------- real frames

def test_real_frames_depth_is_the_pngs_millimetres_exactly(samples_dir, tmp_path):
    src = tmp_path / "sync"
    (src / "living_room_0001").mkdir(parents=True)  # the samples have no scene folder: give them one
    for n in ("00000", "00050"):
        for name in (f"rgb_{n}.jpg", f"sync_depth_{n}.png"):
            shutil.copy(samples_dir / "nyu" / name, src / "living_room_0001" / name)
    m = build(NyuSyncConverter(src, eval_scenes=ALLOW), tmp_path)
    got = shard_samples(m)
    assert sorted(got) == ["nyu-sync/train/living_room_0001/00000", "nyu-sync/train/living_room_0001/00050"]
    cam = json.loads((samples_dir / "nyu/test_annotations.json").read_text())["files"][0]["cam_in"]
    for key, s in got.items():
        n = key.rsplit("/", 1)[1]
        png = cv2.imread(str(samples_dir / "nyu" / f"sync_depth_{n}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and np.array_equal(s["depth_mm"], png)  # through the shard, bit for bit
        assert s["meta"]["scene"] == "living_room_0001"
        k = s["meta"]["intrinsics"]
        assert [k["fx"], k["fy"], k["cx"], k["cy"]] == pytest.approx(cam)
    assert [NYU_INTRINSICS.fx, NYU_INTRINSICS.fy, NYU_INTRINSICS.cx, NYU_INTRINSICS.cy] == pytest.approx(cam)
    assert index_scenes(m) == ["living_room_0001"] * 2


# ---------------------------------------------------------------- the list

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sync")
    written = write_sync_tree(root, {"kitchen_0028b": 2, "office_0003": 2, "bedroom_0005": 1, "study_0002": 1,
                                     "living_room_0001": 1})
    return root, written


def test_fixture_is_the_bts_layout(tree):
    root, written = tree
    rgb, depth = sync_paths("office_0003", 1)
    assert rgb == "office_0003/rgb_00001.jpg" and depth == "office_0003/sync_depth_00001.png"
    d = cv2.imread(str(root / depth), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and d.shape == (480, 640) and 0 < d.max() <= 10000 and (d == 0).any()
    assert cv2.imread(str(root / rgb)).shape == (480, 640, 3)
    assert list_line("office_0003", 1) == "/office_0003/rgb_00001.jpg /office_0003/sync_depth_00001.png 518.8579"


def test_a_list_selects_exactly_its_frames_and_counts_add_up(tree, tmp_path):
    root, written = tree
    lines = [list_line("office_0003", 1), list_line("kitchen_0028b", 0), "",
             list_line("office_0003", 1),                          # repeated
             list_line("bedroom_0005", 7),                         # not on disk
             list_line("study_0002", 0, focal="259.42895"),        # a list for half-size frames
             "/study_0002/rgb_00000.jpg /study_0002/sync_depth_00000.png",  # no focal column
             "/a/rgb_00001.jpg /b/sync_depth_00001.png 518.8579"]
    lst = write_list(tmp_path / "train.txt", lines)
    m = build(NyuSyncConverter(root, list_file=lst, eval_scenes=ALLOW), tmp_path)
    got = shard_samples(m)
    assert sorted(got) == ["nyu-sync/train/kitchen_0028b/00000", "nyu-sync/train/office_0003/00001"]
    for key, s in got.items():
        scene, n = key.split("/")[-2:]
        png = cv2.imread(str(root / sync_paths(scene, int(n))[1]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(s["depth_mm"], png)
    codes = {r["reason"].split(":")[1]: r["code"] for r in m.rejected}
    assert codes == {"4": "duplicate", "5": "missing-file", "6": "bad-focal", "7": "bad-list-line",
                     "8": "bad-list-line"}
    missing = next(r for r in m.rejected if r["code"] == "missing-file")
    assert "train.txt:5" in missing["reason"] and missing["file"] == "bedroom_0005/rgb_00007.jpg"
    assert m.totals["input_frames"] == m.report["list"]["lines"] == 7 == m.totals["written"] + m.totals["rejected"]
    assert m.report["list"]["on_disk_not_listed"] == len(written) - 2


def test_a_list_of_another_format_is_refused_naming_it(tree, tmp_path):
    root, _ = tree
    lst = write_list(tmp_path / "files.txt", ["office_0003/rgb_00001.jpg", "office_0003/rgb_00000.jpg"])
    with pytest.raises(evs.InputError, match="files.txt:1: 1 field"):
        NyuSyncConverter(root, list_file=lst, eval_scenes=ALLOW).enumerate(None)


def test_without_a_list_every_pair_on_disk_and_orphans_rejected(tree, tmp_path):
    root, written = tree
    src = tmp_path / "copy"
    shutil.copytree(root, src)
    (src / "office_0003/sync_depth_00001.png").unlink()
    (src / "study_0002/notes.txt").write_text("not a frame")
    enum = NyuSyncConverter(src, eval_scenes=ALLOW).enumerate(None)
    assert len(enum.frames) == len(written) - 1
    (r,) = enum.rejected
    assert r.code == "missing-file" and r.file == "office_0003/sync_depth_00001.png"
    assert enum.report["frames_per_scene"]["office_0003"] == 1


def test_a_frame_of_another_size_or_depth_type_is_rejected(tree, tmp_path):
    root, _ = tree
    src = tmp_path / "copy"
    shutil.copytree(root, src)
    d = cv2.imread(str(src / "office_0003/sync_depth_00000.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(src / "office_0003/sync_depth_00000.png"), (d // 40).astype(np.uint8))
    cv2.imwrite(str(src / "office_0003/sync_depth_00001.png"), d[:400])
    m = build(NyuSyncConverter(src, eval_scenes=ALLOW), tmp_path)
    assert {r["frame"]: r["code"] for r in m.rejected} == {"office_0003/00000": "bad-dtype",
                                                           "office_0003/00001": "bad-shape"}


# ---------------------------------------------------------------- evaluation scenes

LABELLED_SCENES = (["kitchen_0028a"] * 2 + ["office_0003"] * 3 + ["bedroom_0005"] * 3 + ["study_0002"] * 2
                   + ["bathroom_0009"] * 2)
OFFICIAL = {"train": [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "test": [1, 2]}  # the test frames: kitchen_0028a


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    d = tmp_path_factory.mktemp("labelled")
    blank = NyuFrame(rgb=np.zeros((480, 640, 3), np.uint8), depth_m=np.ones((480, 640), np.float32),
                     labels=np.zeros((480, 640), np.uint16))
    frames = [NyuFrame(**{**blank.__dict__, "scene": s}) for s in LABELLED_SCENES]
    splits = d / "splits.json"
    splits.write_text(json.dumps(OFFICIAL))
    return write_nyu_mat(d / "nyu_depth_v2_labeled.mat", frames), splits


SEED = 1  # its scenes80 val is study_0002, a scene the sync tree holds


def scenes80_val(seed=SEED):
    val = make_split("scenes80", len(LABELLED_SCENES), seed, scenes=LABELLED_SCENES)["val"]
    return {place_of(LABELLED_SCENES[i - 1]) for i in val}


def cli_build(tree, tmp_path, *flags):
    root, _ = tree
    code = main(["build-shards", "--dataset", "nyu-sync", "--src", str(root), "--out", str(tmp_path / "s"),
                 "--manifests", str(tmp_path / "m"), "--workers", "1", "--no-progress", *flags])
    return code, (load_manifest(tmp_path / "m/nyu-sync-train.json") if code == 0 else None)


def test_building_without_the_evaluation_scenes_is_refused_naming_the_flags(tree, tmp_path, capsys):
    code, _ = cli_build(tree, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    for flag in ("--labelled", "--exclude-scenes", "--allow-eval-scenes"):
        assert flag in err
    assert not (tmp_path / "m").exists()


def test_an_evaluation_scene_never_reaches_the_training_manifest(tree, labelled, tmp_path):
    mat, splits = labelled
    code, m = cli_build(tree, tmp_path, "--labelled", str(mat), "--splits-file", str(splits),
                        "--split-seed", str(SEED))
    assert code == 0
    eval_places = {"kitchen_0028"} | scenes80_val()
    assert eval_places - {"kitchen_0028"}, "the fixture's scenes80 val must hold a scene of the sync tree"
    kept = index_scenes(m)
    assert kept and not {place_of(s) for s in kept} & eval_places
    assert "living_room_0001" in kept  # a room the labelled set never shows stays
    excluded = [r for r in m.rejected if r["code"] == "eval-scene"]
    assert {place_of(r["frame"].split("/")[0]) for r in excluded} == eval_places & {
        place_of(s) for s, _ in tree[1]}
    # kitchen_0028b is excluded because kitchen_0028a (same room, other session) holds test frames
    kb = [r for r in excluded if r["frame"].startswith("kitchen_0028b/")]
    assert len(kb) == 2 and all("official test split" in r["reason"] for r in kb)
    by_reason = m.report["eval_scenes"]["by_reason"]
    assert sum(by_reason.values()) == len(excluded) == m.totals["rejected_by_code"]["eval-scene"]
    assert m.totals["input_frames"] == len(tree[1]) == m.totals["written"] + m.totals["rejected"]
    opts = m.converter["options"]["eval_scenes"]
    assert opts["allowed"] is False and opts["labelled"] == "nyu_depth_v2_labeled.mat"
    assert set(opts["excluded_places"]) == {"kitchen_0028"} | scenes80_val()


def test_only_the_chosen_evaluation_split_is_excluded(tree, labelled, tmp_path):
    mat, splits = labelled
    code, m = cli_build(tree, tmp_path, "--labelled", str(mat), "--splits-file", str(splits), "--eval-split",
                        "official")
    assert code == 0
    assert {r["frame"] for r in m.rejected} == {"kitchen_0028b/00000", "kitchen_0028b/00001"}


def test_allowing_keeps_the_frames_and_counts_them(tree, labelled, tmp_path):
    mat, splits = labelled
    code, m = cli_build(tree, tmp_path, "--labelled", str(mat), "--splits-file", str(splits), "--allow-eval-scenes")
    assert code == 0 and m.totals["rejected"] == 0 and m.totals["written"] == len(tree[1])
    assert m.report["eval_scenes"]["excluded"] == 0
    assert m.report["eval_scenes"]["kept_despite_eval_scene"] >= 2
    code, m = cli_build(tree, tmp_path / "bare", "--allow-eval-scenes")
    assert code == 0 and m.totals["written"] == len(tree[1])


def test_a_scene_list_excludes_by_place(tree, tmp_path):
    lst = tmp_path / "eval_scenes.txt"
    lst.write_text("# rooms of our evaluation set\nstudy_0002a\n\n/bedroom_0005/  # trailing slash as in lists\n")
    code, m = cli_build(tree, tmp_path, "--exclude-scenes", str(lst))
    assert code == 0
    assert {r["frame"] for r in m.rejected} == {"study_0002/00000", "bedroom_0005/00000"}
    assert set(m.report["eval_scenes"]["by_reason"]) == {"listed in eval_scenes.txt"}


def test_the_module_api_the_raw_converter_uses(labelled):
    mat, splits = labelled
    ns = type("Args", (), {"labelled": mat, "exclude_scenes": None, "eval_split": "official", "split_seed": 0,
                           "splits_file": splits, "allow_eval_scenes": False})()
    e = evs.from_args(ns, "nyu-raw")
    assert e.reason("kitchen_0028b") == "official test split" and e.reason("office_0003") is None
    ns.labelled = None
    with pytest.raises(evs.EvalScenesRefused, match="nyu-raw: refusing"):
        evs.from_args(ns, "nyu-raw")
    ns.allow_eval_scenes = True
    assert evs.from_args(ns, "nyu-raw") is None
    ns.allow_eval_scenes, ns.exclude_scenes, ns.eval_split = False, Path("x.txt"), "official"
    with pytest.raises(evs.InputError, match="--eval-split, --splits-file only apply with --labelled"):
        evs.from_args(ns, "nyu-raw")
    assert get_converter("nyu-sync") is NyuSyncConverter
    conv = NyuSyncConverter(".", eval_scenes=e)
    assert pickle.loads(pickle.dumps(conv)).eval_scenes == e  # converters travel to worker processes


def test_stats_flags_a_training_manifest_sharing_an_evaluation_room(tree, labelled, tmp_path, capsys):
    from vortex_data.convert.nyu.converter import NyuConverter
    from vortex_data.stats.compute import plan_units
    from vortex_data.stats.leakage import scene_leakage

    mat, splits = labelled
    nyu = build_shards(NyuConverter(mat, split_scheme="official", splits_file=splits),
                       BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m", workers=1, progress=False))
    test_manifest = next(p for p in nyu.manifests if load_manifest(p).split == "test")
    cli_build(tree, tmp_path / "leaky", "--allow-eval-scenes")
    cli_build(tree, tmp_path / "clean", "--labelled", str(mat), "--splits-file", str(splits), "--eval-split",
              "official")
    leaky, clean = (tmp_path / d / "m/nyu-sync-train.json" for d in ("leaky", "clean"))
    (got,) = scene_leakage(plan_units([leaky, test_manifest], None))
    # the two kitchen_0028b frames trained on; the two test frames are of kitchen_0028a, the same room
    assert got == {"pair": "nyu-sync-train/nyu-test", "frames": 2, "leaked_frames": 2, "shared_places": 1,
                   "unknown_because": None}
    (got,) = scene_leakage(plan_units([clean, test_manifest], None))
    assert got["leaked_frames"] == 0
    assert main(["stats", str(leaky), str(test_manifest), "--out", str(tmp_path / "r"), "--workers", "1",
                 "--no-progress"]) == 0
    assert "scene leakage nyu-sync-train/nyu-test: 2 of 2 evaluation frames" in capsys.readouterr().out
    assert json.loads((tmp_path / "r/stats.json").read_text())["scene_leakage"][0]["leaked_frames"] == 2
    assert "<h2>Scene leakage</h2>" in (tmp_path / "r/report.html").read_text()
