"""The API key appears nowhere, whatever command or operator meets a server that echoes it (#20).

A local fake Qdrant on 127.0.0.1 answers every request with 401 or 500 and a body that echoes the
request headers (the API key among them), the worst case of a misconfigured proxy. Every CLI command
and every operator runs against it; stdout, stderr, every log record (with tracebacks), every file
written under the test's folder, the exceptions (formatted with their chains) and XCom values are
then searched for the key. The fake server also records the keys it received, so the test knows the
key was really sent.
"""

from __future__ import annotations

import http.server
import json
import logging
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

from polyglot_catalog.cli import EXIT_INPUT, main
from polyglot_catalog.errors import scrub

SECRET = "qdr-ECHOED-4b1d9e-never-print"
URL_SECRET = "pw-in-url-77c1"


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers ``status`` with the request's headers in the body."""

    status: ClassVar[int] = 500
    seen_keys: ClassVar[list[str]] = []

    def _reply(self) -> None:
        _Echo.seen_keys.append(self.headers.get("api-key", ""))
        body = json.dumps({"status": {"error": f"echo: {dict(self.headers)} path={self.path}"}}).encode()
        self.send_response(_Echo.status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _reply

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=[401, 500])
def echo_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    _Echo.status = request.param
    _Echo.seen_keys = []
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # retries without the waiting
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _catalog(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.parquet"
    pq.write_table(
        pa.table({"sku": ["d1", "f1"], "region": ["DE", "FR"], "description": ["Tisch", "Table"]}), path
    )
    return path


def _everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], *extra: Any
) -> str:
    out, err = capsys.readouterr()
    records = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} "
        f"{''.join(traceback.format_exception(r.exc_info[1])) if r.exc_info and r.exc_info[1] else ''}"
        for r in caplog.records
    )
    files = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file())
    rendered = [x if isinstance(x, str) else json.dumps(x, default=str) for x in extra]
    return "\n".join([out, err, records, files, *rendered])


def test_every_cli_command_keeps_the_key_out_of_everything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    echo_server: int,
) -> None:
    monkeypatch.setenv("QDRANT_API_KEY", SECRET)
    url = f"http://bob:{URL_SECRET}@127.0.0.1:{echo_server}"
    store = ["--collection", "cat", "--qdrant-url", url]
    caplog.set_level(logging.DEBUG)
    source = _catalog(tmp_path / "in")
    runs = {
        "embed": ["embed", "--source", str(source), *store, "--quarantine", str(tmp_path / "q.parquet")],
        "match": ["match", *store, "--out", str(tmp_path / "report")],
        "stats": ["stats", *store],
        "verbose": ["-v", "stats", *store],
    }
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        codes = {name: main(argv) for name, argv in runs.items()}
    assert codes == dict.fromkeys(runs, EXIT_INPUT)
    assert SECRET in _Echo.seen_keys  # the key was really sent, and echoed back...
    said = _everything(tmp_path, caplog, capsys)
    assert f"{_Echo.status}" in said and f"127.0.0.1:{echo_server}" in said  # ...the failure is named...
    assert SECRET not in said and URL_SECRET not in said  # ...and never the key


def test_every_operator_keeps_the_key_out_of_everything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    echo_server: int,
) -> None:
    pytest.importorskip("airflow")
    from polyglot_catalog.provider import hooks
    from polyglot_catalog.provider.operators import (
        EmbedCatalogOperator,
        MatchCatalogOperator,
        ReconcileCatalogOperator,
    )

    monkeypatch.setattr(hooks, "_ANNOUNCED", set())
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_QDRANT_DEFAULT",
        json.dumps(
            {
                "conn_type": "qdrant",
                "host": "127.0.0.1",
                "port": echo_server,
                "password": SECRET,
                "extra": {"https": False, "read_timeout": 2},
            }
        ),
    )
    caplog.set_level(logging.DEBUG)
    source = str(_catalog(tmp_path / "in"))
    operators = [
        EmbedCatalogOperator(task_id="embed", source=source, collection="cat"),
        ReconcileCatalogOperator(task_id="reconcile", source=source, shard_summaries=[], collection="cat"),
        MatchCatalogOperator(
            task_id="match", collection="cat", reports_root=str(tmp_path / "reports"), out_name="r"
        ),
    ]
    errors = []
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        for op in operators:
            with pytest.raises(Exception) as caught:
                op.execute(context={"run_id": "manual__1"})
            assert op.hook.mode == "server"
            assert "not defined" not in str(caught.value)
            errors.append("".join(traceback.format_exception(caught.value)))
            errors.append(json.dumps({n: str(getattr(op, n)) for n in op.template_fields}))
    assert SECRET in _Echo.seen_keys
    said = _everything(tmp_path, caplog, capsys, *errors)
    for error in errors[::2]:
        assert f"127.0.0.1:{echo_server}" in error  # every failure names the endpoint
    assert SECRET not in said


def test_scrub_removes_keys_tokens_and_url_credentials() -> None:
    text = (
        "api-key: k1-abcdef, Authorization: Bearer tok-123456, 'api-key': 'k2-abcdef' "
        "https://user:pa55word@host:6333/x?api_key=k3-abcdef&token=k4-abcdef password=p455w0rd"
    )
    cleaned = scrub(text, ["extra-secret-value"])
    for secret in ("k1-abcdef", "tok-123456", "k2-abcdef", "pa55word", "k3-abcdef", "k4-abcdef", "p455w0rd"):
        assert secret not in cleaned, secret
    assert "host:6333" in cleaned  # the endpoint stays readable
    assert scrub("the extra-secret-value leaked", ["extra-secret-value"]) == "the *** leaked"
