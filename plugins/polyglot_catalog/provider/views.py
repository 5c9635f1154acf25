"""Match reports inside the Airflow UI: a FastAPI app listing report runs and serving their pages.

The Airflow API server mounts this app under ``/polyglot`` (see ``polyglot_catalog_plugin.py``) and
the UI shows it in an iframe from a nav entry. Three rules shape it:

* **Authentication is ours to enforce.** A mounted sub-app inherits none of the API server's route
  dependencies, so every route here carries an app-level dependency that resolves the caller through
  the auth manager exactly as the core API does (``Authorization: Bearer`` or the ``_token`` session
  cookie) and then asks it whether the user may read runs of the match DAG. Browser navigations
  without a valid token are sent to the login page; anything else gets 401/403.
* **Run names come from URLs**, so they are resolved only through ``safe_report_dir``: no ``..``, no
  absolute paths, no symlink leading out of the reports root, no hidden (in-progress) folders.
* **Report content is hostile.** The list page renders summary values through Jinja2 autoescaping,
  and every response carries a Content-Security-Policy that allows no script, no network loads and
  no framing by other origins, with ``nosniff``, so a report page stays inert even if escaping failed.
  Only the run list and the SKU search (``/lookup``, a read-only GET) may submit a form, to this app.

Heavy imports (pandas via the report writer, qdrant-client via the hook) are deferred to request
time: Airflow imports plugin files in every component, and only the API server ever serves this.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials

log = logging.getLogger(__name__)

#: Where the API server mounts the app; the UI nav entry points at it.
URL_PREFIX = "/polyglot"
#: Overrides the reports root; otherwise ``$POLYGLOT_DATA_DIR/reports`` like the match operator.
REPORTS_ROOT_ENV = "POLYGLOT_REPORTS_ROOT"
#: Reports are that DAG's output, so reading its runs is what grants reading them.
MATCH_DAG_ID = "cross_region_match"
#: Newest runs listed on the page; older folders stay on disk untouched.
MAX_RUNS = 200
#: A summary.json larger than this is not parsed (real ones are tens of kB).
MAX_SUMMARY_BYTES = 5 * 1024 * 1024

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
#: The files of a report folder the view serves for download, with their media types; nothing else
#: in a folder (temp files, locks) is reachable.
DOWNLOADS = {
    "pairs.parquet": "application/vnd.apache.parquet",
    "groups.parquet": "application/vnd.apache.parquet",
    "unmatched.parquet": "application/vnd.apache.parquet",
    "duplicates.parquet": "application/vnd.apache.parquet",
    "changes.parquet": "application/vnd.apache.parquet",
    SUMMARY_FILE: "application/json",
}
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

#: No scripts, fonts, frames or network loads; inline styles and data: images (the report's SVG
#: charts are inline) only. ``frame-ancestors 'self'`` lets the Airflow UI embed the page and
#: nobody else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
#: The run list and the SKU search carry a GET form to this app; report pages keep ``'none'``.
FORM_PAGE_POLICY = CONTENT_SECURITY_POLICY.replace("form-action 'none'", "form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Reports hold catalog data and the list changes with every run: never cache either.
    "Cache-Control": "no-store",
}


# ---------------------------------------------------------------------------------------------
# reports root and run folders


def default_reports_root() -> Path:
    """``$POLYGLOT_REPORTS_ROOT``, else ``$POLYGLOT_DATA_DIR/reports`` (where the match DAG writes)."""
    configured = os.environ.get(REPORTS_ROOT_ENV)
    if configured:
        return Path(configured).expanduser()
    # Deferred: the hook module imports the Qdrant provider and client (seconds of import time).
    from polyglot_catalog.provider.operators import default_reports_root as operator_reports_root

    return operator_reports_root()


def _safe_report_dir(root: Path, name: str) -> Path:
    # Deferred: the reports package imports pandas and numpy, which the UI process needs only here.
    from polyglot_catalog.reports.writer import safe_report_dir

    return safe_report_dir(root, name)


def resolve_run_file(root: Path, name: str, filename: str) -> Path:
    """Map a run name from a URL to a file of that run, or refuse it.

    :raises HTTPException: 400 if ``name`` is not a plain folder name or resolves outside ``root``
        (``..``, absolute, symlink escape); 404 if it is hidden (an in-progress or backup folder of
        the writer) or the file does not exist.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid run name")
    if name.startswith("."):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report run")
    try:
        # Resolving the file (not just the folder) also refuses a symlinked report.html that
        # points outside the root.
        path = _safe_report_dir(root, f"{name}/{filename}")
    except ValueError as exc:
        # The message names server paths; log it, don't return it.
        log.warning("refused report run name %r: %s", name, exc)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid run name") from exc
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report run")
    return path


@dataclass(frozen=True)
class RunSummary:
    """One report run as the list shows it; ``None`` figures render as a dash."""

    name: str
    href: str | None
    written_at: datetime | None
    run_id: str | None = None
    model: str | None = None
    collection: str | None = None
    regions: list[str] = field(default_factory=list)
    threshold: float | None = None
    products: int | None = None
    matches: int | None = None
    candidates: int | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    problem: str | None = None
    files: list[tuple[str, str]] = field(default_factory=list)
    #: ``(kind, count)`` of ``summary["changes"]`` (docs/MATCH_STATE.md); None: the run wrote no state.
    changes: list[tuple[str, int]] | None = None
    previous_run: str | None = None
    state_mode: str | None = None


def _number(value: Any) -> float | None:
    """A finite number or None; bools and strings are not figures."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


def _text(value: Any, limit: int = 200) -> str | None:
    if value is None or isinstance(value, Mapping | list):
        return None
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _sum_counts(values: list[Any]) -> int | None:
    counts = [_count(v) for v in values]
    return sum(c for c in counts if c is not None) if counts and None not in counts else None


def _change_counts(value: Any) -> list[tuple[str, int]] | None:
    """``summary["changes"]`` as (kind, count) pairs, in the summary's order; odd counts are left out."""
    if not isinstance(value, Mapping):
        return None
    pairs = [(str(kind)[:40], _count(n)) for kind, n in list(value.items())[:10]]
    return [(kind, n) for kind, n in pairs if n is not None]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def summarize_run(name: str, summary: Mapping[str, Any], mtime: float, has_report: bool) -> RunSummary:
    """Pull the list figures out of one ``summary.json``, tolerating missing or odd values.

    Products are not a summary field (unless a writer adds ``products``): every product is either
    in a group (it has a twin) or in the unmatched table, so those two row counts add up to it.
    """
    report = summary.get("report") if isinstance(summary.get("report"), Mapping) else {}
    rows = report.get("rows") if isinstance(report.get("rows"), Mapping) else {}
    products = summary.get("products")
    if isinstance(products, Mapping):
        product_count = _sum_counts(list(products.values()))
    elif products is not None:
        product_count = _count(products)
    else:
        product_count = _sum_counts([rows.get("groups"), rows.get("unmatched")])
    counts = summary.get("counts") if isinstance(summary.get("counts"), Mapping) else {}
    per_pair = [v for v in counts.values() if isinstance(v, Mapping)]
    metrics = summary.get("metrics") if isinstance(summary.get("metrics"), Mapping) else {}
    overall = metrics.get("overall") if isinstance(metrics.get("overall"), Mapping) else {}
    regions = summary.get("regions")
    state = summary.get("match_state") if isinstance(summary.get("match_state"), Mapping) else {}
    return RunSummary(
        name=name,
        href=f"runs/{quote(name, safe='')}/{REPORT_FILE}" if has_report else None,
        written_at=_parse_time(report.get("written_at")) or datetime.fromtimestamp(mtime, UTC),
        run_id=_text(summary.get("run_id")),
        model=_text(summary.get("model")),
        collection=_text(summary.get("collection")),
        # A list of names or a {region: count} mapping: either way iteration yields the names.
        regions=[str(r)[:40] for r in regions][:20] if isinstance(regions, list | Mapping) else [],
        threshold=_number(summary.get("threshold")),
        products=product_count,
        matches=_sum_counts([v.get("matches") for v in per_pair]),
        candidates=_sum_counts([v.get("candidates") for v in per_pair]),
        precision=_number(overall.get("precision")),
        recall=_number(overall.get("recall")),
        f1=_number(overall.get("f1")),
        changes=_change_counts(summary.get("changes")),
        previous_run=_text(state.get("previous_run")),
        state_mode=_text(state.get("mode"), 20),
    )


def _run_file(root: Path, name: str, filename: str) -> Path | None:
    """A run's file if it exists and resolves inside ``root`` (a symlink out counts as absent)."""
    try:
        path = _safe_report_dir(root, f"{name}/{filename}")
    except ValueError as exc:
        log.warning("ignoring %s of report folder %r: %s", filename, name, exc)
        return None
    return path if path.is_file() else None


def _load_summary(path: Path) -> tuple[Mapping[str, Any], str | None]:
    """``summary.json`` as a mapping, or an empty one and what is wrong with the file."""
    if path.stat().st_size > MAX_SUMMARY_BYTES:
        return {}, "summary.json too large to show"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("unreadable %s: %s", path, exc)
        return {}, "summary.json unreadable"
    if not isinstance(summary, Mapping):
        return {}, "summary.json is not an object"
    return summary, None


def read_run(root: Path, name: str) -> RunSummary | None:
    """Read one run folder of ``root``; None when it is not a report folder or not safely inside.

    A folder counts when it has a ``summary.json`` or a ``report.html`` inside the root. One without
    a usable summary or report is still listed, flagged, so a broken run is visible, not silently gone.
    """
    try:
        folder = _safe_report_dir(root, name)
    except ValueError as exc:
        log.warning("skipping report folder %r: %s", name, exc)
        return None
    if not folder.is_dir():
        return None
    report = _run_file(root, name, REPORT_FILE)
    summary_path = _run_file(root, name, SUMMARY_FILE)
    if summary_path is None and report is None:
        return None
    if summary_path is None:
        summary, problem, mtime = {}, "summary.json missing", folder.stat().st_mtime
    else:
        (summary, problem), mtime = _load_summary(summary_path), summary_path.stat().st_mtime
    if report is None:
        problem = problem or "report.html missing"
    run = summarize_run(name, summary, mtime, report is not None)
    if problem is not None:  # a flagged run links nothing
        return replace(run, problem=problem)
    files = [
        (filename, f"runs/{quote(name, safe='')}/{filename}")
        for filename in DOWNLOADS
        if _run_file(root, name, filename) is not None
    ]
    return replace(run, files=files)


def list_runs(root: Path, limit: int = MAX_RUNS) -> tuple[list[RunSummary], int]:
    """The newest ``limit`` report runs under ``root`` (newest first) and how many there are.

    Only direct sub-folders count: the match DAG's ``out_name`` is a single folder name. Hidden
    entries are the writer's temp/backup folders and lock files, never a finished report.
    """
    if not root.is_dir():
        return [], 0
    runs = []
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        run = read_run(root, entry.name)
        if run is not None:
            runs.append(run)
    runs.sort(key=lambda r: (r.written_at or datetime.min.replace(tzinfo=UTC), r.name), reverse=True)
    return runs[:limit], len(runs)


# ---------------------------------------------------------------------------------------------
# authentication and authorization


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


async def authenticated_user(request: Request) -> BaseUser:
    """The Airflow user behind this request, resolved by the API server's auth manager.

    Same rule as the core API (``airflow.api_fastapi.core_api.security.get_user``): an
    ``Authorization: Bearer`` JWT wins, else the ``_token`` session cookie. A browser navigation
    without a valid token is redirected to the auth manager's login page and comes back after
    login; other clients get the 401/403 as is.
    """
    # Deferred: the security module pulls in the ORM models and the API app, which only the API
    # server (the one process that serves this) has loaded anyway.
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    bearer: HTTPAuthorizationCredentials | None = await bearer_scheme(request)
    try:
        return await get_user(request, _oauth_token=None, bearer_credentials=bearer)
    except HTTPException as exc:
        if exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN) and _wants_html(
            request
        ):
            # Path only: a full URL would echo the request's Host header into the login redirect.
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login = get_auth_manager().get_url_login(next_url=here)
            raise HTTPException(status.HTTP_303_SEE_OTHER, "login required", {"Location": login}) from exc
        raise


def require_report_reader(user: Annotated[BaseUser, Depends(authenticated_user)]) -> BaseUser:
    """Authorize: reading reports needs read access to runs of the match DAG that wrote them.

    Sync on purpose: auth managers may query a database, so FastAPI runs this in its threadpool.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=MATCH_DAG_ID), user=user
    )
    if not allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"reading match reports needs read access to runs of DAG {MATCH_DAG_ID}",
        )
    return user


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt_num(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _fmt_int(value: Any) -> str:
    number = _count(value)
    return "–" if number is None else f"{number:,}"


def _fmt_time(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    """Autoescaping everywhere: every summary value is treated as hostile text."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_fmt_num, int=_fmt_int, when=_fmt_time)
    return env


#: How the run list names each kind of change (docs/MATCH_STATE.md); an unknown kind shows as is.
CHANGE_LABELS = {
    "new_match": "joined",
    "broken_match": "left",
    "moved": "moved",
    "new_group": "in new groups",
    "dissolved": "dissolved",
}


def render_runs_page(root: Path, runs: list[RunSummary], total: int) -> str:
    """The run list as one self-contained HTML page (inline CSS, no scripts)."""
    return (
        _templates()
        .get_template("runs.html.j2")
        .render(
            root=str(root), runs=runs, total=total, match_dag_id=MATCH_DAG_ID, change_labels=CHANGE_LABELS
        )
    )


# ---------------------------------------------------------------------------------------------
# SKU search: a product's group and twins, from the match state in the Qdrant payload

#: Longest SKU the search accepts; real ones are tens of characters.
MAX_SKU_CHARS = 256


@dataclass(frozen=True)
class Lookup:
    """One SKU search: the form's values, and the product found or what went wrong."""

    collection: str = ""
    region: str = ""
    sku: str = ""
    found: Mapping[str, Any] | None = None
    problem: str | None = None
    status_code: int = status.HTTP_200_OK


def _check_lookup(collection: str, region: str, sku: str) -> str | None:
    """What is wrong with the search's input, in words (None: nothing). Same rules as the CLI."""
    from polyglot_catalog.names import check_collection_name, check_region_name

    try:
        check_collection_name(collection)
        check_region_name(region)
    except ValueError as exc:
        return str(exc)
    if not sku or len(sku) > MAX_SKU_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in sku):
        return f"sku must be 1-{MAX_SKU_CHARS} characters without control characters"
    return None


def lookup_sku(client_of: Callable[[], Any], collection: str, region: str, sku: str) -> Lookup:
    """Validate the form, then read the product's state with ``matching.state.lookup_product``.

    Read-only and no model load. Store errors are logged, not shown (they may name hosts or paths).
    """
    collection, region, sku = collection.strip(), region.strip(), sku.strip()
    asked = Lookup(collection=collection, region=region, sku=sku)
    if not (collection or region or sku):
        return asked  # the empty form
    problem = _check_lookup(collection, region, sku)
    if problem is not None:
        return replace(asked, problem=problem, status_code=status.HTTP_400_BAD_REQUEST)
    from polyglot_catalog.matching.state import lookup_product

    try:
        client = client_of()
        if not client.collection_exists(collection):
            missing = f"collection {collection!r} does not exist"
            return replace(asked, problem=missing, status_code=status.HTTP_404_NOT_FOUND)
        try:
            return replace(asked, found=lookup_product(client, collection, region, sku))
        except ValueError as exc:  # no such product: the message names collection, region and sku
            return replace(asked, problem=str(exc), status_code=status.HTTP_404_NOT_FOUND)
    except Exception:  # connection, server or engine errors: their text may name hosts or paths
        log.exception("SKU search in collection %r failed", collection)
        unreadable = "the Qdrant store could not be read; see the API server log"
        return replace(asked, problem=unreadable, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


def render_lookup_page(lookup: Lookup) -> str:
    """The SKU search page (autoescaped; no script)."""
    return _templates().get_template("lookup.html.j2").render(q=lookup, match_dag_id=MATCH_DAG_ID)


# ---------------------------------------------------------------------------------------------
# app


def create_app(
    reports_root: Path | Callable[[], Path] | None = None, review_client: Callable[[], Any] | None = None
) -> FastAPI:
    """Build the report app.

    :param reports_root: folder with one sub-folder per run, or a callable returning it (read per
        request). Defaults to :func:`default_reports_root`.
    :param review_client: returns the Qdrant client holding the review decisions (the Review page,
        ``review_views``) and the match state (the SKU search). Defaults to the client of the match
        DAG's Qdrant connection (``PolyglotQdrantHook(...).conn``, one per process: an embedded store
        admits one client).
    """
    root_of: Callable[[], Path]
    if reports_root is None:
        root_of = default_reports_root
    elif callable(reports_root):
        root_of = reports_root
    else:
        fixed = Path(reports_root)

        def root_of() -> Path:
            return fixed

    app = FastAPI(
        title="polyglot-catalog match reports",
        # App-level, so a route added later cannot forget it; no anonymous OpenAPI/docs either.
        dependencies=[Depends(require_report_reader)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    from .review_views import add_review_routes, default_client

    client_of = review_client or default_client
    form_headers = {"Content-Security-Policy": FORM_PAGE_POLICY}

    @app.get("/", response_class=HTMLResponse)
    def runs_page() -> HTMLResponse:
        """The list of report runs, newest first."""
        root = root_of()
        runs, total = list_runs(root)
        return HTMLResponse(render_runs_page(root, runs, total), headers=form_headers)

    @app.get("/lookup", response_class=HTMLResponse)
    def lookup_page(collection: str = "", region: str = "", sku: str = "") -> HTMLResponse:
        """SKU search: a product's group and its twin in every region (read-only, no model load)."""
        found = lookup_sku(client_of, collection, region, sku)
        return HTMLResponse(render_lookup_page(found), status_code=found.status_code, headers=form_headers)

    @app.get("/runs/{name}/report.html", response_class=FileResponse)
    def report_page(name: str) -> FileResponse:
        """One run's self-contained report page, as the writer produced it."""
        path = resolve_run_file(root_of(), name, REPORT_FILE)
        return FileResponse(path, media_type="text/html; charset=utf-8")

    @app.get("/runs/{name}/{filename}", response_class=FileResponse)
    def report_file(name: str, filename: str) -> FileResponse:
        """One of the run's data files (:data:`DOWNLOADS`), as an attachment."""
        media_type = DOWNLOADS.get(filename)
        if media_type is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report file")
        path = resolve_run_file(root_of(), name, filename)
        return FileResponse(path, media_type=media_type, filename=f"{name}-{filename}")

    add_review_routes(app, root_of, client_of)
    return app
