"""The 6-class navigation taxonomy and the NYU-894 -> NYU-40 -> 6 label mappings.

Classes (``schema.CLASS_NAMES``): 0 floor, 1 wall, 2 ceiling, 3 door, 4 furniture, 5 object;
255 (``schema.IGNORE_INDEX``) means unlabeled. The reasoning behind each NYU-40 assignment is in
``docs/labels.md``. The 894 -> 40 table is the official ``classMapping40.mat``, shipped as
``vortex_data/data/nyu40.json`` (derived by ``tools/derive_nyu_data.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError
from ..format.schema import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

FLOOR, WALL, CEILING, DOOR, FURNITURE, OBJECT = range(NUM_CLASSES)
NYU_RAW_CLASSES = 894
NYU40_CLASSES = 40

# NYU-40 names exactly as spelled in classMapping40.mat ("refridgerator" included). Every name not
# listed here is an object. Names are checked against the shipped table on first use, so a typo
# fails loudly instead of silently turning a class into 'object'.
NYU40_GROUPS: dict[int, tuple[str, ...]] = {
    FLOOR: ("floor", "floor mat"),
    WALL: ("wall", "window", "blinds", "curtain", "whiteboard", "picture", "mirror", "otherstructure"),
    CEILING: ("ceiling",),
    DOOR: ("door",),
    FURNITURE: ("cabinet", "bed", "chair", "sofa", "table", "bookshelf", "counter", "desk", "shelves",
                "dresser", "refridgerator", "night stand", "toilet", "sink", "bathtub", "television",
                "otherfurniture"),
}


class LabelMappingError(InputError):
    """A label mapping (shipped table or user file) that is incomplete or out of range."""


@dataclass(frozen=True)
class Nyu40Table:
    names_40: tuple[str, ...]
    """names_40[k-1] is the name of NYU-40 class k."""
    names_894: tuple[str, ...]
    """names_894[i-1] is the name of raw NYU class i."""
    map_894_to_40: np.ndarray
    """(895,) uint8 lookup table: raw id -> NYU-40 id, with 0 (unlabeled) -> 0."""


@lru_cache(maxsize=1)
def nyu40_table() -> Nyu40Table:
    """The shipped official 894 -> 40 mapping (from classMapping40.mat)."""
    raw = json.loads(resources.files("vortex_data").joinpath("data/nyu40.json").read_text())
    lut = np.zeros(NYU_RAW_CLASSES + 1, np.uint8)
    lut[1:] = np.asarray(raw["map_894_to_40"], np.uint8)
    lut.setflags(write=False)
    return Nyu40Table(tuple(raw["names_40"]), tuple(raw["names_894"]), lut)


def default_nyu40_to_6() -> dict[int, int]:
    """NYU-40 id (1..40) -> 6-class id, the package default."""
    names = nyu40_table().names_40
    by_name = {name: cls for cls, group in NYU40_GROUPS.items() for name in group}
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise LabelMappingError(f"NYU40_GROUPS names {unknown} are not NYU-40 class names")
    return {k + 1: by_name.get(name, OBJECT) for k, name in enumerate(names)}


def _class_id(value: object, where: str) -> int:
    """A 6-class id from an int (0..5, 255) or a class name ('floor', ..., 'ignore')."""
    if isinstance(value, str):
        if value == "ignore":
            return IGNORE_INDEX
        if value not in CLASS_NAMES:
            raise LabelMappingError(f"{where}: unknown class name {value!r}; use one of {CLASS_NAMES} or 'ignore'")
        return CLASS_NAMES.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and (0 <= value < NUM_CLASSES or value == IGNORE_INDEX):
        return value
    raise LabelMappingError(f"{where}: class {value!r} is not 0..{NUM_CLASSES - 1}, {IGNORE_INDEX} or a class name")


def load_nyu40_to_6(path: str | Path) -> dict[int, int]:
    """Read a user's NYU-40 -> 6 mapping from JSON.

    The file is one object whose keys are NYU-40 ids ("1".."40") or NYU-40 names and whose values
    are 6-class ids (0..5, 255) or names ("floor", ..., "object", "ignore"). All 40 classes must be
    given, so a forgotten class cannot silently fall into some default.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LabelMappingError(f"{path}: cannot read label mapping JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LabelMappingError(f"{path}: label mapping must be a JSON object of NYU-40 class -> 6-class")
    names = nyu40_table().names_40
    mapping: dict[int, int] = {}
    for key, value in raw.items():
        k = int(key) if key.isdigit() else (names.index(key) + 1 if key in names else None)
        if k is None or not 1 <= k <= NYU40_CLASSES:
            raise LabelMappingError(f"{path}: key {key!r} is neither an NYU-40 id 1..40 nor an NYU-40 name")
        if k in mapping:
            raise LabelMappingError(f"{path}: NYU-40 class {k} ({names[k - 1]}) is given twice")
        mapping[k] = _class_id(value, f"{path}: class {key!r}")
    missing = [f"{k} ({names[k - 1]})" for k in range(1, NYU40_CLASSES + 1) if k not in mapping]
    if missing:
        raise LabelMappingError(f"{path}: NYU-40 classes missing from the mapping: {', '.join(missing)}")
    return mapping


def nyu40_to_6_lut(mapping: Mapping[int, int] | None = None) -> np.ndarray:
    """(41,) uint8 lookup table NYU-40 id -> 6-class id, with 0 (unlabeled) -> IGNORE_INDEX."""
    mapping = default_nyu40_to_6() if mapping is None else mapping
    lut = np.full(NYU40_CLASSES + 1, IGNORE_INDEX, np.uint8)
    for k in range(1, NYU40_CLASSES + 1):
        if k not in mapping:
            raise LabelMappingError(f"NYU-40 class {k} has no 6-class assignment")
        lut[k] = _class_id(mapping[k], f"NYU-40 class {k}")
    return lut


SUN37_CLASSES = 37
"""SUN RGB-D's 37 segmentation classes (toolbox ``seg37list.mat``) are NYU-40's classes 1..37."""


def sun37_to_6_lut(mapping: Mapping[int, int] | None = None) -> np.ndarray:
    """(38,) uint8 lookup table SUN RGB-D 37-class id -> 6-class id (0 = void -> IGNORE_INDEX).
    The NYU-40 table cut at 37: SUN class k is NYU-40 class k, so both datasets share one mapping."""
    return nyu40_to_6_lut(mapping)[:SUN37_CLASSES + 1].copy()


def nyu894_to_6_lut(mapping: Mapping[int, int] | None = None) -> np.ndarray:
    """(895,) uint8 lookup table raw NYU id -> 6-class id (0 -> IGNORE_INDEX)."""
    return nyu40_to_6_lut(mapping)[nyu40_table().map_894_to_40]


def apply_lut(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map integer labels through ``lut``; a value with no entry is an error, not a wrap-around."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise LabelMappingError(f"labels must be integers, got {labels.dtype}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(lut):
            raise LabelMappingError(f"label values {lo}..{hi} outside the table's 0..{len(lut) - 1}")
    return lut[labels]


def nyu894_to_40(labels: np.ndarray) -> np.ndarray:
    """Raw NYU labels (0 = unlabeled, 1..894) -> NYU-40 ids (0 = unlabeled), uint8."""
    return apply_lut(labels, nyu40_table().map_894_to_40)


def nyu894_to_6(labels: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
    """Raw NYU labels (0..894) -> 6-class uint8 with 255 = unlabeled.

    ``lut`` is a table from :func:`nyu894_to_6_lut` (default mapping when None); pass one built
    once when mapping many frames.
    """
    return apply_lut(labels, nyu894_to_6_lut() if lut is None else lut)
