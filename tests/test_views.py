"""Looking at the data: the shared colours, `vortex-data show` (contact sheet of finished batches)
and `vortex-data export rerun` (read back from the .rrd file)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vortex_data.cli import main
from vortex_data.demo import converter_from_cli
from vortex_data.fixtures.femto import write_demo_femto
from vortex_data.fixtures.nyu import write_demo_nyu_source
from vortex_data.format.manifest import load_manifest
from vortex_data.format.schema import CLASS_NAMES, IGNORE_INDEX, decode_sample
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.show import CAPTION_H, contact_sheet, tiles_of_batch
from vortex_data.stream.batch import IMAGENET_MEAN, IMAGENET_STD
from vortex_data.stream.photometric import normalise
from vortex_data.format.tar_index import iter_samples
from vortex_data.views import INVALID_RGB, PALETTE, depth_colours, depth_edges, label_overlay


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("views")
    out = {}
    for dataset, write in (("nyu", write_demo_nyu_source), ("femto", write_demo_femto)):
        src = write(tmp / "src" / dataset)
        cfg = BuildConfig(out_dir=tmp / "shards", manifest_dir=tmp / "manifests", workers=1, shard_samples=4,
                          progress=False)
        for m in build_shards(converter_from_cli(dataset, src, []), cfg).manifests:
            out[m.stem] = m
    return out


def samples(manifest: Path) -> list[dict]:
    return [decode_sample(mem, key) for shard in load_manifest(manifest).shard_paths()
            for key, mem in iter_samples(shard)]


# ---------------------------------------------------------------- colours

def test_depth_colours_one_scale_and_invalid_colour():
    d = np.array([[0.0, 0.25, 1.0, 40.0, 100.0]], np.float32)
    c = depth_colours(d)
    assert tuple(c[0, 0]) == INVALID_RGB
    assert not any(tuple(px) == INVALID_RGB for px in c[0, 1:])
    assert tuple(c[0, 3]) == tuple(c[0, 4])  # beyond the scale: clipped to its end
    # The same depth gets the same colour in any frame (no per-frame stretch).
    assert np.array_equal(depth_colours(np.full((2, 2), 1.0))[0, 0], c[0, 2])


def test_label_overlay_leaves_ignore_untouched():
    rgb = np.full((2, 3, 3), 100, np.uint8)
    seg = np.array([[0, 5, IGNORE_INDEX], [1, IGNORE_INDEX, 2]], np.uint8)
    out = label_overlay(rgb, seg)
    assert np.array_equal(out[seg == IGNORE_INDEX], rgb[seg == IGNORE_INDEX])
    assert np.all(np.abs(out[0, 1].astype(int) - PALETTE[5]) < np.abs(rgb[0, 1].astype(int) - PALETTE[5]))


def test_depth_edges_at_jumps_only():
    d = np.full((6, 8), 2.0, np.float32)
    d[:, 4:] = 3.0  # a step: one column pair
    d[0, 0] = 0.0  # invalid next to valid is not an edge
    e = depth_edges(d)
    assert e[:, 4].all() and e.sum() == 6


# ---------------------------------------------------------------- show

def test_tiles_show_the_rgb_the_trainer_got_un_normalised():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 3, 12, 16), dtype=np.uint8)
    depth = torch.full((2, 1, 12, 16), 2.0)
    depth[1, 0, :, :5] = 0  # invalid strip
    seg = torch.full((2, 12, 16), IGNORE_INDEX, dtype=torch.int64)
    seg[0, :6] = 3
    batch = {"rgb": normalise(torch.from_numpy(rgb), IMAGENET_MEAN, IMAGENET_STD), "depth": depth, "seg": seg,
             "dataset": torch.tensor([0, 1]), "has_seg": torch.tensor([True, False]), "key": ["a/train/x", "b/train/y"]}
    tiles = tiles_of_batch(batch, ["a", "b"], IMAGENET_MEAN, IMAGENET_STD, 0)
    assert [t.shape for t in tiles] == [(12 + CAPTION_H, 3 * 16 + 8, 3)] * 2
    for i, t in enumerate(tiles):
        assert np.array_equal(t[:12, :16], rgb[i].transpose(1, 2, 0))  # flat depth: no edges drawn
    assert np.all(tiles[1][:12, 20:25] == INVALID_RGB)  # depth panel starts at 16 + 4
    assert np.array_equal(tiles[0][:6, 40:56], label_overlay(rgb[0].transpose(1, 2, 0), seg[0].numpy().astype(np.uint8))[:6])
    sheet = contact_sheet(tiles, "t")
    assert sheet.shape[0] > 2 * tiles[0].shape[0] and (sheet[-tiles[0].shape[0] - 8:-8, :56] == tiles[0]).all()


def test_show_cli_writes_the_sheet(manifests, tmp_path):
    out = tmp_path / "sheet.png"
    rc = main(["show", str(manifests["nyu-train"]), "--out", str(out), "--batches", "2", "--batch-size", "2",
               "--size", "96", "128", "--augment", "none", "--seed", "3"])
    assert rc == 0
    img = cv2.imread(str(out))[:, :, ::-1]
    tile_w, tile_h = 3 * 128 + 8, 96 + CAPTION_H
    cols = 4  # 4 tiles fit in one row of the sheet
    assert img.shape[1] == cols * (tile_w + 8)
    grid = img[-(tile_h + 8):]
    for c in range(cols):
        tile = grid[:96, c * (tile_w + 8):c * (tile_w + 8) + tile_w]
        assert tile[:, :128].std() > 10  # a photo, not a blank
        assert not np.array_equal(tile[:, 264:], tile[:, :128])  # labels blended over the RGB
    # augment none + same seed: the same sheet again
    rc = main(["show", str(manifests["nyu-train"]), "--out", str(tmp_path / "again.png"), "--batches", "2",
               "--batch-size", "2", "--size", "96", "128", "--augment", "none", "--seed", "3"])
    assert rc == 0 and np.array_equal(cv2.imread(str(tmp_path / "again.png"))[:, :, ::-1], img)


def test_show_bad_target_is_a_message(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope.toml" in capsys.readouterr().err


# ---------------------------------------------------------------- rerun

def _chunks(path: Path) -> dict[str, list]:
    from rerun.chunk import RrdReader

    out: dict[str, list] = {}
    for c in RrdReader(path).stream():
        out.setdefault(c.entity_path, []).append(c)
    return out


def _column(chunks: list, name: str) -> list:
    return [v for c in chunks for v in c.to_record_batch().column(name).to_pylist()]


def test_export_rerun_nyu_components(manifests, tmp_path):
    pytest.importorskip("rerun.chunk")  # the file reader (rerun-sdk >= 0.41)
    rrd = tmp_path / "nyu.rrd"
    assert main(["export", "rerun", str(manifests["nyu-train"]), "--out", str(rrd), "--limit", "2"]) == 0
    ch = _chunks(rrd)
    cam = "/nyu/train/camera"
    assert set(ch) == {"/nyu/train", cam, f"{cam}/rgb", f"{cam}/depth", f"{cam}/labels", f"{cam}/key"}
    ref = samples(manifests["nyu-train"])[:2]
    assert _column(ch[f"{cam}/key"], "TextLog:text") == [[s["key"]] for s in ref]
    assert all("frame" in c.timeline_names for c in ch[cam])
    k, (h, w) = ref[0]["meta"]["intrinsics"], ref[0]["depth_mm"].shape
    m = np.array(_column(ch[cam], "Pinhole:image_from_camera")[0][0]).reshape(3, 3).T  # column-major
    assert np.allclose(m, [[k["fx"], 0, k["cx"]], [0, k["fy"], k["cy"]], [0, 0, 1]], rtol=1e-6)
    assert _column(ch[cam], "Pinhole:resolution")[0] == [[w, h]]
    fmt = _column(ch[f"{cam}/depth"], "DepthImage:format")[0][0]
    assert (fmt["width"], fmt["height"]) == (w, h)
    assert _column(ch[f"{cam}/depth"], "DepthImage:meter")[0] == [1000.0]
    depth = np.frombuffer(bytes(_column(ch[f"{cam}/depth"], "DepthImage:buffer")[0][0]), np.uint16).reshape(h, w)
    assert np.array_equal(depth, ref[0]["depth_mm"])
    seg = np.frombuffer(bytes(_column(ch[f"{cam}/labels"], "SegmentationImage:buffer")[1][0]), np.uint8).reshape(h, w)
    assert np.array_equal(seg, ref[1]["seg"])
    rgb = np.frombuffer(bytes(_column(ch[f"{cam}/rgb"], "Image:buffer")[0][0]), np.uint8)
    assert rgb.size == h * w * 3 and np.array_equal(rgb.reshape(h, w, 3), ref[0]["rgb"])
    ctx = json.dumps(_column(ch["/nyu/train"], "AnnotationContext:context"))
    assert all(n in ctx for n in CLASS_NAMES)


def test_export_rerun_femto_on_sensor_time(manifests, tmp_path):
    pytest.importorskip("rerun.chunk")
    rrd = tmp_path / "femto.rrd"
    ref = samples(manifests["femto-eval"])
    keys = [ref[2]["key"], ref[0]["key"]]
    assert main(["export", "rerun", str(manifests["femto-eval"]), "--out", str(rrd), "--keys", *keys]) == 0
    ch = _chunks(rrd)
    cam = "/femto/eval/camera"
    assert f"{cam}/labels" not in ch  # the recording has no labels
    times = [c.to_record_batch().column("sensor_time").cast("int64").to_pylist() for c in ch[f"{cam}/depth"]]
    want = sorted(int(s["meta"]["color_timestamp_us"]) * 1000 for s in (ref[0], ref[2]))
    assert sorted(t for ts in times for t in ts) == want
    assert all("frame" not in c.timeline_names for c in ch[cam])


def test_export_rerun_unknown_key_and_missing_sdk(manifests, tmp_path, monkeypatch, capsys):
    try:
        import rerun  # noqa: F401
    except ImportError:
        pass  # only the missing-SDK message can be checked
    else:
        rc = main(["export", "rerun", str(manifests["femto-eval"]), "--out", str(tmp_path / "x.rrd"), "--keys", "no/such/key"])
        assert rc == 2 and "no/such/key" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun now raises ImportError
    rc = main(["export", "rerun", str(manifests["femto-eval"]), "--out", str(tmp_path / "y.rrd")])
    assert rc == 2 and "[viz]" in capsys.readouterr().err


# ---------------------------------------------------------------- output paths (show and export)
# Tests run as root in CI, where a chmod'ed read-only folder does not stop a write; a path under a
# regular file (mkdir fails) and an --out that is a folder (the rename fails) fail for root too.

def _one_line_naming(err: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in err, err
    assert "suffix" not in err  # the old guess for any failed cv2.imwrite


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name or p.is_file() and p.suffix in (".rrd", ".png")]


@pytest.mark.parametrize("command", ["show", "export"])
def test_output_under_a_regular_file_is_one_line(manifests, tmp_path, capsys, command):
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / ("sheet.png" if command == "show" else "x.rrd")
    argv = (["show", str(manifests["nyu-train"]), "--out", str(out), "--batch-size", "2", "--batches", "1"]
            if command == "show" else ["export", "rerun", str(manifests["nyu-train"]), "--out", str(out)])
    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_line_naming(err, out)
    assert "afile is a file, not a folder" in err and "writable" in err


def test_show_out_that_is_a_folder_is_one_line_and_leaves_nothing(manifests, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    out.mkdir()
    assert main(["show", str(manifests["nyu-train"]), "--out", str(out), "--batch-size", "2", "--batches", "1",
                 "--size", "64", "64", "--augment", "none"]) == 2
    _one_line_naming(capsys.readouterr().err, out)
    assert out.is_dir() and not list(out.iterdir())
    _no_leftovers(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder; the tests above cover root")
def test_show_into_read_only_folder_is_one_line(manifests, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert main(["show", str(manifests["nyu-train"]), "--out", str(ro / "s.png"), "--batch-size", "2"]) == 2
    _one_line_naming(capsys.readouterr().err, ro / "s.png")


def test_failed_export_leaves_no_partial_rrd(manifests, tmp_path, capsys):
    pytest.importorskip("rerun")
    out = tmp_path / "x.rrd"
    keys = [samples(manifests["nyu-train"])[0]["key"], "no/such/key"]  # one found and logged, then the error
    assert main(["export", "rerun", str(manifests["nyu-train"]), "--out", str(out), "--keys", *keys]) == 2
    assert "no/such/key" in capsys.readouterr().err
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_show_manifest_smaller_than_a_batch_draws_what_there_is(manifests, tmp_path):
    n = len(samples(manifests["nyu-train"]))
    assert n < 8
    out = tmp_path / "small.png"
    assert main(["show", str(manifests["nyu-train"]), "--out", str(out), "--batch-size", "8", "--batches", "2",
                 "--size", "64", "64", "--augment", "none"]) == 0
    img = cv2.imread(str(out))[:, :, ::-1]
    tile_w = 3 * 64 + 8
    tiles = img[-(64 + CAPTION_H + 8):, :, :]
    drawn = sum(tiles[:64, c * (tile_w + 8):c * (tile_w + 8) + 64].std() > 10
                for c in range(img.shape[1] // (tile_w + 8)))
    assert drawn == n  # every sample once, in one row: one partial batch
