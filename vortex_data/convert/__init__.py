"""Source files -> shards + manifests: one converter per dataset, the shard writer (shards.py)
and its rerun records. This module is the registry of converters: `--dataset NAME` -> converter class.

Adding a dataset is one line here plus its module; the CLI and shard writer need no change.
Imports are lazy so `vortex-data --help` does not load every converter's dependencies.
"""

from __future__ import annotations

import importlib

from .base import Converter, Enumeration, FrameRef, Rejection, RejectFrame

CONVERTERS: dict[str, str] = {
    "diode": "vortex_data.convert.diode:DiodeConverter",
    "femto": "vortex_data.convert.femto:FemtoConverter",
    "nyu": "vortex_data.convert.nyu:NyuConverter",
    "nyu-raw": "vortex_data.convert.nyu.raw:NyuRawConverter",
    "nyu-sync": "vortex_data.convert.nyu.sync:NyuSyncConverter",
    "sunrgbd": "vortex_data.convert.sunrgbd:SunRgbdConverter",
    "tum": "vortex_data.convert.tum:TumConverter",
}


def get_converter(name: str) -> type[Converter]:
    try:
        target = CONVERTERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(CONVERTERS))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["CONVERTERS", "Converter", "Enumeration", "FrameRef", "Rejection", "RejectFrame", "get_converter"]
