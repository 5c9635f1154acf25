"""The Review page in headless Chromium against a live ``airflow api-server`` (docs/REVIEW.md).

An editor logs in through Airflow's login form, accepts one pair and rejects the next with the
keyboard, reloads, and the decisions are there; a read-only user's POST is refused. Reuses the
api-server and DevTools harness of test_plugin_view.py.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_plugin_view import (
    CHROMIUM,
    Chromium,
    LiveServer,
    _free_port,
    _server_env,
    chromium_page,
    running_api_server,
)
from test_review_page import make_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed"),
]

PAIR_JS = (
    "(document.querySelector('#sku-a')?.textContent ?? '') + '|' + "
    "(document.querySelector('#sku-b')?.textContent ?? '')"
)


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("airflow-review")
    reports_root = home / "data" / "reports"
    make_run(reports_root)
    port = _free_port()
    passwords = {"editor": secrets.token_urlsafe(12), "auditor": secrets.token_urlsafe(12)}
    (home / "passwords.json").write_text(json.dumps(passwords), encoding="utf-8")
    server = LiveServer(
        f"http://127.0.0.1:{port}", reports_root, passwords["editor"], home / "api-server.log"
    )
    env = _server_env(home, reports_root, home / "passwords.json", port)
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "editor:user,auditor:viewer"
    env["POLYGLOT_DATA_DIR"] = str(home / "data")  # the embedded Qdrant holding the decisions
    server.env = {**env, "AUDITOR_PASSWORD": passwords["auditor"]}
    with running_api_server(server, env, port):
        yield server


def _log_in(browser: Chromium, server: LiveServer, user: str, password: str, path: str) -> None:
    browser.navigate(server.base + path)
    browser.wait_for("!!document.querySelector('input[name=username]')", 90, "the login form")
    for name, value in (("username", user), ("password", password)):
        browser.evaluate(f"document.querySelector('input[name={name}]').focus()")
        browser.send("Input.insertText", {"text": value})
    browser.wait_for("!document.querySelector('button[type=submit]').disabled", 10, "an enabled Sign in")
    browser.evaluate("document.querySelector('button[type=submit]').click()")


def _press(browser: Chromium, key: str) -> None:
    for kind in ("keyDown", "keyUp"):
        browser.send(
            "Input.dispatchKeyEvent", {"type": kind, "key": key, "text": key if kind == "keyDown" else ""}
        )


def test_review_with_the_keyboard_in_a_live_api_server(review_server: LiveServer, tmp_path: Path) -> None:
    with chromium_page(tmp_path) as browser:
        _log_in(browser, review_server, "editor", review_server.password, "/polyglot/review/cat")
        browser.wait_for(
            "location.pathname === '/polyglot/review/cat' && !!document.querySelector('#decide')",
            90,
            "the Review page",
        )
        assert browser.evaluate("document.title") == "Review matches · cat"
        first = browser.evaluate(PAIR_JS)
        if keep := os.environ.get("POLYGLOT_REVIEW_SCREENSHOT"):  # docs/review-page.png
            browser.screenshot(Path(keep))
        _press(browser, "a")
        browser.wait_for(
            f"document.readyState === 'complete' && ({PAIR_JS}) !== {json.dumps(first)}", 30, "the next pair"
        )
        second = browser.evaluate(PAIR_JS)
        _press(browser, "r")
        browser.wait_for(
            f"document.readyState === 'complete' && ({PAIR_JS}) !== {json.dumps(second)}",
            30,
            "the third pair",
        )
        browser.send("Page.reload")
        browser.wait_for(
            "document.body?.innerText.includes('2 pairs decided')", 30, "the decisions after a reload"
        )
        assert "PWNED" not in browser.evaluate("document.title")

    # a read-only user (Airflow role viewer) may look but not decide
    body = json.dumps({"username": "auditor", "password": review_server.env["AUDITOR_PASSWORD"]}).encode()
    status, _, raw = review_server.request(
        "/auth/token", headers={"content-type": "application/json"}, data=body
    )
    assert status == 201, raw
    auth = {"authorization": f"Bearer {json.loads(raw)['access_token']}"}
    assert review_server.request("/polyglot/review/cat", headers=auth)[0] == 200
    form = b"action=accept&csrf=x&region_a=DE&sku_a=d2&region_b=US&sku_b=u2"
    status, _, raw = review_server.request(
        "/polyglot/review/cat/decide",
        headers={**auth, "content-type": "application/x-www-form-urlencoded"},
        data=form,
    )
    assert status == 403, raw
