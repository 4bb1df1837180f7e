"""DIODE converter: true layout, masks honoured, bad files rejected with reasons, meta cross-check."""

import json

import numpy as np
import pytest

from vortex_data.fixtures.diode import diode_frame_paths, render_diode_frame, write_diode_frame, write_diode_tree
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.format.manifest import load_manifest
from vortex_data.convert.base import RejectFrame
from vortex_data.convert.diode import DiodeConverter

SMALL = (128, 96)


def test_load_matches_written_frame(tmp_path):
    rng = np.random.default_rng(0)
    rgb, depth, mask, _ = render_diode_frame(rng, SMALL)
    paths = diode_frame_paths(tmp_path, "train", "indoors", 1, 2, 0, 10)
    write_diode_frame(paths, rgb, depth, mask)
    conv = DiodeConverter(tmp_path)
    enum = conv.enumerate(None)
    assert [f.frame_id for f in enum.frames] == ["00001_00002_indoors_000_010"]
    s = conv.load(enum.frames[0])
    assert np.array_equal(s.rgb, rgb)
    assert (s.depth_mm[~mask] == 0).all()  # junk under the mask never leaks through
    assert np.abs(s.depth_mm[mask] / 1000.0 - depth[mask]).max() <= 0.0005 + 1e-6
    assert s.intrinsics.fx == pytest.approx(886.81 * 128 / 1024)
    assert s.seg is None


def _tree_with_bad_frames(root):
    write_diode_tree(root, {("train", "indoors", 1, 1): 8}, size=SMALL)
    scan = root / "train/indoors/scene_00001/scan_00001"
    stems = sorted(p.name[:-4] for p in scan.glob("*.png"))
    bad = {}
    # truncated .npy
    p = scan / f"{stems[0]}_depth.npy"
    p.write_bytes(p.read_bytes()[:200]); bad[stems[0]] = "unreadable"
    # wrong shape
    np.save(scan / f"{stems[1]}_depth.npy", np.zeros((10, 10, 1), np.float32)); bad[stems[1]] = "bad-shape"
    # missing mask
    (scan / f"{stems[2]}_depth_mask.npy").unlink(); bad[stems[2]] = "missing-file"
    # missing RGB
    (scan / f"{stems[3]}.png").unlink(); bad[stems[3]] = "missing-file"
    # unreadable PNG
    (scan / f"{stems[4]}.png").write_bytes(b"\x89PNG not really"); bad[stems[4]] = "unreadable"
    # float64 depth where float32 is the format
    d = np.load(scan / f"{stems[5]}_depth.npy")
    np.save(scan / f"{stems[5]}_depth.npy", d.astype(np.float64)); bad[stems[5]] = "bad-dtype"
    # NaN / inf / negative under a valid mask: written, pixels invalidated and counted
    d = np.load(scan / f"{stems[6]}_depth.npy")
    m = np.ones(d.shape[:2], np.float32)
    d[0, 0, 0], d[0, 1, 0], d[0, 2, 0] = np.nan, np.inf, -1.0
    np.save(scan / f"{stems[6]}_depth.npy", d); np.save(scan / f"{stems[6]}_depth_mask.npy", m)
    return stems, bad


def test_bad_inputs_are_rejected_with_reasons_and_counts_reconcile(tmp_path):
    stems, bad = _tree_with_bad_frames(tmp_path / "src")
    res = build_shards(DiodeConverter(tmp_path / "src"),
                       BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "m", workers=1, progress=False))
    m = load_manifest(res.manifests[0])
    got = {r["frame"]: r for r in m.rejected}
    assert {k: v["code"] for k, v in got.items()} == bad
    for stem, r in got.items():
        assert stem in r["reason"] or stem in (r["file"] or ""), r  # each reason names the file
    assert m.totals["input_frames"] == 8 == m.totals["written"] + m.totals["rejected"]
    assert m.totals["written"] == 2
    assert m.totals["depth_rejected_pixels"] == 3


def test_walker_against_the_devkit_meta(tmp_path, samples_dir):
    meta = json.loads((samples_dir / "diode/diode_meta.json").read_text())
    scans = meta["val"]["indoors"]
    scene = sorted(scans)[0]
    scan_names = sorted(scans[scene])[:2]
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    rgb, depth, mask, _ = render_diode_frame(rng, (32, 24))
    expected = 0
    for scan in scan_names:
        for stem in scans[scene][scan]:
            d = root / "val/indoors" / scene / scan
            write_diode_frame({"rgb": d / f"{stem}.png", "depth": d / f"{stem}_depth.npy",
                               "mask": d / f"{stem}_depth_mask.npy"}, rgb, depth, mask)
            expected += 1
    # One extra frame on disk that the (incomplete) index does not list, as in the released archive.
    d = root / "val/indoors" / scene / scan_names[0]
    extra = scans[scene][scan_names[0]][0][:-7] + "999_999"
    write_diode_frame({"rgb": d / f"{extra}.png", "depth": d / f"{extra}_depth.npy",
                       "mask": d / f"{extra}_depth_mask.npy"}, rgb, depth, mask)
    conv = DiodeConverter(root, meta=samples_dir / "diode/diode_meta.json")
    enum = conv.enumerate({"val"})
    assert len(enum.frames) == expected + 1
    listed = sum(len(v) for sc in scans.values() for v in sc.values())
    assert listed == 220  # the devkit's val-indoor count
    rep = enum.report["meta"]
    assert rep["listed"] == 220
    assert rep["missing_on_disk"] == 220 - expected
    assert rep["on_disk_not_listed"] == 1


def test_domain_selection_and_missing_root(tmp_path):
    write_diode_tree(tmp_path, {("train", "indoors", 1, 1): 1, ("train", "outdoor", 2, 1): 2}, size=(32, 24))
    assert len(DiodeConverter(tmp_path).enumerate(None).frames) == 1
    assert len(DiodeConverter(tmp_path, domain="outdoor").enumerate(None).frames) == 2
    assert len(DiodeConverter(tmp_path, domain="all").enumerate(None).frames) == 3
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DiodeConverter(tmp_path / "nowhere").enumerate(None)


def test_truncated_png_is_rejected_as_truncated(tmp_path):
    write_diode_tree(tmp_path, {("train", "indoors", 1, 1): 3}, size=SMALL)
    pngs = sorted((tmp_path / "train/indoors/scene_00001/scan_00001").glob("*.png"))
    pngs[0].write_bytes(pngs[0].read_bytes()[:-12])  # pixel data whole, IEND chunk lost
    pngs[1].write_bytes(pngs[1].read_bytes()[: pngs[1].stat().st_size // 2])
    conv = DiodeConverter(tmp_path)
    en = conv.enumerate(None)
    for ref, png in zip(en.frames[:2], pngs):
        with pytest.raises(RejectFrame) as info:
            conv.load(ref)
        assert info.value.code == "truncated" and png.name in info.value.reason
    conv.load(en.frames[2])


def test_unlistable_scan_folder_is_rejected(tmp_path, monkeypatch):
    import os
    write_diode_tree(tmp_path, {("train", "indoors", 1, 1): 2, ("train", "indoors", 1, 2): 2}, size=SMALL)
    hidden = tmp_path / "train/indoors/scene_00001/scan_00002"
    real = os.scandir

    def scandir(path="."):  # chmod 000 would not stop root, so the listing itself fails
        if os.fsdecode(path) == str(hidden):
            raise PermissionError(13, "Permission denied", str(hidden))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    en = DiodeConverter(tmp_path).enumerate(None)
    assert len(en.frames) == 2
    (r,) = en.rejected
    assert r.code == "unreadable" and r.file == "train/indoors/scene_00001/scan_00002"
    assert "Permission denied" in r.reason and r.file in r.reason
