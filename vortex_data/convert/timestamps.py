"""Timestamped frames: the time in a frame file's name, and pairing two streams by time.

One rule for both, used by every reader of timestamped frames (Femto frame dumps, TUM RGB-D
sequences and ROS-style ``color/`` + ``depth/`` folders):

* :func:`stamp_from_name` — a file stem ending in ``<sec>.<frac>`` is a decimal time in seconds:
  ROS exports write ``<sec>.<nsec>`` with the nanoseconds zero-padded to 9 digits
  (``1305031102.175304000``), TUM writes ``<sec>.<usec>`` (``1305031102.175304``), and both read as
  the decimal fraction they are. Any other stem's last run of digits is microseconds
  (``color_1712345678901.jpg``, the Orbbec frame-dump naming). Returned in integer nanoseconds, so
  no precision is lost to a float.
* :func:`associate` — TUM's ``associate.py`` (Sturm et al., TUM RGB-D benchmark tools), the
  algorithm SLAM tools pair RGB-D streams with:

  1. every pair (a, b) with ``|a - b| < max_diff`` (strictly) is a candidate;
  2. candidates are sorted by (difference, a, b);
  3. in that order a candidate is kept when neither of its frames is taken yet (greedy by
     smallest difference; each frame used at most once).

  The result is one-to-one and does not depend on the input order. associate.py compares every
  pair (N x M); here only the candidates within the window of each ``a`` are formed, which yields
  the same set (the window is wider than ``max_diff`` and the exact test is applied afterwards).
  Give float seconds to reproduce associate.py bit for bit (it parses with ``float()``), or
  integer stamps for exact arithmetic.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import os_reason, scan_folder

_DECIMAL = re.compile(r"(\d+)\.(\d+)$")
_LAST_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def stamp_from_name(stem: str) -> int | None:
    """Nanoseconds encoded in a file stem (the name without its extension), or None if it has no
    digits. ``<sec>.<frac>`` at the end -> decimal seconds (at most 9 fraction digits); otherwise
    the last run of digits -> microseconds."""
    m = _DECIMAL.search(stem)
    if m:
        sec, frac = m.groups()
        if len(frac) > 9:
            return None  # finer than a nanosecond: not a time this rule knows
        return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0"))
    m = _LAST_DIGITS.search(stem)
    return int(m.group(1)) * 1000 if m else None


@dataclass
class StampedFolder:
    stamped: list[tuple[int, str]] = field(default_factory=list)
    """(nanoseconds, file name) of each image whose name carries a time."""
    unstamped: list[str] = field(default_factory=list)
    """Image names without a time in them."""
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """(name, why) for image entries that are no readable file (symlink loop, dangling link, folder)."""


def duplicate_times(times: list) -> list:
    """Times that occur more than once, sorted."""
    ordered = sorted(times)
    return sorted({a for a, b in zip(ordered, ordered[1:]) if a == b})


def stamped_files(folder: Path, exts: tuple[str, ...]) -> StampedFolder:
    """Every image of ``folder`` whose extension is in ``exts`` (lower case, with the dot), by name.
    InputError when the folder cannot be listed."""
    out = StampedFolder()
    entries, err = scan_folder(folder)
    if err is not None:
        raise InputError(f"{folder}: cannot be listed ({os_reason(err)})")
    for p in entries:
        if p.suffix.lower() not in exts:
            continue
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):
                out.unreadable.append((p.name, "not a regular file"))
                continue
        except OSError as e:
            out.unreadable.append((p.name, os_reason(e)))  # ELOOP for a symlink loop, ENOENT for a dangling link
            continue
        t = stamp_from_name(p.stem)
        if t is None:
            out.unstamped.append(p.name)
        else:
            out.stamped.append((t, p.name))
    return out


def associate(first: np.ndarray | list, second: np.ndarray | list, max_diff: float) -> list[tuple[int, int]]:
    """Index pairs (i, j) of ``first`` and ``second`` matched as TUM's associate.py matches them
    (module docstring), sorted by first[i]. Times must be distinct within each list."""
    a = np.asarray(first)
    b = np.asarray(second)
    if a.size == 0 or b.size == 0:
        return []
    order = np.argsort(b, kind="stable")
    bs = b[order]
    # The window is twice max_diff wide on each side: the exact |a - b| < max_diff test below
    # decides, so float rounding at the window's edge cannot drop a candidate associate.py keeps.
    lo = np.searchsorted(bs, a - 2 * max_diff, side="left")
    hi = np.searchsorted(bs, a + 2 * max_diff, side="right")
    counts = hi - lo
    ia = np.repeat(np.arange(a.size), counts)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    jb = order[starts + np.arange(ia.size)]
    diff = np.abs(a[ia] - b[jb])
    keep = diff < max_diff
    ia, jb, diff = ia[keep], jb[keep], diff[keep]
    used_a = np.zeros(a.size, bool)
    used_b = np.zeros(b.size, bool)
    pairs = []
    for k in np.lexsort((b[jb], a[ia], diff)):
        i, j = int(ia[k]), int(jb[k])
        if not used_a[i] and not used_b[j]:
            used_a[i] = used_b[j] = True
            pairs.append((i, j))
    pairs.sort(key=lambda p: a[p[0]])
    return pairs
