"""Nothing a user points at is destroyed: report folders, store folders, quarantine files (#20).

Each case runs the real CLI (``main``) or the writer on real folders and then checks that what was
there before is still there, byte for byte, and that the message names the path and the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder
from test_reports import make_result

from polyglot_catalog.cli import EXIT_INPUT, main
from polyglot_catalog.reports import ReportPathError, check_report_path, write_reports
from polyglot_catalog.reports.writer import REPORT_MARKER


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A real embedded store with two regions, embedded through the CLI."""
    source = tmp_path / "in" / "catalog.parquet"
    source.parent.mkdir()
    pq.write_table(
        pa.table(
            {
                "sku": ["d1", "d2", "f1", "f2"],
                "region": ["DE", "DE", "FR", "FR"],
                "description": ["Tisch aus Eiche", "Sofa grau", "Table en chêne", "Canapé gris"],
            }
        ),
        source,
    )
    folder = tmp_path / "q"
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        argv = ["embed", "--source", str(source), "--collection", "cat", "--qdrant-path", str(folder)]
        assert main([*argv, "--model", "fake-model"]) == 0
    capsys.readouterr()
    return folder


def _match(store: Path, out: str | Path) -> int:
    return main(
        [
            "match",
            "--collection",
            "cat",
            "--qdrant-path",
            str(store),
            "--model",
            "fake-model",
            "--out",
            str(out),
        ]
    )


def test_match_out_on_a_users_folder_is_refused_and_nothing_is_touched(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = tmp_path / "userdir"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "sub" / "data.csv").write_text("a,b\n")
    before = _snapshot(user)
    assert _match(store, user) == EXIT_INPUT
    assert "was not written by polyglot-catalog" in _error(capsys)
    assert _snapshot(user) == before


def test_match_out_on_the_store_folder_or_inside_it_is_refused_and_the_store_survives(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(store)
    for out in (store, store / "reports", store / "edge"):
        assert _match(store, out) == EXIT_INPUT
        assert "Qdrant store folder" in _error(capsys)
    assert _snapshot(store) == before
    assert main(["stats", "--collection", "cat", "--qdrant-path", str(store)]) == 0
    assert json.loads(capsys.readouterr().out)["points"] == 4


def test_match_out_on_the_current_or_home_folder_is_refused(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    for out, why in ((".", "current folder"), ("..", "current folder"), ("~", "home folder")):
        assert _match(store, out) == EXIT_INPUT
        assert why in _error(capsys)
    assert (work / "keep.txt").read_text() == "x"


def test_our_own_report_is_replaced_and_leaves_no_lock_file_beside_it(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reports" / "run-1"
    assert _match(store, out) == 0
    assert (out / REPORT_MARKER).is_file()
    first = json.loads((out / "summary.json").read_text())["report"]["written_at"]
    assert _match(store, out) == 0  # re-run into the same folder: replaced, atomically
    assert json.loads((out / "summary.json").read_text())["report"]["written_at"] >= first
    assert sorted(p.name for p in out.parent.iterdir()) == ["run-1"]  # no hidden .run-1.lock


def test_an_empty_folder_and_a_report_written_before_the_marker_are_ours(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_reports(empty, make_result()) == empty.resolve()
    legacy = tmp_path / "legacy"
    write_reports(legacy, make_result())
    (legacy / REPORT_MARKER).unlink()  # a report folder from an earlier version
    assert write_reports(legacy, make_result()) == legacy.resolve()
    (legacy / "mine.txt").write_text("x")
    (legacy / REPORT_MARKER).unlink()
    with pytest.raises(ReportPathError, match="not written by polyglot-catalog"):
        write_reports(legacy, make_result())
    assert (legacy / "mine.txt").read_text() == "x"


def test_check_report_path_refuses_a_folder_that_holds_a_store(tmp_path: Path) -> None:
    (tmp_path / "data" / "qdrant").mkdir(parents=True)
    with pytest.raises(ReportPathError, match="store folder"):
        check_report_path(tmp_path / "data", protected=[tmp_path / "data" / "qdrant"])
    with pytest.raises(ReportPathError, match="not a folder"):
        (tmp_path / "file").write_text("x")
        check_report_path(tmp_path / "file")


def test_quarantine_file_never_overwrites_a_users_file_or_lands_in_the_store(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in" / "catalog.parquet"
    precious = tmp_path / "precious.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), precious)
    before = precious.read_bytes()
    base = ["embed", "--source", str(source), "--collection", "cat", "--qdrant-path", str(store)]
    with mock.patch("polyglot_catalog.encoding.load_sentence_transformer") as load:
        assert main([*base, "--quarantine", str(precious)]) == EXIT_INPUT
        assert "not a quarantine file" in _error(capsys)
        assert main([*base, "--quarantine", str(store / "q.parquet")]) == EXIT_INPUT
        assert "inside the Qdrant store folder" in _error(capsys)
        assert main([*base, "--quarantine", str(tmp_path)]) == EXIT_INPUT
        assert "is a folder" in _error(capsys)
    load.assert_not_called()  # every path was checked before the model load
    assert precious.read_bytes() == before


def test_write_protected_store_fails_with_a_message_that_says_so(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated (tests may run as root, who can write anyway): opening the lock file is refused."""
    from polyglot_catalog import edge_store

    real_open = open

    def refusing_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if str(file).endswith(".lock") and any(c in mode for c in "aw+"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(edge_store, "open", refusing_open, raising=False)
    before = _snapshot(store)
    assert main(["stats", "--collection", "cat", "--qdrant-path", str(store)]) == EXIT_INPUT
    message = _error(capsys)
    assert "write-protected" in message and str(store) in message
    assert _match(store, tmp_path / "r") == EXIT_INPUT
    assert "write-protected" in _error(capsys)
    assert _snapshot(store) == before


def test_bad_collection_names_are_refused_before_anything_is_created(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(store)
    for name in ("..", ".", "a/b", "", "x" * 129, "cat\n"):
        code = main(["stats", "--collection", name, "--qdrant-path", str(store)])
        assert code != 0
        assert "collection" in _error(capsys)
    assert _snapshot(store) == before
    assert not (store / "edge" / "segments").exists()  # '..' once opened edge/ itself as a shard


def test_edge_store_refuses_unsafe_names_itself(tmp_path: Path) -> None:
    from qdrant_client import models

    from polyglot_catalog.edge_store import EdgeClient

    with EdgeClient(tmp_path / "e") as client:
        for name in ("..", ".", "a/b"):
            assert not client.collection_exists(name)
            with pytest.raises(ValueError, match="not allowed"):
                client.get_collection(name)
            with pytest.raises(ValueError, match="not allowed"):
                client.create_collection(name, models.VectorParams(size=2, distance=models.Distance.COSINE))
    assert sorted(os.listdir(tmp_path / "e" / "edge")) == ["collections", "meta"]


def test_write_protected_local_mode_folder_names_the_store_and_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """qdrant-client's local mode fails on its own ``.lock``; the message says what that means."""
    folder = tmp_path / "local"
    folder.mkdir()
    denied = PermissionError(13, "Permission denied", str(folder / ".lock"))
    with mock.patch("polyglot_catalog.store.open_client", side_effect=denied):
        assert main(["stats", "--collection", "cat", "--qdrant-path", str(folder)]) == EXIT_INPUT
    message = _error(capsys)
    assert "needs write access to its folder" in message and "Permission denied" in message


def test_store_on_a_read_only_mount_fails_with_a_message_that_says_so(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real thing where the test may mount (root with CAP_SYS_ADMIN): a read-only bind mount."""
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(store), str(mount)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root and CAP_SYS_ADMIN)")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(mount)]
        if subprocess.run(remount, capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        before = _snapshot(mount)
        assert main(["stats", "--collection", "cat", "--qdrant-path", str(mount)]) == EXIT_INPUT
        message = _error(capsys)
        assert "write-protected" in message and "Read-only file system" in message
        assert _snapshot(mount) == before
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
