"""Human-readable views of manifests and shards, and dumping one sample to image files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import pyarrow.compute as pc

from .errors import InputError
from .format.manifest import load_manifest
from .format.schema import CLASS_NAMES, DEPTH_SCALE_MM, decode_sample, extra_fields
from .format.tar_index import read_samples
from .views import depth_colours, label_colours



def manifest_summary(path: Path) -> dict[str, Any]:
    m = load_manifest(path)
    out: dict[str, Any] = {"manifest": str(path), "dataset": m.dataset, "split": m.split,
                           "converter_options": m.converter.get("options", {}), "totals": m.totals,
                           "rejected_examples": m.rejected[:5], "report": m.report}
    if m.part is not None:
        out["part"] = m.part
    try:
        t = m.read_index()
    except OSError:
        return out
    if t.num_rows:
        def q(col: str) -> list[float]:
            vals = pc.drop_null(t[col])
            return [round(float(v), 3) for v in pc.quantile(vals, q=[0.0, 0.5, 1.0]).to_pylist()] if len(vals) else []
        sizes = sorted({(w, h) for w, h in zip(t["width"].to_pylist(), t["height"].to_pylist())})
        out["index"] = {"samples": t.num_rows, "sizes": [f"{w}x{h}" for w, h in sizes][:10],
                        "with_labels": int(pc.sum(t["has_seg"].cast("int64")).as_py() or 0),
                        "valid_fraction_min_median_max": q("valid_fraction"),
                        "depth_median_m_min_median_max": q("depth_median_m")}
    return out


def format_summary(s: dict[str, Any]) -> str:
    t = s["totals"]
    rows = [("manifest", s["manifest"]), ("dataset / split", f"{s['dataset']} / {s['split']}")]
    if "part" in s:
        rows.append(("part", f"{s['part']['index'] + 1} of {s['part']['count']} (merge with merge-manifests)"))
    rows += [("options", json.dumps(s["converter_options"], sort_keys=True)),
             ("input frames", f"{t['input_frames']} = {t['written']} written + {t['rejected']} rejected"),
             ("shards", f"{t['shards']} ({t['bytes'] / 2**20:.1f} MiB)")]
    if t.get("rejected_by_code"):
        rows.append(("rejected by reason", ", ".join(f"{k}: {v}" for k, v in t["rejected_by_code"].items())))
    if t.get("depth_rejected_pixels"):
        rows.append(("depth pixels invalidated", f"{t['depth_rejected_pixels']} (non-finite, negative or > 65.5 m)"))
    idx = s.get("index")
    if idx:
        rows += [("resolutions", ", ".join(idx["sizes"])),
                 ("samples with labels", f"{idx['with_labels']} of {idx['samples']}"),
                 ("valid depth fraction", "min {} / median {} / max {}".format(*idx["valid_fraction_min_median_max"])),
                 ("median depth (m)", "min {} / median {} / max {}".format(*idx["depth_median_m_min_median_max"]))]
    for key, value in _flat_report(s.get("report", {})):
        rows.append((f"report: {key}", value))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for r in s["rejected_examples"]:
        lines.append(f"  rejected {r['frame']}: {r['reason']}")
    lines.append("For depth histograms, class balance and label-less-batch risk: vortex-data stats MANIFEST --out DIR")
    return "\n".join(lines)


def _flat_report(report: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Scalar facts of a converter report (one level of nesting), for the summary table."""
    out = []
    for k, v in report.items():
        if isinstance(v, dict) and not prefix:
            out += _flat_report(v, f"{k}.")
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) <= 200:
            out.append((prefix + k, str(v)))
    return out


def shard_listing(path: Path) -> list[dict[str, Any]]:
    out = []
    for key, members in read_samples(path):
        meta = json.loads(members.get("json", b"{}"))
        out.append({"key": key, "fields": {k: len(v) for k, v in members.items()},
                    "size": f"{meta.get('width')}x{meta.get('height')}", "has_seg": meta.get("has_seg")})
    return out


def dump_sample(shard: Path, key: str, to: Path) -> list[Path]:
    """Write one sample's RGB, colourised depth, raw 16-bit depth, labels and metadata."""
    for k, members in read_samples(shard):
        if k == key:
            break
    else:
        raise InputError(f"{shard}: no sample with key {key!r}")
    s = decode_sample(members, key)
    to.mkdir(parents=True, exist_ok=True)
    stem = key.replace("/", "_")
    files = {f"{stem}_rgb.png": cv2.cvtColor(s["rgb"], cv2.COLOR_RGB2BGR),
             f"{stem}_depth_color.png": cv2.cvtColor(depth_colours(s["depth_mm"] / DEPTH_SCALE_MM), cv2.COLOR_RGB2BGR),
             f"{stem}_depth_mm.png": s["depth_mm"]}
    files[f"{stem}_seg.png"] = cv2.cvtColor(label_colours(s["seg"]), cv2.COLOR_RGB2BGR)
    written = []
    for name, img in files.items():
        cv2.imwrite(str(to / name), img)
        written.append(to / name)
    meta_path = to / f"{stem}_meta.json"
    # the dataset's own fields parsed (schema 2 stores them as one JSON string), for a person to read
    meta_path.write_text(json.dumps({**s["meta"], "extra": extra_fields(s["meta"]), "classes": list(CLASS_NAMES)},
                                    indent=1))
    written.append(meta_path)
    return written
