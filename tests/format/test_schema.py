"""Schema: encodings round-trip exactly, bad samples are refused, keys are webdataset-safe."""

import json

import numpy as np
import pytest

from vortex_data.fixtures.scene import View, random_room, render
from vortex_data.format.geometry import Intrinsics
from vortex_data.format.schema import (IGNORE_INDEX, META_FIELDS, EncodeOptions, Sample, SchemaError, decode_array,
                                       decode_sample, depth_to_mm, encode_sample, extra_fields, resize_sample)
from vortex_data.format.tar_index import make_key


def _sample(seg=True, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    depth_m = rng.uniform(0.3, 60.0, (h, w))
    depth_m[0, :5] = 0.0
    conv = depth_to_mm(depth_m)
    return Sample(key="demo/train/f_0001", rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                  depth_mm=conv.depth_mm, intrinsics=Intrinsics(50.0, 51.0, 31.5, 23.5),
                  seg=rng.choice([0, 1, 2, 3, 4, 5, IGNORE_INDEX], (h, w)).astype(np.uint8) if seg else None)


@pytest.mark.parametrize("codec", ["zst", "png"])
def test_depth_round_trip_exact_to_1mm(codec):
    rng = np.random.default_rng(1)
    depth_m = rng.uniform(0.001, 65.0, (40, 30)).astype(np.float32)
    s = _sample()
    s.depth_mm = depth_to_mm(depth_m).depth_mm
    s.rgb, s.seg = s.rgb[:40, :30], s.seg[:40, :30]
    opts = EncodeOptions(rgb_codec="png", array_codec=codec)
    out = decode_sample(dict(encode_sample(s, opts)), s.key)
    assert out["depth_mm"].dtype == np.uint16
    assert np.abs(out["depth_mm"] / 1000.0 - depth_m).max() <= 0.0005 + 1e-6
    assert np.array_equal(out["rgb"], s.rgb)  # lossless option is exact
    assert np.array_equal(out["seg"], s.seg)


def test_jpeg_rgb_close_and_metadata():
    s = _sample()
    s.rgb = render(random_room(np.random.default_rng(0)), View(50.0, 51.0, 31.5, 23.5, 64, 48))[0]
    out = decode_sample(dict(encode_sample(s)), s.key)
    assert np.abs(out["rgb"].astype(int) - s.rgb).mean() < 3  # quality 95 on a natural-ish image
    assert out["meta"]["intrinsics"] == {"fx": 50.0, "fy": 51.0, "cx": 31.5, "cy": 23.5}
    assert out["meta"]["dataset"] == "demo" and out["meta"]["split"] == "train"
    assert (out["meta"]["width"], out["meta"]["height"]) == (64, 48)


def test_labelless_sample_stores_an_all_ignore_map_and_decodes_without_it():
    s = _sample(seg=False)
    members = dict(encode_sample(s))
    assert set(members) == set(dict(encode_sample(_sample()))) == {"json", "rgb.jpg", "depth.npy.zst", "seg.npy.zst"}
    assert len(members["seg.npy.zst"]) < 100  # an all-255 map compresses to almost nothing
    assert (decode_array(members["seg.npy.zst"], "npy.zst") == IGNORE_INDEX).all()
    members["seg.npy.zst"] = b"not read"  # has_seg false: the loader never decodes it
    out = decode_sample(members, s.key)
    assert out["has_seg"] is False
    assert out["seg"].shape == (48, 64) and (out["seg"] == IGNORE_INDEX).all()


def test_metadata_has_the_same_typed_fields_whatever_the_converter_adds():
    a, b = _sample(), _sample(seg=False)
    a.meta = {"scene": "bedroom_0001", "accel": [0.1, 9.8, 0.2], "sensor": "Kinect"}
    b.meta = {"domain": "indoors", "scan": "scan_00001"}
    b.depth_range_m = (0.6, 350.0)
    ma, mb = (json.loads(dict(encode_sample(x))["json"]) for x in (a, b))
    assert list(ma) == list(mb) == sorted(META_FIELDS)
    assert {k: type(v) for k, v in ma.items()} == {k: type(v) for k, v in mb.items()}
    assert ma["scene"] == "bedroom_0001" and mb["scene"] == "" and ma["key"] == a.key
    assert extra_fields(ma) == {"accel": [0.1, 9.8, 0.2], "sensor": "Kinect"}
    assert extra_fields(mb) == {"domain": "indoors", "scan": "scan_00001", "depth_range_m": [0.6, 350.0]}


def test_version_1_samples_read_as_before():
    """A version-1 sample (``depth.zst``, no seg member when unlabelled, converter fields at the top level)."""
    s = _sample(seg=False)
    members = dict(encode_sample(s))
    del members["seg.npy.zst"]
    members["depth.zst"] = members.pop("depth.npy.zst")
    meta = json.loads(members["json"])
    v1 = {**{k: v for k, v in meta.items() if k not in ("extra", "key", "scene")}, "schema_version": 1,
          "sensor": "Kinect"}
    members["json"] = json.dumps(v1).encode()
    out = decode_sample(members, s.key)
    assert not out["has_seg"] and (out["seg"] == IGNORE_INDEX).all()
    assert np.array_equal(out["depth_mm"], s.depth_mm)
    assert extra_fields(out["meta"]) == {"sensor": "Kinect"}
    members["json"] = json.dumps({**v1, "schema_version": 3}).encode()
    with pytest.raises(SchemaError, match="schema version 3.*rebuild"):
        decode_sample(members, s.key)


def test_invalid_depth_values_are_zeroed_and_counted():
    d = np.array([[1.0, np.nan, np.inf], [-0.5, 70.0, 0.0]])
    conv = depth_to_mm(d)
    assert conv.depth_mm.tolist() == [[1000, 0, 0], [0, 0, 0]]
    assert (conv.nonfinite, conv.negative, conv.too_far) == (2, 1, 1)
    masked = depth_to_mm(d, valid=np.array([[True, False, False], [True, True, True]]))
    assert (masked.nonfinite, masked.negative, masked.too_far) == (0, 1, 1)


def test_bad_fields_are_refused_naming_the_key():
    s = _sample()
    s.seg[0, 0] = 7
    with pytest.raises(SchemaError, match="f_0001.*outside"):
        s.validate()
    s = _sample()
    s.depth_mm = s.depth_mm.astype(np.float32)
    with pytest.raises(SchemaError, match="depth_mm"):
        s.validate()


def test_corrupt_member_names_the_sample():
    s = _sample()
    members = dict(encode_sample(s))
    members["depth.npy.zst"] = members["depth.npy.zst"][:20]
    with pytest.raises(SchemaError, match="f_0001"):
        decode_sample(members, s.key)


def test_keys_are_webdataset_safe():
    assert make_key("sunrgbd", "train", "kv1/b3dodata/img.0063") == "sunrgbd/train/kv1/b3dodata/img_0063"
    assert make_key("nyu", "val", "0001") == "nyu/val/0001"


def test_resize_uses_nearest_for_depth_and_scales_intrinsics():
    s = _sample(h=96, w=128)
    r = resize_sample(s, 48)
    assert (r.height, r.width) == (48, 64)
    assert set(np.unique(r.depth_mm)) <= set(np.unique(s.depth_mm))  # never blended
    assert set(np.unique(r.seg)) <= set(np.unique(s.seg))
    assert r.intrinsics.fx == pytest.approx(25.0) and r.intrinsics.cx == pytest.approx((31.5 + 0.5) / 2 - 0.5)
    assert r.meta["original_size"] == [128, 96]


def test_member_names_split_like_webdataset():
    from vortex_data.format.tar_index import split_member
    assert split_member("sunrgbd/train/kv1/b3dodata/img_0063.depth.zst") == ("sunrgbd/train/kv1/b3dodata/img_0063", "depth.zst")
    assert split_member("k.json") == ("k", "json")


def test_metadata_without_its_size_or_intrinsics_is_named():
    import json

    from vortex_data.format.schema import SCHEMA_VERSION, SchemaError, read_meta

    meta = {"schema_version": SCHEMA_VERSION, "height": 4, "width": 6}
    with pytest.raises(SchemaError, match=r"sample 'nyu/train/x': metadata lacks 'intrinsics'"):
        read_meta({"json": json.dumps(meta).encode()}, "nyu/train/x")
