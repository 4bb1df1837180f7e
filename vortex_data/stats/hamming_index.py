"""Exact Hamming-radius search between 64-bit hashes without comparing every pair.

Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): split the 64 bits into k bands. If two
hashes differ in at most t bits, at least one band differs in at most t // k bits (pigeonhole).
So looking up, for each query hash and band, every band value within t // k bits of the query's
in a sorted table of the other side's band values finds every pair within t bits, plus chance
collisions; the caller checks those candidates with the exact distance. Nothing is approximate.

k trades probes for collisions: few long bands give few chance collisions but many probe values
per query (every value within t // k bits); many short bands give one probe each but many chance
collisions. :func:`choose_bands` picks k from the sizes with a rough cost model, or none when
comparing all pairs is cheaper (small inputs, large thresholds). Memory stays near ``max_items``
table entries, probes and candidates at a time whatever the sizes: the table side is taken a
block of rows at a time and the query side a block of queries at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache
from math import comb

import numpy as np

MAX_ITEMS = 1 << 20
"""Table entries, probes or candidates held at once (each a few 8-byte words)."""
DIRECT_BITS = 22
"""Bands up to this wide get a bucket array (2^w counts and starts); wider ones a sorted table."""
DIRECT_NS, PROBE_NS, CANDIDATE_NS, PAIR_NS = 20.0, 200.0, 20.0, 2.0
"""Rough costs on one core (a table lookup, checking one candidate pair, one XOR-popcount in
the all-pairs comparison): they only choose between plans, so only their ratios matter."""
SETUP_NS, BUCKET_NS = 50_000.0, 3.0
"""Fixed costs per band and table block: the calls themselves, and a bucket array's 2^w entries."""


def bands(k: int) -> list[tuple[int, int]]:
    """(shift, width) of k contiguous bands covering 64 bits, widths as equal as possible."""
    widths = [64 // k + (1 if i < 64 % k else 0) for i in range(k)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths)]


@lru_cache(maxsize=32)
def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every width-bit value with at most radius bits set (0 first): XOR them into a band value
    to get every value within radius bits of it."""
    out = [0]
    for r in range(1, radius + 1):
        out += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), r)]
    return np.array(out, np.uint64)


def _ball(width: int, radius: int) -> int:
    return sum(comb(width, i) for i in range(min(radius, width) + 1))


def plan_cost(k: int, n_query: int, n_table: int, t: int) -> float:
    """Estimated ns to find all candidates of n_query hashes among n_table with k bands (uniform
    random hashes: real image hashes collide more, which only adds candidates to check)."""
    r = t // k
    probes = sum(_ball(w, r) * (DIRECT_NS if w <= DIRECT_BITS else PROBE_NS) for _, w in bands(k))
    collide = min(1.0, sum(_ball(w, r) / 2.0 ** w for _, w in bands(k)))
    table_blocks = -(-n_table // MAX_ITEMS)
    setup = sum(SETUP_NS + (2 ** w * BUCKET_NS if w <= DIRECT_BITS else 0) for _, w in bands(k)) * table_blocks
    return setup + n_query * probes * table_blocks + n_query * n_table * collide * CANDIDATE_NS


def choose_bands(directions: list[tuple[int, int]], t: int) -> int | None:
    """Band count for searches of (n_query, n_table) each, or None where comparing all pairs
    (PAIR_NS per query x table entry) is estimated cheaper."""
    if t >= 63:
        return None
    options = {k: sum(plan_cost(k, q, m, t) for q, m in directions)
               for k in range(1, min(t + 1, 16) + 1) if _ball(64 // k + 1, t // k) <= MAX_ITEMS}
    brute = sum(q * m for q, m in directions) * PAIR_NS
    k = min(options, key=options.get) if options else None
    return k if k is not None and options[k] < brute else None


def candidates(query: np.ndarray, table: np.ndarray, t: int, k: int,
               max_items: int = MAX_ITEMS) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(query rows, table entries, band) blocks, table entries numbered in table.ravel() order,
    such that every pair with Hamming(query[i], table.ravel()[e]) <= t is among them, found
    through each band in which the two are within t // k bits (once per such band).

    query: (n,) uint64; table: (m, V) uint64. Yields int64 arrays of at most about max_items pairs.
    """
    if len(query) == 0 or table.size == 0:
        return
    m, v = table.shape
    table_rows = max(1, max_items // v)
    for t0 in range(0, m, table_rows):
        flat = table[t0:t0 + table_rows].ravel()
        for band, (s, w) in enumerate(bands(k)):
            flips = flip_masks(w, t // k)
            vals = (flat >> np.uint64(s)) & np.uint64((1 << w) - 1)
            order = np.argsort(vals, kind="stable")
            entries = order + t0 * v
            if w <= DIRECT_BITS:  # a bucket per band value: a lookup is an index, not a binary search
                count = np.bincount(vals.astype(np.int64), minlength=1 << w).astype(np.int32)
                start = (np.cumsum(count, dtype=np.int64) - count).astype(np.int32)
            else:
                vals = vals[order]
            query_rows = max(1, max_items // len(flips))
            for q0 in range(0, len(query), query_rows):
                qs = query[q0:q0 + query_rows]
                probe = (((qs >> np.uint64(s)) & np.uint64((1 << w) - 1))[:, None] ^ flips[None, :]).ravel()
                if w <= DIRECT_BITS:
                    p = probe.astype(np.int64)
                    lo, n = start[p], count[p]
                else:
                    lo = np.searchsorted(vals, probe, "left")
                    n = np.searchsorted(vals, probe, "right") - lo
                hit = np.nonzero(n)[0]
                if len(hit):
                    for qi, e in _expand(hit // len(flips) + q0, lo[hit], n[hit], entries, max_items):
                        yield qi, e, band


def _expand(owner: np.ndarray, lo: np.ndarray, count: np.ndarray, entries: np.ndarray,
            max_items: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(owner, entries[i]) for every i in the ranges [lo, lo + count), about max_items at a time."""
    ends = np.cumsum(count)
    begin = 0
    while begin < len(count):
        before = ends[begin - 1] if begin else 0
        stop = max(begin + 1, int(np.searchsorted(ends, before + max_items, "right")))
        c = count[begin:stop]
        first = np.cumsum(c) - c
        pos = np.repeat(lo[begin:stop] - first, c) + np.arange(int(c.sum()))
        yield np.repeat(owner[begin:stop], c), entries[pos]
        begin = stop
