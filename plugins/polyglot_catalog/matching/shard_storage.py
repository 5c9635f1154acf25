"""Where a full match's search files and parts live: a local folder or object storage (#26).

Why: mapped search tasks run on any worker, so what the plan writes and what the tasks write must
live where every worker and the match task read it. A local path (a volume every worker mounts) is
the default; any fsspec URL (``s3://bucket/prefix``, ``gs://...``) works the same, and Airflow's
``ObjectStoragePath`` (which brings its connection's credentials) is taken as it is.

A file appears whole or not at all: on a local disk it is written under a temporary name and
renamed; on object storage an object exists only once its upload completes, and a failed write
discards the upload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import PurePath
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


class ShardFolder:
    """A folder on a filesystem: ``fs`` (fsspec) and ``root`` (the path as ``fs`` names it)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"

    @classmethod
    def of(cls, folder: Any) -> ShardFolder:
        """``folder`` as a :class:`ShardFolder`: a path, an fsspec URL, an ``ObjectStoragePath`` (or any
        path object with ``fs`` and ``path``), or a ShardFolder."""
        if isinstance(folder, ShardFolder):
            return folder
        fs = getattr(folder, "fs", None)
        if fs is not None and hasattr(folder, "path") and not isinstance(folder, (str, PurePath)):
            return cls(fs, str(folder.path))
        fs, root = fsspec.core.url_to_fs(str(folder))
        return cls(fs, root)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url(self, name: str | None = None) -> str:
        """Where ``name`` (or the folder) is, as a user would write it (``s3://...`` or a local path)."""
        path = self.root if name is None else self.path(name)
        return path if self.local else self.fs.unstrip_protocol(path)

    def __str__(self) -> str:
        return self.url()

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def open(self, name: str) -> IO[bytes]:
        return self.fs.open(self.path(name), "rb")

    def read_text(self, name: str) -> str:
        with self.open(name) as f:
            return f.read().decode()

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[IO[bytes]]:
        """A binary file to write ``name`` through; it appears whole when the block ends, and not at
        all when the block raises."""
        target = self.path(name)
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)
        path = f"{target}.tmp" if self.local else target
        f = self.fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            discard = getattr(f, "discard", None)
            if discard is not None and not self.local:
                discard()  # object storage (s3fs, gcsfs): abort the upload, no partial object
            else:
                f.close()
            if self.fs.exists(path):  # a filesystem that kept what was written anyway
                self.fs.rm(path)
            raise
        f.close()
        if self.local:
            self.fs.mv(path, target)  # a rename on the same disk

    def write_text(self, name: str, text: str) -> None:
        with self.writing(name) as f:
            f.write(text.encode())

    def delete(self, name: str) -> None:
        """Delete one file (nothing when it is not there)."""
        if self.fs.exists(self.path(name)):
            self.fs.rm(self.path(name))

    def remove(self) -> None:
        """Delete the folder and everything in it (nothing when it is not there)."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)


class ParquetSink:
    """A Parquet file written a table at a time, opened with the first table's schema (a streamed
    region's schema, e.g. its vectors' width, is known only then); ``rows`` counts what it took.
    Use it as a context manager: the file is closed whatever happens."""

    def __init__(self, where: Any) -> None:
        self.where = where
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.where, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
