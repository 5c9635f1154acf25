"""Airflow plugin entry for polyglot-catalog (placeholder until the report view lands).

Airflow imports every ``.py`` file in the plugins folder as a top-level module, so the package
itself is hidden from that loader by ``plugins/.airflowignore`` and only this file is loaded.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class PolyglotCatalogPlugin(AirflowPlugin):
    """Registers nothing yet; the match-report UI view (issue 6) will hang off this class."""

    name = "polyglot_catalog"
