"""The 6-class taxonomy and the NYU-894 -> NYU-40 -> 6 mapping, checked against the real classMapping40.mat."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from vortex_data.convert import labels
from vortex_data.convert.labels import (LabelMappingError, default_nyu40_to_6, load_nyu40_to_6, nyu40_table,
                                        nyu40_to_6_lut, nyu894_to_6, nyu894_to_6_lut, nyu894_to_40)
from vortex_data.format.schema import CLASS_NAMES, IGNORE_INDEX

# The default NYU-40 -> 6 assignment as the specification states it, written out independently of
# labels.NYU40_GROUPS so a slip in either is caught.
SPEC = {
    "floor": ["floor", "floor mat"],
    "wall": ["wall", "window", "blinds", "curtain", "whiteboard", "picture", "mirror", "otherstructure"],
    "ceiling": ["ceiling"],
    "door": ["door"],
    "furniture": ["cabinet", "bed", "chair", "sofa", "table", "bookshelf", "counter", "desk", "shelves", "dresser",
                  "refridgerator", "night stand", "toilet", "sink", "bathtub", "television", "otherfurniture"],
}


@pytest.fixture(scope="module")
def real_mapping(samples_dir):
    return scipy.io.loadmat(samples_dir / "nyu" / "classMapping40.mat")


def spec_class(name40: str) -> int:
    for cls, names in SPEC.items():
        if name40 in names:
            return CLASS_NAMES.index(cls)
    return CLASS_NAMES.index("object")


def test_shipped_894_to_40_equals_real_class_mapping(real_mapping):
    expected = np.concatenate([[0], real_mapping["mapClass"].ravel()])
    got = nyu894_to_40(np.arange(895, dtype=np.uint16))
    np.testing.assert_array_equal(got, expected)
    assert list(nyu40_table().names_40) == [str(c[0]) for c in real_mapping["className"].ravel()]
    assert list(nyu40_table().names_894) == [str(c[0]) for c in real_mapping["allClassName"].ravel()]


def test_894_to_6_follows_the_spec_for_every_raw_class(real_mapping):
    names40 = [str(c[0]) for c in real_mapping["className"].ravel()]
    map_class = real_mapping["mapClass"].ravel()
    expected = np.array([IGNORE_INDEX] + [spec_class(names40[k - 1]) for k in map_class], np.uint8)
    np.testing.assert_array_equal(nyu894_to_6(np.arange(895, dtype=np.uint16)), expected)


def test_known_raw_classes(real_mapping):
    raw_names = [str(c[0]) for c in real_mapping["allClassName"].ravel()]
    raw = np.array([[0, raw_names.index("floor") + 1, raw_names.index("wall") + 1],
                    [raw_names.index("ceiling") + 1, raw_names.index("door") + 1, raw_names.index("chair") + 1],
                    [raw_names.index("book") + 1, raw_names.index("mirror") + 1, raw_names.index("person") + 1]],
                   np.uint16)
    np.testing.assert_array_equal(nyu894_to_6(raw), [[255, 0, 1], [2, 3, 4], [5, 1, 5]])


def test_every_class_reachable_and_groups_are_real_names():
    mapping = default_nyu40_to_6()
    assert sorted(mapping) == list(range(1, 41))
    assert set(mapping.values()) == set(range(6))
    assert {n for g in labels.NYU40_GROUPS.values() for n in g} <= set(nyu40_table().names_40)


def test_out_of_range_labels_are_an_error():
    with pytest.raises(LabelMappingError, match="895"):
        nyu894_to_6(np.array([[1, 895]], np.uint16))
    with pytest.raises(LabelMappingError, match="integers"):
        nyu894_to_6(np.array([1.0]))


def test_user_mapping_file_by_id_and_name(tmp_path):
    mapping = {str(k): "object" for k in range(1, 41)}
    mapping.pop("20")
    mapping["floor mat"] = "ignore"  # NYU-40 class 20, given by name
    mapping["1"] = 1
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    loaded = load_nyu40_to_6(path)
    lut = nyu40_to_6_lut(loaded)
    assert lut[20] == IGNORE_INDEX and lut[1] == 1 and lut[2] == 5 and lut[0] == IGNORE_INDEX
    raw_floor = nyu40_table().names_894.index("floor") + 1
    assert nyu894_to_6(np.array([raw_floor]), nyu894_to_6_lut(loaded))[0] == 5


@pytest.mark.parametrize("content, message", [
    ({str(k): 5 for k in range(1, 40)}, "missing.*40 \\(otherprop\\)"),
    ({**{str(k): 5 for k in range(1, 41)}, "sofa": 4}, "given twice"),
    ({**{str(k): 5 for k in range(1, 41)}, "41": 4}, "'41'"),
    ({**{str(k): 5 for k in range(2, 41)}, "1": 7}, "class 7"),
    ({**{str(k): 5 for k in range(2, 41)}, "1": "stairs"}, "'stairs'"),
])
def test_bad_user_mapping_names_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(LabelMappingError, match=message) as info:
        load_nyu40_to_6(path)
    assert str(path) in str(info.value)
