"""NYU Depth V2 labels -> the 6-class taxonomy, through the standard NYU-40 mapping.

The labeled file stores raw class ids 1..894 (0 = unlabeled). ``classMapping40.mat`` (Gupta et al.,
distributed with the NYU-40 benchmarks) maps each raw id to one of 40 classes; this module maps
those 40 *by name* onto floor / wall / ceiling / door / furniture / object, so a mapping file
with a different class order is still read correctly and one with unknown names is refused.

The grouping follows NYU's own super-classes (``mapToNYUSuperClass``: ground, structure,
furniture, prop) with three deliberate exceptions: door and ceiling get their own classes, a
floor mat lies on the floor so it is floor, and a counter is furniture (NYU calls it structure).
Flat things hung on walls follow NYU: window, blinds, curtains and whiteboard are structure
(wall); picture and mirror are props (object).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from ..fixtures.scene import CEILING, DOOR, FLOOR, FURNITURE, OBJECT, WALL
from ..schema import IGNORE_INDEX

NUM_RAW_CLASSES = 894

NYU40_TO_TAXONOMY: dict[str, int] = {
    "wall": WALL, "floor": FLOOR, "cabinet": FURNITURE, "bed": FURNITURE, "chair": FURNITURE,
    "sofa": FURNITURE, "table": FURNITURE, "door": DOOR, "window": WALL, "bookshelf": FURNITURE,
    "picture": OBJECT, "counter": FURNITURE, "blinds": WALL, "desk": FURNITURE, "shelves": FURNITURE,
    "curtain": WALL, "dresser": FURNITURE, "pillow": OBJECT, "mirror": OBJECT, "floor mat": FLOOR,
    "clothes": OBJECT, "ceiling": CEILING, "books": OBJECT, "refridgerator": FURNITURE,
    "television": OBJECT, "paper": OBJECT, "towel": OBJECT, "shower curtain": WALL, "box": OBJECT,
    "whiteboard": WALL, "person": OBJECT, "night stand": FURNITURE, "toilet": FURNITURE,
    "sink": OBJECT, "lamp": OBJECT, "bathtub": FURNITURE, "bag": OBJECT, "otherstructure": WALL,
    "otherfurniture": FURNITURE, "otherprop": OBJECT,
}
"""NYU-40 class name (as spelled in classMapping40.mat, 'refridgerator' included) -> taxonomy id."""


class ClassMappingError(ValueError):
    """classMapping40.mat is missing, malformed, or names classes this module does not know."""


def _cell_strings(cell: np.ndarray) -> list[str]:
    """A MATLAB v5 cell array of strings, as scipy loads it, -> Python strings."""
    return [str(np.asarray(x).ravel()[0]) if np.asarray(x).size else "" for x in np.asarray(cell).ravel()]


def nyu40_lut(map_class: np.ndarray, class_names: list[str], source: str = "classMapping40.mat") -> np.ndarray:
    """Lookup table indexed by raw NYU id (0..894) giving the taxonomy id, IGNORE_INDEX for 0."""
    map_class = np.asarray(map_class).ravel()
    if map_class.shape != (NUM_RAW_CLASSES,):
        raise ClassMappingError(f"{source}: mapClass has {map_class.size} entries, expected {NUM_RAW_CLASSES}")
    if len(class_names) != 40:
        raise ClassMappingError(f"{source}: className has {len(class_names)} names, expected 40")
    unknown = [n for n in class_names if n not in NYU40_TO_TAXONOMY]
    if unknown:
        raise ClassMappingError(f"{source}: unknown NYU-40 class names {unknown[:5]}")
    if map_class.min() < 1 or map_class.max() > 40:
        raise ClassMappingError(f"{source}: mapClass values span {map_class.min()}..{map_class.max()}, expected 1..40")
    by_nyu40 = np.array([NYU40_TO_TAXONOMY[n] for n in class_names], np.uint8)
    lut = np.empty(NUM_RAW_CLASSES + 1, np.uint8)
    lut[0] = IGNORE_INDEX
    lut[1:] = by_nyu40[map_class.astype(np.int64) - 1]
    return lut


def load_nyu40_lut(path: Path) -> np.ndarray:
    """Read classMapping40.mat (MATLAB v5) and build the raw-id -> taxonomy lookup table."""
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise ClassMappingError(f"{path}: class mapping file not found (needed to map NYU labels)") from None
    except (ValueError, OSError, NotImplementedError) as e:
        raise ClassMappingError(f"{path}: not a readable MATLAB v5 file ({e})") from None
    for key in ("mapClass", "className"):
        if key not in mat:
            raise ClassMappingError(f"{path}: no '{key}' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    return nyu40_lut(mat["mapClass"], _cell_strings(mat["className"]), source=str(path))


def map_labels(raw: np.ndarray, lut: np.ndarray, source: str) -> np.ndarray:
    """Raw NYU label map (ids 0..894) -> taxonomy map; an id outside the table is an error."""
    if raw.size == 0:
        return raw.astype(np.uint8)
    low, top = int(raw.min()), int(raw.max())
    if low < 0 or top >= lut.size:
        raise ValueError(f"{source}: label ids span {low}..{top}, expected 0..{lut.size - 1}")
    return lut[raw]
