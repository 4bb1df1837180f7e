"""Evaluation protocols: what is scored, at which size, inside which mask, and whether the
numbers can be compared with published ones.

``nyu`` is the protocol NYU Depth V2 results are published under (Eigen et al. 2014 and
nearly every paper since): the official 654-frame test split of the labelled set, predictions
upsampled (bilinear) to the full 480x640 and scored against the full-resolution ground truth,
inside the Eigen crop, on depths in (1e-3, 10) m. ``plain`` scores at the loader's size (the
training size by default), where ground truth has been resized (nearest): fine for comparing
checkpoints of one project, not for comparing with papers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from ..errors import InputError
from ..format.manifest import Manifest, is_remote, load_manifest

NYU_SIZE = (480, 640)
NYU_TEST_FRAMES = 654
NYU_DEPTH = (1e-3, 10.0)
PROTOCOLS = ("auto", "nyu", "plain")


@dataclass(frozen=True)
class Protocol:
    name: str
    loader_size: tuple[int, int]
    """The size the loader delivers: ground truth is scored at this size."""
    input_size: tuple[int, int] | None
    """The size the network sees (RGB resized to it, predictions upsampled back); None: loader_size."""
    eigen_crop: bool
    min_depth: float
    max_depth: float
    comparable: bool
    """True only for the NYU protocol on the whole official test split at full resolution."""
    headline: str
    """The first line of the evaluation's output: the protocol, and what the numbers compare with."""


def manifest_info(path: str) -> Manifest | None:
    """The manifest, or None for a remote one (not fetched here; the loader reads it)."""
    return None if is_remote(path) else load_manifest(path)


def describe_nyu_split(m: Manifest) -> tuple[str, bool]:
    """(which split a manifest holds, whether it is the whole official 654-frame test split)."""
    opts = m.converter.get("options", {})
    scheme, split = opts.get("split_scheme", "unknown scheme"), m.split
    frames = sum(int(s["samples"]) for s in m.shards)
    resize = m.converter.get("output", {}).get("resize")
    custom = scheme == "official" and opts.get("splits_file", "shipped") != "shipped"
    if scheme == "official" and split == "test" and not custom:
        what = f"the official test split, {frames} of {NYU_TEST_FRAMES} frames"
        whole = frames == NYU_TEST_FRAMES
        if not whole:
            what += " (the rest rejected at build time: see the manifest)"
    else:
        source = f"splits file {opts.get('splits_file')}" if custom else f"the {scheme} scheme"
        what = f"split '{split}' of {source}, {frames} frames, NOT the official {NYU_TEST_FRAMES}-frame test split"
        whole = False
    if opts.get("depth", "filled") != "filled":
        what += f"; depth '{opts.get('depth')}', not the labelled set's filled depths"
        whole = False
    if resize:
        what += f"; stored resized (build --resize {resize}), so the ground truth is not full resolution"
        whole = False
    return what, whole


def resolve_split(manifest: str | None, split: str | None, protocol: str) -> str:
    """``--split`` when given; else, for a ``{split}`` manifest pattern under the NYU protocol,
    ``test`` where that manifest exists; else ``val``."""
    if split:
        return split
    if manifest and "{split}" in manifest and protocol != "plain" and Path(manifest.replace("{split}", "test")).is_file():
        return "test"
    return "val"


def choose(protocol: str, manifest: str | None, train_size: tuple[int, int], image_size: tuple[int, int] | None,
           eigen_crop: bool, depth_range: tuple[float, float]) -> Protocol:
    """The protocol for evaluating ``manifest`` (already resolved to one split): ``auto`` is
    ``nyu`` for an NYU manifest, ``plain`` otherwise. ``image_size`` is the network's input
    size under ``nyu`` (default: the training size) and the evaluation size under ``plain``."""
    if protocol not in PROTOCOLS:
        raise InputError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    info = manifest_info(manifest) if manifest else None
    if protocol == "auto":
        protocol = "nyu" if info is not None and info.dataset == "nyu" else "plain"
    if protocol == "plain":
        size = tuple(image_size or train_size)
        crop = ", Eigen crop" if eigen_crop else ""
        return Protocol("plain", size, None, eigen_crop, *depth_range, False,  # type: ignore[arg-type]
                        f"protocol plain: scored at {size[0]}x{size[1]} (ground truth resized, nearest){crop}, depth "
                        f"{depth_range[0]:g}..{depth_range[1]:g} m; not comparable with published results")
    if info is None:
        what, whole = ("a remote manifest, split not checked" if manifest else "no manifest, split unknown"), False
    elif info.dataset != "nyu":
        raise InputError(f"{manifest}: --protocol nyu needs an NYU manifest, this one holds {info.dataset!r}")
    else:
        what, whole = describe_nyu_split(info)
    net = tuple(image_size or train_size)
    verdict = "comparable with published NYU results" if whole else "NOT comparable with published NYU results"
    return Protocol("nyu", NYU_SIZE, net, True, *NYU_DEPTH, whole,  # type: ignore[arg-type]
                    f"protocol nyu: {what}; network input {net[0]}x{net[1]}, predictions upsampled (bilinear) to "
                    f"{NYU_SIZE[0]}x{NYU_SIZE[1]} and scored against full-resolution ground truth, Eigen crop, depth "
                    f"{NYU_DEPTH[0]:g}..{NYU_DEPTH[1]:g} m: {verdict}")
