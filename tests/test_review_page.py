"""The Review page (docs/REVIEW.md): queue, blind mode, decide/undo, edit permission, CSRF, escaping.

Driven with TestClient on the report app; the Airflow user is stood in by overriding the app's
``authenticated_user`` (authentication itself is tested in test_plugin_view.py); authorization is
the real SimpleAuthManager's answer for the user's role.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from polyglot_catalog.provider import views
from polyglot_catalog.review import ReviewStore
from polyglot_catalog.store import open_client

HOSTILE = "<script>document.title='PWNED'</script>"


def make_run(root: Path) -> None:
    folder = root / "nightly"
    folder.mkdir(parents=True)
    rows = [
        ("DE", "d1", "US", "u1", 0.52, "match", f"Tisch weiß 50 cm {HOSTILE}", "table black 60 cm"),
        ("DE", "d2", "US", "u2", 0.48, "below_threshold", "Stuhl rot", "chair red"),
        ("DE", "d3", "US", "u3", 0.95, "match", "Lampe", "lamp"),
    ]
    pairs = pd.DataFrame(
        rows, columns=["region_a", "sku_a", "region_b", "sku_b", "score", "decision", "text_a", "text_b"]
    )
    pairs["ambiguous"] = False
    pairs["explain"] = "numbers differ"
    pairs.to_parquet(folder / "pairs.parquet")
    summary = {
        "collection": "cat",
        "threshold": 0.5,
        "run_id": "run-1",
        "report": {"written_at": "2025-03-02T02:00:00+00:00"},
    }
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (folder / "report.html").write_text("<p>report</p>", encoding="utf-8")


@pytest.fixture
def qdrant() -> Iterator[Any]:
    client = open_client(path=":memory:")
    yield client
    client.close()


@pytest.fixture
def app(tmp_path: Path, qdrant: Any) -> Any:
    from airflow.api_fastapi.app import create_auth_manager

    create_auth_manager()
    make_run(tmp_path / "reports")
    return views.create_app(tmp_path / "reports", review_client=lambda: qdrant)


def as_user(app: Any, name: str, role: str) -> TestClient:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    app.dependency_overrides[views.authenticated_user] = lambda: SimpleAuthManagerUser(
        username=name, role=role
    )
    return TestClient(app, follow_redirects=False)


def form_of(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))


def test_an_editor_accepts_rejects_and_undoes(app: Any, qdrant: Any) -> None:
    client = as_user(app, "steward", "user")
    page = client.get("/review/cat")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "form-action 'self'" in policy and "script-src 'nonce-" in policy and "connect-src" not in policy
    assert "<script>document.title" not in page.text and "&lt;script&gt;" in page.text  # text stays text
    assert "<mark>" in page.text  # the differing colour / size is highlighted
    first = form_of(page.text)
    assert client.post("/review/cat/decide", data={**first, "action": "accept"}).status_code == 303
    second = form_of(client.get("/review/cat").text)
    assert (second["sku_a"], second["sku_b"]) != (first["sku_a"], first["sku_b"])
    client.post("/review/cat/decide", data={**second, "action": "reject"})
    decided = ReviewStore(qdrant, "cat").decisions()
    assert sorted(decided["decision"]) == ["match", "no_match"] and set(decided["reviewer"]) == {"steward"}
    assert decided["hash_a"].notna().all()
    client.post("/review/cat/decide", data={"csrf": first["csrf"], "action": "undo"})
    assert ReviewStore(qdrant, "cat").decisions()["decision"].tolist() == ["match"]


def test_blind_mode_hides_the_score(app: Any) -> None:
    client = as_user(app, "steward", "user")
    assert 'id="score"' in client.get("/review/cat").text
    blind = client.get("/review/cat?blind=1").text
    assert 'id="score"' not in blind and "Evidence:" not in blind


def test_a_read_only_user_sees_the_queue_but_cannot_decide(app: Any, qdrant: Any) -> None:
    editor = as_user(app, "steward", "user")
    token_form = form_of(editor.get("/review/cat").text)
    viewer = as_user(app, "auditor", "viewer")
    page = viewer.get("/review/cat")
    assert page.status_code == 200 and "read only" in page.text and "<form" not in page.text
    refused = viewer.post("/review/cat/decide", data={**token_form, "action": "accept"})
    assert refused.status_code == 403
    assert ReviewStore(qdrant, "cat").decisions().empty


def test_a_post_without_the_users_token_is_refused(app: Any, qdrant: Any) -> None:
    client = as_user(app, "steward", "user")
    form = form_of(client.get("/review/cat").text)
    for token in ("", "0" * 64):
        assert client.post(
            "/review/cat/decide", data={**form, "csrf": token, "action": "accept"}
        ).status_code in (
            403,
            422,
        )
    assert ReviewStore(qdrant, "cat").decisions().empty


def test_two_reviewers_get_different_pairs(app: Any) -> None:
    alice = form_of(as_user(app, "alice", "user").get("/review/cat").text)
    bob = form_of(as_user(app, "bob", "user").get("/review/cat").text)
    assert (alice["sku_a"], alice["sku_b"]) != (bob["sku_a"], bob["sku_b"])


def test_the_index_lists_collections_and_unknown_ones_are_404(app: Any, qdrant: Any) -> None:
    client = as_user(app, "steward", "user")
    assert 'href="cat"' in client.get("/review/").text
    assert client.get("/review/nope").status_code == 404
    form = form_of(client.get("/review/cat").text)
    assert client.post("/review/nope/decide", data={**form, "action": "accept"}).status_code == 404
    assert not qdrant.collection_exists("polyglot_review__nope")
