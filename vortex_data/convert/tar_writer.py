"""Tar shards as the shard writer writes them: fixed member metadata (mtime 0, mode 644, no
owner), PAX format, and a byte cap past which a group rolls over to ``<stem>-<k>.tar``. The bytes
depend only on the samples given, in order; each shard is written under a locked temporary name
and renamed when complete."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from ..format.manifest import sha256_file
from ..temporaries import LockedTemp


def tar_member(tf: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one member; returns the byte offset of its data in the tar (what the index records,
    so readers seek straight to it instead of scanning headers)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))
    # The data ends the member, padded to a 512-byte block; this holds whatever headers (PAX
    # long names) came before it.
    return tf.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class RollingTar:
    """Writes a group's samples to <stem>.tar, rolling over to <stem>-<k>.tar past the byte cap."""

    def __init__(self, directory: Path, stem: str, max_bytes: int, tag: str):
        self.directory, self.stem, self.max_bytes, self.tag = directory, stem, max_bytes, tag
        self.done: list[dict[str, Any]] = []
        self._tf: tarfile.TarFile | None = None
        self._temp = None
        self._count = 0
        self._bytes = 0

    @property
    def current_name(self) -> str:
        k = len(self.done)
        return f"{self.stem}.tar" if k == 0 else f"{self.stem}-{k}.tar"

    def add(self, key: str, members: list[tuple[str, bytes]]) -> tuple[str, dict[str, int]]:
        """Append one sample; returns the shard it went to and each member's data offset there."""
        size = sum(512 + -(-len(d) // 512) * 512 for _, d in members)
        if self._tf is not None and self._count and self._bytes + size > self.max_bytes:
            self._close()
        if self._tf is None:
            self._temp = LockedTemp(self.directory / self.current_name, self.tag)
            self._tf = tarfile.open(fileobj=self._temp.file, mode="w", format=tarfile.PAX_FORMAT)
        offsets = {ext: tar_member(self._tf, f"{key}.{ext}", data) for ext, data in members}
        self._count += 1
        self._bytes += size
        return self.current_name, offsets

    def _close(self) -> None:
        name = self.current_name
        self._tf.close()
        self._temp.commit()  # fsync, rename into place, unlock
        final = self.directory / name
        self.done.append({"name": name, "samples": self._count, "bytes": final.stat().st_size,
                          "sha256": sha256_file(final)})
        self._tf, self._temp, self._count, self._bytes = None, None, 0, 0

    def abort(self) -> Path | None:
        """Remove the temporary being written (an exception is ending this group); returns its path."""
        if self._temp is None:
            return None
        path = self._temp.path
        self._temp.discard()
        self._tf, self._temp = None, None
        return path

    def finish(self) -> list[dict[str, Any]]:
        if self._tf is not None:
            self._close()
        return self.done
