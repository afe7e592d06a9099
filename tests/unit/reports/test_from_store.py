"""The report read from the store and written to disk: the folder, the history, the stop set,
the last scoring run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from integrations.label_studio.fake import FakeLabelStudio
from planner.cli import app
from planner.core.quotas import Quota
from planner.core.table import COUNT_KINDS, CountTable
from planner.health import ScoringRun
from planner.outputs import ReportOptions, project_row
from planner.reports import build_report, render_html, render_json, render_markdown
from planner.reports.from_store import BURNUP_HORIZON, report_from_store
from planner.store import open_store
from planner.store.models import CountSnapshot
from planner.store.sync_state import record_scoring
from planner.store.tasks import count_table
from planner.sync import sync_project

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
</View>"""
CHOICE = {"from_name": "kind", "to_name": "image", "type": "choices"}
SPLITS = ("train", "val", "test")
QUOTAS = (Quota("Car", target=20_000), Quota("Wheelchair", target=20_000))


def _synced(tmp_path: Path, tasks: int = 6) -> tuple[str, int]:
    """A store (its URL) holding a synced project (its id) with every task but one labelled."""
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(tasks)])
    for k, task in enumerate(ids[:-1]):
        fake.annotate(task, [{**CHOICE, "value": {"choices": ["Car" if k % 2 else "Wheelchair"]}}])
    with open_store(url) as store:
        sync_project(fake, store, pid, now=datetime.now(UTC))
    return url, pid


def test_a_reports_dir_that_cannot_be_written_is_a_planner_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, pid = _synced(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("PLANNER_STORE__URL", url)
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__PROJECT_ID", str(pid))
    monkeypatch.setenv("PLANNER_DASHBOARD__REPORTS_DIR", str(tmp_path / "a-file" / "reports"))
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 2, result.output
    assert "reports_dir" in result.output
    assert "Point dashboard.reports_dir at a folder" in " ".join(result.output.split())


@pytest.mark.slow  # 10,000 snapshots written
def test_the_burn_up_shows_a_row_a_day_and_the_eta_still_reads_every_recent_snapshot(
    tmp_path: Path,
) -> None:
    url, pid = _synced(tmp_path, tasks=201)
    # 10,000 snapshots (one per change, up to one a sync) over 400 days, the last late yesterday
    now = datetime(2026, 11, 8, 0, 30, tzinfo=UTC)
    start = now - timedelta(days=400)
    step = (now - timedelta(hours=1) - start) / 9_999
    stamps = [start + i * step for i in range(10_000)]
    options = ReportOptions(folder=tmp_path / "reports", quotas=QUOTAS, splits=SPLITS)
    with open_store(url) as store, store.session() as session:
        project = project_row(session, pid)
        current = count_table(session, int(project.id or 0), tuple(project.classes), SPLITS)
        # counts growing steadily to now's table: snapshot i holds i / 9,999 of each
        history = [(at, _part(current, i / 9_999)) for i, at in enumerate(stamps)]
        rows = [
            {"project_id": project.id, "counts": t.as_dict(), "annotations": 0, "taken_at": at}
            for at, t in history
        ]
        session.connection().execute(insert(CountSnapshot), rows)  # one statement, not 10,000
        report = report_from_store(session, pid, options, now=now)
    days = [point.at.date() for point in report.burnup]
    assert len(days) == len(set(days)), "at most one row a day"
    assert len(days) == BURNUP_HORIZON.days + 1, "each day of the horizon, and today"
    assert report.burnup[0].at >= now - BURNUP_HORIZON
    yesterday = report.burnup[-2]
    assert yesterday.at == stamps[-1], "the last snapshot is the last of its day"
    assert yesterday.counts == report.burnup[-1].counts == {"Car": 100, "Wheelchair": 100}
    assert report.burnup[-1].at == now
    # the ETA reads every snapshot of its window, as it did from the whole history
    every = build_report(project="p", now=now, table=current, quotas=QUOTAS, snapshots=history)
    assert report.eta == every.eta
    assert len(every.burnup) == len(days) + 400 - BURNUP_HORIZON.days
    assert {row.state for row in report.eta} == {"on_track"}


def _part(table: CountTable, share: float) -> CountTable:
    return replace(
        table,
        **{kind: (getattr(table, kind) * share).astype(np.int64) for kind in COUNT_KINDS},
    )


def test_the_last_scoring_runs_warnings_are_a_section_of_the_report_escaped_in_each_format(
    tmp_path: Path,
) -> None:
    url, pid = _synced(tmp_path)
    options = ReportOptions(folder=tmp_path / "reports", quotas=QUOTAS, splits=SPLITS)
    ended = datetime(2026, 12, 7, 6, 31, tzinfo=UTC)
    now = ended + timedelta(hours=1)
    failed = "1 of 3 chunk(s) failed and were left unscored: RuntimeError: <script>x()</script>"
    with open_store(url) as store, store.session() as session:
        project_id = int(project_row(session, pid).id or 0)
        record_scoring(session, project_id, ScoringRun(ended, "m-1", (failed,), failed_chunks=1))
        report = report_from_store(session, pid, options, now=now)
        record_scoring(session, project_id, ScoringRun(ended, "m-2"))
        clean = report_from_store(session, pid, options, now=now)
    assert report.scoring == ScoringRun(ended, "m-1", (failed,), 1)
    assert render_json(report).count("<script>x()</script>") == 1, "the JSON holds it as it is"
    html, markdown = render_html(report), render_markdown(report)
    assert "<script>" not in html
    assert "<script>" not in markdown
    shown = "1 of 3 chunk(s) failed and were left unscored: RuntimeError: &lt;script&gt;x()"
    assert shown in html
    assert shown in markdown
    assert "## Scoring" in markdown
    assert "(2026-12-07T06:31+00:00, model m-1; 1 chunk(s) failed for good)" in markdown
    assert 'id="scoring"' in html
    assert "2026-12-07T06:31+00:00, model m-1" in html
    assert clean.scoring == ScoringRun(ended, "m-2")
    assert "Scoring" not in render_markdown(clean), "no warnings, no section"
    assert 'id="scoring"' not in render_html(clean)
