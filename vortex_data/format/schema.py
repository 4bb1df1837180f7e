"""The uniform sample: field names, dtypes, units, encodings and the schema version.

Every converter produces :class:`Sample` objects and every reader decodes them with
:func:`decode_sample`; nothing else in the package knows how a field is stored.
The format is documented for people in ``docs/format.md``; keep the two in step.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np
import zstandard

from .geometry import Intrinsics, resize_intrinsics, resize_nearest, resize_rgb
from .npy import decompressor, npy_view
# The key grammar and member naming live with the tar reader.
from ..errors import InputError
from .tar_index import KeyGrammarError, check_key, dataset_split

SCHEMA_VERSION = 2
"""2: every sample has the same members (an unlabelled frame stores an all-255 ``seg``) and the same
typed metadata fields (what a converter adds is one JSON string, ``extra``), so a reader that infers
its columns from the first sample (Hugging Face ``datasets``) keeps every column. docs/format.md."""
READABLE_VERSIONS = (1, 2)
"""Version 1 shards (labels only where the source has them, converter fields at the top level)
are read as before: their members and encodings are the same."""

IGNORE_INDEX = 255
"""Label value for 'no label here'. A sample without labels decodes to a map full of it."""

NUM_CLASSES = 6
CLASS_NAMES = ("floor", "wall", "ceiling", "door", "furniture", "object")

DEPTH_SCALE_MM = 1000.0
"""Stored depth is uint16 millimetres: metres = stored / 1000, and 0 means invalid."""
MAX_DEPTH_M = 65.535

RGB_CODECS = ("jpg", "png")
ARRAY_CODECS = ("zst", "png")
ARRAY_MEMBER_EXT = {"zst": "npy.zst", "png": "png"}
"""The member extension of each array codec: ``npy.zst`` says what the zstd frame holds, so a
reader that strips a compression suffix and decodes by the next one (Hugging Face ``datasets``)
returns the array. Version-1 shards named it ``depth.zst``; both are read."""
DEFAULT_JPEG_QUALITY = 95
DEFAULT_ZSTD_LEVEL = 3

# Tar member suffixes (webdataset splits a member name at the first dot of its basename:
# "diode/train/00019_00183_indoors_000_010.depth.npy.zst" -> key + "depth.npy.zst").
META_EXT = "json"
EXTRA_FIELD = "extra"
"""The metadata key holding the converter's own fields, as one JSON string (same type in every sample)."""
META_FIELDS = ("schema_version", "key", "dataset", "split", "scene", "width", "height", "original_size",
               "intrinsics", "has_seg", "depth_unit", EXTRA_FIELD)
"""The metadata fields of a version-2 sample, every one present with the same type in every sample."""


class SchemaError(InputError):
    """A sample that does not follow the schema (bad shape, dtype, field or encoding)."""


@dataclass
class Sample:
    """One RGB-D frame in the uniform convention.

    rgb:      (H, W, 3) uint8, RGB order.
    depth_mm: (H, W) uint16 millimetres, 0 = invalid. Build it with :func:`depth_to_mm`.
    seg:      (H, W) uint8 in the 6-class taxonomy with 255 = ignore, or None (no labels).
    meta:     JSON-able provenance (source files, sensor, ...). ``meta["scene"]`` (a string) is the
              unit that must never be on both sides of a train/eval split (NYU scene, DIODE scene,
              SUN RGB-D frame folder, a recording). The writer adds key, schema version, size,
              intrinsics and has_seg; everything else goes into the ``extra`` JSON string.
    """

    key: str
    rgb: np.ndarray
    depth_mm: np.ndarray
    intrinsics: Intrinsics
    seg: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    depth_range_m: tuple[float, float] | None = None
    """The sensor's nominal valid range (informational; validity is depth_mm > 0)."""
    rejected_depth_pixels: int = 0
    """Pixels the converter marked invalid because their value was non-finite, negative or too far."""

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def validate(self) -> None:
        """Raise SchemaError naming the key and the problem when a field breaks the schema."""
        def bad(msg: str) -> SchemaError:
            return SchemaError(f"sample {self.key!r}: {msg}")

        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise bad(f"rgb must be (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}")
        hw = self.rgb.shape[:2]
        if self.depth_mm.dtype != np.uint16 or self.depth_mm.shape != hw:
            raise bad(f"depth_mm must be {hw} uint16, got {self.depth_mm.shape} {self.depth_mm.dtype}")
        if self.seg is not None and (self.seg.dtype != np.uint8 or self.seg.shape != hw):
            raise bad(f"seg must be {hw} uint8, got {self.seg.shape} {self.seg.dtype}")
        if self.seg is not None:
            out_of_range = (self.seg >= NUM_CLASSES) & (self.seg != IGNORE_INDEX)
            if out_of_range.any():
                bad_vals = np.unique(self.seg[out_of_range])
                raise bad(f"seg holds values {bad_vals[:8].tolist()} outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}")
        try:
            check_key(self.key)
        except KeyGrammarError as e:
            raise SchemaError(str(e)) from None


# ---------------------------------------------------------------- depth conversion

@dataclass
class DepthConversion:
    depth_mm: np.ndarray
    nonfinite: int
    negative: int
    too_far: int

    @property
    def rejected(self) -> int:
        return self.nonfinite + self.negative + self.too_far


def depth_to_mm(depth_m: np.ndarray, valid: np.ndarray | None = None) -> DepthConversion:
    """Metric depth (any float array, metres) -> uint16 millimetres with 0 = invalid.

    Pixels where ``valid`` is False, or whose value is non-finite, negative or beyond
    65.535 m become 0; the last three kinds are counted so the manifest can report them.
    Rounding is to the nearest millimetre (error <= 0.5 mm).
    """
    d = np.asarray(depth_m, dtype=np.float64)
    finite = np.isfinite(d)
    nonfinite = int((~finite).sum()) if valid is None else int((~finite & valid).sum())
    with np.errstate(invalid="ignore"):
        mm = np.where(finite, np.rint(d * DEPTH_SCALE_MM), 0.0)
    neg_mask = mm < 0
    far_mask = mm > 65535
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        neg_mask &= valid
        far_mask &= valid
    out = np.where((mm < 0) | (mm > 65535), 0, mm).astype(np.uint16)
    if valid is not None:
        out[~valid] = 0
    return DepthConversion(out, nonfinite, int(neg_mask.sum()), int(far_mask.sum()))


# ---------------------------------------------------------------- resizing

def resize_sample(sample: Sample, shorter_side: int) -> Sample:
    """Resize so the shorter side is ``shorter_side`` pixels, by the one policy in
    :mod:`vortex_data.format.geometry`: RGB area (shrinking) or linear, depth and labels the nearest
    source pixel (never blended), intrinsics by the pixel-centre rule."""
    h, w = sample.height, sample.width
    scale = shorter_side / min(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return sample
    out_hw = (nh, nw)
    meta = dict(sample.meta)
    meta.setdefault("original_size", [w, h])
    return Sample(
        key=sample.key, rgb=resize_rgb(sample.rgb, out_hw), depth_mm=resize_nearest(sample.depth_mm, out_hw),
        seg=None if sample.seg is None else resize_nearest(sample.seg, out_hw), meta=meta,
        intrinsics=resize_intrinsics(sample.intrinsics, (h, w), out_hw),
        depth_range_m=sample.depth_range_m, rejected_depth_pixels=sample.rejected_depth_pixels,
    )


# ---------------------------------------------------------------- encoding

@dataclass(frozen=True)
class EncodeOptions:
    rgb_codec: str = "jpg"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    array_codec: str = "zst"
    zstd_level: int = DEFAULT_ZSTD_LEVEL

    def __post_init__(self) -> None:
        if self.rgb_codec not in RGB_CODECS:
            raise InputError(f"rgb codec must be one of {RGB_CODECS}, got {self.rgb_codec!r}")
        if self.array_codec not in ARRAY_CODECS:
            raise InputError(f"depth/label codec must be one of {ARRAY_CODECS}, got {self.array_codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")


def encode_array(arr: np.ndarray, codec: str, zstd_level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """2-D uint8/uint16 array -> bytes. 'zst': zstd over a .npy (self-describing, little-endian);
    'png': lossless PNG (16-bit for uint16). zstd frames carry a content checksum, so a changed
    byte fails to decode instead of giving wrong depth; frames written without one still decode."""
    if codec == "zst":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")), allow_pickle=False)
        return zstandard.ZstdCompressor(level=zstd_level, write_checksum=True).compress(buf.getvalue())
    if codec == "png":
        ok, data = cv2.imencode(".png", arr)
        if not ok:
            raise SchemaError(f"PNG encoding failed for array {arr.shape} {arr.dtype}")
        return data.tobytes()
    raise SchemaError(f"unknown array codec {codec!r}")


def decode_array(data: bytes, codec: str) -> np.ndarray:
    """bytes -> array (read-only for 'zst': a view of the decompressed buffer). ``codec``: 'zst' or
    'png', or a member extension after the field name ('npy.zst', version 1's 'zst', 'png')."""
    if codec in ("zst", "npy.zst"):
        return npy_view(decompressor().decompress(data))
    if codec == "png":
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise SchemaError("PNG data could not be decoded")
        return arr
    raise SchemaError(f"unknown array codec {codec!r}")


def encode_rgb(rgb: np.ndarray, codec: str, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if codec == "jpg" else []
    ok, data = cv2.imencode("." + codec, bgr, params)
    if not ok:
        raise SchemaError(f"{codec} encoding failed for rgb {rgb.shape}")
    return data.tobytes()


_REDUCED = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def decode_rgb(data: bytes, reduce: int = 1) -> np.ndarray:
    """JPEG/PNG -> (H, W, 3) uint8 RGB, decoded straight to RGB order (no extra pass).
    ``reduce`` 2/4/8: JPEG DCT-domain downscaling (size ceil(H/r) x ceil(W/r)), far cheaper than
    a full decode followed by a resize."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[reduce] | cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise SchemaError("RGB image data could not be decoded")
    return rgb


def sample_metadata(sample: Sample) -> dict[str, Any]:
    """The JSON metadata record stored with a sample: :data:`META_FIELDS`, the same typed fields in
    every sample whatever the converter, which supplies ``scene`` and ``extra`` only through
    ``sample.meta`` (the one place that decides a sample's metadata shape)."""
    dataset, split = dataset_split(sample.key)
    extra = dict(sample.meta)
    scene = extra.pop("scene", None)
    original = extra.pop("original_size", None) or [sample.width, sample.height]
    if sample.depth_range_m is not None:
        extra["depth_range_m"] = [float(v) for v in sample.depth_range_m]
    return {
        "schema_version": SCHEMA_VERSION, "key": sample.key, "dataset": dataset, "split": split,
        "scene": scene if isinstance(scene, str) else "",
        "width": sample.width, "height": sample.height, "original_size": [int(v) for v in original],
        "intrinsics": sample.intrinsics.as_dict(),
        "has_seg": sample.seg is not None, "depth_unit": "mm",
        EXTRA_FIELD: json.dumps(extra, sort_keys=True, separators=(",", ":")),
    }


def extra_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The converter's own fields of a decoded metadata record (version 2: the ``extra`` string
    parsed; version 1: the fields outside the schema's). Not on the loader's hot path."""
    if EXTRA_FIELD in meta:
        return json.loads(meta[EXTRA_FIELD])
    return {k: v for k, v in meta.items() if k not in META_FIELDS}


def blank_seg(height: int, width: int) -> np.ndarray:
    """The label map of a frame without labels: every pixel IGNORE_INDEX."""
    return np.full((height, width), IGNORE_INDEX, np.uint8)


def encode_sample(sample: Sample, opts: EncodeOptions = EncodeOptions()) -> list[tuple[str, bytes]]:
    """Sample -> ordered (extension, bytes) members. The order is fixed so shards are reproducible."""
    sample.validate()
    members = [
        (META_EXT, json.dumps(sample_metadata(sample), sort_keys=True, separators=(",", ":")).encode()),
        ("rgb." + opts.rgb_codec, encode_rgb(sample.rgb, opts.rgb_codec, opts.jpeg_quality)),
        ("depth." + ARRAY_MEMBER_EXT[opts.array_codec], encode_array(sample.depth_mm, opts.array_codec, opts.zstd_level)),
    ]
    # A frame without labels stores an all-IGNORE map too (a few dozen bytes in zstd), so every
    # sample has the same members; has_seg in the metadata and the index says it holds no label.
    seg = sample.seg if sample.seg is not None else blank_seg(sample.height, sample.width)
    members.append(("seg." + ARRAY_MEMBER_EXT[opts.array_codec], encode_array(seg, opts.array_codec, opts.zstd_level)))
    return members


def _field(members: Mapping[str, bytes], name: str) -> tuple[str, bytes] | None:
    for ext, data in members.items():
        if ext.split(".", 1)[0] == name and "." in ext:
            return ext.split(".", 1)[1], data
    return None


def read_meta(members: Mapping[str, bytes], key: str = "?") -> dict[str, Any]:
    """The sample's metadata record, checked for the schema version."""
    try:
        meta = json.loads(members[META_EXT])
    except KeyError:
        raise SchemaError(f"sample {key!r}: no '{META_EXT}' metadata member") from None
    except ValueError as e:
        raise SchemaError(f"sample {key!r}: metadata is not valid JSON ({e})") from None
    if meta.get("schema_version") not in READABLE_VERSIONS:
        raise SchemaError(f"sample {key!r}: schema version {meta.get('schema_version')}, this vortex-data reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild the shards (vortex-data build-shards)")
    missing = [k for k in ("height", "width", "intrinsics") if k not in meta]
    if missing:
        raise SchemaError(f"sample {key!r}: metadata lacks {', '.join(repr(k) for k in missing)}")
    return meta


def rgb_bytes(members: Mapping[str, bytes], key: str = "?") -> bytes:
    """The encoded RGB member (for decoders outside this module, e.g. on a GPU)."""
    f = _field(members, "rgb")
    if f is None:
        raise SchemaError(f"sample {key!r}: missing 'rgb.*' member")
    return f[1]


def decode_sample(members: Mapping[str, bytes], key: str = "?", with_rgb: bool = True, *, rgb_reduce: int = 1,
                  fill_seg: bool = True, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Members of one sample (extension -> bytes, as webdataset groups them) -> arrays.

    Returns ``{"key", "meta", "rgb" (H,W,3 uint8), "depth_mm" (H,W uint16), "seg" (H,W uint8),
    "has_seg"}``. A sample without labels gets a map full of IGNORE_INDEX without decoding
    anything (``fill_seg=False``: ``seg`` None instead, for callers that fill their own output).
    ``rgb_reduce``: see :func:`decode_rgb`. zstd arrays are read-only. Raises SchemaError naming
    the key and field on any inconsistency.
    """
    if meta is None:
        meta = read_meta(members, key)
    h, w = int(meta["height"]), int(meta["width"])
    out: dict[str, Any] = {"key": key, "meta": meta, "has_seg": bool(meta["has_seg"])}

    def get(name: str) -> tuple[str, bytes]:
        f = _field(members, name)
        if f is None:
            raise SchemaError(f"sample {key!r}: missing '{name}.*' member")
        return f

    def checked(name: str, arr: np.ndarray, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        if arr.dtype != dtype or arr.shape != shape:
            raise SchemaError(f"sample {key!r}: {name} is {arr.shape} {arr.dtype}, metadata says {shape} {np.dtype(dtype)}")
        return arr

    try:
        if with_rgb:
            r = rgb_reduce
            out["rgb"] = checked("rgb", decode_rgb(get("rgb")[1], r), np.uint8, (-(-h // r), -(-w // r), 3))
        codec, data = get("depth")
        out["depth_mm"] = checked("depth", decode_array(data, codec), np.uint16, (h, w))
        if out["has_seg"]:
            codec, data = get("seg")
            out["seg"] = checked("seg", decode_array(data, codec), np.uint8, (h, w))
        else:
            out["seg"] = blank_seg(h, w) if fill_seg else None
    except SchemaError as e:
        if str(e).startswith("sample "):
            raise
        raise SchemaError(f"sample {key!r}: {e}") from None
    except (ValueError, zstandard.ZstdError) as e:
        raise SchemaError(f"sample {key!r}: undecodable member ({e})") from None
    return out
