"""The report in a real browser: it renders, loads nothing but itself, and hostile text stays text.

Chromium loads the page from a loopback HTTP server that is also its proxy for every other host
(``--proxy-bypass-list=<-loopback>`` removes the implicit loopback bypass), so any request the page
makes, to any host, shows up in the server's log. Chromium itself phones Google services at startup
(component updates, sign-in) whatever the flags; those hosts are set apart as browser-internal. A
control page with a real script and image proves the harness sees script effects and requests.
"""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_reports import ALLOWED_TAGS, SCRIPT_TEXT, make_result, parse_tags

from polyglot_catalog.reports import write_reports

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="headless Chromium not installed (apt-get install -y chromium); CI installs it",
    ),
]

# Requests Chromium makes on its own at startup; none is caused by page content.
BROWSER_INTERNAL = re.compile(r"(^|\.)(google\.com|googleapis\.com|gstatic\.com|gvt1\.com)(:\d+)?$")


@dataclass
class LoggingServer:
    """Serves one folder on 127.0.0.1 and records every request, direct or proxied."""

    root: Path
    port: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, host, path)

    @property
    def origin(self) -> str:
        return f"127.0.0.1:{self.port}"

    def page_requests(self) -> list[tuple[str, str, str]]:
        """Everything except Chromium's own service traffic."""
        return [r for r in self.requests if not BROWSER_INTERNAL.search(r[1])]


def _handler(server: LoggingServer) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            host = parts.netloc or self.headers.get("Host", "")
            server.requests.append(("GET", host, parts.path))
            if host != server.origin:  # a proxied request for another host: never forward
                self.send_error(403)
                return
            self.path = parts.path or "/"
            super().do_GET()

        def do_CONNECT(self) -> None:
            server.requests.append(("CONNECT", self.path, ""))
            self.send_error(403)

        do_POST = do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def served(tmp_path: Path) -> Iterator[LoggingServer]:
    root = tmp_path / "site"
    root.mkdir()
    state = LoggingServer(root=root)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_handler(state), directory=str(root))
    )
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def chromium(tmp_path: Path, server: LoggingServer, url_path: str, *extra: str) -> str:
    """Run headless Chromium on one page of ``server``; return stdout (the DOM with --dump-dom)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-features=NetworkTimeServiceQuerying,Translate,OptimizationHints,MediaRouter",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--proxy-server=http://{server.origin}",
        "--proxy-bypass-list=<-loopback>",
        # Lets timers and onload handlers run before the DOM is dumped, so delayed scripts would show.
        "--virtual-time-budget=3000",
        *extra,
        f"http://{server.origin}{url_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _title(dom: str) -> str:
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    return html.unescape(match.group(1)) if match else ""


def test_harness_sees_script_effects_and_every_request(tmp_path: Path, served: LoggingServer) -> None:
    """Control: a page that does run a script and load things is caught, so the real test means something."""
    (served.root / "control.html").write_text(
        "<!DOCTYPE html><title>control</title><img src='/probe.png'>"
        "<script>document.title='PWNED';document.body.setAttribute('data-pwned','1');"
        "fetch('http://leak.example/x').catch(()=>{})</script>",
        encoding="utf-8",
    )
    dom = chromium(tmp_path, served, "/control.html", "--dump-dom")

    assert _title(dom) == "PWNED" and 'data-pwned="1"' in dom
    hosts_paths = {(host, path) for _, host, path in served.page_requests()}
    assert (served.origin, "/probe.png") in hosts_paths
    assert ("leak.example", "/x") in hosts_paths


def test_report_renders_as_text_and_loads_nothing(tmp_path: Path, served: LoggingServer) -> None:
    # Hostile text points at this server, so a leaked <img>/<style> would show up in its log.
    folder = write_reports(served.root / "run", make_result(port=served.port), run_id="browser-check")
    assert folder.parent == served.root

    dom = chromium(tmp_path, served, "/run/report.html", "--dump-dom")

    assert served.page_requests() == [("GET", served.origin, "/run/report.html")], served.requests
    assert _title(dom) == "Cross-region match report · browser-check"
    elements = parse_tags(dom)
    assert {tag for tag, _ in elements} <= ALLOWED_TAGS, "product text became elements"
    assert [attrs for _, attrs in elements if str(attrs.get("id", "")).startswith("pwned")] == []
    assert not [attrs for _, attrs in elements if "data-pwned" in attrs], "an injected script ran"
    assert not [(tag, key) for tag, attrs in elements for key in attrs if key.startswith("on")]
    assert "<script" not in dom.lower()
    # The injected text is there, visible, as text (diff highlighting may wrap parts of it in <mark>).
    text = re.sub(r"</?mark[^>]*>", "", dom)
    assert html.escape(SCRIPT_TEXT, quote=False) in text
    assert '&lt;a id="pwned-link" href="javascript:alert(1)"&gt;javascript:alert(1)&lt;/a&gt;' in text
    for heading in ("Overview", "Score distribution", "Region-pair matrix", "Quality against labels"):
        assert f">{heading}</h2>" in dom
    assert dom.count("<svg") >= 2 and 'class="marker"' in dom


def test_report_screenshot(tmp_path: Path, served: LoggingServer) -> None:
    """A full-size screenshot renders; set POLYGLOT_REPORT_SCREENSHOT=/path.png to keep it for a look."""
    write_reports(served.root / "run", make_result(port=served.port), run_id="screenshot")
    png = tmp_path / "report.png"
    chromium(tmp_path, served, "/run/report.html", f"--screenshot={png}", "--window-size=1280,2400")

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (1280, 2400)
    assert len(data) > 50_000, "a near-empty PNG means the page did not render"
    assert served.page_requests() == [("GET", served.origin, "/run/report.html")]
    if keep := os.environ.get("POLYGLOT_REPORT_SCREENSHOT"):
        shutil.copyfile(png, keep)
