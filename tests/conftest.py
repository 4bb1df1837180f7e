"""Shared test fixtures.

Real sample files live outside the repo (never committed): `../shared/samples` beside the
checkout, or wherever VORTEX_DATA_SAMPLES points. Tests that need them skip cleanly when absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_samples() -> Path | None:
    env = os.environ.get("VORTEX_DATA_SAMPLES")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "samples"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    path = find_samples()
    if path is None:
        pytest.skip("real sample files not present (../shared/samples or $VORTEX_DATA_SAMPLES)")
    return path


@pytest.fixture(scope="session")
def nyu_photos(samples_dir: Path) -> Path:
    """The folder of real NYU frames (rgb_N.jpg + sync_depth_N.png) the real-photo benchmark set is made from."""
    nyu = samples_dir / "nyu"
    if not any(nyu.rglob("rgb_*.jpg")):
        pytest.skip(f"no real NYU frames (rgb_*.jpg) under {nyu}")
    return nyu


@pytest.fixture(scope="session")
def small_nyu_set(tmp_path_factory) -> Path:
    """A clean built set: 8 NYU-layout samples in two shards of 4 (shards/ and manifests/ under
    the returned folder). Tests that damage or serve it work on a copy (:func:`nyu_copy`)."""
    from loader_data import build

    root = tmp_path_factory.mktemp("small-nyu")
    build(root, "nyu", 8, 4)
    return root


@pytest.fixture
def nyu_copy(small_nyu_set: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`small_nyu_set` that a test may damage: its train manifest."""
    shutil.copytree(small_nyu_set, tmp_path / "d")
    return tmp_path / "d" / "manifests" / "nyu-train.json"
