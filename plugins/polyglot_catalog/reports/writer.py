"""Write one match run's report folder atomically.

A report folder is either complete or absent. Files go into a hidden temp sibling
(``.<name>.tmp-<token>``), are fsynced, and the folder is renamed into place; rename within one
directory is atomic on POSIX, so a killed run leaves at most a hidden temp folder, never a folder
under the final name that looks complete. Writers of the same folder take an exclusive ``flock`` on
``.<name>.lock``, so concurrent runs serialise instead of interleaving, and the lock holder may sweep
temp and backup debris of killed runs (the kernel drops a dead process's lock). The lock file stays;
it is empty and hidden.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polyglot_catalog.matching.result import CHANGE_COLUMNS, MatchResult
from polyglot_catalog.reports.html import render_html

log = logging.getLogger(__name__)

REPORT_FILES = (
    "pairs.parquet",
    "groups.parquet",
    "unmatched.parquet",
    "duplicates.parquet",
    "changes.parquet",
    "summary.json",
    "report.html",
)
TMP_MARKER = ".tmp-"
BACKUP_MARKER = ".old-"


# ---------------------------------------------------------------------------------------------
# paths


def safe_report_dir(root: Path | str, name: Path | str) -> Path:
    """Resolve a report folder name (e.g. from an Airflow Param) strictly inside ``root``.

    Names come from users, so anything that could land outside the configured reports root is
    refused: absolute paths, ``..`` components, and symlinks (at any depth) that resolve outside.

    Args:
        root (Path | str): the configured reports root. It need not exist yet.
        name (Path | str): a relative folder name, possibly nested (``"2025/run-7"``).

    Returns:
        Path: the resolved folder path, inside the resolved ``root`` and not equal to it.

    Raises:
        ValueError: if ``name`` is empty, absolute, contains ``..`` or a NUL byte, or resolves
            outside ``root``.
    """
    text = os.fspath(name)
    if not text or not text.strip():
        raise ValueError(f"report folder name must not be empty; got {text!r}")
    if "\x00" in text:
        raise ValueError(f"report folder name must not contain NUL bytes; got {text!r}")
    candidate = Path(text)
    if candidate.is_absolute() or text.startswith(("/", "\\", "~")):
        raise ValueError(
            f"report folder name must be relative to the reports root; got absolute path {text!r}"
        )
    if any(part == ".." for part in candidate.parts) or ".." in text.replace("\\", "/").split("/"):
        raise ValueError(f"report folder name must not contain '..'; got {text!r}")
    root_path = Path(root).expanduser().resolve()
    target = (root_path / candidate).resolve()
    if target == root_path:
        raise ValueError(f"report folder name {text!r} points at the reports root {str(root_path)!r} itself")
    if not target.is_relative_to(root_path):
        raise ValueError(
            f"report folder {text!r} resolves to {str(target)!r}, outside the reports root "
            f"{str(root_path)!r} (a symlink points outside)"
        )
    return target


# ---------------------------------------------------------------------------------------------
# JSON


def _jsonable(value: Any) -> Any:
    """Make the summary strictly JSON: numpy scalars to Python, NaN/inf to null, paths to str."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is pd.NaT or value is pd.NA:
        return None
    return str(value)


def report_summary(result: MatchResult, *, run_id: str | None = None) -> dict[str, Any]:
    """The ``summary.json`` content: the run's summary plus the run id and row counts of the files."""
    summary = _jsonable(dict(result.summary or {}))
    if run_id is not None:
        summary["run_id"] = run_id
    summary["report"] = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": {
            "pairs": len(result.pairs),
            "groups": len(result.groups),
            "unmatched": len(result.unmatched),
        },
    }
    return summary


# ---------------------------------------------------------------------------------------------
# filesystem helpers


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (new files, renames); a no-op where directories can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a file, symlink or folder tree; leftovers must never stop a new report."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(final: Path) -> Iterator[None]:
    """Hold an exclusive lock for one report folder; the kernel releases it if the process dies."""
    lock_path = final.parent / f".{final.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _recover_and_sweep(final: Path) -> None:
    """Clean up after killed writers; only safe while holding the folder's lock.

    A writer killed between its two renames leaves no folder under the final name but a complete
    old report as a hidden backup: put that back first, so a crash never loses the last good
    report. Then delete every remaining temp and backup folder of this name.
    """
    backups = sorted(
        final.parent.glob(f"{_glob_escape(f'.{final.name}{BACKUP_MARKER}')}*"),
        key=lambda p: p.lstat().st_mtime,
    )
    if backups and not (final.exists() or final.is_symlink()):
        log.warning("restoring %s from %s left by an interrupted report write", final, backups[-1])
        os.rename(backups[-1], final)
    for prefix in (f".{final.name}{TMP_MARKER}", f".{final.name}{BACKUP_MARKER}"):
        for stale in final.parent.glob(f"{_glob_escape(prefix)}*"):
            log.warning("removing leftover %s from an interrupted report write", stale)
            _remove(stale)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _changes_frame(changes: pd.DataFrame) -> pd.DataFrame:
    """``changes.parquet`` with string columns even when empty (a reader's schema must not depend on
    whether anything changed)."""
    return changes.reindex(columns=CHANGE_COLUMNS).astype({c: pd.StringDtype() for c in CHANGE_COLUMNS})


def _write_files(folder: Path, result: MatchResult, run_id: str | None) -> None:
    """Write every report file into ``folder`` and fsync each, Parquet first and the page last."""
    frames = (
        ("pairs", result.pairs),
        ("groups", result.groups),
        ("unmatched", result.unmatched),
        ("duplicates", result.duplicates),
        ("changes", _changes_frame(result.changes)),
    )
    for name, frame in frames:
        path = folder / f"{name}.parquet"
        frame.reset_index(drop=True).to_parquet(path, index=False, engine="pyarrow")
        _fsync_file(path)
    summary = report_summary(result, run_id=run_id)
    path = folder / "summary.json"
    path.write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    _fsync_file(path)
    path = folder / "report.html"
    path.write_text(render_html(result, run_id=run_id), encoding="utf-8")
    _fsync_file(path)
    _fsync_dir(folder)


# ---------------------------------------------------------------------------------------------
# public


def write_reports(
    out_dir: Path | str,
    result: MatchResult,
    *,
    run_id: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``pairs.parquet``, ``groups.parquet``, ``unmatched.parquet``, ``duplicates.parquet``,
    ``changes.parquet`` (empty unless the match state was committed first), ``summary.json`` and
    ``report.html`` into ``out_dir``, all or nothing.

    ``out_dir`` is the report folder itself; pass it through :func:`safe_report_dir` when any part of
    it comes from a user. An existing folder is replaced as a whole (re-runs of a task must converge):
    it is renamed to a hidden backup, the new folder renamed into place, then the backup deleted, so
    at no point does a mix of old and new files exist under the final name.

    Args:
        out_dir (Path | str): the report folder to create; its parent is created if missing.
        result (MatchResult): the match run to write.
        run_id (str | None): recorded in ``summary.json`` and shown in the page. Defaults to None.
        overwrite (bool): replace an existing folder. If False, an existing folder raises
            FileExistsError and is left untouched. Defaults to True.

    Returns:
        Path: the final report folder (absolute).

    Raises:
        FileExistsError: if the folder exists and ``overwrite`` is False.
        NotADirectoryError: if ``out_dir`` exists and is not a folder.

    Examples:
        ```py
        folder = write_reports(safe_report_dir("/data/reports", run_name), result, run_id=run_id)
        ```
    """
    final = Path(out_dir).expanduser().absolute()
    if not final.name or final.name in (".", ".."):
        raise ValueError(f"report folder needs a name; got {str(out_dir)!r}")
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final):
        _recover_and_sweep(final)
        if final.exists() and not final.is_dir():
            raise NotADirectoryError(f"report path {str(final)!r} exists and is not a folder")
        if final.exists() and not overwrite:
            raise FileExistsError(f"report folder {str(final)!r} exists; pass overwrite=True to replace it")
        token = uuid.uuid4().hex[:12]
        tmp = final.parent / f".{final.name}{TMP_MARKER}{token}"
        tmp.mkdir()
        try:
            _write_files(tmp, result, run_id)
            backup = None
            if final.exists() or final.is_symlink():
                backup = final.parent / f".{final.name}{BACKUP_MARKER}{token}"
                os.rename(final, backup)
            try:
                os.rename(tmp, final)
            except BaseException:
                if backup is not None:
                    os.rename(backup, final)
                raise
            _fsync_dir(final.parent)
        except BaseException:
            _remove(tmp)
            raise
        if backup is not None:
            _remove(backup)
    log.info(
        "wrote report %s: %d pairs, %d groups, %d unmatched",
        final,
        len(result.pairs),
        len(result.groups),
        len(result.unmatched),
    )
    return final
