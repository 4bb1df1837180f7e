"""What every converter provides: enumerate frames cheaply, then load one frame at a time.

A converter reads one dataset's native layout and knows nothing of shards or training. The shard
writer calls :meth:`Converter.enumerate` once (in the parent process), plans shards from the
frame list, and calls :meth:`Converter.load` in worker processes, so a converter must pickle
(open files lazily, per process).
"""

from __future__ import annotations

import argparse
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..format.schema import Sample


@dataclass(frozen=True)
class FrameRef:
    """A frame found by enumeration: where it lives, not its pixels."""

    split: str
    frame_id: str
    files: tuple[str, ...]
    """Source files of the frame (for provenance and the source fingerprint)."""
    payload: Any = None
    """Converter-private locator (an index into a .mat, a timestamp, ...). Must pickle."""


@dataclass(frozen=True)
class Rejection:
    """An input frame that was not written, and why. Every input frame is written or rejected."""

    frame: str
    split: str
    code: str
    """Short machine-readable kind: missing-file, unreadable, bad-shape, bad-value, no-valid-depth, ..."""
    reason: str
    """A sentence a person can act on, naming the file and the problem."""
    file: str | None = None

    def __post_init__(self) -> None:
        # A rejection names files as they are on disk, which may not be UTF-8: escape them here,
        # once, so manifests, Parquet and terminals always accept what is recorded.
        for name in ("frame", "reason", "file"):
            object.__setattr__(self, name, printable_path(getattr(self, name)))

    def as_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "split": self.split, "code": self.code, "reason": self.reason, "file": self.file}


def printable_path(path: str | Path | None) -> str | None:
    """A file name as text that JSON, Parquet and a terminal all accept: bytes that are not
    UTF-8 (kept by Python as surrogate escapes) become ``\\xNN``."""
    if path is None:
        return None
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def scan_folder(path: Path) -> tuple[list[Path], OSError | None]:
    """A folder's entries sorted by name, or the error that kept it from being listed (so the
    caller can reject what it holds instead of silently skipping it, as glob() would)."""
    try:
        with os.scandir(path) as it:
            return sorted((Path(e.path) for e in it), key=lambda p: p.name), None
    except OSError as e:
        return [], e


_IDENTITIES: dict[tuple[str, int, int, int, int, int], str] = {}


def input_sha256(path: Path) -> str:
    """The identity of an input file a build depends on beyond its frames' own files (a labels
    file, a split file, a single-file dataset): the sha256 of its whole content, so a change
    anywhere in it, at the same size, is a different build (a hash of the first MiB missed edits
    past it). Hashed once per process for each (device, inode, size, mtime, ctime): a build that
    asks again gets the same answer without reading several GB twice; a rewrite changes ctime,
    which no tool can set back. Cost measured in docs/reliability.md."""
    from ..format.manifest import sha256_file

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = sha256_file(Path(path))
    return _IDENTITIES[key]


def os_reason(e: OSError) -> str:
    return f"{type(e).__name__}: {e.strerror or e}"


def is_utf8_name(path: str | Path) -> bool:
    """False for a name holding bytes that are not UTF-8 (such a name cannot be a sample key)."""
    return printable_path(path) == str(path)


class RejectFrame(Exception):
    """Raised by Converter.load for a frame that cannot be written; becomes a Rejection."""

    def __init__(self, code: str, reason: str, file: str | Path | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.file = None if file is None else str(file)


@dataclass
class Enumeration:
    frames: list[FrameRef]
    rejected: list[Rejection] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    """Converter-specific facts for the manifest (e.g. frames an index lists but the disk lacks)."""


class Converter(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Add this converter's own command-line options."""

    @classmethod
    @abstractmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "Converter":
        ...

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-able options that change the output; recorded in the manifest."""

    @abstractmethod
    def enumerate(self, splits: set[str] | None) -> Enumeration:
        """All frames of the requested splits (None = all), in a deterministic order."""

    @abstractmethod
    def load(self, ref: FrameRef) -> Sample:
        """The frame as a schema Sample; raise RejectFrame with a reason when it cannot be."""

    def source_files(self, ref: FrameRef) -> tuple[str, ...]:
        """Files (relative to :meth:`source_root`) whose change must rebuild this frame; by default
        its ``files``. A converter whose frames live inside one container file returns that file."""
        return ref.files

    def source_root(self) -> Path:
        """Paths in FrameRef.files are relative to this folder."""
        return Path(getattr(self, "src"))
