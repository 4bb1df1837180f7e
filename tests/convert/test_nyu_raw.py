"""NYU raw captures: dumps named and encoded as the distribution is, rendered from a known scene
through the inverse of the toolbox's model, must come back as the depth the RGB camera sees."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vortex_data.convert.base import RejectFrame
from vortex_data.convert.nyu.camera import DEPTH_CAMERA, R_DEPTH_TO_RGB, RGB_CAMERA, T_DEPTH_TO_RGB
from vortex_data.convert.nyu.raw import NyuRawConverter, nearest, parse_name, read_raw_depth
from vortex_data.convert.registration import register_depth_to_color, scatter_min
from vortex_data.convert.rig_warp import DepthToColorWarp
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.errors import InputError
from vortex_data.fixtures.nyu_raw import write_raw_scene
from vortex_data.format.manifest import load_manifest

SCENE = "fixture_room_0001a"


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    """4 depth frames: 0 and 3 synchronised, 1's RGB missing, 2's RGB stamped 70 ms late."""
    root = tmp_path_factory.mktemp("nyu-raw")
    frames = write_raw_scene(root / SCENE, n_frames=4, seed=0, missing_rgb=1, late_rgb=2)
    return root, {f.depth_name: f for f in frames}


def depth_edges(mm: np.ndarray, jump: float = 0.10) -> np.ndarray:
    """Pixels on either side of a jump of more than ``jump`` (relative) between valid neighbours."""
    m = mm.astype(np.float64)
    out = np.zeros(m.shape, bool)
    for axis in (0, 1):
        a, b = np.moveaxis(m, axis, 0)[1:], np.moveaxis(m, axis, 0)[:-1]
        j = (a > 0) & (b > 0) & (np.abs(a - b) > jump * np.minimum(a, b))
        np.moveaxis(out, axis, 0)[1:] |= j
        np.moveaxis(out, axis, 0)[:-1] |= j
    return out


def grow(mask: np.ndarray, px: int = 1) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


def test_projected_depth_matches_the_rendered_truth_in_the_rgb_frame(raw_root):
    root, truth = raw_root
    conv = NyuRawConverter(root)
    refs = conv.enumerate(None).frames
    assert len(refs) == 2
    for ref in refs:
        s = conv.load(ref)
        t = truth[ref.files[0].split("/")[-1]]
        out, gt = s.depth_mm.astype(np.float64) / 1000, t.truth_mm.astype(np.float64) / 1000
        valid = (out > 0) & (gt > 0)
        close = np.abs(out - gt) <= np.maximum(0.02 * gt, 0.01)
        assert close[valid].mean() >= 0.95, f"{ref.frame_id}: {close[valid].mean():.3f} of valid pixels within 2 %"
        # The depth camera sees most of what the RGB camera sees inside the toolbox's projection border.
        crop = (slice(44, 471), slice(40, 601))
        assert valid[crop].mean() > 0.5
        # Depth edges on the RGB frame's edges: every jump in the output lies within 1 px of a jump
        # of the truth, and the truth's jumps where there is depth are found in the output.
        e_out, e_gt = depth_edges(s.depth_mm), depth_edges(t.truth_mm)
        assert e_out.sum() > 50 and (e_out & ~grow(e_gt)).sum() <= 0.02 * e_out.sum()
        seen = e_gt & grow(s.depth_mm > 0, 0) & ~grow(s.depth_mm == 0, 2)
        assert (seen & ~grow(e_out)).sum() <= 0.05 * seen.sum()
        # The RGB is undistorted into the same ideal camera (render noise alone differs by ~2 levels;
        # the distorted image differs by about twice that).
        inner = (slice(40, -40), slice(40, -40))
        assert np.abs(s.rgb.astype(int) - t.truth_rgb.astype(int))[inner].mean() < 3.0
        assert s.intrinsics == RGB_CAMERA.intrinsics()
        assert s.meta["scene"] == SCENE and s.meta["scene_type"] == "fixture_room"
        assert len(s.meta["accel"]) == 4 and s.meta["accel"][1] == 819.0  # 1 g on y, as written


def test_pairs_beyond_max_dt_are_rejected_with_reasons_and_counts_add_up(raw_root):
    root, _ = raw_root
    enum = NyuRawConverter(root).enumerate(None)
    codes = sorted(r.code for r in enum.rejected)
    assert codes == ["unsynchronised", "unsynchronised"]
    reasons = " ".join(r.reason for r in enum.rejected)
    assert "70.0 ms away, more than --max-dt 0.05 s" in reasons and "r-" in reasons
    rep = enum.report
    assert rep["depth_frames"] == 4 == rep["synchronised"] + rep["rejected_frames"] == len(enum.frames) + len(enum.rejected)
    assert rep["index_mismatches"][SCENE]["listed_missing"] == 1  # INDEX.txt lists the RGB the disk lacks
    # A looser limit takes the late frame (70 ms) but not the one whose RGB is missing (~100 ms).
    loose = NyuRawConverter(root, max_dt=0.08).enumerate(None)
    assert len(loose.frames) == 3 and [r.code for r in loose.rejected] == ["unsynchronised"]
    every = NyuRawConverter(root, max_dt=0.08, every=2).enumerate(None)
    assert len(every.frames) == 2 and every.report["thinned_by_every"] == 1
    assert every.report["kept"] + every.report["thinned_by_every"] == every.report["synchronised"] == 3


def test_a_build_writes_or_rejects_every_depth_frame(raw_root, tmp_path):
    root, _ = raw_root
    res = build_shards(NyuRawConverter(root), BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m",
                                                          workers=1, progress=False))
    m = load_manifest(res.manifests[0])
    assert res.manifests[0].name == "nyu-raw-train.json"
    assert m.totals["written"] == 2 and m.totals["rejected"] == 2 and m.totals["input_frames"] == 4


def test_the_command_line_takes_the_sync_options(raw_root, tmp_path):
    from vortex_data.cli import main

    root, _ = raw_root
    assert main(["build-shards", "--dataset", "nyu-raw", "--src", str(root), "--out", str(tmp_path / "s"),
                 "--manifests", str(tmp_path / "m"), "--workers", "1", "--no-progress",
                 "--max-dt", "0.08", "--every", "2", "--allow-eval-scenes"]) == 0
    m = load_manifest(tmp_path / "m" / "nyu-raw-train.json")
    assert m.report["synchronised"] == 3 and m.report["kept"] == m.totals["written"] == 2
    assert m.converter["options"]["max_dt_s"] == 0.08 and m.converter["options"]["every"] == 2
    assert m.converter["options"]["eval_scenes"]["allowed"]


def test_the_command_line_refuses_a_build_that_names_no_evaluation_rooms(raw_root, tmp_path, capsys):
    from vortex_data.cli import main

    root, _ = raw_root
    assert main(["build-shards", "--dataset", "nyu-raw", "--src", str(root), "--out", str(tmp_path / "s"),
                 "--manifests", str(tmp_path / "m"), "--workers", "1", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "--labelled" in err and "--exclude-scenes" in err and "--allow-eval-scenes" in err
    assert not (tmp_path / "m" / "nyu-raw-train.json").exists()


def test_the_pgm_words_are_byte_swapped_and_a_standard_pgm_is_refused(raw_root, tmp_path):
    root, _ = raw_root
    name = sorted(p.name for p in (root / SCENE).glob("d-*.pgm"))[0]
    data = (root / SCENE / name).read_bytes()
    assert data.startswith(b"P5 640 480 65535\n")
    raw = read_raw_depth(root / SCENE / name, name)
    # The file holds little-endian words: reading the body that way gives what the reader returns.
    np.testing.assert_array_equal(raw, np.frombuffer(data[17:], "<u2").reshape(480, 640))
    assert raw.max() == 2047 and 600 < np.median(raw) < 1092  # 11-bit disparities with no-return pixels
    standard = tmp_path / name
    standard.write_bytes(b"P5 640 480 65535\n" + raw.astype(">u2").tobytes())  # as a PGM writer would store them
    with pytest.raises(RejectFrame, match="not byte-swapped as in the NYU dumps"):
        read_raw_depth(standard, name)
    standard.write_bytes(data[: len(data) // 2])  # a dump cut short
    with pytest.raises(RejectFrame, match="not a decodable image") as e:
        read_raw_depth(standard, name)
    assert e.value.code == "unreadable"


def test_names_parse_as_fakenect_writes_them_and_sync_breaks_ties_like_the_toolbox():
    kind, f = parse_name("d-1315411562.623407-1427426385.pgm")
    assert kind == "d" and f.time_us == 1315411562_623407 and f.device == 1427426385
    assert parse_name("r-1315411562.623407-1.pgm") is None and parse_name("INDEX.txt") is None
    idx, dt = nearest(np.array([0, 100, 200]), np.array([50, 49, 151, 900]))
    assert idx.tolist() == [1, 0, 2, 2] and dt.tolist() == [50, 49, 49, 700]


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        NyuRawConverter(tmp_path / "absent").enumerate(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no scene folders"):
        NyuRawConverter(tmp_path / "empty").enumerate(None)
    with pytest.raises(InputError, match="--every"):
        NyuRawConverter(tmp_path, every=0)


def test_the_precomputed_warp_is_the_registration_it_stands_for():
    rng = np.random.default_rng(0)
    depth = np.repeat(np.repeat(rng.integers(800, 6000, (24, 32)), 20, 0), 20, 1).astype(np.uint16)
    depth[rng.random(depth.shape) < 0.1] = 0
    fast = DepthToColorWarp(DEPTH_CAMERA, RGB_CAMERA, R_DEPTH_TO_RGB, T_DEPTH_TO_RGB)(depth)
    ref = register_depth_to_color(depth, DEPTH_CAMERA, RGB_CAMERA, R_DEPTH_TO_RGB, T_DEPTH_TO_RGB, splat=1,
                                  undistort=True).depth_mm
    assert (fast > 0).mean() > 0.6 and (fast != ref).mean() < 1e-3  # float32 may round a border point the other way


def test_depths_beyond_the_range_are_projected_as_at_its_far_end():
    """The toolbox caps depth at 10 m before projecting; the warp's depth range is that cap."""
    warp = DepthToColorWarp(DEPTH_CAMERA, RGB_CAMERA, R_DEPTH_TO_RGB, T_DEPTH_TO_RGB, z_range=(0.7, 10.0))
    valid = np.ones((480, 640), np.uint8)
    far, at_cap = (warp.from_metres(np.full((480, 640), z, np.float32), valid) for z in (25.0, 10.0))
    np.testing.assert_array_equal(far, at_cap)
    assert (far > 0).mean() > 0.6 and np.median(far[far > 0]) == pytest.approx(10000, abs=20)
    valid[:, :320] = 0  # invalid pixels reach no output pixel
    half = warp.from_metres(np.full((480, 640), 2.0, np.float32), valid)
    assert half[:, :250].max() == 0 and (half[:, 330:] > 0).mean() > 0.8
    with pytest.raises(InputError, match="behind the colour camera"):
        DepthToColorWarp(DEPTH_CAMERA, RGB_CAMERA, R_DEPTH_TO_RGB, T_DEPTH_TO_RGB, z_range=(-1.0, 10.0))


def test_scatter_min_keeps_the_nearest_depth_per_pixel():
    rng = np.random.default_rng(1)
    pix = rng.integers(0, 50, 5000)
    z = rng.integers(1, 65535, 5000).astype(np.uint16)
    want = np.zeros(60, np.uint16)
    for p in range(50):
        want[p] = z[pix == p].min()
    np.testing.assert_array_equal(scatter_min(pix, z, 60), want)  # ~100 per pixel
    np.testing.assert_array_equal(scatter_min(pix[:40], z[:40], 60)[:50][np.unique(pix[:40])],
                                  [z[:40][pix[:40] == p].min() for p in np.unique(pix[:40])])
    # 65535 stands for no depth: it loses to any other and leaves a pixel empty on its own
    np.testing.assert_array_equal(scatter_min(np.array([3, 3, 7]), np.array([65535, 900, 65535]), 10),
                                  [0, 0, 0, 900, 0, 0, 0, 0, 0, 0])


def test_real_raw_frames_convert_when_present(samples_dir):
    raw = samples_dir / "nyu_raw"
    if not any(raw.glob("*/d-*.pgm")):
        pytest.skip(f"no real NYU raw scene folders under {raw}")
    conv = NyuRawConverter(raw)
    refs = conv.enumerate(None).frames
    assert refs
    s = conv.load(refs[0])
    d = s.depth_mm[s.depth_mm > 0]
    assert d.size > 0.3 * s.depth_mm.size and 500 < np.median(d) < 10000


def test_one_scene_folder_as_src_and_evaluation_rooms_left_out(raw_root, tmp_path):
    root, _ = raw_root
    whole = NyuRawConverter(root).enumerate(None)
    one = NyuRawConverter(root / SCENE)
    assert [f.frame_id for f in one.enumerate(None).frames] == [f.frame_id for f in whole.frames]
    assert one.source_root() == root

    from vortex_data.convert.nyu import eval_scenes

    listed = tmp_path / "eval_scenes.txt"
    listed.write_text(f"# evaluation rooms\n{SCENE}\n")
    enum = NyuRawConverter(root, eval_scenes=eval_scenes.from_sources(exclude_file=listed)).enumerate(None)
    assert not enum.frames and {r.code for r in enum.rejected} >= {eval_scenes.REJECT_CODE}
    excluded = [r for r in enum.rejected if r.code == eval_scenes.REJECT_CODE]
    assert len(excluded) == enum.report["kept"] == enum.report["eval_scenes"]["excluded"] == len(whole.frames)
    assert len(enum.rejected) == len(whole.rejected) + len(excluded)  # counts add up
    assert "evaluation room" in excluded[0].reason


