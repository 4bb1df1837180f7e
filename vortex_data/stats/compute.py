"""`vortex-data stats`: dataset statistics for manifests and a mixture, as stats.json + report.html.

Per-sample facts already in the Parquet index (resolution, intrinsics, valid fraction, class
pixels, has_seg) are read from it; depth histograms, RGB sums and image hashes need the pixels
and come from one parallel streaming pass over the shards (:mod:`scan`). The JSON holds
every number the HTML shows; the HTML is rendered from the JSON alone (:mod:`report`).
What each number means is documented in docs/stats.md.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cpus import usable_cpus
from ..errors import InputError
from ..format.manifest import load_manifest
from ..format.schema import CLASS_NAMES, NUM_CLASSES
from ..stream.batching import repeats_in_batch, repeats_warning
from ..stream.mixture import Mixture
from . import gallery
from .mixture_risk import (labelless_in_plan, normalised, p_labelled_draw, p_labelless_iid, p_labelless_quota,
                           read_mixture, simulate_labelless_iid, simulate_labelless_quota)
from .numbers import (LOG_BINS_PER_DECADE, class_frequency, depth_percentiles_m, log_histogram,
                      median_frequency_weights, rgb_mean_std, summary)
from .phash import DEFAULT_THRESHOLD, find_duplicates
from .leakage import scene_leakage
from .scan import Accumulator, ShardTask, scan_shards

VALID_FRACTION_EDGES = np.linspace(0.0, 1.0, 21)
SIM_BATCHES = 20000


@dataclass(frozen=True)
class Unit:
    """One source of the report: a manifest, optionally restricted to keys matching a pattern."""

    name: str
    manifest: Path
    key_pattern: str | None = None
    weight: float | None = None


def plan_units(manifests: list[Path], mixture: Mixture | None) -> list[Unit]:
    """Sources to report: the mixture's (with weights), then any other manifest given."""
    units: list[Unit] = []
    if mixture is not None:
        units += [Unit(s.name, Path(s.manifest), s.key_pattern, s.weight) for s in mixture.sources]
    seen = {(u.manifest.resolve(), u.key_pattern) for u in units}
    names = {u.name for u in units}
    for path in manifests:
        if (path.resolve(), None) in seen:
            continue
        m = load_manifest(path)
        name = base = f"{m.dataset}-{m.split}"
        i = 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.add(name)
        seen.add((path.resolve(), None))
        units.append(Unit(name, path))
    if not units:
        raise InputError("no manifests: give MANIFEST paths or --mixture FILE")
    return units


def index_rows(unit: Unit) -> dict[str, np.ndarray]:
    """The index columns the statistics use, as numpy arrays (keys and shards as UTF-8 bytes)."""
    from ..stream.workers import return_freed_memory

    m = load_manifest(unit.manifest)
    names = ("key", "shard", "width", "height", "valid_fraction", "has_seg", "ignore_pixels", "fx", "fy",
             "class_pixels")
    parts: dict[str, list[np.ndarray]] = {c: [] for c in names}
    try:  # only the columns used (not the member maps), a row group at a time, no Python object per row
        index = m.index_file()
        for group in range(index.num_row_groups):  # the least memory of Arrow's ways to read a file
            batch = index.read_row_group(group, columns=list(names), use_threads=False)
            for c in names:
                col = batch.column(c).combine_chunks()
                parts[c].append(_bytes_column(col) if c in ("key", "shard") else
                                np.asarray(col.flatten(), np.int64).reshape(-1, NUM_CLASSES) if c == "class_pixels"
                                else col.to_numpy(zero_copy_only=False).copy())
    except OSError as e:
        raise InputError(f"{m.index_path()}: cannot read the Parquet index ({e})") from None
    return_freed_memory()  # what was read is copied out: Arrow's pool would keep its buffers
    empty = {"key": np.zeros(0, "S1"), "shard": np.zeros(0, "S1"), "class_pixels": np.zeros((0, NUM_CLASSES), np.int64)}
    cols = {c: _concat(p) if p else empty[c] if c in empty else
            np.zeros(0, index.schema_arrow.field(c).type.to_pandas_dtype()) for c, p in parts.items()}
    if unit.key_pattern:
        pattern = re.compile(unit.key_pattern)
        keep = np.fromiter((bool(pattern.search(k.decode())) for k in cols["key"]), bool, len(cols["key"]))
        cols = {k: v[keep] for k, v in cols.items()}
    return cols


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if parts and parts[0].dtype.kind == "S":  # bytes of different widths: the widest
        return np.concatenate([p.astype(max(p.dtype for p in parts)) for p in parts])
    return np.concatenate(parts)


def _bytes_column(col: Any) -> np.ndarray:
    """A string column of a record batch as a numpy bytes array (UTF-8, fixed width), built from
    Arrow's offsets and data buffers: no Python object per row."""
    from ..stream.sample_index import string_buffers

    n = len(col)
    if not n:
        return np.zeros(0, "S1")
    end, data = string_buffers(col)
    lens = np.diff(end)
    out = np.zeros((n, max(1, int(lens.max()))), np.uint8)
    starts = end[:-1]
    for j in range(out.shape[1]):  # a byte position at a time: memory O(rows), not O(bytes)
        has = lens > j
        out[has, j] = data[starts[has] + j]
    return out.view(f"S{out.shape[1]}").ravel()


def index_stats(unit: Unit, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Everything the Parquet index answers for one source."""
    m = load_manifest(unit.manifest)
    sizes, counts = np.unique(np.stack([rows["width"], rows["height"]], axis=1).reshape(-1, 2), axis=0,
                              return_counts=True)
    res = {f"{w}x{h}": int(c) for (w, h), c in zip(sizes.tolist(), counts)}
    fxn = np.round(rows["fx"].astype(np.float64) / rows["width"], 4)
    fxn_vals, fxn_counts = np.unique(fxn, return_counts=True)
    labelled = labelled_flags(rows)
    vf_counts, _ = np.histogram(rows["valid_fraction"], bins=VALID_FRACTION_EDGES)
    class_px = rows["class_pixels"].sum(axis=0)
    return {
        "name": unit.name, "manifest": str(unit.manifest), "dataset": m.dataset, "split": m.split,
        "key_pattern": unit.key_pattern, "frames": int(len(rows["key"])),
        "resolutions": dict(sorted(res.items())),
        "fx_over_width": {"values": fxn_vals.tolist(), "counts": fxn_counts.tolist(), **summary(fxn)},
        "hfov_deg": summary(np.degrees(2 * np.arctan(0.5 / fxn))) if len(fxn) else summary(fxn),
        "valid_fraction": {"edges": VALID_FRACTION_EDGES.tolist(), "counts": vf_counts.tolist(),
                           **summary(rows["valid_fraction"])},
        "has_seg_fraction": float(rows["has_seg"].mean()) if len(labelled) else 0.0,
        "labelled_fraction": float(labelled.mean()) if len(labelled) else 0.0,
        "class_pixels": class_px.tolist(),
        "class_frequency": class_frequency(class_px).tolist(),
        "class_weights": median_frequency_weights(rows["class_pixels"][labelled]).tolist(),
    }


def labelled_flags(rows: dict[str, np.ndarray]) -> np.ndarray:
    """A sample is labelled when it has a label map with at least one non-ignore pixel (the
    loader's and preflight's definition: :func:`vortex_data.stream.batching.labelled_flags`)."""
    from ..stream.batching import labelled_flags as flags

    return flags(rows["has_seg"], rows["class_pixels"])


def pixel_stats(acc: Accumulator) -> dict[str, Any]:
    """Everything the streaming pass answers for one source (or the mixture)."""
    edges, counts = log_histogram(acc.depth_counts)
    mean, std = rgb_mean_std(acc.rgb_pixels, acc.rgb_sum, acc.rgb_sq_sum)
    return {
        "depth_hist": {"edges_m": edges.tolist(), "counts": counts.tolist(),
                       "bins_per_decade": LOG_BINS_PER_DECADE},
        "depth_percentiles_m": depth_percentiles_m(acc.depth_counts),
        "depth_valid_pixels": int(acc.depth_counts[1:].sum()),
        "depth_invalid_pixels": int(acc.depth_counts[0]),
        "rgb_mean": mean, "rgb_std": std,
        "rgb_mean_01": [v / 255 for v in mean], "rgb_std_01": [v / 255 for v in std],
    }


def mixture_accumulator(accs: list[Accumulator], weights: np.ndarray) -> Accumulator:
    """Expected per-draw sums of a weighted mixture: sum_s w_s * (sums of s) / (frames of s).

    Scaled to 'per 10^6 draws' and rounded, so the integer accumulators still apply; the
    rounding error is below 1e-6 relative for any source with pixels.
    """
    scale = [w * 1e6 / a.samples if a.samples else 0.0 for a, w in zip(accs, weights)]
    out = Accumulator(samples=10**6)
    out.depth_counts = np.rint(sum(s * a.depth_counts.astype(np.float64) for a, s in zip(accs, scale))).astype(np.int64)
    out.rgb_pixels = int(round(sum(s * a.rgb_pixels for a, s in zip(accs, scale))))
    out.rgb_sum = np.rint(sum(s * a.rgb_sum.astype(np.float64) for a, s in zip(accs, scale))).astype(np.int64)
    out.rgb_sq_sum = np.rint(sum(s * a.rgb_sq_sum.astype(np.float64) for a, s in zip(accs, scale))).astype(np.int64)
    return out


def label_risk(weights: np.ndarray, labelled: list[np.ndarray], batch: int, epoch_size: int,
               seed: int = 0, batching: str = "random") -> dict[str, Any]:
    """P(batch holds no labelled sample): closed forms and simulations, iid and exact quotas, and
    the count over the loader's own plans with the mixture's batching."""
    fr = [float(f.mean()) if len(f) else 0.0 for f in labelled]
    rng = np.random.default_rng(seed)
    sim_iid = simulate_labelless_iid(list(weights), labelled, batch, SIM_BATCHES, rng)
    epochs = max(1, min(50, -(-SIM_BATCHES * batch // max(epoch_size, 1))))
    p = p_labelled_draw(list(weights), fr)
    # An epoch smaller than one batch has no full batch: there is nothing to compute for exact quotas.
    quota_note = (None if epoch_size >= batch else
                  f"not computed: the epoch of {epoch_size} samples is smaller than one batch of {batch}, so exact "
                  f"quotas give no full batch")
    sim_quota = closed_quota = None
    if quota_note is None:
        sim_quota = simulate_labelless_quota(list(weights), labelled, batch, epoch_size, epochs, rng)
        closed_quota = p_labelless_quota(list(weights), fr, batch, epoch_size)
    return {
        "batch_size": batch, "epoch_size": epoch_size, "p_labelled_draw": p,
        "closed_form_iid": p_labelless_iid(list(weights), fr, batch),
        "simulated_iid": sim_iid, "simulated_iid_batches": SIM_BATCHES,
        "simulated_iid_stderr": float(np.sqrt(max(sim_iid * (1 - sim_iid), 1e-12) / SIM_BATCHES)),
        "closed_form_quota": closed_quota, "simulated_quota": sim_quota, "simulated_quota_epochs": epochs,
        "quota_note": quota_note,
        **labelless_in_plan(list(weights), labelled, batch, epoch_size, batching, seed=seed),
        "curve": {"batch_sizes": list(range(1, 65)),
                  "closed_form_iid": [(1 - p) ** b for b in range(1, 65)]},
    }


def compute_stats(manifests: list[Path], mixture: Mixture | None = None, batch_size: int = 8,
                  workers: int = 1, progress: bool = True, dup_threshold: int = DEFAULT_THRESHOLD,
                  seed: int = 0) -> dict[str, Any]:
    """All report numbers as one JSON-able dict (the content of stats.json)."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    units = plan_units(manifests, mixture)
    rows = {u.name: index_rows(u) for u in units}
    if not any(len(r["key"]) for r in rows.values()):
        raise InputError(f"{', '.join(str(u.manifest) for u in units)}: no written samples, so no statistics can "
                         "be computed (`vortex-data inspect manifest` lists the rejected frames and why)")
    # Near-duplicates are searched between manifests (units that share one share its frames), so
    # frames are hashed only when there are at least two.
    labels = manifest_labels(units)
    hash_frames = len(set(labels.values())) > 1
    by_shard: dict[Path, list[tuple[str, str | None]]] = {}
    hash_as: dict[Path, str] = {}
    for u in units:
        for shard in load_manifest(u.manifest).shard_paths():
            by_shard.setdefault(shard, []).append((u.name, u.key_pattern))
            hash_as.setdefault(shard, labels[u.name])
    tasks = [ShardTask(s, tuple(srcs), hash_as[s] if hash_frames else None) for s, srcs in by_shard.items()]
    accs, hashed = scan_shards(tasks, workers=workers, progress=progress)
    sources = []
    for u in units:
        acc = accs.get(u.name, Accumulator())
        if acc.samples != len(rows[u.name]["key"]):
            raise InputError(f"{u.manifest}: shards hold {acc.samples} samples for {u.name}, "
                             f"the index lists {len(rows[u.name]['key'])}; run `vortex-data verify` on it")
        sources.append({**index_stats(u, rows[u.name]), **pixel_stats(acc)})

    if mixture is not None:
        weights, mix_name = normalised([u.weight or 0.0 for u in units if u.weight]), mixture.name
        mixed = [u for u in units if u.weight]
        epoch = mixture.epoch_size
        weight_rule = "weights from the mixture file, normalised to sum to 1"
    else:
        mixed = units
        frames = np.array([len(rows[u.name]["key"]) for u in units], np.float64)
        weights, mix_name = frames / frames.sum(), "all sources (weights proportional to frames)"
        epoch = int(frames.sum())
        weight_rule = "no mixture file: every frame equally likely (weights proportional to frame counts)"
    mix_rows = [rows[u.name] for u in mixed]
    mix_acc = mixture_accumulator([accs.get(u.name, Accumulator()) for u in mixed], weights)
    per_image = np.concatenate([r["class_pixels"][labelled_flags(r)] for r in mix_rows])
    image_w = np.concatenate([np.full(int(labelled_flags(r).sum()), w / max(1, len(r["key"])))
                              for r, w in zip(mix_rows, weights)])
    mix_class_px = sum(w * r["class_pixels"].sum(axis=0) / max(1, len(r["key"])) for r, w in zip(mix_rows, weights))
    labelled = [labelled_flags(r) for r in mix_rows]
    mix = {
        "name": mix_name, "weight_rule": weight_rule,
        "sources": [{"name": u.name, "weight": float(w)} for u, w in zip(mixed, weights)],
        "labelled_fraction": p_labelled_draw(list(weights), [float(f.mean()) if len(f) else 0.0 for f in labelled]),
        "class_frequency": class_frequency(np.asarray(mix_class_px, np.float64)).tolist(),
        "class_weights": median_frequency_weights(per_image, image_w).tolist(),
        **pixel_stats(mix_acc),
        "labelled_per_source": {u.name: float(f.mean()) if len(f) else 0.0 for u, f in zip(mixed, labelled)},
        "label_risk": label_risk(weights, labelled, batch_size, epoch, seed,
                                 mixture.batching if mixture is not None else "random"),
    }
    # per_source batches of a source smaller than a batch repeat its samples (the loader's and preflight's rule)
    repeats = repeats_in_batch([u.name for u in mixed], [len(f) for f in labelled],
                               mixture.batching if mixture is not None else "random", batch_size)
    mix["repeats_in_batch"] = repeats
    mix["repeats_warning"] = repeats_warning(repeats, batch_size)

    compared = {}
    for label in dict.fromkeys(labels.values()):
        keys = [rows[u.name]["key"] for u in units if labels[u.name] == label]
        compared[label] = len(keys[0]) if len(keys) == 1 else len(np.unique(np.concatenate(keys)))
    dups, found = find_duplicates({k: (h.frame_keys(), h.array()) for k, h in hashed.items()}, dup_threshold)
    far = {u.name: aligned(rows[u.name]["key"], accs.get(u.name, Accumulator()), u.manifest) for u in units}
    return {
        "class_names": list(CLASS_NAMES), "sources": sources, "mixture": mix,
        "duplicates": {"threshold_bits": dup_threshold, "compared": compared,
                       "pairs": [d.as_dict() for d in dups], "pairs_found": found},
        "gallery": gallery.select(units, rows, far, seed),
        "scene_leakage": scene_leakage(units),
    }


def manifest_labels(units: list[Unit]) -> dict[str, str]:
    """Unit name -> the name its manifest goes by in the near-duplicate search: the file name,
    or the path where two different manifests share a file name."""
    paths = {u.name: Path(u.manifest).resolve() for u in units}
    names: dict[str, set[Path]] = {}
    for p in paths.values():
        names.setdefault(p.name, set()).add(p)
    return {u.name: Path(u.manifest).name if len(names[paths[u.name].name]) == 1 else str(u.manifest)
            for u in units}


def aligned(keys: np.ndarray, acc: Accumulator, manifest: Path) -> np.ndarray:
    """The scan's far-depth shares in the index's row order (the same order unless the index
    was rewritten); every key of the index must have been scanned."""
    got, far = acc.frame_keys(), acc.far_shares()
    if len(got) == len(keys) and np.array_equal(got, keys):
        return far
    order = np.argsort(got)
    pos = np.minimum(np.searchsorted(got, keys, sorter=order), max(len(got) - 1, 0))
    if len(got) == 0 or not np.array_equal(got[order[pos]], keys):
        raise InputError(f"{manifest}: the shards do not hold the samples the index lists; run `vortex-data verify` on it")
    return far[order[pos]]


def write_outputs(stats: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write stats.json and the self-contained report.html; returns their paths."""
    from .report import render_html
    out_dir.mkdir(parents=True, exist_ok=True)
    js, html = out_dir / "stats.json", out_dir / "report.html"
    js.write_text(json.dumps(stats, indent=1) + "\n")
    html.write_text(render_html(stats), encoding="utf-8")
    return js, html


def demo_stats(manifests: list[Path], out_dir: Path, workers: int = 2, mixture: Mixture | None = None) -> Path:
    """Report for the demo's manifests (``mixture``: the training mixture whose risk and weights
    are reported; every manifest is still a source); prints and returns the report path."""
    stats = compute_stats(list(manifests), mixture, workers=workers, progress=False)
    _, html = write_outputs(stats, out_dir)
    print(f"stats report: {html}")
    return html


def add_parser(subparsers: argparse._SubParsersAction, **kw: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "stats", **kw,
        description="Statistics of built shards for one or more manifests and their mixture: frames, resolutions, "
                    "intrinsics, depth histogram and percentiles, valid-pixel fractions, class frequencies and "
                    "weights, RGB mean/std, the chance of a batch without labels, and near-duplicate frames "
                    "across sources. Writes OUT/report.html (self-contained) and OUT/stats.json.")
    p.add_argument("manifests", type=Path, nargs="*", help="manifest JSON files (<dataset>-<split>.json)")
    p.add_argument("--mixture", type=Path,
                   help="the loader's mixture: a TOML/JSON file ([[source]] name/manifest/weight) or a shipped "
                        "recipe name (stage1, stage2)")
    p.add_argument("--split", default="train", help="split substituted for {split} in the mixture (default train)")
    p.add_argument("--manifests-dir", type=Path, help="folder for relative manifest paths in the mixture (default: the file's manifests_dir; "
                        "manifests/ for a recipe name)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size for the label-less-batch risk (default 8)")
    p.add_argument("--dup-threshold", type=int, default=DEFAULT_THRESHOLD,
                   help=f"max differing hash bits (of 64) for a near-duplicate (default {DEFAULT_THRESHOLD})")
    p.add_argument("--workers", type=int, default=usable_cpus(),
                   help="processes for the shard pass (default: the CPUs this process may use)")
    p.add_argument("--out", type=Path, required=True, help="output folder for report.html and stats.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    mixture = read_mixture(args.mixture, args.split, args.manifests_dir) if args.mixture else None
    stats = compute_stats(args.manifests, mixture, args.batch_size, args.workers, not args.no_progress,
                          args.dup_threshold)
    js, html = write_outputs(stats, args.out)
    risk = stats["mixture"]["label_risk"]
    print(f"wrote {html} and {js}")
    if stats["mixture"].get("repeats_warning"):
        print(f"warning: {stats['mixture']['repeats_warning']}")
    quota = f"exact quotas {risk['quota_note']}" if risk["quota_note"] else \
        f"{risk['simulated_quota']:.4g} (simulated exact quotas)"
    plan = (f"{risk['plan_labelless']:.4g} in the loader's {risk['batching']} plans"
            + (" (none by construction)" if risk["by_construction"] else "")
            if risk["plan_labelless"] is not None else f"the loader's {risk['batching']} plans hold no full batch")
    print(f"P(batch of {risk['batch_size']} without labels): {risk['closed_form_iid']:.4g} (iid closed form), "
          f"{quota}, {plan}; "
          f"{len(stats['duplicates']['pairs'])} cross-source near-duplicate pairs")
    for leak in stats["scene_leakage"]:
        print(f"scene leakage {leak['pair']}: " + (f"unknown ({leak['unknown_because']})"
              if leak["leaked_frames"] is None else f"{leak['leaked_frames']} of {leak['frames']} evaluation "
              f"frames are of scenes also in training ({leak['shared_places']} scenes)"))
    return 0
