"""Per-member checksums of a sample: written into the Parquet index at build time, checked at read time.

The shard's sha256 in the manifest proves a whole shard intact, but the loader reads single samples
by offset and never hashes a whole shard. So the index also stores, per sample, a 64-bit XXH3 hash
of every tar member (``member_xxh3_64``: extension -> hash of the member's bytes). XXH3 hashes at
tens of GB/s, so checking every member of every sample costs a fraction of a percent of decoding
it (``python tools/bench_integrity.py`` prints the figure; zlib's CRC32 measured about 1 %), and
any changed byte changes the hash.

A mismatch, a missing or an unexpected member, or a member that does not decode raises
:class:`SampleError`, which names the shard, the key and the member.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

import xxhash

from ..errors import InputError
from .schema import META_EXT
from .tar_index import ShardReadError, member_name

CHECKSUM_COLUMN = "member_xxh3_64"
OFFSET_COLUMN = "member_offset"
SIZE_COLUMN = "member_size"
"""Where each member's bytes lie in its shard (extension -> data offset, size): the loader reads
them with one pread each instead of scanning tar headers. Absent in indexes built before them."""
ON_ERROR = ("raise", "skip")


class SampleError(ShardReadError):
    """One sample that failed its checksum or did not decode; names shard, key and member."""

    def __init__(self, shard: str, key: str | None = None, member: str | None = None, reason: str | None = None):
        self.shard, self.key, self.member, self.reason = shard, key, member, reason
        if key is None:  # one ready message: how torch re-raises a worker's exception in the main process
            super().__init__(shard)
            return
        where = f"sample {key!r}" + (f" member {member!r}" if member else "")
        super().__init__(f"{shard}: {where}: {reason}")


def member_hash(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def member_checksums(members: Iterable[tuple[str, bytes]]) -> dict[str, int]:
    """(extension, bytes) members -> {extension: XXH3-64}, the index's ``member_xxh3_64`` value.

    Sorted by extension, the order a build record (JSON with sorted keys) gives back, so a
    resumed build writes the same index bytes as an uninterrupted one."""
    return dict(sorted((ext, member_hash(data)) for ext, data in members))


def member_spans(offsets: Mapping[str, int], members: Iterable[tuple[str, bytes]]) -> dict[str, dict[str, int]]:
    """The index's ``member_offset`` and ``member_size`` values of one sample, sorted by extension
    like :func:`member_checksums` (the loader relies on the three listing members alike)."""
    sizes = {ext: len(data) for ext, data in members}
    return {OFFSET_COLUMN: dict(sorted(offsets.items())), SIZE_COLUMN: dict(sorted(sizes.items()))}


def check_members(shard: str, key: str, members: Mapping[str, bytes],
                  expected: Mapping[str, int] | Iterable[tuple[str, int]]) -> None:
    """Raise SampleError unless ``members`` are exactly the members the index recorded, byte for byte."""
    want = expected if isinstance(expected, Mapping) else dict(expected)
    for ext in sorted(set(want) | set(members)):
        if ext not in members:
            raise SampleError(shard, key, member_name(key, ext), "member listed in the index is missing from the shard")
        if ext not in want:
            raise SampleError(shard, key, member_name(key, ext), "member is in the shard but not in the index")
        got = member_hash(members[ext])
        if got != want[ext]:
            # What was seen, not why: the caller knows whether it read by the index's offsets
            # (then the index may be what is wrong) or by the tar headers (then the bytes changed).
            raise SampleError(shard, key, member_name(key, ext),
                              f"checksum (XXH3-64) {got:016x} does not match the index ({want[ext]:016x})")


def key_mismatch(key: str, members: Mapping[str, bytes]) -> str | None:
    """Which sample the metadata member says it belongs to, when that is not ``key`` (else None).

    A version-2 ``json`` member records its key (compact, sorted JSON, so ``"key":"<key>"`` appears
    verbatim and nowhere else: a quote inside the ``extra`` string is escaped). A substring test
    costs well under a microsecond, so the loader makes it on every sample: index rows swapped with
    their offsets pass every checksum but deliver a sample under another's key. Version-1 members
    record no key and pass."""
    meta = members.get(META_EXT)
    if meta is None or _KEY_TAG not in meta or _KEY_TAG + json.dumps(key).encode() in meta:
        return None
    start = meta.index(_KEY_TAG) + len(_KEY_TAG)
    try:
        return json.JSONDecoder().raw_decode(meta[start:].decode())[0]
    except ValueError:
        return "?"


_KEY_TAG = b'"key":'


def check_policy(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error
