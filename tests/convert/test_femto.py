"""Femto converter: the real k4arecorder MKV, remuxed variants of it, and synthetic frame dumps."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vortex_data.fixtures.femto import demo_calibration, write_demo_femto, write_frame_dump
from vortex_data.convert.registration import register_depth_to_color
from vortex_data.convert import RejectFrame, get_converter
from vortex_data.convert.femto import FemtoConverter
from vortex_data.convert.femto.converter import parse_size
from vortex_data.convert.femto.calib import CalibrationError, folder_calibration, k4a_calibration
from vortex_data.convert.femto.mkv import MkvRecording, read_matroska_attachment
from vortex_data.convert.femto.recording import RecordingError, pair_by_time


@pytest.fixture(scope="module")
def mkv(samples_dir) -> Path:
    return samples_dir / "kinect_mkv" / "recording.mkv"


def remux(src: Path, dst: Path, copies: int = 1, drop: tuple[str, ...] = (), extra_color: bool = False,
          cut_color: bool = False) -> Path:
    """Rewrite the real recording: `copies` captures 33 ms apart whose valid depth is raised by
    the copy index (so each capture is recognisable), without the tracks/attachment in `drop`."""
    src_c = av.open(str(src))
    out = av.open(str(dst), "w", format="matroska", options={"allow_raw_vfw": "1"})
    out.metadata.update(src_c.metadata)
    streams = {}
    for s in src_c.streams:
        title = s.metadata.get("title", s.type)
        if s.type == "attachment":
            if "calibration" not in drop:
                out.add_attachment(s.metadata["filename"], s.metadata["mimetype"], bytes(s.data))
        elif s.type == "video" and title not in drop:
            o = out.add_stream_from_template(s)
            o.metadata.update(s.metadata)
            o.codec_context.codec_tag = s.codec_context.codec_tag
            streams[s.index] = o
    packets = [p for p in src_c.demux() if p.size and p.stream.index in streams]
    for i in range(copies):
        for p in packets:
            data = bytes(p)
            if p.stream.metadata.get("title") == "DEPTH":
                a = np.frombuffer(data, ">u2").copy()
                a[a > 0] += i
                data = a.tobytes()
            elif cut_color:  # the colour JPEG of every capture loses its second half
                data = data[: len(data) // 2]
            q = av.Packet(data)
            q.stream, q.time_base = streams[p.stream.index], p.time_base
            q.pts = q.dts = p.pts + i * 33_333
            q.is_keyframe = True
            out.mux(q)
    if extra_color:  # a colour frame long after the last depth frame: it has no partner
        p = next(p for p in packets if p.stream.metadata.get("title") == "COLOR")
        q = av.Packet(bytes(p))
        q.stream, q.time_base = streams[p.stream.index], p.time_base
        q.pts = q.dts = p.pts + copies * 33_333 + 200_000
        q.is_keyframe = True
        out.mux(q)
    out.close()
    return dst


# ---------------------------------------------------------------- the real recording

def test_real_mkv_depth_facts(mkv):
    conv = FemtoConverter(mkv, register="none")
    en = conv.enumerate(None)
    assert len(en.frames) == 1 and not en.rejected
    s = pickle.loads(pickle.dumps(conv)).load(en.frames[0])
    s.validate()
    d = s.depth_mm
    assert d.shape == (576, 640) and d.dtype == np.uint16
    assert d.min() == 0 and d.max() == 3690
    assert np.median(d[d > 0]) == 1491
    assert (d > 0).mean() == pytest.approx(0.76, abs=0.01)
    assert s.key == "femto/eval/recording/000000"
    assert s.meta["depth_timestamp_us"] == s.meta["color_timestamp_us"] == 463945
    assert s.meta["rgb_registered"] is False
    assert s.intrinsics.fx == pytest.approx(504.6076, abs=1e-3)


def test_little_endian_reading_would_fail_the_facts(mkv):
    """The facts above discriminate byte order: the same bytes read little-endian break them."""
    c = av.open(str(mkv))
    depth = next(s for s in c.streams if "K4A_DEPTH_TRACK" in s.metadata)
    raw = next(bytes(p) for p in c.demux(depth) if p.size)
    wrong = np.frombuffer(raw, "<u2")
    assert wrong.max() != 3690 and np.median(wrong[wrong > 0]) != 1491


def test_real_mkv_colour_and_calibration(mkv, samples_dir):
    rec = MkvRecording(mkv)
    cap = rec.captures()[0]
    data = rec.read(cap)
    assert data.rgb.shape == (720, 1280, 3) and data.rgb.dtype == np.uint8
    assert 40 < data.rgb.mean() < 230
    cal = rec.calibration()
    # K4A mode conversion: depth NFOV unbinned = 1024 native, crop (192, 180), 0-centred.
    assert (cal.depth.width, cal.depth.height) == (640, 576)
    assert cal.depth.cx == pytest.approx(0.5129697918891907 * 1024 - 192 - 0.5, abs=1e-3)
    assert cal.depth.cy == pytest.approx(0.5169235467910767 * 1024 - 180 - 0.5, abs=1e-3)
    assert cal.depth.max_radius == pytest.approx(1.74, abs=1e-3)
    # colour 720p = 4096x3072 binned to 1280x960, cropped by 120 rows at the top.
    assert (cal.color.width, cal.color.height) == (1280, 720)
    assert cal.color.fx == pytest.approx(0.4779651165008545 * 1280, abs=1e-3)
    assert cal.color.cy == pytest.approx(0.5066176056861877 * 960 - 120 - 0.5, abs=1e-3)
    assert cal.t[0] == pytest.approx(-0.0320834, abs=1e-6)
    # k1..k6, p1, p2 reordered into OpenCV order (k1, k2, p1, p2, k3, ...): p1 is parameter 13.
    assert cal.depth.dist[2] == pytest.approx(2.0557534298859537e-05)
    # the attachment is the device calibration shipped beside it
    standalone = json.loads((samples_dir / "kinect_mkv" / "calibration.json").read_text())
    assert k4a_calibration(standalone, "NFOV_UNBINNED", "MJPG_720P", "file") .depth == cal.depth


def test_real_mkv_registered_to_colour(mkv):
    conv = FemtoConverter(mkv)  # default: depth registered into the 1280x720 colour camera
    s = conv.load(conv.enumerate(None).frames[0])
    s.validate()
    assert s.rgb.shape == (720, 1280, 3) and s.depth_mm.shape == (720, 1280)
    assert s.intrinsics.fx == pytest.approx(611.795, abs=1e-2)
    valid = s.depth_mm > 0
    assert 0.45 < valid.mean() < 0.75
    # Warping the registered depth back into the depth camera (inverse extrinsics) reproduces the
    # recorded depth: both directions use one consistent model of both lenses.
    rec = conv.recording()
    cal = rec.calibration()
    raw = rec.read(rec.captures()[0]).depth_mm
    R, t = cal.rotation, cal.translation
    back = register_depth_to_color(s.depth_mm, cal.color, cal.depth, R.T, -R.T @ t).depth_mm.astype(float)
    both = (back > 0) & (raw > 0)
    assert both.sum() > 0.4 * raw.size
    rel = np.abs(back[both] - raw[both]) / raw[both]
    assert np.median(rel) < 0.002 and (rel < 0.02).mean() > 0.97
    assert s.meta["camera"]["distortion_opencv_order"][0] == pytest.approx(0.3301, abs=1e-3)
    small = FemtoConverter(mkv, out_size=(640, 360))
    t = small.load(small.enumerate(None).frames[0])
    assert t.depth_mm.shape == (360, 640) and t.intrinsics.fx == pytest.approx(611.795 / 2, abs=1e-2)


def test_register_depth_mode_on_real_mkv(mkv):
    conv = FemtoConverter(mkv, register="depth")
    s = conv.load(conv.enumerate(None).frames[0])
    assert s.rgb.shape == (576, 640, 3)
    assert 0.5 < s.meta["color_valid_fraction"] < 0.77
    assert (s.rgb[s.depth_mm == 0] == 0).all()


def test_attachment_read_without_pyav(mkv, samples_dir, tmp_path):
    """The EBML fallback for PyAV versions without AttachmentStream.data finds the same bytes."""
    c = av.open(str(mkv))
    via_pyav = bytes(next(s for s in c.streams if s.type == "attachment").data)
    assert read_matroska_attachment(mkv, "calibration.json") == via_pyav
    assert json.loads(via_pyav)["CalibrationInformation"]["Cameras"]
    assert read_matroska_attachment(mkv, "other.json") is None
    nocal = remux(mkv, tmp_path / "nocal.mkv", drop=("calibration",))
    assert read_matroska_attachment(nocal, "calibration.json") is None


# ---------------------------------------------------------------- remuxed multi-capture files

@pytest.fixture(scope="module")
def multi(mkv, tmp_path_factory) -> Path:
    return remux(mkv, tmp_path_factory.mktemp("mkv") / "multi.mkv", copies=5, extra_color=True)


def test_each_capture_loads_its_own_packets(multi):
    conv = FemtoConverter(multi, register="none")
    en = conv.enumerate(None)
    assert [f.frame_id for f in en.frames] == [f"multi/{i:06d}" for i in range(5)]
    assert [r.code for r in en.rejected] == ["unpaired"] and "no depth" in en.rejected[0].reason
    base = None
    for f in [en.frames[3], en.frames[0], en.frames[4], en.frames[1]]:  # out of order: seeks
        s = pickle.loads(pickle.dumps(conv)).load(f)
        i = int(f.frame_id[-1])
        total = int(s.depth_mm.astype(np.int64).sum()) - i * int((s.depth_mm > 0).sum())
        base = total if base is None else base
        assert total == base, f"capture {i} returned another capture's depth"
        assert s.meta["time_s"] == pytest.approx(i * 0.033, abs=0.002)


def test_selection_flags(multi):
    ids = lambda **kw: [f.frame_id[-1] for f in FemtoConverter(multi, **kw).enumerate(None).frames]  # noqa: E731
    assert ids(stride=2) == ["0", "2", "4"]
    assert ids(start=0.05, end=0.11) == ["2", "3"]
    assert ids(max_frames=2) == ["0", "1"]
    assert FemtoConverter(multi).enumerate({"train"}).frames == []


def test_from_args_and_registry(multi):
    cls = get_converter("femto")
    assert cls is FemtoConverter
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser.add_argument_group("femto"))
    args = parser.parse_args(["--register", "depth", "--out-size", "320x288", "--stride", "2", "--min-valid", "0.5"])
    conv = cls.from_args(multi, args)
    assert conv.options()["out_size"] == [320, 288] and conv.register == "depth" and conv.stride == 2
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("640")


def test_min_valid_rejects_with_reason(mkv):
    conv = FemtoConverter(mkv, register="none", min_valid=0.9)
    with pytest.raises(RejectFrame) as e:
        conv.load(conv.enumerate(None).frames[0])
    assert e.value.code == "low-valid-depth" and "76.5%" in e.value.reason


def test_truncated_mkv_is_named(mkv, tmp_path):
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: mkv.stat().st_size * 2 // 3])
    with pytest.raises(RecordingError, match=r"cut\.mkv: truncated"):
        FemtoConverter(cut).enumerate(None)
    stub = tmp_path / "stub.mkv"
    stub.write_bytes(mkv.read_bytes()[:20])
    with pytest.raises(RecordingError, match=r"stub\.mkv"):
        FemtoConverter(stub).enumerate(None)


def test_missing_depth_track_is_named(mkv, tmp_path):
    bad = remux(mkv, tmp_path / "nodepth.mkv", drop=("DEPTH",))
    with pytest.raises(RecordingError, match=r"nodepth\.mkv: no depth track"):
        FemtoConverter(bad).enumerate(None)


def test_missing_calibration_is_named(mkv, tmp_path):
    bad = remux(mkv, tmp_path / "nocal.mkv", drop=("calibration",))
    with pytest.raises(RecordingError, match=r"nocal\.mkv: no calibration\.json attachment"):
        FemtoConverter(bad).enumerate(None)


def test_not_a_recording(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(RecordingError, match="not a Femto recording"):
        FemtoConverter(tmp_path / "x.txt").enumerate(None)
    with pytest.raises(RecordingError, match="frame dump"):
        FemtoConverter(tmp_path).enumerate(None)


# ---------------------------------------------------------------- frame dumps

def test_pairing_is_one_to_one_and_keeps_everything():
    caps = pair_by_time([(0, "d0"), (33_000, "d1"), (100_000, "d2")], [(1_000, "c0"), (30_000, "c1"), (34_000, "c2")], 5_000)
    pairs = {(c.depth_loc, c.color_loc) for c in caps}
    assert pairs == {("d0", "c0"), ("d1", "c2"), ("d2", None), (None, "c1")}
    assert [c.index for c in caps] == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> Path:
    return write_frame_dump(tmp_path_factory.mktemp("dump") / "rec", demo_calibration(), n_frames=2, with_truth=True)


def test_dump_registration_matches_colour_view_truth(dump):
    conv = FemtoConverter(dump)
    en = conv.enumerate(None)
    assert len(en.frames) == 2 and not en.rejected
    for f in en.frames:
        s = conv.load(f)
        s.validate()
        stamp = f.files[0].split("_")[-1].split(".")[0]
        truth = cv2.imread(str(dump / "truth" / f"depth_color_{stamp}.png"), cv2.IMREAD_UNCHANGED).astype(float)
        got = s.depth_mm.astype(float)
        edges = cv2.dilate((cv2.Canny((truth / 20).clip(0, 255).astype(np.uint8), 10, 30) > 0).astype(np.uint8),
                           np.ones((5, 5))).astype(bool)
        m = (got > 0) & (truth > 0) & ~edges
        assert m.mean() > 0.4
        # The truth is itself resampled nearest-neighbour from a pinhole render, so it carries
        # ~0.5 % noise on slanted surfaces; the strict geometric check is test_registration.
        err = (got[m] - truth[m]) / truth[m]
        assert abs(np.median(err)) < 0.001
        assert np.median(np.abs(err)) < 0.003 and np.percentile(np.abs(err), 95) < 0.01


def test_demo_dump_converts(tmp_path):
    root = write_demo_femto(tmp_path / "demo", n_frames=2)
    conv = FemtoConverter(root, register="none")
    en = conv.enumerate(None)
    assert len(en.frames) == 2
    s = conv.load(en.frames[1])
    assert s.meta["time_s"] == pytest.approx(1 / 30, abs=1e-6)
    assert s.key.startswith("femto/eval/demo/")


def test_dump_errors(dump, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dump, broken)
    (broken / "extrinsic_depth_to_color.json").unlink()
    with pytest.raises(RecordingError, match="missing extrinsic_depth_to_color.json"):
        FemtoConverter(broken).enumerate(None)
    bad = tmp_path / "bad"
    shutil.copytree(dump, bad)
    name = sorted((bad / "depth").iterdir())[0]
    cv2.imwrite(str(name), np.zeros((288, 320), np.uint8))  # 8-bit: not millimetres
    cv2.imwrite(str(bad / "color" / "color_nostamp.jpg"), np.zeros((8, 8, 3), np.uint8))
    conv = FemtoConverter(bad)
    en = conv.enumerate(None)
    assert [r.code for r in en.rejected] == ["bad-name"]
    with pytest.raises(RejectFrame, match="16-bit"):
        conv.load(en.frames[0])


# Each naming a frame dump may use: (colour name, depth name) for a capture at `us` microseconds.
DUMP_NAMINGS = {
    "prefix_us": lambda sec, ns: (f"color_{sec * 10**6 + ns // 1000}.jpg", f"depth_{sec * 10**6 + ns // 1000}.png"),
    "plain_us": lambda sec, ns: (f"{sec * 10**6 + ns // 1000}.jpg", f"{sec * 10**6 + ns // 1000}.png"),
    # ROS export: <sec>.<nsec>, nanoseconds zero-padded to 9 digits (the old reader took the last
    # digit run, '000123456', as 123456 us and lost the seconds).
    "sec_nsec": lambda sec, ns: (f"{sec}.{ns:09d}.jpg", f"{sec}.{ns:09d}.png"),
}


@pytest.mark.parametrize("naming", sorted(DUMP_NAMINGS))
def test_dump_timestamps_from_each_naming(dump, tmp_path, naming):
    rec = tmp_path / naming
    shutil.copytree(dump, rec)
    shutil.rmtree(rec / "truth")
    # Captures 1 s + 123 us apart, so seconds and sub-millisecond digits both matter.
    stamps = [(1712345678 + k, 123_456 + k * 123_000) for k in range(2)]
    for sub in ("color", "depth"):
        for old, (sec, ns) in zip(sorted((rec / sub).iterdir()), stamps):
            names = DUMP_NAMINGS[naming](sec, ns)
            old.rename(rec / sub / names[0 if sub == "color" else 1])
    conv = FemtoConverter(rec, pair_tol_ms=1)
    en = conv.enumerate(None)
    assert not en.rejected and len(en.frames) == 2
    want = [sec * 10**6 + ns // 1000 for sec, ns in stamps]
    assert [f.payload[0].depth_us for f in en.frames] == want
    assert [f.payload[0].color_us for f in en.frames] == want
    assert conv.load(en.frames[1]).meta["time_s"] == pytest.approx(1.000123)


def test_real_femto_bolt_calibration_files(samples_dir):
    cal = folder_calibration(samples_dir / "femto_bolt")
    assert cal.color.fx == pytest.approx(2246.03) and cal.color.size == (3840, 2160)
    assert cal.depth.size == (512, 512) and cal.depth.dist[0] == pytest.approx(22.013)
    assert np.linalg.norm(cal.translation) * 1000 == pytest.approx(32.3, abs=0.1)
    np.testing.assert_allclose(cal.rotation @ cal.rotation.T, np.eye(3), atol=1e-9)
    scaled = cal.with_sizes((512, 512), (1280, 720))
    assert scaled.color.fx == pytest.approx(2246.03 / 3)
    with pytest.raises(CalibrationError, match="aspect"):
        cal.with_sizes((512, 512), (640, 480))


# ---------------------------------------------------------------- reliability of frame dumps and options

def test_truncated_colour_jpeg_and_depth_png_are_rejected(dump, tmp_path):
    rec = tmp_path / "rec"
    shutil.copytree(dump, rec)
    colours = sorted((rec / "color").iterdir())
    colours[0].write_bytes(colours[0].read_bytes()[: colours[0].stat().st_size // 2])  # OpenCV fills it grey
    conv = FemtoConverter(rec)
    en = conv.enumerate(None)
    with pytest.raises(RejectFrame) as info:
        conv.load(en.frames[0])
    assert info.value.code == "truncated" and colours[0].name in info.value.reason
    depths = sorted((rec / "depth").iterdir())
    depths[1].write_bytes(depths[1].read_bytes()[:-12])
    with pytest.raises(RejectFrame) as info:
        conv.load(en.frames[1])
    assert info.value.code == "truncated" and depths[1].name in info.value.reason


def test_mjpg_colour_payload_must_be_whole():
    from vortex_data.convert.femto.recording import decode_color
    ok, jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (360, 640, 3), np.uint8))
    assert decode_color(jpg.tobytes(), "MJPG", 640, 360, "rec.mkv capture 0").shape == (360, 640, 3)
    with pytest.raises(ValueError, match=r"rec.mkv capture 0.*truncated JPEG"):
        decode_color(jpg.tobytes()[: jpg.size // 2], "MJPG", 640, 360, "rec.mkv capture 0")


def test_symlink_loops_in_a_dump_are_rejected_not_lost(dump, tmp_path):
    rec = tmp_path / "rec"
    shutil.copytree(dump, rec)
    loop = rec / "color" / "color_5000000.jpg"
    loop.symlink_to(loop.name)  # points at itself: ELOOP
    (rec / "depth" / "depth_5000000.png").symlink_to("depth_missing.png")  # dangling
    en = FemtoConverter(rec).enumerate(None)
    assert len(en.frames) == 2
    got = sorted((r.frame, r.code) for r in en.rejected)
    assert got == [("color/color_5000000.jpg", "unreadable"), ("depth/depth_5000000.png", "unreadable")]
    assert any("Too many levels of symbolic links" in r.reason for r in en.rejected)


@pytest.mark.parametrize("flags, message", [(["--stride", "0"], "--stride must be >= 1"),
                                            (["--pair-tol-ms", "0"], "--pair-tol-ms must be > 0"),
                                            (["--max-frames", "0"], "--max-frames must be >= 1"),
                                            (["--start", "2", "--end", "1"], "--end .* is before --start")])
def test_bad_selection_options_are_errors_not_defaults(dump, flags, message):
    parser = argparse.ArgumentParser()
    FemtoConverter.add_arguments(parser.add_argument_group("femto"))
    with pytest.raises(ValueError, match=message):
        FemtoConverter.from_args(dump, parser.parse_args(flags))


def test_rewritten_recording_rebuilds_its_groups(multi, tmp_path):
    """Every capture of an MKV has the recording as its source file."""
    import os
    from vortex_data.convert.shards import BuildConfig, build_shards
    rec = tmp_path / "multi.mkv"
    shutil.copy(multi, rec)
    cfg = BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m", shard_samples=2, workers=1, progress=False)
    first = build_shards(FemtoConverter(rec, register="none"), cfg)
    assert build_shards(FemtoConverter(rec, register="none"), cfg).groups_reused == first.groups_built == 3
    st = rec.stat()
    os.utime(rec, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = build_shards(FemtoConverter(rec, register="none"), cfg)
    assert (again.groups_built, again.groups_reused) == (3, 0)


def test_truncated_mjpg_in_a_real_mkv_is_rejected(mkv, tmp_path):
    rec = remux(mkv, tmp_path / "cut.mkv", cut_color=True)
    conv = FemtoConverter(rec, register="none")
    (ref,) = conv.enumerate(None).frames
    with pytest.raises(RejectFrame, match=r"cut.mkv capture 0.*truncated JPEG") as info:
        conv.load(ref)
    assert info.value.code == "truncated"


def test_non_utf8_image_names_in_a_dump_build(dump, tmp_path):
    import os
    from vortex_data.format.manifest import load_manifest
    from vortex_data.verify import verify
    from vortex_data.convert.shards import BuildConfig, build_shards
    rec = tmp_path / "rec"
    shutil.copytree(dump, rec)
    colour = sorted((rec / "color").iterdir())[0]
    os.rename(os.fsencode(colour), os.fsencode(colour).replace(b"color_", b"colour\xff_"))
    res = build_shards(FemtoConverter(rec, register="none"),
                       BuildConfig(out_dir=tmp_path / "s", manifest_dir=tmp_path / "m", workers=1, progress=False))
    m = load_manifest(res.manifests[0])
    assert m.totals["written"] == 2 and verify(res.manifests[0]).ok
    assert "\\udc" not in res.manifests[0].read_text()
