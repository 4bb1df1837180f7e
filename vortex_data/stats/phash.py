"""Compact perceptual image hashes and the cross-source near-duplicate search.

A frame is hashed as 64-bit DCT perceptual hashes (pHash: grey image -> 32x32 -> 2-D DCT -> the
8x8 lowest frequencies, one bit per coefficient above their median) of one canonical centre
window and of a small grid of windows around it (5 sizes x 3 x 3 offsets). Two frames match
when one frame's canonical hash is within a Hamming distance threshold of some window hash of
the other. Searching windows tolerates a border crop, with or without a resize (SUN RGB-D's kv1/NYUdata frames are NYU's 640x480 images with
a ~40 px border cut to 561x427): the central 50 % of the NYU frame and the central 56 % of the
SUN frame cover nearly the same scene. JPEG re-encoding, mild blur and brightness changes move
only a few bits; flips, rotations and crops off-centre by more than a few percent are not caught.
The search finds exactly the pairs an all-pairs comparison would, through banded lookups
(:mod:`hamming_index`) rather than by comparing every pair.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import hamming_index

CANONICAL_FRACTION = 0.56
"""Side of the canonical centre window, as a fraction of the image side."""
VARIANT_FRACTIONS = (0.45, 0.50, 0.56, 0.63, 0.70)
"""Window sides searched on the other frame: steps of ~1.12x, so any crop-and-resize between
0.8x and 1.25x lands within ~6 % of one of them (NYU 640 -> SUN 561 is 0.88x)."""
VARIANT_SHIFTS = (-0.04, 0.0, 0.04)
"""Window centre offsets as a fraction of the image side (NYU's border crop moves the centre by
~3.6 % vertically); the pHash tolerates ~1-2 % misalignment, so steps of 4 % suffice."""
HASH_SIZE = 32
DEFAULT_THRESHOLD = 6
"""Max differing bits (of 64) for a near-duplicate. Aligned re-encoded copies differ by 0-4;
different frames of similar-looking rooms rarely come below ~8."""


WINDOWS = ((CANONICAL_FRACTION, 0.0, 0.0),
           *((f, dy, dx) for f in VARIANT_FRACTIONS for dy in VARIANT_SHIFTS for dx in VARIANT_SHIFTS))
"""(side fraction, dy, dx) of every hashed window: the canonical first, then the variants."""


def phash(grey: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash of a 2-D uint8 image (bit i = coefficient i > median)."""
    small = cv2.resize(grey, (HASH_SIZE, HASH_SIZE), interpolation=cv2.INTER_AREA)
    return _phash_batch(small[None].astype(np.float32))[0]


def _phash_batch(small: np.ndarray) -> np.ndarray:
    """(n, 32, 32) float32 images -> (n,) uint64 pHashes, in two cv2.dct calls for all n.

    A 2-D cv2.dct is its 1-D transform over the rows, then over the columns; doing the rows of
    all n images at once, then the 8 lowest-frequency columns of each, gives the very same
    float32 coefficients (tests/test_stats.py compares with one cv2.dct per image), so the bits
    do not depend on which way they were computed.
    """
    n = len(small)
    rows = cv2.dct(small.reshape(n * HASH_SIZE, HASH_SIZE), flags=cv2.DCT_ROWS).reshape(n, HASH_SIZE, HASH_SIZE)
    cols = np.ascontiguousarray(rows[:, :, :8].transpose(0, 2, 1)).reshape(n * 8, HASH_SIZE)
    low = cv2.dct(cols, flags=cv2.DCT_ROWS).reshape(n, 8, HASH_SIZE)[:, :, :8].transpose(0, 2, 1).reshape(n, 64)
    # The DC term tracks overall brightness only; leaving it out of the median keeps the
    # threshold about structure. The median of 63 values is the 32nd smallest, exactly.
    median = np.partition(low[:, 1:], 31, axis=1)[:, 31]
    return np.packbits(low > median[:, None], axis=1).view(">u8")[:, 0].astype(np.uint64)


@functools.lru_cache(maxsize=64)
def _window_bounds(h: int, w: int) -> tuple[tuple[int, int, int, int], ...]:
    """(y0, y1, x0, x1) of every window in WINDOWS for an h x w image (cached: frames share sizes)."""
    out = []
    for frac, dy, dx in WINDOWS:
        ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
        y0 = min(max(0, round((h - ch) / 2 + dy * h)), h - ch)
        x0 = min(max(0, round((w - cw) / 2 + dx * w)), w - cw)
        out.append((y0, y0 + ch, x0, x0 + cw))
    return tuple(out)


def frame_hashes(rgb: np.ndarray) -> np.ndarray:
    """Hashes of an (H, W, 3) uint8 RGB frame: [canonical, variant windows...] as uint64.

    Entry 0 is the centre window at CANONICAL_FRACTION; the rest cover every
    (VARIANT_FRACTIONS x VARIANT_SHIFTS^2) window, for matching against another frame's canonical.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    bounds = _window_bounds(*grey.shape)
    small = np.empty((len(bounds), HASH_SIZE, HASH_SIZE), np.float32)
    for i, (y0, y1, x0, x1) in enumerate(bounds):
        small[i] = cv2.resize(grey[y0:y1, x0:x1], (HASH_SIZE, HASH_SIZE), interpolation=cv2.INTER_AREA)
    return _phash_batch(small)


def _canonical_vs_variants(canon: np.ndarray, variants: np.ndarray, chunk_bytes: int) -> np.ndarray:
    """canon (n,), variants (m, V) -> (n, m) min Hamming distance over the variants."""
    out = np.empty((len(canon), len(variants)), np.int64)
    rows = max(1, chunk_bytes // max(1, variants.size * 8))
    for s in range(0, len(canon), rows):
        x = canon[s:s + rows, None, None] ^ variants[None, :, :]
        out[s:s + rows] = np.bitwise_count(x).min(axis=2)
    return out


def min_hamming(a: np.ndarray, b: np.ndarray, chunk_bytes: int = 1 << 26) -> np.ndarray:
    """Crop-tolerant distance between frames: a (n, 1+V), b (m, 1+V) from frame_hashes -> (n, m).

    The smaller of (a's canonical vs b's windows) and (b's canonical vs a's windows), so it does
    not matter which of the two frames is the cropped one.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.int64)
    ab = _canonical_vs_variants(a[:, 0], b[:, 1:], chunk_bytes)
    ba = _canonical_vs_variants(b[:, 0], a[:, 1:], chunk_bytes)
    return np.minimum(ab, ba.T)


@dataclass(frozen=True)
class DuplicatePair:
    source_a: str
    key_a: str
    source_b: str
    key_b: str
    distance: int

    def as_dict(self) -> dict:
        return {"source_a": self.source_a, "key_a": self.key_a, "source_b": self.source_b,
                "key_b": self.key_b, "hamming_bits": self.distance}


MAX_PAIRS = 100_000
"""Pairs kept (the closest): sources that share scenes, or frames too plain to tell apart, can
match millions of times, and a list of every one would not fit in memory; their count is kept."""


def pair_distances(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray,
                   chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(min_hamming(a[ia[i]], b[ib[i]]), a's canonical against b's windows only) for each i."""
    out, ab_out = np.empty(len(ia), np.int64), np.empty(len(ia), np.int64)
    for s in range(0, len(ia), chunk):
        x, y = a[ia[s:s + chunk]], b[ib[s:s + chunk]]
        ab = np.bitwise_count(x[:, :1] ^ y[:, 1:]).min(axis=1)
        ba = np.bitwise_count(y[:, :1] ^ x[:, 1:]).min(axis=1)
        out[s:s + chunk], ab_out[s:s + chunk] = np.minimum(ab, ba), ab
    return out, ab_out


def near_pair_blocks(a: np.ndarray, b: np.ndarray, threshold: int = DEFAULT_THRESHOLD, block_bytes: int = 1 << 24,
                     bands: int | None = -1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Blocks of (i, j, distance), every pair with min_hamming(a[i], b[j]) <= threshold exactly once.

    a (n, 1+V), b (m, 1+V) from frame_hashes. A pair matches when a's canonical is within the
    threshold of one of b's windows or the other way round, so candidates are looked up both ways
    (:mod:`hamming_index`) and each is checked with the exact distance. bands: -1 chooses the plan
    from the sizes, None compares all pairs (a block of rows at a time), k uses k bands.
    """
    if len(a) == 0 or len(b) == 0:
        return
    v = a.shape[1] - 1
    if bands == -1:
        bands = hamming_index.choose_bands([(len(a), len(b) * v), (len(b), len(a) * v)], threshold)
    if bands is None:
        rows = max(1, block_bytes // max(1, 8 * len(b)))
        for s in range(0, len(a), rows):
            dist = min_hamming(a[s:s + rows], b, chunk_bytes=block_bytes)
            r, c = np.nonzero(dist <= threshold)
            yield r + s, c, dist[r, c]
        return
    layout = hamming_index.bands(bands)
    for qa, ta, flip in ((a, b, False), (b, a, True)):
        canon, windows = qa[:, 0], np.ascontiguousarray(ta[:, 1:])
        flat = windows.ravel()
        for qi, entry, band in hamming_index.candidates(canon, windows, threshold, bands):
            x = canon[qi] ^ flat[entry]
            near = np.bitwise_count(x) <= threshold
            qi, entry, x = qi[near], entry[near], x[near]
            ti, w = entry // v, entry % v
            # One witness per pair, so each is yielded once without remembering what was seen: the
            # first window of the frame within the threshold, found through the first band within
            # threshold // bands bits of it; and the second direction only yields pairs the first
            # could not see.
            first_window = np.argmax(np.bitwise_count(canon[qi, None] ^ windows[ti]) <= threshold, axis=1)
            band_bits = np.stack([np.bitwise_count((x >> np.uint64(sh)) & np.uint64((1 << wd) - 1))
                                  for sh, wd in layout], axis=1)
            first_band = np.argmax(band_bits <= threshold // bands, axis=1)
            keep = (first_window == w) & (first_band == band)
            ia, ib = (ti[keep], qi[keep]) if flip else (qi[keep], ti[keep])
            d, ab = pair_distances(a, b, ia, ib)
            if flip:
                seen = ab <= threshold
                ia, ib, d = ia[~seen], ib[~seen], d[~seen]
            yield ia, ib, d


def near_pairs(a: np.ndarray, b: np.ndarray, threshold: int = DEFAULT_THRESHOLD, block_bytes: int = 1 << 24,
               bands: int | None = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j, distance) with min_hamming(a[i], b[j]) <= threshold, sorted by (i, j)
    (all held at once: :func:`find_duplicates` keeps only the closest)."""
    found = list(near_pair_blocks(a, b, threshold, block_bytes, bands))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    ia, ib, d = (np.concatenate(x).astype(np.int64) for x in zip(*found))
    order = np.lexsort((ib, ia))
    return ia[order], ib[order], d[order]


def find_duplicates(hashes: dict[str, tuple[Any, np.ndarray]], threshold: int = DEFAULT_THRESHOLD,
                    block_bytes: int = 1 << 24, bands: int | None = -1,
                    max_pairs: int = MAX_PAIRS) -> tuple[list[DuplicatePair], int]:
    """Near-duplicate frames between *different* sources: (the closest max_pairs pairs, closest
    first, and how many pairs there are in all).

    hashes: source name -> (keys (str, or UTF-8 bytes), (n, K) uint64 crop hashes). Frames within
    one source are not compared with each other. Memory stays bounded whatever the sources' sizes
    and however many pairs match; keys are only looked up for the pairs kept.
    """
    names = sorted(hashes)
    pairs: list[DuplicatePair] = []
    total = 0
    for i, na in enumerate(names):
        for nb in names[i + 1:]:
            (ka, ha), (kb, hb) = hashes[na], hashes[nb]
            ka, kb = _as_bytes(ka), _as_bytes(kb)
            kept = [np.zeros(0, np.int64)] * 3
            for block in near_pair_blocks(ha, hb, threshold, block_bytes, bands):
                total += len(block[0])
                kept = [np.concatenate([k, x]) for k, x in zip(kept, block)]
                if len(kept[0]) > 2 * max_pairs:
                    kept = _closest(kept, ka, kb, max_pairs)
            for r, c, d in zip(*_closest(kept, ka, kb, max_pairs)):
                pairs.append(DuplicatePair(na, ka[r].decode(), nb, kb[c].decode(), int(d)))
    pairs.sort(key=lambda p: (p.distance, p.source_a, p.key_a, p.source_b, p.key_b))
    return pairs[:max_pairs], total


def _closest(found: list[np.ndarray], ka: np.ndarray, kb: np.ndarray, n: int) -> list[np.ndarray]:
    """The n pairs first in (distance, key a, key b) order (UTF-8 bytes sort as the text does)."""
    ia, ib, d = found
    order = np.lexsort((kb[ib], ka[ia], d))[:n]
    return [ia[order], ib[order], d[order]]


def _as_bytes(keys: Any) -> np.ndarray:
    keys = np.asarray(keys)
    return keys if keys.dtype.kind == "S" else np.array([str(k).encode() for k in keys])
