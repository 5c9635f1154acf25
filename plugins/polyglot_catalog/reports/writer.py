"""Write one match run's report folder atomically.

A report folder is either complete or absent. Files go into a hidden temp sibling
(``.<name>.tmp-<token>``), are fsynced, and the folder is renamed into place; rename within one
directory is atomic on POSIX, so a killed run leaves at most a hidden temp folder, never a folder
under the final name that looks complete. Writers take an exclusive ``flock`` on the parent folder
itself, so concurrent runs serialise instead of interleaving and no lock file is left beside the
report; the lock holder may sweep temp and backup debris of killed runs (the kernel drops a dead
process's lock).

Nothing a user points at is destroyed: every report folder holds a marker file (``REPORT_MARKER``),
and only a folder with that marker (our own earlier report) or an empty one is replaced. Any other
existing folder, and a path that is or holds a store folder, the current folder or the home folder,
is refused before anything is written.
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
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from polyglot_catalog.matching.held_pairs import write_pairs
from polyglot_catalog.matching.result import CHANGE_COLUMNS, MatchResult
from polyglot_catalog.memory import release_freed_memory
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
#: The file that makes a folder "ours": written into every report, required before one is replaced.
REPORT_MARKER = ".polyglot-report"


class ReportPathError(ValueError):
    """A report path that would overwrite or remove something that is not a report of ours."""


class ReportPathNotAFolderError(ReportPathError, NotADirectoryError):
    """The report path exists and is a file (also a ``NotADirectoryError``, as before)."""


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


def count_groups(groups: pd.DataFrame) -> int:
    """Product groups in a ``group_id, region, sku`` table (it has one row per member SKU)."""
    return int(groups["group_id"].nunique()) if "group_id" in groups.columns else 0


def report_summary(result: MatchResult, *, run_id: str | None = None) -> dict[str, Any]:
    """The ``summary.json`` content: the run's summary plus the run id and row counts of the files."""
    summary = _jsonable(dict(result.summary or {}))
    if run_id is not None:
        summary["run_id"] = run_id
    summary["report"] = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": {
            "pairs": result.pair_count,
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
    """Hold an exclusive lock for report writes into ``final``'s parent; the kernel releases it if the
    process dies. The parent folder itself is locked, so no lock file is left beside the report."""
    fd = os.open(final.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
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


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _ours(folder: Path) -> bool:
    """An empty folder, a report of ours (marker), or one written before the marker existed (only
    report files in it)."""
    names = {p.name for p in folder.iterdir()}
    return not names or REPORT_MARKER in names or names <= set(REPORT_FILES)


def check_report_path(out_dir: Path | str, protected: Sequence[Path | str] = ()) -> Path:
    """The absolute report folder for ``out_dir``, refused when writing it could destroy user data.

    Refused: the current folder, the home folder, the filesystem root, any folder that holds one of
    them; a path inside or equal to a ``protected`` folder (a store) or holding one; an existing
    file; an existing folder that is not empty and lacks :data:`REPORT_MARKER`. Nothing is written.

    Args:
        out_dir (Path | str): the report folder.
        protected (Sequence[Path | str]): folders a report must never be in or replace (e.g. the
            Qdrant store folder). Defaults to ().

    Returns:
        Path: the resolved report folder.

    Raises:
        ReportPathError: with the path and why it is refused.
    """
    text = os.fspath(out_dir)
    if not text.strip():
        raise ReportPathError("report folder must not be empty")
    final = Path(text).expanduser().resolve()
    named = {"the current folder": Path.cwd().resolve(), "the home folder": Path.home().resolve()}
    for label, folder in named.items():
        if folder.is_relative_to(final):
            raise ReportPathError(
                f"report folder {text!r} is {label} or holds it ({str(folder)!r}); "
                "a report folder is replaced as a whole: choose a new folder, e.g. reports/run-1"
            )
    for store in protected:
        store_path = Path(store).expanduser().resolve()
        if _inside(final, store_path) or store_path.is_relative_to(final):
            raise ReportPathError(
                f"report folder {text!r} is inside or holds the Qdrant store folder {str(store_path)!r}; "
                "write reports elsewhere"
            )
    if final.exists() and not final.is_dir():
        raise ReportPathNotAFolderError(f"report path {text!r} exists and is not a folder")
    if final.is_dir() and not _ours(final):
        raise ReportPathError(
            f"report folder {text!r} exists and was not written by polyglot-catalog (no {REPORT_MARKER} "
            "file): refusing to replace it; choose a new folder or empty this one"
        )
    return final


def _changes_frame(changes: pd.DataFrame) -> pd.DataFrame:
    """``changes.parquet`` with string columns even when empty (a reader's schema must not depend on
    whether anything changed)."""
    return changes.reindex(columns=CHANGE_COLUMNS).astype({c: pd.StringDtype() for c in CHANGE_COLUMNS})


def _write_files(folder: Path, result: MatchResult, run_id: str | None) -> None:
    """Write every report file into ``folder`` and fsync each, Parquet first and the page last."""
    marker = folder / REPORT_MARKER
    marker.write_text(
        json.dumps({"written_by": "polyglot-catalog", "run_id": run_id}) + "\n", encoding="utf-8"
    )
    _fsync_file(marker)
    frames = (
        ("pairs", result.pairs),
        ("groups", result.groups),
        ("unmatched", result.unmatched),
        ("duplicates", result.duplicates),
        ("changes", _changes_frame(result.changes)),
    )
    for name, frame in frames:
        if frame is None:
            continue
        path = folder / f"{name}.parquet"
        if name == "pairs" and result.rest is not None:  # the pairs the match task did not hold too
            result.rest.write(path, frame)
        elif name == "pairs":
            write_pairs(path, frame)
        else:
            frame.reset_index(drop=True).to_parquet(path, index=False, engine="pyarrow")
        _fsync_file(path)
    # the Arrow copy of millions of pairs is gone: hand its pages back before the page is rendered
    pa.default_memory_pool().release_unused()
    release_freed_memory()
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
    protected: Sequence[Path | str] = (),
) -> Path:
    """Write ``pairs.parquet``, ``groups.parquet``, ``unmatched.parquet``, ``duplicates.parquet``,
    ``changes.parquet`` (empty unless the match state was committed first), ``summary.json`` and
    ``report.html`` into ``out_dir``, all or nothing.

    ``out_dir`` is the report folder itself; pass it through :func:`safe_report_dir` when any part of
    it comes from a user. Only an earlier report of ours (it holds :data:`REPORT_MARKER`) or an empty
    folder is replaced, as a whole (re-runs of a task must converge): it is renamed to a hidden
    backup, the new folder renamed into place, then the backup deleted, so at no point does a mix of
    old and new files exist under the final name. See :func:`check_report_path` for what is refused.

    Args:
        out_dir (Path | str): the report folder to create; its parent is created if missing.
        result (MatchResult): the match run to write.
        run_id (str | None): recorded in ``summary.json`` and shown in the page. Defaults to None.
        overwrite (bool): replace an earlier report in the folder. If False, an existing folder raises
            FileExistsError and is left untouched. Defaults to True.
        protected (Sequence[Path | str]): store folders a report must never be in, replace or hold.
            Defaults to ().

    Returns:
        Path: the final report folder (absolute).

    Raises:
        FileExistsError: if the folder exists and ``overwrite`` is False.
        ReportPathError: the path is refused (see :func:`check_report_path`).

    Examples:
        ```py
        folder = write_reports(safe_report_dir("/data/reports", run_name), result, run_id=run_id)
        ```
    """
    final = check_report_path(out_dir, protected)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final):
        _recover_and_sweep(final)
        check_report_path(final, protected)  # again under the lock: the folder may have changed
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
        result.pair_count,
        count_groups(result.groups),  # groups, not group rows (one row per SKU)
        len(result.unmatched),
    )
    return final
