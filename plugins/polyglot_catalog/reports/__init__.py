"""Match reports: Parquet tables, ``summary.json`` and a self-contained HTML page, written atomically."""

from polyglot_catalog.reports.html import render_html
from polyglot_catalog.reports.writer import ReportPathError, check_report_path, safe_report_dir, write_reports

__all__ = ["ReportPathError", "check_report_path", "render_html", "safe_report_dir", "write_reports"]
