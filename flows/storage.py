"""Where output files live: a local directory or an object store URI, through pyarrow.fs.

Every file is replaced whole and atomically: on a local disk it is written to a hidden
temporary name beside it and renamed; on an object store a single PUT is already atomic.
Readers therefore never see a half-written file.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from flows.paths import hive_segment
from flows.settings import Settings

__all__ = ["Storage", "hive_segment"]

TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """An output root on a local or object-store filesystem."""

    def __init__(self, root: str, filesystem: pafs.FileSystem | None = None) -> None:
        if filesystem is None:
            filesystem, path = (
                pafs.FileSystem.from_uri(root)
                if "://" in root
                else (
                    pafs.LocalFileSystem(),
                    root,
                )
            )
        else:
            path = root
        self.fs = filesystem
        self.root = path.rstrip("/") or "/"
        self.local = isinstance(filesystem, pafs.LocalFileSystem)

    @classmethod
    def for_settings(cls, settings: Settings) -> Storage:
        """The output storage the settings describe (local directory for now)."""
        return cls(settings.output)

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath)

    def exists(self, relpath: str) -> bool:
        return self.fs.get_file_info(self.path(relpath)).type == pafs.FileType.File

    def read_table(self, relpath: str, schema: pa.Schema) -> pa.Table | None:
        full = self.path(relpath)
        if self.fs.get_file_info(full).type != pafs.FileType.File:
            return None
        return pq.read_table(full, filesystem=self.fs, schema=schema)

    def write_table(self, relpath: str, table: pa.Table) -> None:
        """Replace ``relpath`` with ``table`` atomically."""
        full = self.path(relpath)
        directory, name = posixpath.split(full)
        self.fs.create_dir(directory, recursive=True)
        if not self.local:
            pq.write_table(table, full, filesystem=self.fs)
            return
        tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
        with open(tmp, "wb") as out:
            pq.write_table(table, out)
            out.flush()
            os.fsync(out.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, full)
        _fsync_dir(directory)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Replace a small file atomically (manifests)."""
        full = self.path(relpath)
        directory, name = posixpath.split(full)
        self.fs.create_dir(directory, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(full) as stream:
                stream.write(data)
            return
        tmp = posixpath.join(directory, f".{name}{TMP_SUFFIX}")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, full)
        _fsync_dir(directory)

    def read_bytes(self, relpath: str) -> bytes | None:
        full = self.path(relpath)
        if self.fs.get_file_info(full).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(full) as f:
            return f.read()

    def list_files(self, reldir: str) -> Iterable[str]:
        """Relative paths of the files under ``reldir``, recursively."""
        selector = pafs.FileSelector(self.path(reldir), recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                yield posixpath.relpath(info.path, self.root)

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files a killed run left behind; returns how many."""
        stale = [p for p in self.list_files("") if p.endswith(TMP_SUFFIX)]
        for relpath in stale:
            self.fs.delete_file(self.path(relpath))
        return len(stale)
