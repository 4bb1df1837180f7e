"""Femto bags: Orbbec SDK v2 frame layouts (v2.3.5, v2.4.3+), ordinary ROS 1 / ROS 2 bags, and the
bags that must be refused (SDK v1, unindexed)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from vortex_data.fixtures.femto import (demo_calibration, orbbec_frame_bytes, render_captures, write_orbbec_bag,
                                        write_ros_bag)
from vortex_data.convert.femto import FemtoConverter
from vortex_data.convert.femto.bag import parse_orbbec_frame
from vortex_data.convert.femto.recording import RecordingError

CAL = demo_calibration()


@pytest.fixture(scope="module")
def truth():
    return list(render_captures(CAL, n_frames=2))


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bags")
    return {
        "v2.4.3": write_orbbec_bag(d / "new.bag", CAL, layout="v2.4.3"),
        "v2.3.5": write_orbbec_bag(d / "old.bag", CAL, layout="v2.3.5", color_encoding="rgb8"),
        "ros1": write_ros_bag(d / "ros1.bag", CAL),
        "ros2": write_ros_bag(d / "ros2", CAL, ros2=True),
    }


@pytest.mark.parametrize("layout", ["v2.3.5", "v2.4.3"])
def test_orbbec_layouts_are_told_apart(layout):
    pix = np.arange(12 * 10, dtype="<u2").tobytes()
    f = parse_orbbec_frame(orbbec_frame_bytes(3, 1_234_567, 12, 10, "z16", 24, pix, layout, depth_units=1.0))
    assert f["layout"] == layout and f["pixels"] == pix and f["stamp_us"] == 1_234_567
    with pytest.raises(ValueError, match="matches no known Orbbec layout"):
        parse_orbbec_frame(orbbec_frame_bytes(3, 0, 12, 10, "z16", 26, pix, layout))  # step*height != bytes


@pytest.mark.parametrize("kind", ["v2.4.3", "v2.3.5", "ros1", "ros2"])
def test_bag_round_trip(bags, truth, kind):
    conv = FemtoConverter(bags[kind], register="none")
    en = conv.enumerate(None)
    assert len(en.frames) == 2 and not en.rejected
    cal = conv.calibration()
    params = lambda c: [c.width, c.height, c.fx, c.fy, c.cx, c.cy, *c.dist]  # noqa: E731
    for got, want in ((cal.depth, CAL.depth), (cal.color, CAL.color)):
        np.testing.assert_allclose(params(got), params(want), rtol=1e-6, atol=1e-7)  # the profile holds float32
    np.testing.assert_allclose(cal.rotation, CAL.R, atol=1e-6)
    np.testing.assert_allclose(cal.translation, CAL.t, atol=1e-6)  # the Orbbec profile's mm became metres
    for f, cap in zip(en.frames, truth):
        s = pickle.loads(pickle.dumps(conv)).load(f)
        np.testing.assert_array_equal(s.depth_mm, cap.depth_mm)
        assert s.meta["depth_timestamp_us"] == cap.stamp_us
    reg = FemtoConverter(bags[kind])  # registered into colour: matches the colour-view truth
    s = reg.load(reg.enumerate(None).frames[0])
    got, want = s.depth_mm.astype(float), truth[0].truth_color_mm.astype(float)
    m = (got > 0) & (want > 0)
    assert np.median(np.abs(got[m] - want[m]) / want[m]) < 0.003


def test_rgb8_colour_is_exact(bags, truth):
    conv = FemtoConverter(bags["v2.3.5"], register="none", out_size=(CAL.color.width, CAL.color.height))
    data = conv.recording().read(conv.recording().captures()[0])
    np.testing.assert_array_equal(data.rgb, truth[0].rgb)


def test_topic_override_and_missing_topic(bags):
    conv = FemtoConverter(bags["ros1"], depth_topic="/camera/depth/nothing")
    with pytest.raises(RecordingError, match="no depth topic '/camera/depth/nothing'"):
        conv.enumerate(None)


def test_sdk_v1_bag_rejected(tmp_path):
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS1_NOETIC)
    path = tmp_path / "v1.bag"
    with Writer(path) as w:
        c = w.add_connection("/cam0/color_raw", "sensor_msgs/msg/Image", typestore=ts)
        w.write(c, 1, b"\0" * 64)
    with pytest.raises(RecordingError, match="v1.bag: an Orbbec SDK v1 bag"):
        FemtoConverter(path).enumerate(None)


def test_unindexed_bag_rejected(bags, tmp_path):
    raw = bytearray(bags["v2.4.3"].read_bytes())
    i = raw.find(b"index_pos=") + len(b"index_pos=")
    raw[i:i + 8] = bytes(8)  # what a recorder that crashed before writing its index leaves
    path = tmp_path / "crashed.bag_error"
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordingError, match=r"crashed\.bag_error: .*not indexed.*rosbag reindex"):
        FemtoConverter(path).enumerate(None)


def test_bag_depth_conversion_invalidates_and_counts_bad_values():
    """Float metres and scaled depth units go through schema.depth_to_mm: out-of-range values
    become invalid and are counted (never clipped to 65.535 m); REP 118 NaN/inf are plain holes."""
    import numpy as np

    from vortex_data.convert.femto.bag import _pixels_to_depth_mm

    m = np.array([[2.5, np.nan, np.inf], [-0.5, 70.0, 0.0]], "<f4")
    conv = _pixels_to_depth_mm(m.tobytes(), 3, 2, 12, "32fc1", 1.0, False, "t")
    assert conv.depth_mm.tolist() == [[2500, 0, 0], [0, 0, 0]]
    assert (conv.nonfinite, conv.negative, conv.too_far) == (0, 1, 1)
    raw = np.array([[1000, 40000]], "<u2")
    scaled = _pixels_to_depth_mm(raw.tobytes(), 2, 1, 4, "z16", 2.0, False, "t")
    assert scaled.depth_mm.tolist() == [[2000, 0]] and scaled.too_far == 1
