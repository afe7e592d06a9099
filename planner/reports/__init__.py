"""The daily quota report: data built from the core's results, rendered as JSON, Markdown, HTML."""

from planner.reports.build import build_report
from planner.reports.model import BatchRecord, ReportData, report_dict
from planner.reports.render import render_html, render_json, render_markdown

__all__ = [
    "BatchRecord",
    "ReportData",
    "build_report",
    "render_html",
    "render_json",
    "render_markdown",
    "report_dict",
]
