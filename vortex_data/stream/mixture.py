"""Weighted dataset mixtures and the per-epoch sample plan.

A mixture is a list of sources (one manifest each, with a weight) and an epoch size in samples.
Everything here is a pure function of (seed, epoch): the plan for an epoch is the same on every
rank, every worker and every restart, which is what makes DDP splitting and exact resume simple.

Cycling rule: a source whose quota q exceeds its size n contributes ceil(q / n) whole
permutations of its samples, each drawn with its own seed, concatenated and cut to q. So every
sample appears either floor(q / n) or ceil(q / n) times and no sample repeats inside one pass.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .._toml import tomllib
from ..errors import InputError
from ..format.manifest import ManifestError, load_manifest
from ..recipes import RecipeError, recipe_path
from .sample_index import SampleIndexError, SourceIndex, load_source_index


BATCHING = ("random", "stratified", "per_source")
"""Batch compositions a mixture may ask for (:mod:`vortex_data.stream.batching`)."""


class MixtureError(InputError):
    """A mixture config or manifest that cannot be used (names the file and the problem)."""


def check_batching(batching: str, where: str = "") -> str:
    """``batching`` if it is one of :data:`BATCHING`, else MixtureError (``where`` names the mixture)."""
    if batching not in BATCHING:
        raise MixtureError(f"{where}batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    return batching


@dataclass(frozen=True)
class Source:
    """One manifest in a mixture.

    manifest:    path to ``<dataset>-<split>.json``; ``{split}`` is replaced by the split asked for,
                 relative paths are resolved against the manifests directory.
    weight:      relative share of the epoch (normalised over the mixture).
    key_pattern: optional regex; only keys that match are used (e.g. DIODE indoor scenes only).
    """

    name: str
    manifest: str
    weight: float
    key_pattern: str | None = None


@dataclass(frozen=True)
class Mixture:
    sources: tuple[Source, ...]
    epoch_size: int
    name: str = "mixture"
    manifests_dir: Path | None = None
    batching: str = "random"
    """Batch composition: 'random', 'stratified' or 'per_source' (see :mod:`vortex_data.stream.batching`)."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise MixtureError(f"mixture {self.name!r}: no sources")
        if self.epoch_size <= 0:
            raise MixtureError(f"mixture {self.name!r}: epoch_size must be positive, got {self.epoch_size}")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise MixtureError(f"mixture {self.name!r}: duplicate source names {names}")
        check_batching(self.batching, f"mixture {self.name!r}: ")
        for s in self.sources:
            if not (s.weight > 0 and math.isfinite(s.weight)):
                raise MixtureError(f"mixture {self.name!r}: source {s.name!r} weight must be > 0, got {s.weight}")

    def manifest_path(self, source: Source, split: str) -> str:
        """Manifest location for a split: a URL is kept, a relative path joins the manifests dir."""
        path = source.manifest.replace("{split}", split)
        if "://" in path or Path(path).is_absolute() or self.manifests_dir is None:  # a URL, file:// too
            return path
        return str(Path(self.manifests_dir) / path)


def load_mixture(path: str | Path, manifests_dir: str | Path | None = None) -> Mixture:
    """Read a mixture from TOML (``.toml``) or JSON.

    Format: ``name``, ``epoch_size``, optional ``batching`` ('random' default, 'stratified',
    'per_source') and a list ``source`` of tables with ``name``, ``manifest``, ``weight`` and
    optional ``key_pattern``. ``manifests_dir`` overrides the config's own
    ``manifests_dir``; a relative one in the config is relative to the config file.
    """
    path = Path(path)
    try:
        text = path.read_text()
        cfg = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as e:
        raise MixtureError(f"{path}: cannot read mixture config ({e})") from None
    try:
        sources = tuple(
            Source(name=str(s["name"]), manifest=str(s["manifest"]), weight=float(s["weight"]),
                   key_pattern=s.get("key_pattern"))
            for s in cfg["source"]
        )
        epoch_size = int(cfg["epoch_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise MixtureError(f"{path}: mixture needs 'epoch_size' and [[source]] name/manifest/weight ({e!r})") from None
    if manifests_dir is None and cfg.get("manifests_dir") is not None:
        manifests_dir = path.parent / cfg["manifests_dir"]
    try:
        return Mixture(sources, epoch_size, str(cfg.get("name", path.stem)),
                       Path(manifests_dir) if manifests_dir is not None else None, str(cfg.get("batching", "random")))
    except MixtureError as e:
        raise MixtureError(f"{path}: {e}") from None


# ---------------------------------------------------------------- pure planning functions

def rng_for(seed: int, *parts: int | str) -> np.random.Generator:
    """A generator determined by the seed and a path of ints/strings (stable across processes;
    Python's hash() is salted per process, so strings go through blake2b)."""
    words = [int(seed) & 0xFFFFFFFF]
    for p in parts:
        if isinstance(p, str):
            p = int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little")
        words.extend([p & 0xFFFFFFFF, (p >> 32) & 0xFFFFFFFF])
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def quotas(weights: Sequence[float], total: int) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` by the largest-remainder method.

    The shares sum to exactly ``total``; ties in the remainder go to the earlier source, so the
    result does not depend on anything but the arguments.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.all(w > 0):
        raise MixtureError(f"weights must be a non-empty list of positive numbers, got {list(weights)}")
    exact = w / w.sum() * total
    base = np.floor(exact).astype(np.int64)
    left = total - int(base.sum())
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:left]:
        base[i] += 1
    return [int(b) for b in base]


def source_draws(size: int, quota: int, seed: int, epoch: int, source: int) -> tuple[np.ndarray, np.ndarray]:
    """Which samples of a source an epoch uses: (sample indices, pass number of each draw).

    Without replacement and reshuffled every epoch; past ``size`` the source is cycled with whole
    fresh permutations (pass 0, 1, ...). The pass number lets augmentation differ between the
    copies of a cycled sample.
    """
    if size <= 0:
        raise MixtureError(f"source {source} has no samples but a quota of {quota}")
    passes = -(-quota // size) if quota else 0
    # Only what the quota takes is kept: a worker builds this every epoch, and temporaries the
    # size of the source stay in its heap after they are freed. Shuffling an int32 range draws
    # the same permutation as permutation(size) (the swaps do not depend on the dtype) in half
    # the memory: 4 MB at 1M samples.
    flat = np.empty(quota, np.int64)
    dtype = np.int32 if size < 2**31 else np.int64
    for p in range(passes):
        take = min(size, quota - p * size)
        perm = np.arange(size, dtype=dtype)
        rng_for(seed, "draw", epoch, source, p).shuffle(perm)  # in place: permutation() would copy it
        flat[p * size:p * size + take] = perm[:take]
    return flat, np.arange(quota, dtype=np.int64) // size


@dataclass(frozen=True)
class EpochPlan:
    """The epoch's samples in order: ``source[i]``, ``index[i]`` (into that source) and
    ``repeat[i]`` (cycle pass) of the i-th sample."""

    source: np.ndarray
    index: np.ndarray
    repeat: np.ndarray

    def __len__(self) -> int:
        return len(self.source)


def plan_epoch(sizes: Sequence[int], weights: Sequence[float], epoch_size: int, seed: int, epoch: int) -> EpochPlan:
    """The training plan: exact per-source quotas, each source drawn by :func:`source_draws`,
    then all draws interleaved by one uniform shuffle."""
    q = quotas(weights, epoch_size)
    parts = [source_draws(n, k, seed, epoch, s) for s, (n, k) in enumerate(zip(sizes, q))]
    src = np.concatenate([np.full(k, s, np.int64) for s, k in enumerate(q)])
    idx = np.concatenate([p[0] for p in parts])
    rep = np.concatenate([p[1] for p in parts])
    perm = rng_for(seed, "interleave", epoch).permutation(len(src))
    return EpochPlan(src[perm], idx[perm], rep[perm])


def plan_sequential(sizes: Sequence[int]) -> EpochPlan:
    """The evaluation plan: every sample of every source once, in manifest order."""
    src = np.concatenate([np.full(n, s, np.int64) for s, n in enumerate(sizes)])
    idx = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
    return EpochPlan(src, idx, np.zeros(len(src), np.int64))


# ---------------------------------------------------------------- manifests -> sample lists

def read_source_index(manifest: str, name: str | None = None, key_pattern: str | None = None,
                      cache_dir: str | None = None, cache_bytes: int | None = None) -> SourceIndex:
    """Manifest (+ its Parquet per-sample index) -> :class:`SourceIndex`, its per-sample arrays
    memory-mapped from the node's cache (``cache_dir`` or the default of
    :func:`vortex_data.stream.shard_cache.node_cache_dir`), built there once per node.

    Without a Parquet index the shards' tar headers are listed instead (slower, same result).
    ``cache_bytes``: the node cache's size limit a newly built folder is evicted against (the
    loader's ``cache_bytes``; None: the environment's or the default).
    """
    from .shard_cache import node_cache_dir

    try:
        return load_source_index(manifest, node_cache_dir(cache_dir), name, key_pattern, cache_bytes)
    except SampleIndexError as e:
        raise MixtureError(str(e)) from None


def manifest_mixture(manifest: str, name: str | None = None) -> Mixture:
    """A one-source mixture whose epoch is the manifest's samples (e.g. for evaluation)."""
    try:
        m = load_manifest(manifest)
        total = sum(int(s["samples"]) for s in m.shards)
    except (ManifestError, KeyError, TypeError) as e:
        raise MixtureError(e if isinstance(e, ManifestError) else f"{manifest}: bad shard list ({e!r})") from None
    label = name or str(m.dataset)
    return Mixture((Source(label, manifest, 1.0),), max(1, total), label)


def resolve_mixture(mixture: "Mixture | str | Path | None" = None, manifest: str | None = None,
                    manifests_dir: str | Path | None = None) -> Mixture:
    """What a caller names -> a Mixture: a Mixture as is; a config file path; a shipped recipe
    name (``stage1``); or, without a mixture, a single manifest. Recipes resolve manifests in
    ``manifests_dir`` (default ``manifests/`` in the working directory)."""
    if isinstance(mixture, Mixture):
        return mixture
    if mixture is not None:
        path = Path(mixture)
        if path.is_file():
            return load_mixture(path, manifests_dir)
        if path.suffix or "/" in str(mixture):
            raise MixtureError(f"{mixture}: mixture file not found")
        try:
            path = recipe_path(str(mixture), mixtures=True)
        except RecipeError as e:
            raise MixtureError(str(e)) from None
        return load_mixture(path, manifests_dir or "manifests")
    if manifest is not None:
        return manifest_mixture(str(manifest))
    raise MixtureError("give a mixture (file, recipe name or Mixture) or a manifest")
