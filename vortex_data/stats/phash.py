"""Compact perceptual image hashes and the cross-source near-duplicate search.

A frame is hashed as 64-bit DCT perceptual hashes (pHash: grey image -> 32x32 -> 2-D DCT -> the
8x8 lowest frequencies, one bit per coefficient above their median) of one canonical centre
window and of a small grid of windows around it (5 sizes x 3 x 3 offsets). Two frames match
when one frame's canonical hash is within a Hamming distance threshold of some window hash of
the other. Searching windows tolerates a border crop, with or without a resize (SUN RGB-D's kv1/NYUdata frames are NYU's 640x480 images with
a ~40 px border cut to 561x427): the central 50 % of the NYU frame and the central 56 % of the
SUN frame cover nearly the same scene. JPEG re-encoding, mild blur and brightness changes move
only a few bits; flips, rotations and crops off-centre by more than a few percent are not caught.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

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


def phash(grey: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash of a 2-D uint8 image (bit i = coefficient i > median)."""
    small = cv2.resize(grey, (HASH_SIZE, HASH_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    # The DC term tracks overall brightness only; leaving it out of the median keeps the
    # threshold about structure.
    bits = low > np.median(low[1:])
    return np.uint64(int(np.packbits(bits).view(">u8")[0]))


def _window(grey: np.ndarray, frac: float, dy: float, dx: float) -> np.ndarray:
    h, w = grey.shape
    ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
    y0 = min(max(0, round((h - ch) / 2 + dy * h)), h - ch)
    x0 = min(max(0, round((w - cw) / 2 + dx * w)), w - cw)
    return grey[y0:y0 + ch, x0:x0 + cw]


def frame_hashes(rgb: np.ndarray) -> np.ndarray:
    """Hashes of an (H, W, 3) uint8 RGB frame: [canonical, variant windows...] as uint64.

    Entry 0 is the centre window at CANONICAL_FRACTION; the rest cover every
    (VARIANT_FRACTIONS x VARIANT_SHIFTS^2) window, for matching against another frame's canonical.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    windows = [(CANONICAL_FRACTION, 0.0, 0.0)]
    windows += [(f, dy, dx) for f in VARIANT_FRACTIONS for dy in VARIANT_SHIFTS for dx in VARIANT_SHIFTS]
    return np.array([phash(_window(grey, *w)) for w in windows], np.uint64)


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


def find_duplicates(hashes: dict[str, tuple[list[str], np.ndarray]], threshold: int = DEFAULT_THRESHOLD,
                    block_bytes: int = 1 << 24) -> list[DuplicatePair]:
    """Near-duplicate frames between *different* sources.

    hashes: source name -> (keys, (n, K) uint64 crop hashes). Returns pairs with distance
    <= threshold, closest first. Frames within one source are not compared with each other.
    The distance matrix is computed a block of rows at a time and only the pairs under the
    threshold are kept, so memory stays near ``block_bytes`` whatever the sources' sizes.
    """
    names = sorted(hashes)
    pairs: list[DuplicatePair] = []
    for i, na in enumerate(names):
        for nb in names[i + 1:]:
            (ka, ha), (kb, hb) = hashes[na], hashes[nb]
            rows = max(1, block_bytes // max(1, 8 * len(hb)))
            for s in range(0, len(ha), rows):
                dist = min_hamming(ha[s:s + rows], hb, chunk_bytes=block_bytes)
                for r, c in zip(*np.nonzero(dist <= threshold)):
                    pairs.append(DuplicatePair(na, ka[s + r], nb, kb[c], int(dist[r, c])))
    pairs.sort(key=lambda p: (p.distance, p.source_a, p.key_a, p.source_b, p.key_b))
    return pairs
