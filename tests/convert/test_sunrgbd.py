"""SUN RGB-D converter: real depth decoding, layout walking, official split, NYU overlap, rejections."""

from __future__ import annotations

import argparse
import pickle
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from vortex_data.fixtures.sunrgbd import (
    ALL_SUBSETS, frame_folder_name, intrinsics_text, SUBSET_CAMERAS, write_allsplit_mat,
    write_demo_sunrgbd, write_depth_png, write_frame_folder, write_sunrgbd_tree,
)
from vortex_data.format.schema import decode_sample, encode_sample, extra_fields
from vortex_data.convert import get_converter
from vortex_data.convert.base import RejectFrame
from vortex_data.convert.sunrgbd import (
    MAX_DEPTH_MM, SunRgbdConverter, parse_intrinsics, read_depth_png, read_split_file,
    rotate_left_3, rotate_right_3,
)

SCALE = 0.2  # synthetic frames at a fifth of each sensor's resolution keep the file fast

# Published for samples/sunrgbd/SUN_depth.png: decoded metres over pixels > 0.
PUBLISHED = {"p1": 1.10, "p50": 2.72, "p99": 8.85, "valid": 0.82}
TOL_M = 0.01       # the published percentiles are given to 10 mm
TOL_FRAC = 0.005   # "82 %" is rounded to a whole percent


def _stats(mm: np.ndarray) -> dict[str, float]:
    v = mm[mm > 0].astype(np.float64) / 1000.0
    p1, p50, p99 = np.percentile(v, [1, 50, 99])
    return {"p1": p1, "p50": p50, "p99": p99, "valid": (mm > 0).mean()}


def _matches_published(s: dict[str, float]) -> bool:
    return all(abs(s[k] - PUBLISHED[k]) <= (TOL_FRAC if k == "valid" else TOL_M) for k in PUBLISHED)


def _load_all(conv: SunRgbdConverter, splits=None):
    en = conv.enumerate(splits)
    loaded, failed = [], []
    for ref in en.frames:
        try:
            loaded.append((ref, conv.load(ref)))
        except RejectFrame as e:
            failed.append((ref, e))
    return en, loaded, failed


# ---------------------------------------------------------------- bit rotation

def test_rotation_is_16_bit_and_inverts():
    v = np.arange(65536, dtype=np.uint16)
    mm = rotate_right_3(v)
    assert mm.dtype == np.uint16
    assert np.array_equal(mm.astype(np.int64), (v.astype(np.int64) >> 3) | ((v.astype(np.int64) & 7) << 13))
    assert np.array_equal(rotate_left_3(mm), v)
    # Promoting before shifting keeps the shifted-out bits: a different, wrong result.
    wide = v.astype(np.int32)
    promoted = (wide >> 3) | (wide << 13)
    assert (promoted != mm).sum() > 60000 and promoted.max() > 65535
    with pytest.raises(TypeError):
        rotate_right_3(wide)


def test_real_depth_png_decodes_to_published_stats(samples_dir):
    stored = read_depth_png(samples_dir / "sunrgbd" / "SUN_depth.png")
    assert stored.shape == (480, 640) and stored.dtype == np.uint16
    assert _matches_published(_stats(rotate_right_3(stored))), _stats(rotate_right_3(stored))
    # A plain 16-bit read (no rotation) must not pass the same check.
    assert not _matches_published(_stats(stored))


# ---------------------------------------------------------------- the real pair in a folder layout

@pytest.fixture
def real_tree(tmp_path, samples_dir) -> Path:
    src = tmp_path / "SUNRGBD"
    frame = src / "kv1" / "b3dodata" / "img_0001"
    for sub in ("image", "depth", "depth_bfx"):
        (frame / sub).mkdir(parents=True)
    shutil.copy(samples_dir / "sunrgbd" / "SUN_color.jpg", frame / "image" / "img_0001.jpg")
    shutil.copy(samples_dir / "sunrgbd" / "SUN_depth.png", frame / "depth" / "img_0001.png")
    # The sample has no filled twin: the raw PNG stands in for it to exercise the filled mode's cap.
    shutil.copy(samples_dir / "sunrgbd" / "SUN_depth.png", frame / "depth_bfx" / "img_0001.png")
    (frame / "intrinsics.txt").write_text("518.857901 0 284.582449 \n0 519.469611 208.736166 \n0 0 1 \n")
    return src


def test_real_pair_raw_mode_invalidates_beyond_8m(real_tree):
    conv = SunRgbdConverter(real_tree, depth="raw")
    en, loaded, failed = _load_all(conv)
    assert not failed and not en.rejected and len(loaded) == 1
    s = loaded[0][1]
    assert s.key == "sunrgbd/train/kv1/b3dodata/img_0001"
    assert s.depth_mm.shape == (480, 640) and s.rgb.shape == (480, 640, 3)
    d = s.depth_mm
    beyond = s.meta["depth_beyond_8m"]
    assert d.max() <= MAX_DEPTH_MM and s.rejected_depth_pixels == beyond
    # Published numbers cover every pixel > 0, the > 8 m ones included: valid + invalidated = 82 %,
    # and p99 = 8.85 m means more than 1 % of the valid pixels lay beyond 8 m.
    assert abs((d > 0).mean() + beyond / d.size - PUBLISHED["valid"]) <= TOL_FRAC
    assert beyond > 0.01 * PUBLISHED["valid"] * d.size
    st = _stats(d)
    assert abs(st["p1"] - PUBLISHED["p1"]) <= TOL_M
    # Dropping the far tail moves the median down, by ~1.3 % of the ranks here: 2.68..2.72 m.
    assert PUBLISHED["p50"] - 0.04 <= st["p50"] <= PUBLISHED["p50"] + TOL_M
    assert s.seg is None
    assert s.intrinsics.fx == pytest.approx(518.857901) and s.intrinsics.cy == pytest.approx(208.736166)
    assert s.meta["sensor"] == "kv1" and s.meta["subset"] == "b3dodata" and s.meta["folder"] == "kv1/b3dodata/img_0001"
    ref_bgr = cv2.imread(str(real_tree / "kv1/b3dodata/img_0001/image/img_0001.jpg"))
    assert np.abs(s.rgb.astype(int) - ref_bgr[..., ::-1].astype(int)).mean() < 1.0  # RGB order, same decode


def test_real_pair_filled_mode_clips_to_8m(real_tree):
    conv = SunRgbdConverter(real_tree, depth="filled")
    _, loaded, failed = _load_all(conv)
    assert not failed
    s = loaded[0][1]
    st = _stats(s.depth_mm)
    # Clipping keeps every pixel valid and leaves p1 and the median where published; p99 is the cap.
    assert abs(st["valid"] - PUBLISHED["valid"]) <= TOL_FRAC
    assert abs(st["p1"] - PUBLISHED["p1"]) <= TOL_M and abs(st["p50"] - PUBLISHED["p50"]) <= TOL_M
    assert s.depth_mm.max() == MAX_DEPTH_MM and st["p99"] == pytest.approx(8.0)
    raw = SunRgbdConverter(real_tree, depth="raw")
    assert s.meta["depth_beyond_8m"] == raw.load(raw.enumerate(None).frames[0]).meta["depth_beyond_8m"] > 0
    assert s.rejected_depth_pixels == 0 and s.meta["source_files"][1].endswith("depth_bfx/img_0001.png")


def test_sample_round_trips_through_schema(real_tree):
    conv = SunRgbdConverter(real_tree)
    s = conv.load(conv.enumerate(None).frames[0])
    out = decode_sample(dict(encode_sample(s)), key=s.key)
    assert np.array_equal(out["depth_mm"], s.depth_mm) and extra_fields(out["meta"])["subset"] == "b3dodata"
    # scene.txt names a kind of room; the scene (never on both sides of a split) is the frame folder
    assert out["meta"]["scene"] == extra_fields(out["meta"])["folder"] and "/b3dodata/" in out["meta"]["scene"]


# ---------------------------------------------------------------- layouts and counts

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    src = tmp_path_factory.mktemp("synth") / "SUNRGBD"
    frames = write_sunrgbd_tree(src, frames_per_subset=2, seed=3, scale=SCALE)
    return src, frames


def test_every_sensor_layout_walked(synth):
    src, frames = synth
    en = SunRgbdConverter(src).enumerate(None)
    expected = sorted(f.folder for f in frames if f.subset != "kv1/NYUdata")
    assert sorted(r.frame_id for r in en.frames) == expected  # fullres/ decoys not taken as frames
    assert not en.rejected
    per = en.report["frames_per_subset"]
    assert set(per) == set(ALL_SUBSETS) - {"kv1/NYUdata"}
    assert all(v == {"train": 2} for v in per.values())
    assert en.report["subsets_missing"] == [] and en.report["folders_not_read"] == []
    nested = [r.frame_id for r in en.frames if r.frame_id.startswith("xtion/sun3ddata/")]
    assert len(nested) == 2 and all(len(f.split("/")) == 5 for f in nested)


def test_nyu_overlap_excluded_and_counted(synth):
    src, frames = synth
    n_nyu = sum(f.subset == "kv1/NYUdata" for f in frames)
    default = SunRgbdConverter(src).enumerate(None)
    assert default.report["excluded_nyu_overlap"] == n_nyu == 2
    assert "NYU Depth V2" in default.report["reason"]
    assert not any(r.frame_id.startswith("kv1/NYUdata") for r in default.frames)
    kept = SunRgbdConverter(src, include_nyu_overlap=True).enumerate(None)
    assert len(kept.frames) == len(default.frames) + n_nyu
    assert "excluded_nyu_overlap" not in kept.report and kept.report["frames_per_subset"]["kv1/NYUdata"] == {"train": 2}


@pytest.mark.parametrize("mode", ["raw", "filled"])
def test_synthetic_frames_convert_exactly(synth, mode):
    src, frames = synth
    truth = {f.folder: f for f in frames}
    conv = SunRgbdConverter(src, depth=mode, include_nyu_overlap=True)
    en, loaded, failed = _load_all(conv)
    assert not failed and len(loaded) == len(frames)
    for ref, s in loaded:
        f = truth[ref.frame_id]
        want = f.raw_mm.copy() if mode == "raw" else f.filled_mm.copy()
        far = want > MAX_DEPTH_MM
        want[far] = 0 if mode == "raw" else MAX_DEPTH_MM
        assert np.array_equal(s.depth_mm, want), ref.frame_id
        assert s.meta["depth_beyond_8m"] == int(far.sum())
        assert s.rgb.shape == (f.camera.height, f.camera.width, 3)
        assert s.intrinsics.fx == pytest.approx(f.camera.fx, rel=1e-5)
        assert s.intrinsics.cx == pytest.approx(f.camera.cx, rel=1e-5)
        assert np.allclose(s.meta["rtilt"], f.rtilt, atol=1e-8)  # from the last extrinsics file
        assert s.meta["sensor"] == f.subset.split("/")[0] and s.meta["subset"] == f.subset.split("/")[1]


def test_full_resolution_per_sensor(tmp_path):
    src = write_demo_sunrgbd(tmp_path, frames_per_subset=1)
    en = SunRgbdConverter(src, split_file=tmp_path / "allsplit.mat").enumerate(None)
    ref = next(r for r in en.frames if r.frame_id.startswith("kv2/kinect2data/"))
    assert SunRgbdConverter(src).load(ref).depth_mm.shape == (530, 730)
    assert Counter(r.split for r in en.frames) == {"train": 4, "test": 5}  # 5 + 5 alternating; NYU (train) left out


# ---------------------------------------------------------------- split file

FORMATS_COUNTS = {
    "kv1/NYUdata": (795, 654), "kv1/b3dodata": (278, 276), "kv2/kinect2data": (1774, 1711),
    "kv2/align_kv2": (150, 149), "realsense/sa": (415, 24), "realsense/shr": (151, 0),
    "realsense/sh": (21, 0), "realsense/lg": (0, 548), "xtion/sun3ddata": (1551, 1539),
    "xtion/xtion_align_data": (150, 149),
}


def test_real_allsplit_parsed(samples_dir):
    split_of = read_split_file(samples_dir / "sunrgbd" / "allsplit.mat")
    assert Counter(split_of.values()) == {"train": 5285, "test": 5050}
    assert not any(k.endswith("/") or "SUNRGBD" in k or k.startswith("/") for k in split_of)
    per = Counter(("/".join(k.split("/")[:2]), s) for k, s in split_of.items())
    for subset, (tr, te) in FORMATS_COUNTS.items():
        assert (per[(subset, "train")], per[(subset, "test")]) == (tr, te), subset


def test_real_allsplit_matches_generated_folders(tmp_path, samples_dir):
    split_file = samples_dir / "sunrgbd" / "allsplit.mat"
    split_of = read_split_file(split_file)
    picked: dict[str, str] = {}
    for folder, split in sorted(split_of.items()):
        subset = "/".join(folder.split("/")[:2])
        if (subset, split) not in {("/".join(p.split("/")[:2]), s) for p, s in picked.items()}:
            picked[folder] = split
    src = tmp_path / "SUNRGBD"
    rng = np.random.default_rng(0)
    for folder in picked:
        write_frame_folder(src, folder, "/".join(folder.split("/")[:2]), rng, scale=0.1)
    stray = "kv2/kinect2data/999999_not_in_the_split"
    write_frame_folder(src, stray, "kv2/kinect2data", rng, scale=0.1)

    en = SunRgbdConverter(src, split_file=split_file).enumerate(None)
    got = {r.frame_id: r.split for r in en.frames}
    assert got == {k: v for k, v in picked.items() if not k.startswith("kv1/NYUdata/")}
    assert len(got) == 2 * len(FORMATS_COUNTS) - 2 - 3  # lg has no train, sh and shr no test; NYU's 2 excluded
    assert [(r.frame, r.code) for r in en.rejected] == [(stray, "not-in-split")]
    assert en.report["excluded_nyu_overlap"] == 2
    nyu_listed = sum(k.startswith("kv1/NYUdata/") for k in split_of)
    assert en.report["split_listed_but_missing"] == 10335 - nyu_listed - len(got)
    test_only = SunRgbdConverter(src, split_file=split_file).enumerate({"test"})
    assert {r.split for r in test_only.frames} == {"test"} and test_only.report["excluded_nyu_overlap"] == 1


def test_synthetic_allsplit_round_trip(tmp_path):
    path = write_allsplit_mat(tmp_path / "allsplit.mat", ["a/b/c", "a/b/d", "x/y/z/w/v"], ["p/q/r", "p/q/s"])
    assert read_split_file(path) == {"a/b/c": "train", "a/b/d": "train", "x/y/z/w/v": "train",
                                     "p/q/r": "test", "p/q/s": "test"}
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="bad.mat"):
        read_split_file(bad)


# ---------------------------------------------------------------- malformed folders

def _break(src: Path, folder: str, how: str) -> None:
    base = src / folder
    image = next((base / "image").glob("*.jpg"))
    depth = next((base / "depth").glob("*.png"))
    if how == "no-depth":
        shutil.rmtree(base / "depth")
    elif how == "no-image":
        shutil.rmtree(base / "image")
    elif how == "garbage-jpeg":
        image.write_bytes(b"this is not a JPEG")
    elif how == "truncated-jpeg":
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    elif how == "jpeg-without-end":  # all scan data, only the end-of-image marker lost
        image.write_bytes(image.read_bytes()[:-2])
    elif how == "size-mismatch":
        mm = rotate_right_3(cv2.imread(str(depth), cv2.IMREAD_UNCHANGED))
        write_depth_png(depth, np.ascontiguousarray(mm[:-2, :]))
    elif how == "no-intrinsics":
        (base / "intrinsics.txt").unlink()
    elif how == "garbled-intrinsics":
        (base / "intrinsics.txt").write_text("fx 0 cx\n0 fy cy\n0 0 1\n")
    elif how == "short-intrinsics":
        (base / "intrinsics.txt").write_text("500 0 320 \n0 500 240 \n")
    elif how == "empty-depth":
        write_depth_png(depth, np.zeros(cv2.imread(str(depth), cv2.IMREAD_UNCHANGED).shape, np.uint16))
    elif how == "garbled-extrinsics":
        (base / "extrinsics" / "20150101000000.txt").write_text("Rtilt unknown\n")
    elif how == "8bit-depth":
        cv2.imwrite(str(depth), np.full((8, 8), 7, np.uint8))
    else:
        raise AssertionError(how)


BREAKS = {  # how -> (code, file the reason must name, found at enumeration?)
    "no-depth": ("missing-file", "depth", True),
    "no-image": ("missing-file", "image", True),
    "no-intrinsics": ("missing-file", "intrinsics.txt", True),
    "garbage-jpeg": ("unreadable", ".jpg", False),
    "truncated-jpeg": ("truncated", ".jpg", False),
    "jpeg-without-end": ("truncated", ".jpg", False),
    "size-mismatch": ("bad-shape", ".png", False),
    "garbled-intrinsics": ("bad-value", "intrinsics.txt", False),
    "short-intrinsics": ("bad-value", "intrinsics.txt", False),
    "empty-depth": ("no-valid-depth", ".png", False),
    "8bit-depth": ("bad-value", ".png", False),
    "garbled-extrinsics": ("bad-value", "extrinsics", False),
}


def test_malformed_folders_rejected_with_reasons(tmp_path):
    src = tmp_path / "SUNRGBD"
    rng = np.random.default_rng(1)
    broken = {}
    for i, how in enumerate(BREAKS):
        folder = f"xtion/xtion_align_data/broken_{i:02d}"
        write_frame_folder(src, folder, "xtion/xtion_align_data", rng, scale=0.1)
        _break(src, folder, how)
        broken[folder] = how
    good = write_sunrgbd_tree(src, 1, seed=5, scale=0.1, subsets=["kv2/align_kv2", "realsense/sa"])
    conv = SunRgbdConverter(src)
    en, loaded, failed = _load_all(conv)

    outcomes = {r.frame: (r.code, r.reason, True) for r in en.rejected}
    outcomes.update({ref.frame_id: (e.code, e.reason, False) for ref, e in failed})
    for folder, how in broken.items():
        code, name, at_enum = BREAKS[how]
        assert folder in outcomes, f"{how}: frame neither loaded nor rejected"
        got_code, reason, got_enum = outcomes[folder]
        assert (got_code, got_enum) == (code, at_enum), (how, reason)
        assert folder in reason and name in reason, (how, reason)  # the reason names the file
    assert sorted(ref.frame_id for ref, _ in loaded) == sorted(f.folder for f in good)
    # Every frame folder found is either loaded or rejected, nothing else.
    total = sum(sum(v.values()) for v in en.report["frames_per_subset"].values())
    assert total == len(broken) + len(good) == len(loaded) + len(failed) + len(en.rejected)


def test_parse_intrinsics_accepts_trailing_whitespace_and_names_file():
    cam = SUBSET_CAMERAS["kv2/kinect2data"]
    k = parse_intrinsics(intrinsics_text(cam) + "\n  \t", "x/intrinsics.txt")
    assert (k.fx, k.fy, k.cx, k.cy) == (529.5, 529.5, 365.0, 265.0)
    with pytest.raises(RejectFrame, match="x/intrinsics.txt"):
        parse_intrinsics("0 0 365 0 529.5 265 0 0 1", "x/intrinsics.txt")  # fx = 0


# ---------------------------------------------------------------- contract plumbing

def test_registry_args_options_and_pickling(synth, tmp_path):
    src, _ = synth
    assert get_converter("sunrgbd") is SunRgbdConverter
    split = write_allsplit_mat(tmp_path / "allsplit.mat", [frame_folder_name("kv2/align_kv2", 0)], [])
    parser = argparse.ArgumentParser()
    SunRgbdConverter.add_arguments(parser.add_argument_group("sunrgbd"))
    args = parser.parse_args(["--depth", "filled", "--include-nyu-overlap", "--split-file", str(split)])
    conv = SunRgbdConverter.from_args(src, args)
    opts = conv.options()
    assert opts["depth"] == "filled" and opts["include_nyu_overlap"] and opts["split_file"] == "allsplit.mat"
    assert len(opts["split_file_sha256"]) == 64
    defaults = SunRgbdConverter.from_args(src, parser.parse_args([])).options()
    assert defaults["depth"] == "raw" and not defaults["include_nyu_overlap"] and defaults["split_file"] is None
    plain = SunRgbdConverter(src)
    ref = plain.enumerate(None).frames[0]
    clone = pickle.loads(pickle.dumps(plain))
    assert np.array_equal(clone.load(pickle.loads(pickle.dumps(ref))).depth_mm, plain.load(ref).depth_mm)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SunRgbdConverter(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="depth mode"):
        SunRgbdConverter(src, depth="smooth")


def _unlistable(monkeypatch, folder: Path) -> None:
    """Make one folder unlistable, as chmod 000 does for anyone but root (tests may run as root)."""
    import os
    real = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)) == folder:
            raise PermissionError(13, "Permission denied", str(folder))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("with_split", [False, True])
def test_unlistable_folder_is_rejected_not_skipped(tmp_path, monkeypatch, with_split):
    src = tmp_path / "SUNRGBD"
    frames = write_sunrgbd_tree(src, 2, seed=7, scale=0.1, subsets=["xtion/sun3ddata", "realsense/sa"])
    # The scene folder above a sun3ddata frame (scene/sub/frame) cannot be listed.
    scene = src / "xtion/sun3ddata/hotel_0"
    hidden = [f.folder for f in frames if (src / f.folder).is_relative_to(scene)]
    assert len(hidden) == 1
    split_file = None
    if with_split:
        split_file = write_allsplit_mat(tmp_path / "allsplit.mat", [f.folder for f in frames], [])
    _unlistable(monkeypatch, scene)
    en = SunRgbdConverter(src, split_file=split_file).enumerate(None)
    assert sorted(f.frame_id for f in en.frames) == sorted(f.folder for f in frames if f.folder not in hidden)
    assert all(r.code == "unreadable" and str(scene) in r.reason and "Permission denied" in r.reason
               for r in en.rejected)
    if with_split:  # each frame the split file puts there is rejected in its split, none is "missing"
        assert sorted((r.frame, r.split) for r in en.rejected) == sorted((h, "train") for h in hidden)
        assert en.report["split_listed_but_missing"] == 0
    else:  # the frames below are unknown: the folder itself is rejected
        assert [(r.frame, r.split) for r in en.rejected] == [(scene.relative_to(src).as_posix(), "train")]


def test_unlistable_sensor_or_image_folder_is_reported(tmp_path, monkeypatch):
    src = tmp_path / "SUNRGBD"
    frames = write_sunrgbd_tree(src, 1, seed=8, scale=0.1, subsets=["kv2/align_kv2", "realsense/sa"])
    image_dir = src / frames[1].folder / "image"
    blocked = {src / "kv2", image_dir}
    import os
    real = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)) in blocked:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    en = SunRgbdConverter(src).enumerate(None)
    assert [f.frame_id for f in en.frames] == [frames[0].folder]
    (r,) = en.rejected
    assert (r.frame, r.code) == (frames[1].folder, "unreadable") and str(image_dir) in r.reason
    assert any(f.startswith("kv2 (cannot be listed") for f in en.report["folders_not_read"])


def test_non_utf8_names_reject_the_frame_folder_or_build(tmp_path):
    import os
    from vortex_data.format.manifest import load_manifest
    from vortex_data.verify import verify
    from vortex_data.convert.shards import BuildConfig, build_shards
    src = tmp_path / "SUNRGBD"
    frames = write_sunrgbd_tree(src, 2, seed=9, scale=0.1, subsets=["realsense/sa"])
    odd_folder = os.fsencode(src / frames[0].folder)
    os.rename(odd_folder, odd_folder + b"\xff")  # the folder is the frame id: rejected
    image = next((src / frames[1].folder / "image").iterdir())
    os.rename(os.fsencode(image), os.fsencode(image).replace(b".jpg", b"\xfe.jpg"))  # only a file: written
    res = build_shards(SunRgbdConverter(src), BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m",
                                                          workers=1, progress=False))
    m = load_manifest(res.manifests[0])
    assert (m.totals["written"], m.totals["rejected"]) == (1, 1)
    assert m.rejected[0]["code"] == "bad-name" and "\\xff" in m.rejected[0]["frame"]
    assert verify(res.manifests[0]).ok and "\\udc" not in res.manifests[0].read_text()
