"""Airflow plugin entry for polyglot-catalog: the match-report view in the Airflow UI.

Airflow imports every ``.py`` file in the plugins folder as a top-level module, so the package
itself is hidden from that loader by ``plugins/.airflowignore`` and only this file is loaded.

The API server mounts the report app (``polyglot_catalog.provider.views``) under ``/polyglot``; the
app authenticates every request itself, because Airflow does not authenticate plugin apps. The UI
gets a "Match reports" entry under Browse that shows the app in its iframe. ``external_views`` and
``fastapi_apps`` need Airflow 3.1 or later.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from polyglot_catalog.provider.views import URL_PREFIX, create_app

# The UI's <base href> is the API server's base_url, so a relative href keeps the entry working
# behind a reverse proxy that serves Airflow under a sub-path.
REPORTS_NAV_HREF = URL_PREFIX.lstrip("/") + "/"
#: The Review page (docs/REVIEW.md), served by the same app.
REVIEW_NAV_HREF = REPORTS_NAV_HREF + "review/"


class PolyglotCatalogPlugin(AirflowPlugin):
    """Mounts the match-report app on the API server and links it from the UI's Browse menu."""

    name = "polyglot_catalog"
    # Mutable class lists are AirflowPlugin's own interface (the loader reads and edits them).
    fastapi_apps = [  # noqa: RUF012
        {
            "app": create_app(),
            "url_prefix": URL_PREFIX,
            "name": "polyglot-catalog match reports",
        }
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Match reports",
            "href": REPORTS_NAV_HREF,
            "destination": "nav",
            "category": "browse",
            "url_route": "polyglot-reports",
        },
        {
            "name": "Review matches",
            "href": REVIEW_NAV_HREF,
            "destination": "nav",
            "category": "browse",
            "url_route": "polyglot-review",
        },
    ]
