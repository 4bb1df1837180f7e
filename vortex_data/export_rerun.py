"""`vortex-data export rerun`: a manifest's samples as a Rerun recording (.rrd), to look at in 3-D.

Per sample, under ``<dataset>/<split>/camera``: a ``Pinhole`` from the stored intrinsics (RDF
camera axes), the RGB ``Image``, a ``DepthImage`` of the stored millimetres with ``meter`` = 1000
(so the viewer back-projects it in metres) and a ``SegmentationImage`` named by one static
``AnnotationContext`` (the 6 classes; 255 = ignore, transparent). Femto Bolt samples go on the
``sensor_time`` timeline from their colour timestamps; the others on the ``frame`` index.

Only writes a file: the recording stream is never connected to a viewer or spawned, so nothing
goes over the network. Needs the ``[viz]`` extra (``rerun-sdk``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError, VortexError
from .format.manifest import load_manifest
from .format.schema import CLASS_NAMES, DEPTH_SCALE_MM, IGNORE_INDEX, decode_sample
from .format.tar_index import read_samples
from .temporaries import output_file
from .views import PALETTE

TIMESTAMP_FIELD = "color_timestamp_us"
"""Metadata field of a Femto Bolt sample: the colour frame's device timestamp in microseconds."""


def import_rerun() -> Any:
    try:
        import rerun
    except ImportError:
        raise VortexError("`vortex-data export rerun` needs rerun-sdk: pip install 'vortex-data[viz]' "
                           "(or pip install rerun-sdk)") from None
    return rerun


def entity(meta: dict[str, Any]) -> str:
    return f"{meta['dataset']}/{meta['split']}/camera"


def iter_selected(manifest: Path, keys: list[str] | None, limit: int | None) -> Iterator[dict[str, Any]]:
    """Decoded samples of the manifest in shard order: those in ``keys`` (all when None), at most
    ``limit``. Raises InputError naming keys that are not in the manifest."""
    wanted = set(keys) if keys else None
    found = 0
    for shard in load_manifest(manifest).shard_paths():
        for key, members in read_samples(shard):
            if wanted is not None and key not in wanted:
                continue
            yield decode_sample(members, key)
            found += 1
            if wanted is not None:
                wanted.discard(key)
            if limit is not None and found >= limit:
                return
            if wanted is not None and not wanted:
                return
    if wanted:
        raise InputError(f"{manifest}: no sample with key(s) {', '.join(sorted(wanted)[:5])}")


def export(manifest: Path, out: Path, keys: list[str] | None = None, limit: int | None = None) -> int:
    """Write the recording; returns the number of samples logged. The file appears whole or not
    at all (:func:`vortex_data.temporaries.output_file`): a failed export leaves no partial .rrd."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    m = load_manifest(manifest)
    with output_file(out) as f:
        rr = import_rerun()
        # send_properties=False: no machine/environment properties in the file. Rerun writes into
        # our temporary (made already, so a bad path was our one-line error, not rerun's traceback);
        # its file sink streams to disk as samples are logged.
        rec = rr.RecordingStream(f"vortex-data-{m.dataset}-{m.split}", send_properties=False)
        rec.save(f.name)
        try:
            n = _log_samples(rr, rec, m, manifest, keys, limit)
            rec.flush()
        finally:
            rec.disconnect()  # closes the file sink before the temporary is renamed or removed
    return n


def _log_samples(rr: Any, rec: Any, m: Any, manifest: Path, keys: list[str] | None, limit: int | None) -> int:
    """The class names, then each selected sample under its entity; returns the count."""
    classes = [rr.AnnotationInfo(id=i, label=n, color=tuple(int(v) for v in c))
               for i, (n, c) in enumerate(zip(CLASS_NAMES, PALETTE))]
    classes.append(rr.AnnotationInfo(id=IGNORE_INDEX, label="ignore", color=(0, 0, 0, 0)))
    rec.log(f"{m.dataset}/{m.split}", rr.AnnotationContext(classes), static=True)
    n = 0
    for i, s in enumerate(iter_selected(manifest, keys, limit)):
        meta, path = s["meta"], entity(s["meta"])
        if TIMESTAMP_FIELD in meta:
            rec.set_time("sensor_time", duration=int(meta[TIMESTAMP_FIELD]) * 1e-6)
        else:
            rec.set_time("frame", sequence=i)
        k = meta["intrinsics"]
        h, w = s["depth_mm"].shape
        rec.log(path, rr.Pinhole(focal_length=[k["fx"], k["fy"]], principal_point=[k["cx"], k["cy"]],
                                 width=w, height=h, camera_xyz=rr.ViewCoordinates.RDF))
        rec.log(f"{path}/rgb", rr.Image(s["rgb"], color_model="RGB"))
        rec.log(f"{path}/depth", rr.DepthImage(s["depth_mm"], meter=DEPTH_SCALE_MM))  # decode_sample gives millimetres
        if s["has_seg"]:
            rec.log(f"{path}/labels", rr.SegmentationImage(s["seg"]))
        rec.log(f"{path}/key", rr.TextLog(s["key"]))
        n += 1
    return n


def add_parser(subparsers: argparse._SubParsersAction, **kw: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", **kw)
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    r = sub.add_parser("rerun", help="a Rerun .rrd recording: pinhole camera, RGB, metric depth, labels",
                       description="Write a manifest's samples as a Rerun recording (.rrd): per sample a Pinhole "
                                   "camera from the stored intrinsics, the RGB image, the depth (shown "
                                   "back-projected in metres) and the labels with the 6 class names. Femto Bolt "
                                   "samples lie on a sensor_time timeline, others on a frame index. Open it with "
                                   "`rerun FILE.rrd`. Needs the [viz] extra (rerun-sdk); writes the file only, "
                                   "opens no network connection.")
    r.add_argument("manifest", type=Path, help="manifest JSON (<dataset>-<split>.json)")
    r.add_argument("--out", type=Path, required=True, help="the .rrd file to write")
    r.add_argument("--limit", type=int, default=None, help="at most this many samples (default: all)")
    r.add_argument("--keys", nargs="+", default=None, metavar="KEY", help="only these sample keys")
    r.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    n = export(args.manifest, args.out, args.keys, args.limit)
    print(f"wrote {n} samples to {args.out}; open it with: rerun {args.out}")
    return 0
