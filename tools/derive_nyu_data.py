"""Derive the NYU Depth V2 tables shipped in ``vortex_data/data/`` from the official .mat files.

    python tools/derive_nyu_data.py --class-mapping classMapping40.mat --splits splits.mat

``classMapping40.mat`` and ``splits.mat`` are MATLAB v5 files distributed with the NYU Depth V2
toolbox metadata (e.g. the nyuv2-meta-data repository). The package reads the JSON written here
so that converting never needs the network or these files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import scipy.io

DATA = Path(__file__).resolve().parents[1] / "vortex_data" / "data"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cellstr(cells: np.ndarray) -> list[str]:
    return [str(c[0]) for c in cells.ravel()]


def derive_class_mapping(path: Path) -> dict:
    m = scipy.io.loadmat(path)
    map_class = m["mapClass"].ravel().astype(int).tolist()
    names_40 = _cellstr(m["className"])
    names_894 = _cellstr(m["allClassName"])
    if len(map_class) != 894 or len(names_894) != 894 or len(names_40) != 40:
        raise ValueError(f"{path}: expected 894 raw classes and 40 classes, got {len(map_class)}/{len(names_894)}/{len(names_40)}")
    if min(map_class) < 1 or max(map_class) > 40:
        raise ValueError(f"{path}: mapClass values outside 1..40")
    return {
        "source": f"{path.name} (sha256 {_sha256(path)})",
        "note": "map_894_to_40[i-1] is the NYU-40 id of raw NYU class i; 0 (unlabeled) is not listed",
        "names_40": names_40,
        "names_894": names_894,
        "map_894_to_40": map_class,
    }


def derive_splits(path: Path) -> dict:
    m = scipy.io.loadmat(path)
    train = sorted(m["trainNdxs"].ravel().astype(int).tolist())
    test = sorted(m["testNdxs"].ravel().astype(int).tolist())
    if set(train) & set(test) or sorted(train + test) != list(range(1, len(train) + len(test) + 1)):
        raise ValueError(f"{path}: trainNdxs/testNdxs are not a disjoint cover of 1..N")
    return {
        "source": f"{path.name} (sha256 {_sha256(path)})",
        "note": "1-based frame indices into nyu_depth_v2_labeled.mat",
        "train": train,
        "test": test,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--class-mapping", type=Path, required=True, help="classMapping40.mat")
    ap.add_argument("--splits", type=Path, required=True, help="splits.mat")
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in (("nyu40.json", derive_class_mapping(args.class_mapping)),
                        ("nyu_splits.json", derive_splits(args.splits))):
        (args.out / name).write_text(json.dumps(table, separators=(",", ":")) + "\n")
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
