"""Match reports: Parquet tables, ``summary.json`` and a self-contained HTML page, written atomically."""

from polyglot_catalog.reports.html import render_html
from polyglot_catalog.reports.writer import safe_report_dir, write_reports

__all__ = ["render_html", "safe_report_dir", "write_reports"]
