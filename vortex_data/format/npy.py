"""Reading a .npy held in a zstd frame fast: one decompression context per thread, and the array
viewed over the decompressed bytes with a cached header parse (the decoder of
:func:`vortex_data.format.schema.decode_array`)."""

from __future__ import annotations

import io
import threading

import numpy as np
import zstandard

from ..errors import InputError

_LOCAL = threading.local()


def decompressor() -> zstandard.ZstdDecompressor:
    """One zstd decompression context per thread (and so per DataLoader worker), reused: a new
    context per array costs more than decompressing a 640x480 depth map."""
    d = getattr(_LOCAL, "dctx", None)
    if d is None:
        d = _LOCAL.dctx = zstandard.ZstdDecompressor()
    return d


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_HEADER_CACHE: dict[bytes, tuple[tuple[int, ...], bool, np.dtype, int]] = {}


def _npy_header(raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of a .npy buffer. Parsed headers are cached by
    their bytes: numpy parses them with ``ast``, which costs as much as a small decode, and a
    dataset's maps share a handful of shapes."""
    version = (raw[6], raw[7]) if len(raw) >= 8 else None
    n_len = 2 if version == (1, 0) else 4
    end = 8 + n_len + int.from_bytes(raw[8:8 + n_len], "little") if version else 0
    key = bytes(raw[:end])
    hit = _HEADER_CACHE.get(key)
    if hit is not None:
        return hit
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    if version not in _NPY_HEADERS:
        raise InputError(f"unsupported .npy version {version}")
    shape, fortran, dtype = _NPY_HEADERS[version](f)
    if dtype.hasobject:
        raise InputError("object arrays are not allowed")
    hit = (shape, fortran, dtype, f.tell())
    if f.tell() == end and len(_HEADER_CACHE) < 256:
        _HEADER_CACHE[key] = hit
    return hit


def npy_view(raw: bytes) -> np.ndarray:
    """A read-only array over the bytes of a .npy file, without the copy ``np.load`` makes."""
    shape, fortran, dtype, offset = _npy_header(raw)
    arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
