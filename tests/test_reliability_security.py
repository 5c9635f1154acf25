"""The Qdrant API key never leaves the connection: logs, streams, XCom, summaries, errors, reports.

The key is set the way operators set it, on ``AIRFLOW_CONN_QDRANT_DEFAULT`` (password = API key),
and the real operators run: a server-mode run that Qdrant rejects or cannot be reached at (the paths
where messages are built from transport errors), and a local-mode run through embed and match that
writes a report. Every log record, captured stream, return value (XCom), rendered template field,
exception (with traceback) and report file is grepped for the key.

Related promises with their own tests: product HTML/JS renders as text (tests/test_reports.py::
test_hostile_product_text_renders_only_as_text, tests/test_report_browser.py::
test_report_renders_as_text_and_loads_nothing in headless Chromium, tests/test_plugin_view.py::
test_hostile_summary_values_and_names_are_escaped, ::test_view_in_headless_chromium); report paths from
Params stay under the reports root (tests/test_reports.py::
test_safe_report_dir_refuses_names_outside_the_root, ::test_safe_report_dir_refuses_symlinks_pointing_outside,
tests/test_operators.py::
test_match_refuses_report_names_outside_the_root).
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder

pytest.importorskip("airflow")

from polyglot_catalog.provider import hooks
from polyglot_catalog.provider.operators import EmbedCatalogOperator, MatchCatalogOperator

SECRET = "qdr-SECRET-7f3a9c2e-do-not-log"
CONN_ENV = "AIRFLOW_CONN_QDRANT_DEFAULT"


class _Forbidden(http.server.BaseHTTPRequestHandler):
    """A Qdrant that refuses the key, echoing the request headers back (a worst case for leaks)."""

    seen_keys: ClassVar[list[str]] = []

    def _reply(self) -> None:
        _Forbidden.seen_keys.append(self.headers.get("api-key", ""))
        body = json.dumps({"status": {"error": f"forbidden: {dict(self.headers)}"}}).encode()
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_PATCH = _reply

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def forbidding_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(hooks, "_ANNOUNCED", set())


def set_connection(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "qdrant", "password": SECRET, **fields}))


def catalog(path: Path) -> Path:
    rows = {
        "sku": ["D1", "D2", "F1", "F2"],
        "region": ["DE", "DE", "FR", "FR"],
        "description": [
            "Regal aus Birke 80 cm <script>alert(1)</script>",
            "Sofa grau",
            "Étagère en bouleau 80 cm",
            "Canapé gris",
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def everything_said(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], *extra: Any) -> str:
    out, err = capsys.readouterr()
    records = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    return "\n".join(
        [records, out, err, *(json.dumps(x, default=str) if not isinstance(x, str) else x for x in extra)]
    )


def rendered_fields(op: Any) -> dict[str, Any]:
    return {name: getattr(op, name) for name in op.template_fields}


@pytest.mark.parametrize("failure", ["rejected", "unreachable"])
def test_api_key_never_appears_when_the_server_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    forbidding_server: int,
    failure: str,
) -> None:
    if failure == "rejected":
        port = forbidding_server
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    set_connection(monkeypatch, host="127.0.0.1", port=port, extra={"timeout": 1, "https": False})
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # retries without the waiting
    op = EmbedCatalogOperator(task_id="embed", source=str(catalog(tmp_path / "c.parquet")), collection="c")
    caplog.set_level(logging.DEBUG)
    with (
        mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()),
        pytest.raises(Exception) as caught,
    ):
        op.execute(context={})
    assert op.hook.mode == "server"
    error = "".join(traceback.format_exception(caught.value))
    assert str(caught.value).startswith(f"Qdrant at http://127.0.0.1:{port} failed during collection check")
    if failure == "rejected":
        assert SECRET in _Forbidden.seen_keys  # the key was really sent (and echoed back)
    said = everything_said(caplog, capsys, error, rendered_fields(op))
    assert SECRET not in said  # ...and never the key


def test_api_key_never_appears_in_xcom_logs_or_reports_of_a_successful_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_connection(monkeypatch, extra={"path": str(tmp_path / "qdrant")})  # local mode; key still set
    caplog.set_level(logging.DEBUG)
    embed = EmbedCatalogOperator(
        task_id="embed", source=str(catalog(tmp_path / "in" / "c.parquet")), collection="c"
    )
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        embedded = embed.execute(context={})
    match = MatchCatalogOperator(
        task_id="match",
        collection="c",
        model="fake-model",
        reports_root=str(tmp_path / "reports"),
        out_name="run1",
    )
    matched = match.execute(context={"run_id": "manual__1"})
    assert embedded["upserted"] == 4 and Path(matched["report_dir"]).is_dir()

    report_files = [p for p in (tmp_path / "reports").rglob("*") if p.is_file()]
    assert report_files
    for path in report_files:
        assert SECRET.encode() not in path.read_bytes(), path
    said = everything_said(caplog, capsys, embedded, matched, rendered_fields(embed), rendered_fields(match))
    assert SECRET not in said
