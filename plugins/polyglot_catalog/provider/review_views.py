"""The Review page beside Match reports: a person decides the pairs a match run was least sure of.

Routes are added to the report app (``views.create_app``), so they share its authentication (the
Airflow user, resolved by the auth manager) and its read rule (read access to runs of the match
DAG). On top of that:

* **Deciding needs edit permission**: a POST is allowed only when the auth manager lets the user
  edit runs of the match DAG (``PUT`` on its DAG runs); read-only users see the queue, no buttons.
* **CSRF**: every POST carries a token bound to the user and their session token (HMAC with the
  API server's JWT secret, so every API-server worker accepts it); a cross-site form cannot read it.
* **Product text is hostile**: autoescaped; the page's only script is an inline keyboard handler
  allowed by a per-response nonce, and the CSP still forbids every network load.

Decisions go to the review store in Qdrant (:mod:`polyglot_catalog.review.store`), never to the
browser or this process; the queue is built from the collection's newest report run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from fastapi import Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from .views import MATCH_DAG_ID, _templates, authenticated_user, list_runs

REVIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'nonce-{nonce}'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
)
ACTIONS = {"accept": "match", "reject": "no_match", "skip": None, "undo": None}
_FALLBACK_SECRET = secrets.token_bytes(32)


def can_decide(user: BaseUser) -> bool:
    """Whether the auth manager lets ``user`` edit runs of the match DAG (what deciding needs)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(
        get_auth_manager().is_authorized_dag(
            method="PUT", access_entity=DagAccessEntity.RUN, details=DagDetails(id=MATCH_DAG_ID), user=user
        )
    )


def _secret() -> bytes:
    try:
        from airflow.configuration import conf

        value = conf.get("api_auth", "jwt_secret", fallback="")
    except Exception:  # no Airflow config (unit tests): one process, one secret
        value = ""
    return value.encode() if value else _FALLBACK_SECRET


def csrf_token(user: BaseUser, request: Request) -> str:
    """A token bound to the user and their session (cookie or bearer token)."""
    session = request.cookies.get("_token") or request.headers.get("authorization", "")
    message = f"{user.get_id()}\x1f{session}".encode()
    return hmac.new(_secret(), message, hashlib.sha256).hexdigest()


def reviewer_name(user: BaseUser) -> str:
    return str(user.get_name() or user.get_id())


@lru_cache(maxsize=1)
def default_client() -> Any:
    """The Qdrant client of the Airflow connection the match DAG uses (``$POLYGLOT_QDRANT_CONN_ID``)."""
    from polyglot_catalog.provider.hooks import PolyglotQdrantHook

    conn_id = os.environ.get("POLYGLOT_QDRANT_CONN_ID", PolyglotQdrantHook.default_conn_name)
    return PolyglotQdrantHook(conn_id).conn


@lru_cache(maxsize=8)
def _pairs(path: str, mtime: float) -> Any:
    import pandas as pd

    return pd.read_parquet(path)


def _latest_runs(root: Path) -> dict[str, Any]:
    """Newest report run (with a pairs table) per collection."""
    runs, _ = list_runs(root)
    out: dict[str, Any] = {}
    for run in runs:
        if run.collection and run.collection not in out and (root / run.name / "pairs.parquet").is_file():
            out[run.collection] = run
    return out


def add_review_routes(app: FastAPI, root_of: Callable[[], Path], client_of: Callable[[], Any]) -> None:
    """The Review page's routes on the report app (see the module docstring)."""

    def page(body: str, nonce: str) -> HTMLResponse:
        return HTMLResponse(body, headers={"Content-Security-Policy": REVIEW_CSP.format(nonce=nonce)})

    def context(collection: str) -> tuple[Any, Any, Any]:
        from polyglot_catalog.review import ReviewStore

        run = _latest_runs(root_of()).get(collection)
        if run is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no match report for this collection")
        path = root_of() / run.name / "pairs.parquet"
        pairs = _pairs(str(path), path.stat().st_mtime)
        return run, pairs, ReviewStore(client_of(), collection)

    @app.get("/review/", response_class=HTMLResponse)
    def review_index() -> HTMLResponse:
        """Collections with a match report to review."""
        runs = _latest_runs(root_of())
        nonce = secrets.token_urlsafe(16)
        body = (
            _templates()
            .get_template("review.html.j2")
            .render(index=True, collections=sorted(runs.items()), nonce=nonce, collection=None)
        )
        return page(body, nonce)

    @app.get("/review/{collection}", response_class=HTMLResponse)
    def review_page(
        collection: str,
        request: Request,
        user: Annotated[BaseUser, Depends(authenticated_user)],
        blind: int = 0,
    ) -> HTMLResponse:
        """The next pair of the queue, claimed for this user while they look at it."""
        from polyglot_catalog.review import Pair
        from polyglot_catalog.review.diff import highlight
        from polyglot_catalog.review.queue import build_queue, decided_keys, round_robin

        run, pairs, store = context(collection)
        me = reviewer_name(user)
        editor = can_decide(user)
        decisions = store.decisions()
        held = store.claimed_by_others(me) | store.skipped_by(me)
        held_keys = {tuple(k.split("\x1f")) for k in held}
        queue = round_robin(
            build_queue(
                pairs,
                float(run.threshold or 0.5),
                decided=decided_keys(decisions, pairs),
                held=held_keys,
            )
        )
        current = None
        for row in queue.to_dict("records"):
            pair = Pair.of(row["region_a"], row["sku_a"], row["region_b"], row["sku_b"])
            if not editor or store.claim(pair, me):
                current = row
                break
        if current is not None:
            current = {k: None if isinstance(v, float) and v != v else v for k, v in current.items()}  # NaN
            current["seg_a"] = highlight(current["text_a"] or "", current["text_b"] or "")
            current["seg_b"] = highlight(current["text_b"] or "", current["text_a"] or "")
        nonce = secrets.token_urlsafe(16)
        body = (
            _templates()
            .get_template("review.html.j2")
            .render(
                index=False,
                collection=collection,
                run=run,
                pair=current,
                remaining=len(queue),
                decided=len(decisions),
                editor=editor,
                blind=bool(blind),
                csrf=csrf_token(user, request),
                nonce=nonce,
                reviewer=me,
                last=store.last_decided(me),
                action_url=f"{quote(collection, safe='')}/decide",
            )
        )
        return page(body, nonce)

    @app.post("/review/{collection}/decide")
    def review_decide(
        collection: str,
        request: Request,
        user: Annotated[BaseUser, Depends(authenticated_user)],
        action: Annotated[str, Form()],
        csrf: Annotated[str, Form()],
        region_a: Annotated[str, Form()] = "",
        sku_a: Annotated[str, Form()] = "",
        region_b: Annotated[str, Form()] = "",
        sku_b: Annotated[str, Form()] = "",
        hash_a: Annotated[str, Form()] = "",
        hash_b: Annotated[str, Form()] = "",
        stratum: Annotated[str, Form()] = "",
        stratum_size: Annotated[str, Form()] = "",
        blind: Annotated[int, Form()] = 0,
    ) -> RedirectResponse:
        """Accept / Reject / Skip the shown pair, or Undo this user's last decision; then the next."""
        from polyglot_catalog.review import Pair, ReviewStore

        if not can_decide(user):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"deciding needs edit access to runs of DAG {MATCH_DAG_ID}"
            )
        if not hmac.compare_digest(csrf, csrf_token(user, request)):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or stale form token: reload the page")
        if action not in ACTIONS:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"action must be one of {sorted(ACTIONS)}")
        if collection not in _latest_runs(root_of()):  # no review collection for a made-up name
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no match report for this collection")
        me = reviewer_name(user)
        store = ReviewStore(client_of(), collection)
        if action == "undo":
            last = store.last_decided(me)
            if last is None:
                raise HTTPException(status.HTTP_409_CONFLICT, "nothing of yours to undo")
            store.undo(last, me)
        else:
            try:
                pair = Pair.of(region_a, sku_a, region_b, sku_b)
            except ValueError as exc:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
            if action == "skip":
                store.skip(pair, me)
            else:
                store.decide(
                    pair,
                    ACTIONS[action],
                    me,
                    hash_a=hash_a or None,
                    hash_b=hash_b or None,
                    stratum=stratum or None,
                    stratum_size=int(stratum_size) if stratum_size.isdigit() else None,
                )
        target = f"../{quote(collection, safe='')}" + ("?blind=1" if blind else "")
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
