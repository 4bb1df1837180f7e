"""The SUN RGB-D toolbox's 37-class segmentation: ``SUNRGBDtoolbox/Metadata/``.

``SUNRGBD2Dseg.mat`` is MATLAB v7.3 (HDF5): the struct ``SUNRGBD2Dseg`` whose field ``seglabel``
holds one object reference per frame to that frame's label array, stored transposed (W, H);
0 = void, 1..37 = the classes of ``seg37list.mat``, which are NYU-40's classes 1..37. Entry i
belongs to entry i of ``SUNRGBDMeta.mat`` (MATLAB v5), whose ``sequenceName`` is the frame
folder behind a ``SUNRGBD/`` prefix. The real file is several GB and a whole load needs tens of
GB, so labels are read one frame at a time through their references, with one HDF5 handle per
process (a handle inherited across fork is not safe to use). See ``docs/sunrgbd.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from ...errors import InputError
from ..base import RejectFrame, input_sha256
from ..labels import sun37_to_6_lut
from .files import split_key

TOOLBOX_DIR = "SUNRGBDtoolbox"
SEG_FILE = "Metadata/SUNRGBD2Dseg.mat"
META_FILE = "Metadata/SUNRGBDMeta.mat"
LABEL_MODES = ("auto", "none")


class ToolboxError(InputError):
    """A toolbox file that cannot be used as a whole; the message names the file and the problem."""


def find_toolbox(src: Path, given: Path | None) -> tuple[Path, dict[str, bool]]:
    """The toolbox folder to use and, for each label file, whether it is there: ``given``
    (``--toolbox``, which must hold both), else ``SUNRGBDtoolbox/`` beside ``src`` as given. A
    symlinked ``src`` is not resolved: the toolbox is looked for beside the link, where the user
    put the name, not beside its target (``docs/sunrgbd.md``)."""
    folder = Path(given) if given is not None else Path(os.path.abspath(src)).parent / TOOLBOX_DIR
    files = {rel: (folder / rel).is_file() for rel in (SEG_FILE, META_FILE)}
    if given is not None and not all(files.values()):
        missing = ", ".join(str(folder / rel) for rel, ok in files.items() if not ok)
        raise FileNotFoundError(f"{missing}: not found (--toolbox must be the {TOOLBOX_DIR}/ folder holding "
                                f"{SEG_FILE} and {META_FILE})")
    return folder, files


def read_sequence_names(meta_path: Path) -> list[str]:
    """``SUNRGBDMeta(i).sequenceName`` in the toolbox's order, as frame folders relative to SUNRGBD/."""
    try:
        mat = scipy.io.loadmat(str(meta_path), variable_names=["SUNRGBDMeta"])
    except Exception as e:  # scipy raises several unrelated types for a bad .mat
        raise ToolboxError(f"{meta_path}: not a readable MATLAB v5 file ({e})") from None
    meta = mat.get("SUNRGBDMeta")
    if meta is None or meta.dtype.names is None or "sequenceName" not in meta.dtype.names:
        raise ToolboxError(f"{meta_path}: no struct array 'SUNRGBDMeta' with a field 'sequenceName' "
                           f"(variables: {sorted(k for k in mat if not k.startswith('__'))})")
    names = []
    for i, item in enumerate(meta["sequenceName"].ravel()):
        arr = np.asarray(item).ravel()
        if arr.size != 1 or not isinstance(arr[0], str):
            raise ToolboxError(f"{meta_path}: SUNRGBDMeta({i + 1}).sequenceName is not a string: {item!r}")
        try:
            names.append(split_key(str(arr[0])))
        except ValueError as e:
            raise ToolboxError(f"{meta_path}: SUNRGBDMeta({i + 1}).sequenceName: {e}") from None
    return names


class ToolboxLabels:
    """Frame folder -> toolbox entry, and one frame's label array read through its reference."""

    def __init__(self, toolbox: Path):
        self.toolbox = Path(toolbox)
        self.seg_path = self.toolbox / SEG_FILE
        self.meta_path = self.toolbox / META_FILE
        self._options: dict[str, Any] | None = None
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._refs_ds: h5py.Dataset | None = None
        self._ref_array: np.ndarray | None = None
        names = read_sequence_names(self.meta_path)
        n = self._check_layout()
        if n != len(names):
            raise ToolboxError(f"{self.seg_path}: 'SUNRGBD2Dseg/seglabel' has {n} entries but "
                               f"{self.meta_path} lists {len(names)} frames; entry i must belong to frame i")
        self.entry_of: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in self.entry_of:
                raise ToolboxError(f"{self.meta_path}: frame folder {name!r} is listed twice "
                                   f"(entries {self.entry_of[name] + 1} and {i + 1})")
            self.entry_of[name] = i
        self.lut = sun37_to_6_lut()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_h5": None, "_pid": None, "_refs_ds": None, "_ref_array": None}

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            try:
                self._h5, self._pid, self._refs_ds = h5py.File(self.seg_path, "r"), os.getpid(), None
                self._ref_array = None
            except OSError as e:
                raise ToolboxError(f"{self.seg_path}: not a readable MATLAB v7.3 (HDF5) file ({e})") from None
        return self._h5

    def _refs(self) -> h5py.Dataset:
        f = self._file()
        if self._refs_ds is not None:
            return self._refs_ds  # checked once per handle: the mismatch check asks for every frame
        group = f.get("SUNRGBD2Dseg")
        if not isinstance(group, h5py.Group) or not isinstance(group.get("seglabel"), h5py.Dataset):
            raise ToolboxError(f"{self.seg_path}: no struct 'SUNRGBD2Dseg' with a field 'seglabel' "
                               f"(top level holds {sorted(f.keys())})")
        ds = group["seglabel"]
        if ds.dtype != h5py.ref_dtype or ds.ndim != 2 or 1 not in ds.shape:
            raise ToolboxError(f"{self.seg_path}: 'SUNRGBD2Dseg/seglabel' should be an (N, 1) or (1, N) array of "
                               f"object references, found shape {ds.shape} dtype {ds.dtype}")
        self._refs_ds = ds
        return ds

    def _check_layout(self) -> int:
        return max(self._refs().shape)

    def options(self) -> dict[str, Any]:
        if self._options is None:
            # The whole files: the build's identity (and a rerun's kept groups) must change with them.
            self._options = {"labels_file": f"{TOOLBOX_DIR}/{SEG_FILE}",
                             "labels_file_sha256": input_sha256(self.seg_path),
                             "labels_meta_sha256": input_sha256(self.meta_path)}
        return self._options

    def _target(self, entry: int) -> h5py.Dataset | None:
        """Entry ``entry``'s label dataset, or None where MATLAB stored an empty array (``[]``: a
        dataset of its dimensions flagged ``MATLAB_empty``), i.e. the frame has no labels."""
        refs = self._refs()
        try:
            if self._ref_array is None:  # all references at once: one read, not one per frame
                self._ref_array = refs[()].ravel()
            ds = self._file()[self._ref_array[entry]]
            # A label array is 2-D; MATLAB writes [] as its 1-D dimensions, flagged (attrs are slow: only then).
            shape = ds.shape
            empty = 0 in shape or len(shape) != 2 and bool(np.asarray(ds.attrs.get("MATLAB_empty", 0)).any())
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise RejectFrame("unreadable", f"{self.seg_path}: SUNRGBD2Dseg(seglabel) entry {entry + 1} cannot be "
                              f"read ({e})", self.seg_path) from None
        return None if empty else ds

    def shape(self, entry: int) -> tuple[int, int] | None:
        """Entry ``entry``'s upright (H, W) from its stored shape, without reading the labels;
        None for an empty or unreadable entry (the frame's own load says which)."""
        try:
            ds = self._target(entry)
        except RejectFrame:
            return None
        shape = None if ds is None else ds.shape
        return None if shape is None or len(shape) != 2 else (int(shape[1]), int(shape[0]))

    def raw(self, entry: int) -> np.ndarray | None:
        """Entry ``entry`` (0-based) as upright (H, W) integers, 0..37 expected; None when empty."""
        where = f"{self.seg_path}: SUNRGBD2Dseg(seglabel) entry {entry + 1}"
        ds = self._target(entry)
        if ds is None:
            return None
        try:
            arr = np.asarray(ds[()])
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise RejectFrame("unreadable", f"{where} cannot be read ({e})", self.seg_path) from None
        if arr.ndim != 2 or arr.dtype.kind not in "biuf":
            raise RejectFrame("bad-value", f"{where} is not a 2-D numeric label array ({arr.shape} {arr.dtype})",
                              self.seg_path)
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
                raise RejectFrame("bad-value", f"{where} holds non-integer values", self.seg_path)
        return arr.T.astype(np.int64)  # MATLAB's (H, W) is stored column-major: h5py sees (W, H)

    def seg6(self, entry: int, shape: tuple[int, int]) -> tuple[np.ndarray | None, int]:
        """The entry mapped to the 6 classes (void and values outside 1..37 -> 255), checked to be
        ``shape`` (the image's (H, W)); also the count of pixels outside 0..37. (None, 0) for an
        empty entry: the frame is written depth only."""
        labels = self.raw(entry)
        if labels is None:
            return None, 0
        if labels.shape != tuple(shape):
            raise RejectFrame("bad-shape", f"{self.seg_path}: SUNRGBD2Dseg(seglabel) entry {entry + 1} is "
                              f"{labels.shape[::-1]} (WxH) but the frame's image is {tuple(shape)[::-1]}", self.seg_path)
        outside = (labels < 0) | (labels >= len(self.lut))
        n_out = int(outside.sum())
        seg = self.lut[np.where(outside, 0, labels)]
        return np.ascontiguousarray(seg), n_out

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._pid = self._refs_ds = self._ref_array = None


def image_size(path: Path) -> tuple[int, int] | None:
    """A JPEG's (H, W) from its header (no decoding); None when unreadable (its load rejects it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError):
        return None


def check_toolbox_matches(labels: ToolboxLabels, root: Path, frames: list[Any]) -> None:
    """Stop when most labelled frames' label arrays differ in size from their images: the toolbox
    belongs to another copy of SUN RGB-D (or its SUNRGBDMeta order to another release), so even
    the frames whose sizes agree would get another frame's labels. A few disagreements stay
    per-frame ``bad-shape`` rejections. Shapes come from the HDF5 datasets and the JPEG headers,
    nothing is decoded. Two frames of equal size swapped cannot be seen here (docs/sunrgbd.md)."""
    checked, wrong = 0, []
    for fr in frames:
        ff = fr.payload
        if ff.label_entry is None:
            continue
        want, got = image_size(root / ff.image), labels.shape(ff.label_entry)
        if want is None or got is None:
            continue
        checked += 1
        if want != got:
            wrong.append((ff.folder, ff.label_entry, got, want))
    if wrong and 2 * len(wrong) > checked:
        folder, entry, got, want = wrong[0]
        raise ToolboxError(
            f"{labels.meta_path}: the toolbox does not match this SUN RGB-D copy: {len(wrong)} of {checked} labelled "
            f"frames have a label array of another size than their image (e.g. {folder}: {SEG_FILE} entry "
            f"{entry + 1} is {got[1]}x{got[0]}, the image {want[1]}x{want[0]}); give the {TOOLBOX_DIR}/ of this "
            f"copy with --toolbox DIR, or --labels none for depth only")
