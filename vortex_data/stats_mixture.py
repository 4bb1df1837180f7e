"""Mixture configs as `vortex-data stats` reads them, and the risk of label-less batches.

The config is the loader's recipe format (TOML, or JSON with the same keys): an optional
``epoch_size`` and a list of sources under ``source`` (or ``sources``), each with ``manifest``,
``weight`` and optional ``name`` and ``key_pattern``; ``{split}`` in a manifest path is
replaced by the split asked for; other keys are ignored.
"""

from __future__ import annotations

import json
import math
from ._toml import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


def _resolve(path: str, candidates: list[Path]) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    for base in candidates:
        if (base / p).is_file():
            return base / p
    return candidates[0] / p


def read_mixture(path: Path, split: str = "train", manifests_dir: Path | None = None) -> MixtureSpec:
    """Parse a mixture file. Relative manifest paths are looked up in ``manifests_dir``, the
    config's own ``manifests_dir``, the file's folder, then the working directory."""
    try:
        text = path.read_text()
        cfg = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as e:
        raise MixtureFileError(f"{path}: cannot read mixture file ({e})") from None
    raw = cfg.get("source", cfg.get("sources"))
    if not isinstance(raw, list) or not raw:
        raise MixtureFileError(f"{path}: no sources (expected [[source]] tables with manifest and weight)")
    bases = [b for b in (manifests_dir, path.parent / cfg["manifests_dir"] if "manifests_dir" in cfg else None) if b]
    bases += [path.parent, Path.cwd()]
    sources = []
    for i, s in enumerate(raw):
        try:
            weight = float(s["weight"])
            manifest = str(s["manifest"]).replace("{split}", split)
        except (KeyError, TypeError, ValueError) as e:
            raise MixtureFileError(f"{path}: source {i} needs 'manifest' and a numeric 'weight' ({e!r})") from None
        if not (weight > 0 and math.isfinite(weight)):
            raise MixtureFileError(f"{path}: source {i} weight must be a positive number, got {s['weight']!r}")
        name = str(s.get("name", Path(manifest).stem))
        sources.append(MixtureSource(name, _resolve(manifest, bases), weight, s.get("key_pattern")))
    if len({s.name for s in sources}) != len(sources):
        raise MixtureFileError(f"{path}: duplicate source names {[s.name for s in sources]}")
    epoch = cfg.get("epoch_size")
    return MixtureSpec(tuple(sources), int(epoch) if epoch is not None else None, str(cfg.get("name", path.stem)))


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
