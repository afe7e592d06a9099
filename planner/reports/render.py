"""Renders ``ReportData`` as JSON (the source of truth), Markdown and HTML with charts."""

from __future__ import annotations

import json

from jinja2 import Environment, PackageLoader, select_autoescape

from planner.reports.charts import report_charts
from planner.reports.model import ReportData, report_dict
from planner.reports.tables import fmt, pct, report_tables


def render_json(report: ReportData) -> str:
    return json.dumps(report_dict(report), indent=2, allow_nan=False)


def render_markdown(report: ReportData) -> str:
    return _environment(markdown=True).get_template("report.md.j2").render(**_context(report))


def render_html(report: ReportData) -> str:
    context = {**_context(report), "charts": report_charts(report)}
    return _environment(markdown=False).get_template("report.html.j2").render(**context)


def _context(report: ReportData) -> dict[str, object]:
    return {"report": report, "tables": report_tables(report), "fmt": fmt, "pct": pct}


def _environment(*, markdown: bool) -> Environment:
    env = Environment(
        loader=PackageLoader("planner.reports", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # class names, the project title and reasons come from Label Studio: a Markdown viewer
        # that renders raw HTML must show them as text, so every value the template prints is
        # escaped (the template's own Markdown is not a value and stays as written)
        finalize=_md_text if markdown else None,
    )
    if markdown:
        env.filters["cell"] = _md_cell
    return env


def _md_text(value: object) -> str:
    """Text shown as written in Markdown: ``&``, ``<`` and ``>`` as entities, so no raw HTML."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened (HTML escaped by ``_md_text``
    when the template prints it)."""
    return text.replace("|", "\\|").replace("\n", " ")
