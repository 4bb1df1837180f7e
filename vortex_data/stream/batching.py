"""Batch composition: how an epoch's draws are ordered so that batches have a chosen make-up.

The loader cuts the epoch plan into consecutive runs of ``B`` positions (global step ``j`` of a
pass from position ``s`` takes ``s + [j*W*B, (j+1)*W*B)``, rank ``r`` the ``r``-th run of ``B``),
and a resume position is always a whole number of such runs. So composing the plan in *blocks*
of ``B`` positions composes every batch every rank yields, at any world size, worker count or
resume point, without the loader knowing. Three modes (the mixture's ``batching`` key):

* ``random``: one uniform shuffle of the epoch (:func:`vortex_data.stream.mixture.plan_epoch`); the
  make-up of a batch varies around the weights.
* ``stratified``: every full block holds each source's share exactly: source ``s`` has ``F_s``
  draws in the ``M = floor(N / B)`` full blocks and gets ``floor(F_s / M)`` of them in every block
  plus one more in ``F_s mod M`` blocks (largest remainder, the extra seats rotated across
  blocks), so the per-epoch quotas stay exact. Extras are dealt cyclically in source order, so a
  *group* of sources adjacent in ``order`` is itself stratified; the loader lists labelled sources
  first, which makes a labelled share of at least ``1/B`` give every batch a labelled sample.
  The ``N mod B`` positions of the partial tail block (dropped in training) take draws from the
  end of ``order`` first.
* ``per_source``: every block comes from one source; quotas are apportioned in whole batches
  (``floor(N / B)`` of them, largest remainder by weight) and each source's batches are spread
  evenly over the epoch (systematic interleave with a random phase per source and epoch).

Everything is a pure function of (seed, epoch, batch size), like the rest of the plan.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..format.manifest import ManifestError, load_manifest
from .mixture import EpochPlan, MixtureError, check_batching, plan_epoch, quotas, rng_for, source_draws


def source_quotas(weights: Sequence[float], epoch_size: int, batching: str = "random", batch_size: int = 1) -> list[int]:
    """Draws per source in one epoch: largest remainder of the epoch size, or for ``per_source``
    of its whole batches (times ``B``)."""
    if check_batching(batching) != "per_source":
        return quotas(weights, epoch_size)
    if epoch_size < batch_size:
        raise MixtureError(f"per_source batching needs epoch_size >= batch size, got {epoch_size} < {batch_size}")
    return [k * batch_size for k in quotas(weights, epoch_size // batch_size)]


def stratified_counts(q: Sequence[int], batch_size: int, order: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(full blocks x sources) draw counts and the tail block's counts for per-source quotas ``q``.

    Every row sums to ``batch_size``, column ``s`` plus ``tail[s]`` to ``q[s]``, and column ``s``
    takes only the values ``floor(F_s / M)`` and ``floor(F_s / M) + 1``. A set of sources that is
    contiguous in ``order`` has that property for its row sums too (its extras are one cyclic run).
    """
    q = np.asarray(q, np.int64)
    n, b = int(q.sum()), int(batch_size)
    m, t = divmod(n, b)
    tail = np.zeros(len(q), np.int64)
    left = t
    for s in reversed(list(order)):  # the tail (dropped in training) takes from the end of the order
        tail[s] = min(int(q[s]), left)
        left -= tail[s]
    full = q - tail
    counts = np.zeros((m, len(q)), np.int64)
    if m:
        base = full // m
        counts[:] = base
        extras = np.concatenate([np.full(int(full[s] - m * base[s]), s, np.int64) for s in order])
        counts[np.arange(len(extras)) % m, extras] += 1  # len(extras) = m * (B - sum(base))
    return counts, tail


def _stratified(sizes: Sequence[int], q: list[int], batch_size: int, seed: int, epoch: int,
                order: Sequence[int]) -> EpochPlan:
    counts, tail = stratified_counts(q, batch_size, order)
    rng = rng_for(seed, "stratified", epoch)
    counts = counts[rng.permutation(len(counts))]  # which blocks carry which extra seats
    rows = np.vstack([counts, tail[None, :]]) if tail.any() else counts
    src = np.concatenate([np.repeat(np.arange(len(q)), r) for r in rows]).astype(np.int64)
    block = np.repeat(np.arange(len(rows)), rows.sum(axis=1))
    src = src[np.lexsort((rng.random(len(src)), block))]  # shuffle inside each block only
    return _fill(sizes, q, src, seed, epoch)


def _per_source(sizes: Sequence[int], q: list[int], batch_size: int, seed: int, epoch: int) -> EpochPlan:
    k = [n // batch_size for n in q]
    rng = rng_for(seed, "per_source", epoch)
    phase = rng.random(len(k))
    # Batch i of source s sits at (i + phase_s) / k_s in [0, 1): each source evenly spread.
    when = np.concatenate([(np.arange(n) + phase[s]) / n for s, n in enumerate(k) if n])
    who = np.concatenate([np.full(n, s, np.int64) for s, n in enumerate(k) if n])
    blocks = who[np.lexsort((who, when))]
    return _fill(sizes, q, np.repeat(blocks, batch_size), seed, epoch)


def _fill(sizes: Sequence[int], q: list[int], src: np.ndarray, seed: int, epoch: int) -> EpochPlan:
    """Put each source's draws (:func:`source_draws`, as in the random plan) into its positions, in order."""
    idx = np.zeros(len(src), np.int64)
    rep = np.zeros(len(src), np.int64)
    for s, (n, k) in enumerate(zip(sizes, q)):
        where = np.flatnonzero(src == s)
        idx[where], rep[where] = source_draws(n, k, seed, epoch, s)
    return EpochPlan(src, idx, rep)


def plan_batched(sizes: Sequence[int], weights: Sequence[float], epoch_size: int, seed: int, epoch: int,
                 batching: str = "random", batch_size: int = 1, order: Sequence[int] | None = None) -> EpochPlan:
    """The training plan of ``epoch`` composed for batches of ``batch_size`` (see the module doc).
    ``order``: sources in the order extra seats are dealt (default: the mixture's)."""
    if check_batching(batching) == "random":
        return plan_epoch(sizes, weights, epoch_size, seed, epoch)
    q = source_quotas(weights, epoch_size, batching, batch_size)
    if batching == "per_source":
        return _per_source(sizes, q, batch_size, seed, epoch)
    order = list(range(len(sizes))) if order is None else list(order)
    if sorted(order) != list(range(len(sizes))):
        raise MixtureError(f"order {order} is not a permutation of the {len(sizes)} sources")
    return _stratified(sizes, q, batch_size, seed, epoch, order)


def repeats_in_batch(names: Sequence[str], sizes: Sequence[int], batching: str, batch_size: int) -> dict[str, float]:
    """``per_source`` only: each source with fewer samples than a batch -> how many times a batch
    of it holds each of its samples on average (``B / n``): its batches are ``B`` draws of that one
    source, so a source of 3 samples fills a batch of 8 with each about 2.7 times. Empty otherwise."""
    if check_batching(batching) != "per_source":
        return {}
    return {name: batch_size / n for name, n in zip(names, sizes) if 0 < n < batch_size}


def repeats_warning(repeats: dict[str, float], batch_size: int) -> str | None:
    """One line for :func:`repeats_in_batch`'s finding (preflight, stats and the loader print it)."""
    if not repeats:
        return None
    each = ", ".join(f"{name} each sample {r:.3g} times" for name, r in repeats.items())
    return (f"per_source batching: {len(repeats)} source(s) smaller than a batch of {batch_size} repeat their "
            f"samples inside every batch of theirs ({each}); lower the batch size or use stratified batching")


def by_fraction(fractions: Sequence[float]) -> tuple[int, ...]:
    """Source numbers by labelled fraction, highest first (ties: mixture order): the order
    stratified batching deals extra seats in, wherever the fractions come from."""
    return tuple(sorted(range(len(fractions)), key=lambda s: (-fractions[s], s)))


def labelled_flags(has_seg: np.ndarray, class_pixels: np.ndarray) -> np.ndarray:
    """Which samples are labelled: a label map with at least one non-ignore pixel. ``has_seg``
    (n,) and ``class_pixels`` (n, classes) are the index's columns. The one definition the
    loader's seat order, preflight and stats use (a map all 255 teaches nothing)."""
    return np.asarray(has_seg, bool) & (np.asarray(class_pixels).sum(axis=1) > 0)


def labelled_order(flags: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Sources by the labelled share of their index flags (:func:`labelled_flags`), highest first:
    the seat order of stratified batching, as the loader plans it and preflight and stats check it."""
    return by_fraction([float(np.mean(f)) if len(f) else 0.0 for f in flags])


def read_labelled_flags(manifest: str, key_pattern: str | None = None) -> np.ndarray:
    """A source's :func:`labelled_flags` from its manifest's Parquet index (local or remote), the
    rows ``key_pattern`` selects as the sample index selects them. Not the manifest's
    ``totals.labelled``: manifests written before that field existed lack it, and it counts the
    whole manifest, not a key pattern's share. A manifest without an index cannot say which samples
    are labelled: refused, naming the command that writes one."""
    import io
    import re

    import pyarrow.parquet as pq

    from ..format.manifest import is_remote, join_url, local_path, read_bytes

    try:
        m = load_manifest(manifest)
    except ManifestError as e:
        raise MixtureError(str(e)) from None
    if not m.index:
        raise MixtureError(f"{manifest}: no per-sample index, so which samples are labelled is unknown; rebuild it "
                           f"with `vortex-data build-shards` (same --src and --out: finished shards are kept)")
    url = join_url(manifest, m.index)
    columns = ["has_seg", "class_pixels"] + (["key"] if key_pattern else [])
    try:
        pf = pq.ParquetFile(io.BytesIO(read_bytes(url)) if is_remote(url) else local_path(url), memory_map=True)
        lacking = [c for c in columns if c not in pf.schema_arrow.names]
        if lacking:
            raise MixtureError(f"{manifest}: its per-sample index {m.index!r} has no column {', '.join(lacking)}, so "
                               f"which samples are labelled is unknown; rebuild it with `vortex-data build-shards`")
        table = pf.read(columns=columns)
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, MixtureError):
            raise
        raise MixtureError(f"{manifest}: per-sample index {m.index!r} unreadable ({e!r})") from None
    has_seg = table.column("has_seg").to_numpy(zero_copy_only=False).astype(bool)
    px = table.column("class_pixels").combine_chunks()
    if hasattr(px, "offsets"):  # a variable-length list: classes seen per row from the offsets
        positive = np.concatenate([[0], np.cumsum(px.flatten().to_numpy(zero_copy_only=False) > 0)])
        off = np.asarray(px.offsets)
        counts = (positive[off[1:]] - positive[off[:-1]]).reshape(-1, 1)
    else:  # fixed size (the schema's): one (n, classes) view, no Python object per row
        counts = px.values.to_numpy(zero_copy_only=False).reshape(len(px), px.type.list_size)
    flags = labelled_flags(has_seg, counts)
    if key_pattern:
        pat = re.compile(key_pattern)
        keep = [bool(pat.search(k)) for k in table.column("key").to_pylist()]
        flags = flags[np.asarray(keep, bool)]
    return flags


def labelled_first(manifests: Sequence[str], key_patterns: Sequence[str | None] | None = None) -> tuple[int, ...]:
    """Sources ordered by the labelled fraction of their indexes (:func:`read_labelled_flags`),
    highest first, so stratified batching deals the labelled sources' seats as one run."""
    patterns = [None] * len(manifests) if key_patterns is None else list(key_patterns)
    return labelled_order([read_labelled_flags(m, p) for m, p in zip(manifests, patterns)])
