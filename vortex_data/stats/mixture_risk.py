"""Mixture configs as `vortex-data stats` reads them, and the risk of label-less batches.

The config is the loader's mixture format (see docs/loader.md), read by the loader's own code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..stream.mixture import Mixture, quotas as loader_quotas, resolve_mixture


def read_mixture(path: Path | str, split: str = "train", manifests_dir: Path | None = None) -> Mixture:
    """The loader's mixture -- a TOML/JSON file or a shipped recipe name such as ``stage1``, read
    by :func:`vortex_data.stream.mixture.resolve_mixture` so both tools agree -- with every source's
    manifest resolved to its path for ``split``. Raises :class:`MixtureError` naming the file."""
    mix = resolve_mixture(str(path), manifests_dir=manifests_dir)
    sources = tuple(replace(s, manifest=mix.manifest_path(s, split)) for s in mix.sources)
    return replace(mix, sources=sources, manifests_dir=None)


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
    """The loader's exact per-epoch shares (:func:`vortex_data.stream.mixture.quotas`); a source of
    weight 0 (no frames, when weights follow frame counts) gets none."""
    used = [i for i, w in enumerate(weights) if w > 0]
    out = [0] * len(weights)
    for i, q in zip(used, loader_quotas([weights[i] for i in used], total)):
        out[i] = q
    return out


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


def labelless_in_plan(weights: list[float], labelled: list[np.ndarray], batch: int, epoch_size: int,
                      batching: str, epochs: int = 4, seed: int = 0) -> dict[str, Any]:
    """The loader's own epoch plans (:func:`vortex_data.stream.batching.plan_batched`, the given batching)
    for ``epochs`` epochs, cut into full batches: the share of batches with no labelled sample
    (exact for those plans, not a model of them), and whether stratified batching rules such a
    batch out by construction (the fully labelled sources, dealt as one run, have at least one
    seat in every full batch)."""
    from ..stream.batching import labelled_order, plan_batched, source_quotas, stratified_counts

    sizes = [len(f) for f in labelled]
    if not sizes or min(sizes) == 0 or epoch_size < batch:
        return {"batching": batching, "plan_labelless": None, "plan_epochs": 0, "by_construction": False}
    order = list(labelled_order(labelled))  # the loader's seat order, from the same flags
    empty = total = 0
    for e in range(epochs):
        plan = plan_batched(sizes, weights, epoch_size, seed, e, batching, batch, order)
        hit = np.zeros(len(plan), bool)
        for s, flags in enumerate(labelled):
            mine = plan.source == s
            hit[mine] = flags[plan.index[mine]]
        m = len(plan) // batch
        empty += int((~hit[:m * batch].reshape(m, batch).any(axis=1)).sum())
        total += m
    full = [s for s in order if len(labelled[s]) and labelled[s].all()]
    by_construction = False
    if batching == "stratified" and full:
        counts, _ = stratified_counts(source_quotas(weights, epoch_size), batch, order)
        by_construction = bool(len(counts)) and int(counts[:, full].sum(axis=1).min()) >= 1
    return {"batching": batching, "plan_labelless": empty / total if total else None, "plan_epochs": epochs,
            "by_construction": by_construction}
