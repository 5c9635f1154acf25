"""The match-report view in the Airflow UI: run list, report pages, path safety, escaping, auth.

Unit tests drive the FastAPI app with TestClient. Authentication is real there too: requests without
credentials go through Airflow's own ``get_user`` (and the SimpleAuthManager for login redirects and
bad tokens); only the happy-path tests stand in a user by overriding the app's auth dependency.

The slow tests start a real ``airflow api-server`` on loopback with a SimpleAuthManager user whose
password is set through ``[core] simple_auth_manager_passwords_file``, and talk to it over HTTP and
from headless Chromium (driven over ``--remote-debugging-pipe``, so no debugging port is opened):
log in through the login form, open the view, see the latest run, open its report, and check that
hostile product text stays text and no script from it runs.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import html
import importlib.util
import io
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import markupsafe
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_reports import SCRIPT_TEXT, hostile_strings, make_result, parse_tags

from polyglot_catalog.provider import views
from polyglot_catalog.reports import write_reports

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILE = ROOT / "plugins" / "polyglot_catalog_plugin.py"
CHROMIUM = Path("/usr/bin/chromium")

LATEST = "nightly-2025-03-02"
OLDER = "nightly-2025-03-01"
HOSTILE_NAME = "\"><svg onload=alert('name')>"
LATEST_RUN_ID = "scheduled__2025-03-02T02:00:00+00:00"
REQUIRED_CSP = ("default-src 'none'", "style-src 'unsafe-inline'", "img-src data:")


# ---------------------------------------------------------------------------------------------
# report folders


def _set_written_at(folder: Path, when: str, **extra: Any) -> None:
    """Pretend a run was written at ``when``: tests need a fixed order, not the wall clock."""
    path = folder / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary["report"]["written_at"] = when
    summary.update(extra)
    path.write_text(json.dumps(summary), encoding="utf-8")


def make_reports_root(root: Path, *, port: int = 9) -> dict[str, Path]:
    """A reports root as the match DAG leaves it, plus the debris and traps a real one may hold.

    Two complete runs (the newer one labelled, with hostile product text), a run whose folder name is
    itself hostile, a broken summary, an in-progress temp folder, an unrelated folder, a lock file,
    and symlinks that lead out of the root (a whole run folder, and one run's report.html).
    """
    root.mkdir(parents=True, exist_ok=True)
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "report.html").write_text("<h1>secret outside the reports root</h1>", encoding="utf-8")
    (outside / "summary.json").write_text(json.dumps({"model": "outside-model"}), encoding="utf-8")

    older = write_reports(root / OLDER, make_result(port=port, labelled=False), run_id="scheduled-older")
    _set_written_at(older, "2025-03-01T02:10:00+00:00")
    latest = write_reports(root / LATEST, make_result(port=port), run_id=LATEST_RUN_ID)
    _set_written_at(latest, "2025-03-02T02:10:00+00:00", model=hostile_strings(port)["img"])
    odd = write_reports(root / HOSTILE_NAME, make_result(port=port, labelled=False), run_id="odd")
    _set_written_at(odd, "2025-02-27T08:00:00+00:00")

    broken = root / "broken-run"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json", encoding="utf-8")
    (broken / "report.html").write_text("<p>partial</p>", encoding="utf-8")
    os.utime(broken / "summary.json", (1_700_000_000, 1_700_000_000))  # 2023: sorts last

    temp = root / f".{LATEST}.tmp-0123456789ab"
    temp.mkdir()
    (temp / "summary.json").write_text(json.dumps({"model": "half-written"}), encoding="utf-8")
    (temp / "report.html").write_text("<p>half-written</p>", encoding="utf-8")
    (root / "not-a-report").mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    sneaky = root / "sneaky"
    sneaky.mkdir()
    sneaky_summary = {"model": "sneaky", "report": {"written_at": "2025-02-20T00:00:00+00:00"}}
    (sneaky / "summary.json").write_text(json.dumps(sneaky_summary), encoding="utf-8")
    (sneaky / "report.html").symlink_to(outside / "report.html")
    return {"latest": latest, "older": older, "odd": odd, "outside": outside}


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    root = tmp_path / "reports"
    make_reports_root(root)
    return root


@pytest.fixture
def auth_manager() -> Any:
    """The configured auth manager (SimpleAuthManager), as the API server would create it."""
    from airflow.api_fastapi.app import create_auth_manager

    return create_auth_manager()


@pytest.fixture
def client(reports: Path, auth_manager: Any) -> Iterator[TestClient]:
    """A client whose requests count as an authorized reader; auth itself is tested separately."""
    app = views.create_app(reports)
    app.dependency_overrides[views.require_report_reader] = lambda: None
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def anonymous(reports: Path, auth_manager: Any) -> Iterator[TestClient]:
    """A client with the app's real authentication in place."""
    with TestClient(views.create_app(reports), follow_redirects=False) as test_client:
        yield test_client


def _rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", body, re.S)


def _cells(row: str) -> list[list[str]]:
    return [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def _escaped(text: str) -> str:
    """Text as Jinja2 autoescaping writes it."""
    return str(markupsafe.escape(text))


def _run_name(row: str) -> str:
    match = re.search(r'<(?:a|span) class="name[^"]*"[^>]*>(.*?)</(?:a|span)>', row, re.S)
    assert match, row
    return html.unescape(match.group(1))


# ---------------------------------------------------------------------------------------------
# the list


def test_list_shows_runs_newest_first_with_their_figures(client: TestClient, reports: Path) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    rows = _rows(response.text)
    assert [_run_name(r) for r in rows] == [LATEST, OLDER, HOSTILE_NAME, "sneaky", "broken-run"]
    assert 'class="badge">latest<' in rows[0] and "latest<" not in rows[1]

    summary = json.loads((reports / LATEST / "summary.json").read_text(encoding="utf-8"))
    written_rows = summary["report"]["rows"]
    products = written_rows["groups"] + written_rows["unmatched"]
    matches = sum(c["matches"] for c in summary["counts"].values())
    candidates = sum(c["candidates"] for c in summary["counts"].values())
    cells = _cells(rows[0])
    run, when, n_products, n_matches, changes, threshold, _model, precision, recall, f1, link = cells
    assert LATEST_RUN_ID in run and {"DE", "FR", "US"} <= set(run)
    assert when == ["2025-03-02", "02:10", "UTC"]
    assert n_products == [f"{products:,}"]
    assert n_matches == [f"{matches:,}", "of", f"{candidates:,}", "pairs"]
    assert threshold == ["0.740"] and changes == ["–"]  # written without match state
    assert (precision, recall, f1) == (["0.910"], ["0.860"], ["0.884"])
    assert link[:2] == ["Report", "→"]
    assert f'href="runs/{LATEST}/report.html"' in rows[0]

    # An unlabelled run has no quality figures: dashes, not zeros.
    assert _cells(rows[1])[7:10] == [["–"], ["–"], ["–"]]
    assert "summary.json unreadable" in rows[4]


def test_list_leaves_out_temp_unrelated_and_escaping_folders(client: TestClient) -> None:
    page = client.get("/").text

    for absent in ("half-written", "not-a-report", "escape", "outside-model", ".lock"):
        assert absent not in page
    # A run whose report.html leads out of the root is listed, flagged, and not linked.
    (sneaky,) = [r for r in _rows(page) if _run_name(r) == "sneaky"]
    assert "report.html missing" in sneaky and "href=" not in sneaky


def test_list_of_missing_root_says_so(tmp_path: Path, auth_manager: Any) -> None:
    app = views.create_app(tmp_path / "nowhere")
    app.dependency_overrides[views.require_report_reader] = lambda: None
    page = TestClient(app).get("/").text

    assert "No match reports yet" in page and "cross_region_match" in page


def test_list_caps_the_number_of_runs(reports: Path) -> None:
    runs, total = views.list_runs(reports, limit=2)

    assert [r.name for r in runs] == [LATEST, OLDER] and total == 5


def test_odd_summary_values_show_as_missing_not_as_errors() -> None:
    odd = {
        "threshold": True,
        "model": {"nested": 1},
        "regions": {"DE": 3, "FR": 4},
        "counts": {"DE|FR": {"matches": "12", "candidates": -1}},
        "metrics": {"overall": {"precision": float("nan"), "recall": None, "f1": "0.9"}},
        "report": {"written_at": "yesterday", "rows": {"groups": 4}},
        "run_id": "x" * 500,
    }
    run = views.summarize_run("odd", odd, mtime=0.0, has_report=False)

    assert (run.threshold, run.model, run.matches, run.candidates, run.products) == (None,) * 5
    assert (run.precision, run.recall, run.f1, run.href) == (None,) * 4
    assert run.regions == ["DE", "FR"] and run.written_at is not None and run.written_at.year == 1970
    assert run.run_id is not None and len(run.run_id) == 201
    assert views.summarize_run("p", {"products": {"DE": 3, "FR": 4}}, 0.0, True).products == 7


def test_hostile_summary_values_and_names_are_escaped(client: TestClient) -> None:
    page = client.get("/").text

    tags = parse_tags(page)
    assert {tag for tag, _ in tags} <= {
        "html", "head", "meta", "link", "title", "style", "body", "main", "h1", "p", "code", "div",
        "table", "thead", "tbody", "tr", "th", "td", "a", "span", "form", "label", "input", "button",
    }  # fmt: skip
    assert not [(tag, key) for tag, attrs in tags for key in attrs if key.startswith("on")]
    assert "<script" not in page.lower() and "<svg" not in page.lower() and "<img" not in page.lower()
    # The hostile collection, model and folder name are on the page, as text.
    assert _escaped(f"catalog_{SCRIPT_TEXT}") in page
    assert _escaped(hostile_strings()["img"]) in page
    assert f">{_escaped(HOSTILE_NAME)}</a>" in page
    # ...and the folder name's link is percent-encoded, so it stays a relative path.
    assert f'href="runs/{urllib.parse.quote(HOSTILE_NAME, safe="")}/report.html"' in page


def test_list_and_report_resolve_run_folders_by_url_name(client: TestClient) -> None:
    quoted = urllib.parse.quote(HOSTILE_NAME, safe="")
    response = client.get(f"/runs/{quoted}/report.html")

    assert response.status_code == 200
    assert "Cross-region match report · odd" in response.text


# ---------------------------------------------------------------------------------------------
# report pages and path safety


def test_report_is_served_with_a_strict_policy(client: TestClient, reports: Path) -> None:
    response = client.get(f"/runs/{LATEST}/report.html")

    assert response.status_code == 200
    assert response.content == (reports / LATEST / "report.html").read_bytes()
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = [d.strip() for d in response.headers["content-security-policy"].split(";")]
    assert set(REQUIRED_CSP) <= set(policy)
    assert "frame-ancestors 'self'" in policy and not [d for d in policy if "script" in d]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


def test_list_page_carries_the_same_headers(client: TestClient) -> None:
    headers = client.get("/").headers

    assert headers["content-security-policy"] == views.FORM_PAGE_POLICY  # its SKU search form is a GET here
    assert views.FORM_PAGE_POLICY.replace("form-action 'self'", "form-action 'none'") == (
        views.CONTENT_SECURITY_POLICY
    )
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("no-such-run", 404, id="unknown"),
        pytest.param("not-a-report", 404, id="folder-without-report"),
        pytest.param(f".{LATEST}.tmp-0123456789ab", 404, id="in-progress-temp-folder"),
        pytest.param("%2e%2e", 400, id="dot-dot"),
        pytest.param("..%2F..%2Foutside", 404, id="encoded-slashes-never-match-a-run"),
        pytest.param("%2Foutside", 404, id="absolute"),
        pytest.param("escape", 400, id="symlinked-folder-leaving-root"),
        pytest.param("sneaky", 400, id="symlinked-report-leaving-root"),
        pytest.param("a%00b", 400, id="nul-byte"),
        pytest.param("~", 400, id="home"),
    ],
)
def test_bad_run_names_are_refused(client: TestClient, reports: Path, name: str, expected: int) -> None:
    response = client.get(f"/runs/{name}/report.html")

    assert response.status_code == expected, response.text
    assert "secret outside" not in response.text
    assert str(reports.parent) not in response.text, "error messages must not reveal server paths"


@pytest.mark.parametrize("filename", ["pairs.parquet", "groups.parquet", "unmatched.parquet", "summary.json"])
def test_report_files_download_as_attachments(client: TestClient, reports: Path, filename: str) -> None:
    response = client.get(f"/runs/{LATEST}/{filename}")

    assert response.status_code == 200
    assert response.content == (reports / LATEST / filename).read_bytes()
    assert response.headers["content-disposition"].startswith("attachment;")
    assert f"{LATEST}-{filename}" in response.headers["content-disposition"]
    assert response.headers["x-content-type-options"] == "nosniff"
    if filename.endswith(".parquet"):
        assert pd.read_parquet(io.BytesIO(response.content)).shape[0] > 0


@pytest.mark.parametrize(
    ("name", "filename", "expected"),
    [
        pytest.param(LATEST, ".lock", 404, id="lock-file"),
        pytest.param(LATEST, "report.html.bak", 404, id="not-a-report-file"),
        pytest.param(LATEST, "duplicates.parquet", 404, id="absent-in-this-run"),
        pytest.param("escape", "summary.json", 400, id="symlinked-folder-leaving-root"),
        pytest.param("no-such-run", "pairs.parquet", 404, id="unknown-run"),
        pytest.param(f".{LATEST}.tmp-0123456789ab", "summary.json", 404, id="in-progress-temp-folder"),
    ],
)
def test_only_the_report_files_of_a_run_download(
    client: TestClient, reports: Path, name: str, filename: str, expected: int
) -> None:
    response = client.get(f"/runs/{name}/{filename}")

    assert response.status_code == expected, response.text
    assert "outside-model" not in response.text


def test_the_list_links_each_runs_downloads(client: TestClient) -> None:
    row = next(r for r in _rows(client.get("/").text) if _run_name(r) == LATEST)
    links = re.findall(r'<a class="download" href="([^"]+)" download>', row)
    assert links == [
        f"runs/{LATEST}/{f}"
        for f in ("pairs.parquet", "groups.parquet", "unmatched.parquet", "changes.parquet", "summary.json")
    ]


def test_dot_segments_are_normalised_before_they_reach_the_app(client: TestClient) -> None:
    # Clients collapse "/runs/../x" themselves; what arrives is another path, never a traversal.
    assert client.get("/runs/../../outside/report.html").status_code == 404


# ---------------------------------------------------------------------------------------------
# changes since the last run, and the SKU search (issue 22, docs/MATCH_STATE.md)

HOSTILE_SKU = "<script>alert('sku')</script>"


def _with_changes(root: Path) -> Path:
    """A run that committed match state: change counts in the summary, rows in changes.parquet."""
    result = make_result()
    result.changes = pd.DataFrame(
        [("US", HOSTILE_SKU, None, "g000007", "new_group"), ("DE", "D1", "g000001", None, "dissolved")],
        columns=["region", "sku", "old_group", "new_group", "kind"],
        dtype=object,
    )
    kinds = ("new_match", "broken_match", "moved", "new_group", "dissolved")
    result.summary["changes"] = dict(zip(kinds, (0, 0, 0, 1, 1), strict=True))
    result.summary["match_state"] = {"mode": "full", "previous_run": "<b>run-1</b>"}
    folder = write_reports(root / "with-changes", result, run_id="run-2")
    _set_written_at(folder, "2025-03-03T02:10:00+00:00")
    return folder


def test_list_shows_each_runs_changes_and_the_report_renders_them(client: TestClient, reports: Path) -> None:
    _with_changes(reports)
    page = client.get("/").text

    row = _rows(page)[0]
    assert _run_name(row) == "with-changes"
    assert _cells(row)[4] == [
        *("1", "in", "new", "groups", "1", "dissolved"),
        *("full", "run,", "since", _escaped("<b>run-1</b>")),
    ]
    assert "<b>run-1</b>" not in page and _escaped("<b>run-1</b>") in page
    assert 'href="runs/with-changes/changes.parquet"' in row

    report = client.get("/runs/with-changes/report.html")
    assert report.status_code == 200
    section = report.text.split('<section id="changes">', 1)[1].split("</section>", 1)[0]
    assert "2 products changed group since run" in section and _escaped("<b>run-1</b>") in section
    assert _escaped(HOSTILE_SKU) in section and "<script" not in report.text.lower()


@pytest.fixture
def state_client(tmp_path: Path, auth_manager: Any) -> Iterator[TestClient]:
    """The view over an edge store whose collection ``cat`` holds a committed match run."""
    import numpy as np

    from polyglot_catalog.ids import point_id
    from polyglot_catalog.matching.result import MatchResult
    from polyglot_catalog.matching.state import commit_match_state
    from polyglot_catalog.store import CatalogStore, open_client

    qdrant = open_client(path=str(tmp_path / "qdrant"), embedded="edge")
    store = CatalogStore(qdrant, "cat", "m")
    store.ensure_collection(2)
    rows = [("DE", "d1"), ("FR", "f1"), ("US", HOSTILE_SKU), ("US", "u2")]
    store.upsert(
        [point_id(r, s) for r, s in rows],
        np.eye(2, dtype=np.float32)[[0, 0, 0, 1]],
        [{"region": r, "sku": s, "status": "active"} for r, s in rows],
    )
    pairs = pd.DataFrame(
        [("DE", "d1", "US", HOSTILE_SKU, 0.93, "match"), ("DE", "d1", "FR", "f1", 0.88, "match")],
        columns=["region_a", "sku_a", "region_b", "sku_b", "score", "decision"],
    )
    groups = pd.DataFrame(
        [("g1", "DE", "d1"), ("g1", "FR", "f1"), ("g1", "US", HOSTILE_SKU)],
        columns=["group_id", "region", "sku"],
    )
    summary = {"collection": "cat", "regions": ["DE", "FR", "US"]}
    commit_match_state(store, MatchResult(pairs, groups, pd.DataFrame(), summary), "run-1")
    app = views.create_app(tmp_path / "reports", review_client=lambda: qdrant)
    app.dependency_overrides[views.require_report_reader] = lambda: None
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client
    qdrant.close()


def _lookup(client: TestClient, **query: str) -> Any:
    return client.get("/lookup", params=query)


def test_sku_search_shows_the_group_and_the_twin_in_every_region(state_client: TestClient) -> None:
    response = _lookup(state_client, collection="cat", region="DE", sku="d1")

    assert response.status_code == 200
    assert response.headers["content-security-policy"] == views.FORM_PAGE_POLICY
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text))
    assert "Group g000001" in text and "run run-1" in text
    assert "FR f1 0.880 run-1" in text and f"US {HOSTILE_SKU} 0.930 run-1" in html.unescape(text)
    # the twin's SKU is text, and its link is a relative, percent-encoded search for it
    assert "<script" not in response.text.lower() and _escaped(HOSTILE_SKU) in response.text
    query = urllib.parse.urlencode({"collection": "cat", "region": "US", "sku": HOSTILE_SKU})
    assert f'href="lookup?{html.escape(query)}"' in response.text
    # a product no run grouped is found, with no group
    alone = _lookup(state_client, collection="cat", region="US", sku="u2")
    assert alone.status_code == 200 and "none: no twin in another region" in alone.text


@pytest.mark.parametrize(
    ("query", "expected", "message"),
    [
        pytest.param({"region": "US", "sku": "nope"}, 404,
                     "has no product region=&#39;US&#39; sku=&#39;nope&#39;", id="unknown-sku"),
        pytest.param({"collection": "other", "region": "US", "sku": "u2"}, 404,
                     "collection &#39;other&#39; does not exist", id="unknown-collection"),
        pytest.param({"region": "US/../x", "sku": "u2"}, 400, "is not allowed", id="bad-region"),
        pytest.param({"collection": "cat<x>", "region": "US", "sku": "u2"}, 400, "is not allowed",
                     id="bad-collection"),
        pytest.param({"region": "US", "sku": "a\x00b"}, 400, "without control characters", id="control-char"),
    ],
)  # fmt: skip
def test_sku_search_says_what_is_wrong(
    state_client: TestClient, query: dict[str, str], expected: int, message: str
) -> None:
    response = _lookup(state_client, **{"collection": "cat", **query})

    assert response.status_code == expected
    assert message in response.text


def test_sku_search_escapes_an_injection_attempt(state_client: TestClient) -> None:
    attack = '"><img src=x onerror=alert(1)>'
    response = _lookup(state_client, collection="cat", region="US", sku=attack)

    assert response.status_code == 404
    tags = parse_tags(response.text)
    assert not [(tag, key) for tag, attrs in tags for key in attrs if key.startswith("on")]
    assert "<img" not in response.text.lower()
    assert f'value="{_escaped(attack)}"' in response.text  # echoed into the form, as text


def test_sku_search_form_is_on_the_list_and_empty_search_shows_the_form(state_client: TestClient) -> None:
    assert 'action="lookup"' in state_client.get("/").text
    empty = state_client.get("/lookup")
    assert empty.status_code == 200 and '<form class="search" method="get" action="lookup">' in empty.text


# ---------------------------------------------------------------------------------------------
# authentication and authorization


def test_unauthenticated_api_request_gets_401(anonymous: TestClient) -> None:
    response = anonymous.get("/", headers={"accept": "application/json"})

    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert LATEST not in response.text


def test_unauthenticated_browser_is_sent_to_login(anonymous: TestClient) -> None:
    response = anonymous.get(f"/runs/{LATEST}/report.html", headers={"accept": "text/html"})

    assert response.status_code == 303
    location = urllib.parse.urlsplit(response.headers["location"])
    assert location.path == "/auth/login"
    assert urllib.parse.parse_qs(location.query)["next"] == [f"/runs/{LATEST}/report.html"]
    assert "Cross-region" not in response.text


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"cookies": {"_token": "not-a-jwt"}}, id="garbage-cookie"),
        pytest.param({"headers": {"authorization": "Bearer not-a-jwt"}}, id="garbage-bearer"),
    ],
)
def test_invalid_tokens_are_refused(anonymous: TestClient, credentials: dict[str, Any]) -> None:
    headers = {"accept": "application/json", **credentials.get("headers", {})}
    anonymous.cookies.update(credentials.get("cookies", {}))
    response = anonymous.get("/", headers=headers)

    assert response.status_code in (401, 403)
    assert LATEST not in response.text


def test_a_forged_token_is_refused(anonymous: TestClient) -> None:
    """A well-formed JWT signed with another key must not pass."""
    import jwt

    forged = jwt.encode({"sub": "admin", "role": "admin", "aud": "apache-airflow"}, "g" * 64, "HS512")
    response = anonymous.get("/", headers={"authorization": f"Bearer {forged}"})

    assert response.status_code in (401, 403)


def test_every_route_requires_authentication(anonymous: TestClient) -> None:
    paths = {route.path for route in anonymous.app.routes}  # type: ignore[attr-defined]

    review = {"/review/", "/review/{collection}", "/review/{collection}/decide"}  # docs/REVIEW.md
    assert paths == {"/", "/lookup", "/runs/{name}/report.html", "/runs/{name}/{filename}", *review}, (
        "no docs, no openapi, no unguarded extras"
    )
    for path in paths:
        url = (
            path.replace("{name}", LATEST).replace("{filename}", "pairs.parquet").replace("{collection}", "c")
        )
        send = anonymous.post if path.endswith("/decide") else anonymous.get
        response = send(url, headers={"accept": "application/json"})
        assert response.status_code == 401, path


def test_authorization_follows_read_access_to_the_match_dag(reports: Path, auth_manager: Any) -> None:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    app = views.create_app(reports)
    with TestClient(app) as test_client:
        app.dependency_overrides[views.authenticated_user] = lambda: SimpleAuthManagerUser(
            username="viewer", role="viewer"
        )
        assert test_client.get("/").status_code == 200
        app.dependency_overrides[views.authenticated_user] = lambda: SimpleAuthManagerUser(
            username="nobody", role=None
        )
        response = test_client.get("/")
        assert response.status_code == 403
        assert "cross_region_match" in response.json()["detail"]


# ---------------------------------------------------------------------------------------------
# configuration and registration


def test_reports_root_defaults_to_the_data_dir_and_follows_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(views.REPORTS_ROOT_ENV, raising=False)
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path / "data"))
    assert views.default_reports_root() == tmp_path / "data" / "reports"

    monkeypatch.setenv(views.REPORTS_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert views.default_reports_root() == tmp_path / "elsewhere"


def test_app_reads_the_root_per_request(reports: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(views.REPORTS_ROOT_ENV, str(reports))
    app = views.create_app()
    app.dependency_overrides[views.require_report_reader] = lambda: None

    assert LATEST in TestClient(app).get("/").text


def _load_plugin_module() -> Any:
    spec = importlib.util.spec_from_file_location("polyglot_catalog_plugin_under_test", PLUGIN_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_mounts_the_app_and_adds_a_nav_entry() -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse
    from fastapi import FastAPI

    plugin = _load_plugin_module().PolyglotCatalogPlugin

    assert plugin.name == "polyglot_catalog"
    (app,) = plugin.fastapi_apps
    assert isinstance(app["app"], FastAPI) and app["url_prefix"] == views.URL_PREFIX
    assert not any(app["url_prefix"].startswith(p) for p in RESERVED_URL_PREFIXES)
    view, review = plugin.external_views
    assert review["href"] == "polyglot/review/" and review["name"] == "Review matches"
    parsed = ExternalViewResponse.model_validate(view)  # the shape the UI is served
    assert parsed.destination == "nav" and parsed.category == "browse" and parsed.url_route
    # Relative to the UI's <base href>, so it works under any [api] base_url.
    assert parsed.href == "polyglot/" and urllib.parse.urljoin("/", parsed.href) == "/polyglot/"


def test_airflow_plugin_loader_finds_the_plugin() -> None:
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()

    assert [a["url_prefix"] for a in apps if a.get("url_prefix") == views.URL_PREFIX] == [views.URL_PREFIX]


# ---------------------------------------------------------------------------------------------
# a real api-server


USER = "reviewer"


@dataclass
class LiveServer:
    """A running ``airflow api-server`` on loopback and what the tests need to reach it."""

    base: str
    reports_root: Path
    password: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def request(
        self, path: str, *, headers: dict[str, str] | None = None, data: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request, redirects not followed; returns status, headers, body."""
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def token(self, password: str | None = None) -> str:
        body = json.dumps({"username": USER, "password": password or self.password}).encode()
        status, _, raw = self.request("/auth/token", headers={"content-type": "application/json"}, data=body)
        assert status == 201, raw
        return json.loads(raw)["access_token"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(home: Path, reports_root: Path, passwords: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "PYTEST_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "POLYGLOT_REPORTS_ROOT": str(reports_root),
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT the server's process group, give it time to shut down cleanly, then SIGKILL the rest."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers the server left behind, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_api_server(server: LiveServer, env: dict[str, str], port: int) -> Iterator[LiveServer]:
    """``airflow db migrate`` with ``env``, then an api-server on ``port`` until the block ends
    (failing the test, with the server's log, when it exits or is not healthy within 180 s)."""
    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run(
        [airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]

    with open(server.log_path, "wb") as log:
        server.proc = subprocess.Popen(
            [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches its workers too
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.proc.poll() is not None:
                pytest.fail(f"api-server exited with {server.proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(OSError):
                status, _, _ = server.request("/api/v2/monitor/health")
                if status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"api-server not healthy within 180 s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(server.proc)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``airflow db migrate`` in a throwaway home, then an api-server on a free loopback port."""
    home = tmp_path_factory.mktemp("airflow-home")
    reports_root = home / "data" / "reports"
    port = _free_port()
    password = secrets.token_urlsafe(12)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: password}), encoding="utf-8")
    server = LiveServer(f"http://127.0.0.1:{port}", reports_root, password, home / "api-server.log")
    make_reports_root(reports_root, port=port)

    server.env = _server_env(home, reports_root, passwords, port)
    with running_api_server(server, server.env, port):
        yield server


@pytest.mark.slow
def test_live_server_enforces_airflow_auth_on_the_view(live_server: LiveServer) -> None:
    status, _, body = live_server.request("/polyglot/", headers={"accept": "application/json"})
    assert status == 401 and LATEST.encode() not in body

    status, headers, _ = live_server.request("/polyglot/", headers={"accept": "text/html"})
    assert status == 303
    assert headers["location"] == "/auth/login?next=%2Fpolyglot%2F"

    wrong = json.dumps({"username": USER, "password": "wrong"}).encode()
    status, _, _ = live_server.request(
        "/auth/token", headers={"content-type": "application/json"}, data=wrong
    )
    assert status == 401

    token = live_server.token()
    for auth in ({"authorization": f"Bearer {token}"}, {"cookie": f"_token={token}"}):
        status, headers, body = live_server.request("/polyglot/", headers=auth)
        assert status == 200, body[:500]
        assert headers["content-security-policy"] == views.FORM_PAGE_POLICY
        assert _run_name(_rows(body.decode())[0]) == LATEST

    status, headers, body = live_server.request(
        f"/polyglot/runs/{LATEST}/report.html", headers={"authorization": f"Bearer {token}"}
    )
    assert status == 200 and body == (live_server.reports_root / LATEST / "report.html").read_bytes()
    assert set(REQUIRED_CSP) <= {d.strip() for d in headers["content-security-policy"].split(";")}
    assert headers["x-content-type-options"] == "nosniff"

    for name in ("escape", "sneaky", "%2e%2e"):
        status, _, body = live_server.request(
            f"/polyglot/runs/{name}/report.html", headers={"authorization": f"Bearer {token}"}
        )
        assert status == 400 and b"secret outside" not in body

    # The UI learns about the nav entry from the plugins endpoint.
    status, _, body = live_server.request("/api/v2/plugins", headers={"authorization": f"Bearer {token}"})
    assert status == 200
    plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "polyglot_catalog")
    assert plugin["external_views"][0]["href"] == "polyglot/"


# ---------------------------------------------------------------------------------------------
# headless Chromium over the DevTools pipe


class DevToolsError(RuntimeError):
    """A DevTools command failed or the browser went away."""


@dataclass
class Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe``: no TCP debugging port.

    Chromium reads commands from fd 3 and writes replies and events to fd 4, each a JSON message
    ending in a NUL byte. ``posix_spawn`` puts the pipe ends there; they are first moved above fd 10
    so the two dup2 actions cannot overwrite each other.
    """

    profile: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    pid: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    _write_fd: int = -1
    _read_fd: int = -1
    _buffer: bytes = b""
    _next_id: int = 0
    session: str | None = None

    def start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        child_in = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        argv = [
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
            "--hide-scrollbars",
            "--window-size=1440,900",
            # Nothing but the loopback server is reachable, whatever a page asks for.
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            *self.extra_args,
            "about:blank",
        ]
        try:
            self.pid = os.posix_spawn(
                argv[0],
                argv,
                {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                    (os.POSIX_SPAWN_DUP2, child_in, 3),
                    (os.POSIX_SPAWN_DUP2, child_out, 4),
                ],
                setsid=True,
            )
        finally:
            for fd in (child_in, child_out, log_fd):
                os.close(fd)
        self._write_fd, self._read_fd = to_child_w, from_child_r

    def stop(self) -> None:
        """Ask the browser to close, then make sure its whole process group is gone."""
        if not self.pid:
            return
        with contextlib.suppress(DevToolsError, OSError):
            self.send("Browser.close", timeout=5, session=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # renderer/zygote leftovers
        for fd in (self._write_fd, self._read_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pid = 0

    # -- protocol -------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no DevTools message in time")
            ready, _, _ = select.select([self._read_fd], [], [], remaining)
            if ready:
                chunk = os.read(self._read_fd, 1 << 16)
                if not chunk:
                    raise DevToolsError(f"Chromium closed the pipe; log:\n{self._log_tail()}")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float = 30,
        session: bool = True,
    ) -> dict[str, Any]:
        """Send one command (to the page session unless ``session=False``) and wait for its reply."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._write_fd, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
        )["sessionId"]
        for domain in ("Page", "Runtime", "Debugger"):
            self.send(f"{domain}.enable")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; fail with where the page is instead."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(DevToolsError):  # navigations destroy the context mid-poll
                value = self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                try:
                    where = self.evaluate(
                        "location.href + ' ' + (document.body?.innerText ?? '').slice(0, 800)"
                    )
                except DevToolsError as exc:
                    where = f"<unavailable: {exc}>"
                raise AssertionError(f"timed out waiting for {what or expression}; page: {where}")
            time.sleep(0.25)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def scripts_parsed(self, url_part: str) -> list[str]:
        """URLs of page scripts Chromium compiled (inline ones carry the page URL) matching ``url_part``."""
        return [
            e["params"].get("url", "")
            for e in self.events
            if e.get("method") == "Debugger.scriptParsed" and url_part in e["params"].get("url", "")
        ]

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


@contextlib.contextmanager
def chromium_page(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(profile=tmp_path / "chromium-profile", log_path=tmp_path / "chromium.log")
    browser.start()
    try:
        browser.open_page()
        yield browser
    finally:
        browser.stop()


def log_in_through_form(browser: Chromium, server: LiveServer, start_path: str) -> None:
    """Open ``start_path`` unauthenticated, follow the redirect to the login form and sign in."""
    browser.navigate(server.base + start_path)
    browser.wait_for("!!document.querySelector('input[name=username]')", 90, "the login form")
    for name, value in (("username", USER), ("password", server.password)):
        browser.evaluate(f"document.querySelector('input[name={name}]').focus()")
        browser.send("Input.insertText", {"text": value})
    browser.wait_for("!document.querySelector('button[type=submit]').disabled", 10, "an enabled Sign in")
    browser.evaluate("document.querySelector('button[type=submit]').click()")


WHERE_JS = "location.href + ' ' + (document.body?.innerText ?? '').slice(0, 800)"
PAGE_STATE_JS = """(() => ({
  title: document.title,
  pwned: document.querySelectorAll('[data-pwned], [id^=pwned]').length,
  scripts: document.scripts.length,
  text: document.body.innerText,
}))()"""


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install -y chromium)"
)


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_view_in_headless_chromium(live_server: LiveServer, tmp_path: Path) -> None:
    with chromium_page(tmp_path) as browser:
        # Not logged in: the view sends the browser to Airflow's login page and back.
        log_in_through_form(browser, live_server, "/polyglot/")
        browser.wait_for(
            "location.pathname === '/polyglot/' && !!document.querySelector('tbody tr')", 60, "the run list"
        )
        state = browser.evaluate(PAGE_STATE_JS)
        first = browser.evaluate("document.querySelector('tbody tr a.name').textContent")
        assert first == LATEST
        assert f"catalog_{SCRIPT_TEXT}" in state["text"], "hostile collection must show as text"
        assert hostile_strings(int(live_server.base.rsplit(":", 1)[1]))["img"] in state["text"]
        assert HOSTILE_NAME in state["text"]
        assert state["title"] == "Match reports" and state["pwned"] == 0 and state["scripts"] == 0

        # The report of the latest run, opened from the list.
        browser.evaluate("document.querySelector('tbody tr a.open').click()")
        browser.wait_for(
            f"location.pathname === '/polyglot/runs/{LATEST}/report.html'"
            " && document.readyState === 'complete'",
            30,
            "the report page",
        )
        time.sleep(1)  # let anything delayed (onload, timers) have its chance to run
        state = browser.evaluate(PAGE_STATE_JS)
        assert state["title"] == f"Cross-region match report · {LATEST_RUN_ID}"
        assert state["pwned"] == 0 and state["scripts"] == 0, "an injected element or script is live"
        assert "document.title='PWNED'" in state["text"], "hostile product text must show as text"
        assert browser.scripts_parsed("/polyglot/") == [], "a script on the view's pages was compiled"

        # Inside the Airflow UI: the nav entry's page frames the list.
        browser.navigate(live_server.base + "/plugin/polyglot-reports")
        browser.wait_for(
            "(() => { const f = document.querySelector('iframe');"
            " return !!f && f.contentDocument?.querySelector('tbody tr a.name')?.textContent === "
            f"{json.dumps(LATEST)}; }})()",
            90,
            "the run list inside the Airflow UI",
        )
        assert browser.scripts_parsed("/static/assets/"), "control: the UI's own scripts are seen"
        assert browser.scripts_parsed("/polyglot/") == []
        assert browser.evaluate("document.title") != "PWNED"
        if keep := os.environ.get("POLYGLOT_PLUGIN_SCREENSHOT"):
            time.sleep(1)
            browser.screenshot(Path(keep))


# ---------------------------------------------------------------------------------------------
# from the match task to its report and its data (issue 21)

LINK_RUN_ID = "manual__link-test"

#: Run in the server's environment: parse the DAGs into the metadata DB, create a match run whose
#: task succeeded, and store the task's "Match report" link as the worker does when a task ends
#: (``finalize`` pushes ``get_link()`` under the link's XCom key).
SEED_MATCH_RUN = """
import sys
from unittest import mock

import pendulum
from airflow.models.serialized_dag import SerializedDagModel
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState, TaskInstanceState
from airflow.utils.types import DagRunTriggeredByType, DagRunType

from polyglot_catalog.provider.operators import MatchReportLink

run_id, report_name = sys.argv[1], sys.argv[2]
with create_session() as session:
    dag = SerializedDagModel.get_dag("cross_region_match", session=session)
    dag.create_dagrun(
        run_id=run_id, run_after=pendulum.now("UTC"), run_type=DagRunType.MANUAL,
        triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.SUCCESS, session=session,
    )
    session.flush()
    ti = session.query(TaskInstance).filter_by(
        dag_id="cross_region_match", run_id=run_id, task_id="match_regions"
    ).one()
    ti.state = TaskInstanceState.SUCCESS
    link = MatchReportLink()
    url = link.get_link(mock.Mock(report_name=report_name), ti_key=ti.key)
    XComModel.set(link.xcom_key, url, dag_id=ti.dag_id, task_id=ti.task_id, run_id=run_id, session=session)
print(url)
"""


@pytest.fixture(scope="module")
def match_run(live_server: LiveServer) -> str:
    """A succeeded cross_region_match run whose task wrote a report folder under the view's root."""
    airflow = str(Path(sys.executable).parent / "airflow")
    parsed = subprocess.run(
        [airflow, "dags", "reserialize"], env=live_server.env, capture_output=True, text=True, timeout=300
    )
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    folder = write_reports(live_server.reports_root / LINK_RUN_ID, make_result(), run_id=LINK_RUN_ID)
    _set_written_at(folder, "2024-01-01T00:00:00+00:00")  # oldest: the other live tests keep their order
    seeded = subprocess.run(
        [sys.executable, "-c", SEED_MATCH_RUN, LINK_RUN_ID, folder.name],
        env=live_server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert seeded.stdout.strip().endswith(f"/polyglot/runs/{LINK_RUN_ID}/report.html")
    return LINK_RUN_ID


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_match_task_link_opens_its_report_and_downloads_its_parquet(
    live_server: LiveServer, match_run: str, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium_page(tmp_path) as browser:
        # The task instance's Details tab, where Airflow 3 lists a task's extra links.
        log_in_through_form(
            browser, live_server, f"/dags/cross_region_match/runs/{match_run}/tasks/match_regions/details"
        )
        find_link = "[...document.querySelectorAll('a')].find(a => a.textContent.includes('Match report'))"
        browser.wait_for(f"!!{find_link}", 120, "the task's Match report button")
        href = browser.evaluate(f"{find_link}.getAttribute('href')")
        assert href == f"/polyglot/runs/{match_run}/report.html"
        # The UI opens extra links in a new tab; open it in this one and click it as a user would.
        browser.evaluate(f"(() => {{ const a = {find_link}; a.removeAttribute('target'); a.click(); }})()")
        browser.wait_for(
            f"location.pathname === '/polyglot/runs/{match_run}/report.html'"
            " && document.readyState === 'complete'",
            60,
            "the report page",
        )
        assert browser.evaluate("document.title") == f"Cross-region match report · {match_run}"

        browser.send(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
            session=False,
        )
        browser.evaluate("document.querySelector('a.download[href=\"pairs.parquet\"]').click()")
        deadline = time.monotonic() + 60
        while not (done := [p for p in downloads.iterdir() if p.suffix == ".parquet"]):
            assert time.monotonic() < deadline, f"no download; files: {list(downloads.iterdir())}"
            time.sleep(0.5)
    expected = pd.read_parquet(live_server.reports_root / match_run / "pairs.parquet")
    got = pd.read_parquet(done[0])
    assert done[0].name == f"{match_run}-pairs.parquet"
    pd.testing.assert_frame_equal(got, expected)
