"""Reading WebDataset tar shards: member names, sample keys, and which member lies where.

Every reader of a shard goes through this module: ``verify`` and the stats pass
(:func:`iter_samples`), the mixture's key listing when a manifest has no Parquet index
(:func:`sample_keys`), the loader's random-access reads (:func:`member_table`, via
:class:`vortex_data.stream.shard_reader.ShardReader`) and ``vortex-data inspect shard``
(:func:`read_samples`, which also refuses a cut-off tar). The shard writer is
:mod:`vortex_data.convert.shards`.

Naming rules, held here once:

* a member is ``<key>.<extension>``; the key ends at the first dot of the basename, exactly as
  webdataset splits it (:func:`split_member`, :func:`member_name`);
* a key is ``<dataset>/<split>/<frame id>`` of ``[A-Za-z0-9_-]`` parts (:func:`make_key`,
  :func:`check_key`). Nothing else can appear, so a key can never be absolute, hold ``..`` or
  escape a folder when the members are extracted;
* consecutive members with the same key form one sample (webdataset's grouping).
"""

from __future__ import annotations

import re
import tarfile
from itertools import groupby
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

from ..errors import InputError, VortexError

TAR_ERRORS = (tarfile.TarError, EOFError)
"""What a damaged or non-tar file raises while it is being read (besides OSError)."""

_KEY_PART = re.compile(r"[^A-Za-z0-9_\-]")


class ShardReadError(VortexError, IOError):
    """A shard that is missing, unreadable, or lacks a sample the index promises."""


class KeyGrammarError(InputError):
    """A sample key outside ``<dataset>/<split>/<frame id>`` of ``[A-Za-z0-9_-]`` parts."""


# ---------------------------------------------------------------- names

def make_key(dataset: str, split: str, frame_id: str) -> str:
    """``<dataset>/<split>/<frame id>`` with characters webdataset would misread replaced.

    A dot would end the key early (webdataset splits member names at the first dot of the
    basename), so dots and other unsafe characters become '_'. Slashes inside frame_id are kept
    as path levels. The writer refuses duplicate keys, so a collision cannot pass silently.
    """
    parts = [dataset, split, *frame_id.strip("/").split("/")]
    return "/".join(_KEY_PART.sub("_", p) for p in parts if p)


def dataset_split(key: str) -> tuple[str, str]:
    """The dataset and split a key names (its first two parts): the metadata's and the index's."""
    dataset, split = key.split("/")[:2]
    return dataset, split


def check_key(key: str) -> None:
    """Raise KeyGrammarError unless ``key`` follows the grammar (which rules out '../x', '/x', 'a.b')."""
    parts = key.split("/")
    if len(parts) < 3 or any(not p or _KEY_PART.search(p) for p in parts):
        raise KeyGrammarError(f"key {key!r} is not '<dataset>/<split>/<frame id>' of [A-Za-z0-9_-] parts")


def split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (key, extension), split at the first dot of the basename exactly as
    webdataset does: ``"nyu/train/0001.depth.npy.zst"`` -> ``("nyu/train/0001", "depth.npy.zst")``."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (d + "/" if d else "") + stem, ext


def member_name(key: str, ext: str) -> str:
    """The inverse of :func:`split_member` for a key that follows the grammar."""
    return f"{key}.{ext}"


# ---------------------------------------------------------------- headers

class Member(NamedTuple):
    """One regular-file member of a shard: its sample key, extension, and where its bytes lie."""

    key: str
    ext: str
    offset: int
    size: int


def _files(tf: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    for info in tf:
        if info.isfile():  # a shard holds only files; anything else carries no sample data
            key, ext = split_member(info.name)
            yield info, key, ext
    _check_stop(tf)


def _check_stop(tf: tarfile.TarFile) -> None:
    """Raise tarfile.ReadError if the listing stopped at a damaged header rather than at the end.

    tarfile ends its listing silently at a header it cannot parse (anywhere but the first), so
    a flipped byte in a header would hide every later sample and surface only as 'not in the
    shard'. Where it stopped, a whole archive has its zero end blocks (or nothing, if cut there:
    :func:`has_end_marker` tells that apart)."""
    f = tf.fileobj
    f.seek(tf.offset)
    block = f.read(tarfile.BLOCKSIZE)
    if not block.strip(b"\0"):
        return
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        why = "unreadable"
    except tarfile.HeaderError as e:
        why = str(e) or type(e).__name__
    raise tarfile.ReadError(f"damaged tar header at byte offset {tf.offset} ({why}); the members from there on "
                            "cannot be listed")


def members(fileobj: BinaryIO) -> Iterator[Member]:
    """The file members of an uncompressed tar, in file order, from its headers alone."""
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:
        for info, key, ext in _files(tf):
            yield Member(key, ext, info.offset_data, info.size)


def member_table(fileobj: BinaryIO) -> dict[str, list[tuple[str, int, int]]]:
    """key -> [(extension, data offset, size)] of one shard: what a random-access read needs."""
    table: dict[str, list[tuple[str, int, int]]] = {}
    for m in members(fileobj):
        table.setdefault(m.key, []).append((m.ext, m.offset, m.size))
    return table


def sample_keys(fileobj: BinaryIO) -> list[str]:
    """The sample keys of one shard in order (consecutive members of one key are one sample)."""
    return [key for key, _ in groupby(m.key for m in members(fileobj))]


# ---------------------------------------------------------------- whole samples

def iter_samples(path: Path | str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a local shard, grouped exactly as webdataset does.

    A damaged tar raises one of :data:`TAR_ERRORS` after the samples before the damage."""
    with tarfile.open(path, "r:") as tf:
        for key, group in groupby(_files(tf), key=lambda f: f[1]):
            yield key, {ext: tf.extractfile(info).read() for info, _, ext in group}


def has_end_marker(path: Path | str) -> bool:
    """Whether the file ends with tar's two zero end-of-archive blocks, as every shard does
    (tarfile itself accepts a tar cut just before them)."""
    with open(path, "rb") as f:
        f.seek(max(0, Path(path).stat().st_size - 2 * tarfile.BLOCKSIZE))
        return f.read() == bytes(2 * tarfile.BLOCKSIZE)


def read_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """:func:`iter_samples` for a shard that must be whole: a damaged or cut-off tar raises
    ShardReadError naming the shard and how many whole samples came before the damage."""
    done = 0
    try:
        for item in iter_samples(path):
            yield item
            done += 1
    except TAR_ERRORS as e:
        raise _damaged(path, done, str(e)) from None
    if not has_end_marker(path):
        raise _damaged(path, done, "no end-of-archive marker")


def _damaged(path: Path, done: int, why: str) -> ShardReadError:
    return ShardReadError(f"{path}: not a complete tar shard after {done} whole samples ({why}); "
                          "rebuild it (rerun build-shards) or check it with `vortex-data verify`")
