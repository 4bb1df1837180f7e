"""Mixture configs as `vortex-data stats` reads them, and the risk of label-less batches.

The config is the loader's mixture format (see docs/loader.md), read by the loader's own code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mixture import MixtureError, resolve_mixture


class MixtureFileError(ValueError):
    """A mixture file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class MixtureSource:
    name: str
    manifest: Path
    weight: float
    key_pattern: str | None = None


@dataclass(frozen=True)
class MixtureSpec:
    sources: tuple[MixtureSource, ...]
    epoch_size: int | None
    name: str


def read_mixture(path: Path | str, split: str = "train", manifests_dir: Path | None = None) -> MixtureSpec:
    """The loader's mixture -- a TOML/JSON file or a shipped recipe name such as ``stage1``, read
    by :func:`vortex_data.mixture.resolve_mixture` so both tools agree -- resolved for ``split``."""
    try:
        mix = resolve_mixture(str(path), manifests_dir=manifests_dir)
    except MixtureError as e:
        raise MixtureFileError(str(e)) from None
    sources = tuple(MixtureSource(s.name, Path(mix.manifest_path(s, split)), s.weight, s.key_pattern)
                    for s in mix.sources)
    return MixtureSpec(sources, mix.epoch_size, mix.name)


def normalised(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def p_labelled_draw(weights: list[float], labelled_fraction: list[float]) -> float:
    """Probability that one draw is a labelled sample: sum_s w_s * (labelled fraction of s)."""
    return float(np.dot(normalised(weights), labelled_fraction))


def p_labelless_iid(weights: list[float], labelled_fraction: list[float], batch: int) -> float:
    """Closed form for independent draws: P(no labelled sample in a batch of B) = (1 - p)^B."""
    return (1.0 - p_labelled_draw(weights, labelled_fraction)) ** batch


def simulate_labelless_iid(weights: list[float], labelled: list[np.ndarray], batch: int, batches: int,
                           rng: np.random.Generator) -> float:
    """Monte-Carlo: draw a source by weight, then a sample uniformly within it, B times per batch."""
    w = normalised(weights)
    src = rng.choice(len(w), size=(batches, batch), p=w)
    hit = np.zeros((batches, batch), bool)
    for s, flags in enumerate(labelled):
        mask = src == s
        hit[mask] = flags[rng.integers(0, len(flags), mask.sum())]
    return float((~hit.any(axis=1)).mean())


def quotas(weights: list[float], total: int) -> list[int]:
    """Exact per-epoch shares by the largest-remainder method (as the loader plans epochs)."""
    exact = normalised(weights) * total
    base = np.floor(exact).astype(np.int64)
    order = sorted(range(len(base)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[: total - int(base.sum())]:
        base[i] += 1
    return base.tolist()


def simulate_labelless_quota(weights: list[float], labelled: list[np.ndarray], batch: int, epoch_size: int,
                             epochs: int, rng: np.random.Generator) -> float:
    """Monte-Carlo of exact quotas: each epoch takes round(w_s x E) samples of source s without
    replacement (cycling whole permutations when the quota exceeds the source), shuffles the
    epoch and cuts it into full batches. Fewer independent draws -> slightly fewer label-less
    batches than (1 - p)^B."""
    q = quotas(weights, epoch_size)
    empty = total = 0
    for _ in range(epochs):
        parts = []
        for flags, n in zip(labelled, q):
            reps = -(-n // len(flags)) if len(flags) else 0
            idx = np.concatenate([rng.permutation(len(flags)) for _ in range(reps)])[:n] if reps else np.zeros(0, int)
            parts.append(flags[idx])
        epoch = rng.permutation(np.concatenate(parts))
        full = len(epoch) // batch * batch
        b = epoch[:full].reshape(-1, batch)
        empty += int((~b.any(axis=1)).sum())
        total += len(b)
    return empty / total if total else float("nan")


def p_labelless_quota(weights: list[float], labelled_fraction: list[float], batch: int, epoch_size: int) -> float:
    """Closed form for a shuffled epoch with exactly L = sum_s q_s x f_s labelled samples
    (hypergeometric): P = C(E - L, B) / C(E, B). Exact when each source's quota is a whole
    number of passes; otherwise the labelled count varies a little between epochs."""
    q = quotas(weights, epoch_size)
    labelled = round(float(np.dot(q, labelled_fraction)))
    if batch > epoch_size:
        return float("nan")
    p = 1.0
    for i in range(batch):
        p *= max(0.0, (epoch_size - labelled - i) / (epoch_size - i))
    return p
