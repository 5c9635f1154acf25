"""The quarantine file: every row (and whole file) an embed run rejected, as one Parquet file.

Why a file and not only the summary: the summary goes to XCom and carries a sample; the people who
fix the upstream export need every rejected row with its file, row number and reason. Rows are
streamed to a hidden temp file as they are rejected (memory stays bounded) and the file is renamed
into place at the end, so a killed run never leaves a half-written file under the final name. The
file is written on every run, with zero rows when nothing was rejected, so a stale file from an
earlier run cannot be mistaken for this run's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from polyglot_catalog.reading import QuarantinedRow

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("row", pa.int64()),  # null: the whole file was rejected
        pa.field("reason", pa.string()),
        pa.field("region", pa.string()),
        pa.field("sku", pa.string()),
        pa.field("description", pa.string()),  # raw, cut to reading.QUARANTINE_TEXT_CHARS
    ]
)
COMPLETE_KEY = b"polyglot_catalog.complete"  # "true", or "false" when the run stopped early


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class QuarantineWriter:
    """Stream :class:`QuarantinedRow` objects into ``path`` (local), published atomically on close.

    Args:
        path (str | os.PathLike): final Parquet path; parent folders are created.

    Examples:
        ```py
        with QuarantineWriter(run_dir / "quarantine.parquet") as out:
            out.write(part.quarantined)
        out.rows  # how many rows the file holds
        ```
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise IsADirectoryError(f"quarantine_path {self.path} is a folder; pass a file path")
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, QUARANTINE_SCHEMA)
        self.rows = 0

    def write(self, rows: Iterable[QuarantinedRow]) -> None:
        """Append rows (a no-op for an empty batch)."""
        rows = list(rows)
        if not rows or self._writer is None:
            return
        columns = {
            "source_file": [r.source for r in rows],
            "row": [r.row for r in rows],
            "reason": [r.reason for r in rows],
            "region": [r.region for r in rows],
            "sku": [r.sku for r in rows],
            "description": [r.description for r in rows],
        }
        self._writer.write_table(pa.table(columns, schema=QUARANTINE_SCHEMA))
        self.rows += len(rows)

    def close(self, complete: bool = True) -> Path:
        """Finish the file and rename it over ``path``; ``complete=False`` marks an early stop."""
        if self._writer is not None:
            self._writer.add_key_value_metadata({COMPLETE_KEY: b"true" if complete else b"false"})
            self._writer.close()
            self._writer = None
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
            self._remove_orphans()
        return self.path

    def _remove_orphans(self) -> None:
        """Temp files of writers that were killed (their process is gone)."""
        for tmp in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def __enter__(self) -> QuarantineWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(complete=exc_type is None)


def read_quarantine(path: str | os.PathLike[str]) -> tuple[pa.Table, bool]:
    """The quarantine table and whether the run that wrote it got to the end."""
    table = pq.read_table(path)
    complete = (table.schema.metadata or {}).get(COMPLETE_KEY, b"true") == b"true"
    return table, complete
