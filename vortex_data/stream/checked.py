"""Stage 3, integrity: every sample checked against its index checksums; bad ones replaced or raised.

Each sample's members are checked, as they are read, against the XXH3-64 of every member stored
in the index (when the index has them). A sample that fails, or that passes but does not decode
(:func:`vortex_data.stream.batch.build_batch` raises :class:`SampleError`), stops the run with
``on_error='raise'``; with ``'skip'`` it is replaced by another sample of the same source drawn
from (seed, epoch, plan position, attempt) only, so every rerun and every resume, at any worker
count, makes the same replacement. The replacements are handed on with the batch (``skipped``)
for the main process to log and count. Stateless for resume: a replacement depends on the plan
position alone. A source whose index lacks checksums or offsets is refused before the run starts
(:func:`require_complete`) unless the caller opts out.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from ..format.integrity import SampleError, check_members, key_mismatch
from ..format.schema import META_EXT
from ..format.tar_index import member_name
from .mixture import EpochPlan, SourceIndex, rng_for
from .plan import LoaderSpec
from .read import RawSample, Window
from .sample_index import SampleIndexError
from .shard_reader import ShardReader

MAX_REPLACEMENT_TRIES = 8
ALLOW_UNCHECKED_ENV = "VORTEX_DATA_ALLOW_UNCHECKED_INDEX"


def unchecked_allowed(allow: bool | None) -> bool:
    """The opt-out from :func:`require_complete`: the argument, else the environment variable
    (how a command such as ``vortex-data train`` that has no flag for it opts out)."""
    return bool(allow) if allow is not None else os.environ.get(ALLOW_UNCHECKED_ENV, "") not in ("", "0")


def require_complete(ix: SourceIndex) -> None:
    """Refuse a source whose index lacks member checksums or offsets (an older build): the loader
    could then deliver a damaged or misplaced sample unnoticed. The message names the command that
    upgrades the index in place and the opt-out."""
    missing = [what for what, have in (("member checksums", bool(ix.arrays["checked"].all())),
                                       ("member offsets", ix.has_offsets)) if not have]
    if missing:
        raise SampleIndexError(
            f"{ix.manifest}: the index has no {' or '.join(missing)} (built by an older vortex-data), so a damaged or "
            f"misplaced sample would be delivered unnoticed; upgrade it in place with `vortex-data reindex "
            f"{ix.manifest}` (checks each shard against the manifest's sha256), or read it unchecked with "
            f"make_loader(allow_unchecked_index=True) or {ALLOW_UNCHECKED_ENV}=1")


def checked_sample(ix: SourceIndex, i: int, key: str, members: dict[str, bytes], repeat: int, src: int) -> RawSample:
    """Sample ``i`` of ``ix`` (its ``key``, which the caller has already decoded to find the members)
    with its members checked against the index's checksums (when it has them) and its metadata
    member against its key (index rows swapped with their offsets pass the checksums).

    The members were read at the offsets the index records, so a mismatch says the index does not
    match the shard (a wrong offset, or changed bytes: ``verify`` tells which), not that the bytes changed."""
    url = ix.shards[int(ix.shard_of[i])]
    checksums = ix.checksums
    sums = checksums[i] if checksums is not None else None
    try:
        if sums is not None:
            check_members(url, key, members, sums)
        other = key_mismatch(key, members)
        if other is not None:
            raise SampleError(url, key, member_name(key, META_EXT), f"the member read there belongs to sample {other!r}")
    except SampleError as e:
        how = "read at the offsets the index records" if ix.has_offsets else "read by the shard's tar headers"
        raise SampleError(e.shard, e.key, e.member, f"{e.reason}, {how}: the index "
                          f"{_index_name(ix)} does not match the shard; run `vortex-data verify {ix.manifest}`, and "
                          f"if the shards are intact rebuild the index with `vortex-data reindex {ix.manifest}`") from None
    return RawSample(key, members, src, repeat, url)


def _index_name(ix: SourceIndex) -> str:
    return f"of {ix.manifest}" if ix.manifest else f"of source {ix.name!r}"


class CheckedSamples:
    """The samples of plan positions, checked, with deterministic stand-ins under ``on_error='skip'``.

    Holds the shard reader it reads replacements with and the replacement messages not yet handed
    on (:meth:`take_skipped`); both live in the worker, neither is resume state.
    """

    def __init__(self, spec: LoaderSpec, reader: ShardReader):
        self.spec, self.reader = spec, reader
        self._skipped: list[str] = []

    def sample(self, plan: EpochPlan, epoch: int, p: int, raw: Window) -> RawSample:
        """The encoded sample at plan position ``p`` (read into ``raw``), checked; a bad one raises
        SampleError (shard, key, member) or, under 'skip', is replaced (:meth:`replacement`)."""
        src, idx = int(plan.source[p]), int(plan.index[p])
        ix = self.spec.indices[src]
        try:
            key = ix.key(idx)
            try:
                return checked_sample(ix, idx, key, raw[(src, key)], int(plan.repeat[p]), src)  # type: ignore[arg-type]
            except SampleError as e:
                return self.refetched(ix, idx, key, int(plan.repeat[p]), src, e)
        except SampleError as e:
            if self.spec.on_error != "skip":
                raise
            return self.replacement(plan, epoch, p, e, 1)

    def refetched(self, ix: SourceIndex, i: int, key: str, repeat: int, src: int, bad: SampleError) -> RawSample:
        """Sample ``i`` checked again after its remote shard's cached copy was checked against the
        manifest and, if it differed, fetched again (:meth:`ShardReader.refetch`); raises ``bad``
        for a local shard, or a SampleError that also names the URL and the cached copy."""
        url = ix.shards[int(ix.shard_of[i])]
        seen = self.reader.refetch(url)
        if seen is None:
            raise bad
        again, path = seen
        if again:
            members = self.reader.read_group(url, [key], {key: ix.spans(i)})[key]
            try:
                return checked_sample(ix, i, key, members, repeat, src)
            except SampleError as e:
                bad, note = e, f"the cached copy {path} of {url} was fetched again and still fails"
        else:
            note = f"the cached copy {path} of {url} matches the manifest's sha256, so fetching it again cannot help"
        if bad.key is None:
            raise SampleError(f"{bad}; {note}") from None
        raise SampleError(bad.shard, bad.key, bad.member, f"{bad.reason}; {note}") from None

    def replacement(self, plan: EpochPlan, epoch: int, p: int, bad: SampleError, n: int) -> RawSample:
        """A stand-in for the bad sample at plan position ``p`` (its ``n``-th): a sample of the same
        source drawn from (seed, epoch, position, attempt) only, so every rerun and every resume
        makes the same replacement."""
        src, idx = int(plan.source[p]), int(plan.index[p])
        ix = self.spec.indices[src]
        for attempt in range((n - 1) * MAX_REPLACEMENT_TRIES, n * MAX_REPLACEMENT_TRIES):
            alt = int(rng_for(self.spec.seed, "replace", epoch, int(p), attempt).integers(len(ix)))
            if alt == idx:
                continue
            key = ix.key(alt)
            try:
                members = self.reader.read_group(ix.shards[int(ix.shard_of[alt])], [key], {key: ix.spans(alt)})[key]
                smp = checked_sample(ix, alt, key, members, int(plan.repeat[p]), src)
            except SampleError:
                continue
            self._skipped.append(f"{bad}; replaced by {key!r}")
            return smp
        raise SampleError(f"{bad} (and {MAX_REPLACEMENT_TRIES} replacement draws from the same source failed too)")

    def batch(self, plan: EpochPlan, epoch: int, positions: np.ndarray, raw: Window,
              build: Callable[[Sequence[RawSample]], dict[str, Any]]) -> dict[str, Any]:
        """``build`` over the checked samples of ``positions``; a sample that passes its checksums
        (or has none) but does not decode is replaced the same way and the batch built again."""
        samples = [self.sample(plan, epoch, int(p), raw) for p in positions]
        tries = [0] * len(samples)
        while True:
            try:
                return build(samples)
            except SampleError as e:
                if self.spec.on_error != "skip":
                    raise
                i = next(i for i, smp in enumerate(samples) if smp.key == e.key and smp.shard == e.shard)
                tries[i] += 1
                if tries[i] > MAX_REPLACEMENT_TRIES:
                    raise SampleError(f"{e} (and {MAX_REPLACEMENT_TRIES} replacements from the same source "
                                      "did not decode either)") from None
                samples[i] = self.replacement(plan, epoch, int(positions[i]), e, tries[i])

    def take_skipped(self) -> list[str]:
        """The replacement messages since the last call (handed on with the batch they belong to)."""
        out, self._skipped = self._skipped, []
        return out
