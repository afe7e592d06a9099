from __future__ import annotations

import json
from datetime import datetime, timedelta
from html.parser import HTMLParser

import numpy as np
import pytest

from planner.core.acquisition import entropy
from planner.core.counting import CountResult
from planner.core.quotas import Quota, deficits
from planner.core.selection import select_batch
from planner.core.table import CountTable
from planner.errors import InputError
from planner.examples.traffic import make_example
from planner.reports import (
    ReportData,
    build_report,
    charts,
    render_html,
    render_json,
    render_markdown,
)
from planner.reports.build import next_from_summary
from planner.reports.tables import fmt, report_tables
from tests.unit.reports.conftest import NOW, QUOTAS


class _Tables(HTMLParser):
    """Every table's rows of cell texts, every img's attributes, every heading."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str | None]] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag in ("h1", "h2"):
            self._heading = True
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag in ("h1", "h2"):
            self._heading = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._heading:
            self.headings[-1] += data


def _markdown_tables(text: str) -> list[list[list[str]]]:
    tables: list[list[list[str]]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("|"):
            if not in_table:
                tables.append([])
                in_table = True
            cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
            if set(cells) != {"---"}:
                tables[-1].append(cells)
        else:
            in_table = False
    return tables


def test_quota_rows_hold_the_counts_of_the_table(
    traffic_report: ReportData, traffic_counts: CountResult
) -> None:
    table = traffic_counts.table
    status = deficits(QUOTAS, table)
    data = json.loads(render_json(traffic_report))
    rows = {(r["class_name"], r["split"]): r for r in data["quotas"]}
    for quota in QUOTAS:
        column = table.classes.index(quota.class_name)
        for i, split in enumerate(table.splits):
            assert rows[quota.class_name, split]["count"] == int(table.images[i, column])
        total = rows[quota.class_name, "total"]
        assert total["count"] == int(table.images[:, column].sum())
        assert total["target"] == quota.total
        assert total["deficit"] == status.status(quota.class_name).deficit
    wheelchair = rows["Wheelchair", "train"]
    assert wheelchair["target"] == 60
    assert wheelchair["deficit"] == 60 - wheelchair["count"]
    assert rows["Car", "train"]["target"] is None


def test_the_json_holds_every_section(traffic_report: ReportData) -> None:
    data = json.loads(render_json(traffic_report))
    assert data["schema_version"] == 1
    assert data["generated_at"] == "2026-11-08T12:00:00+00:00"
    assert [p["counts"]["Car"] for p in data["burnup"]][-1] == data["quotas"][3]["count"]
    assert [b["yield_rate"] for b in data["batches"]] == [0.4, 0.18]
    assert {r["class_name"]: r["state"] for r in data["eta"]}["Car"] == "met"
    assert data["imbalance"][0]["scope"] == "total"
    assert any(r["class_name"] == "Wheelchair" and r["stratum"] == "night" for r in data["strata"])
    assert data["stop"]["should_stop"] is False
    assert data["next_batch"]["selected"] == 25
    assert sum(data["next_batch"]["reasons"].values()) == 25


def test_html_and_markdown_show_the_same_tables_as_the_json(traffic_report: ReportData) -> None:
    expected = [[list(t.headers), *map(list, t.rows)] for t in report_tables(traffic_report)]
    parser = _Tables()
    parser.feed(render_html(traffic_report))
    assert parser.tables == expected
    assert _markdown_tables(render_markdown(traffic_report)) == expected
    # and the tables hold the JSON's numbers
    data = json.loads(render_json(traffic_report))
    quota_cells = expected[0][1:]
    for row, cells in zip(data["quotas"], quota_cells, strict=True):
        assert cells[3:6] == [fmt(row["count"]), fmt(row["target"]), fmt(row["deficit"])]
    eta_cells = {cells[0]: cells for cells in expected[1][1:]}
    for row in data["eta"]:
        assert eta_cells[row["class_name"]][3] == fmt(row["rate_per_day"])


def test_the_html_is_readable_and_accessible(traffic_report: ReportData) -> None:
    html = render_html(traffic_report)
    parser = _Tables()
    parser.feed(html)
    assert parser.headings[0] == "Quota report: traffic"
    for heading in ("Counts against quota", "Burn-up", "Yield of each batch", "Stop rules"):
        assert heading in parser.headings
    assert len(parser.images) == 4  # quotas, burn-up, yield, ETA
    for image in parser.images:
        assert (image["src"] or "").startswith("data:image/svg+xml;base64,")
        assert len(image["alt"] or "") > 40
    quota_alt = parser.images[0]["alt"] or ""
    assert "Wheelchair train 20 of 60" in quota_alt
    assert '<html lang="en">' in html
    assert 'scope="col"' in html


def test_html_escapes_what_it_shows(traffic_counts: CountResult) -> None:
    report = build_report(
        project="<script>alert(1)</script>",
        now=datetime.fromisoformat("2026-11-08T12:00+00:00"),
        table=traffic_counts.table,
        quotas=QUOTAS,
    )
    html = render_html(report)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_markdown_shows_html_from_label_studio_as_text_not_markup() -> None:
    # a Markdown viewer that renders raw HTML would run a class name or title as markup
    names = ("<script>alert(1)</script>", "Car & Van | Truck")
    table = CountTable(names, ("train",), *(np.array([[5, 3]], np.int64),) * 3)
    report = build_report(
        project="<img src=x onerror=alert(1)>",
        now=datetime.fromisoformat("2026-11-08T12:00+00:00"),
        table=table,
        quotas=[Quota(name, target=4) for name in names],
    )
    markdown = render_markdown(report)
    assert "<script>" not in markdown
    assert "<img" not in markdown
    assert "# Quota report: &lt;img src=x onerror=alert(1)&gt;" in markdown
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; |" in markdown
    assert "| Car &amp; Van \\| Truck |" in markdown


def test_a_minimal_report_has_no_optional_sections(traffic_counts: CountResult) -> None:
    report = build_report(
        project="p",
        now=datetime.fromisoformat("2026-11-08T12:00+00:00"),
        table=traffic_counts.table,
        quotas=QUOTAS,
    )
    keys = [t.key for t in report_tables(report)]
    assert keys == ["quotas", "eta", "imbalance", "burnup"]
    assert {r.state for r in report.eta} == {"met", "no_data"}
    assert "Yield of each batch" not in render_markdown(report)


def test_a_naive_now_is_refused(traffic_counts: CountResult) -> None:
    with pytest.raises(InputError, match="naive"):
        build_report(
            project="p",
            now=datetime(2026, 11, 8),  # noqa: DTZ001
            table=traffic_counts.table,
            quotas=QUOTAS,
        )


def test_the_next_batch_read_back_from_a_stored_summary_is_the_same(
    traffic_counts: CountResult,
) -> None:
    example = make_example()
    classes = ("Car", "Pedestrian", "Bicycle", "Wheelchair")
    batch = select_batch(
        example.pool_ids,
        entropy(example.pool_probs),
        example.pool_probs,
        [0.0, 5.0, 3.0, 9.0],
        batch_size=12,
        rng=np.random.default_rng(1),
        classes=classes,
    )
    stored = json.loads(json.dumps(batch.as_dict()))  # what the store's JSON column gives back
    direct = build_report(
        project="p", now=NOW, table=traffic_counts.table, quotas=QUOTAS, next_batch=batch
    )
    read_back = next_from_summary(stored)
    assert read_back == direct.next_batch
    assert read_back.selected == 12
    assert [t.shortfall for t in read_back.targets] == [0.0, 5.0, 3.0, 9.0]


def test_class_names_with_dollars_or_a_leading_underscore_are_drawn_as_written() -> None:
    # "$\foo$" is an unknown maths symbol to matplotlib: the whole report failed
    names = ("$\\foo$ sign", "_hidden", "plain")
    table = CountTable(names, ("train",), *(np.array([[5, 3, 1]], np.int64),) * 3)
    quotas = [Quota(name, target=4) for name in names]
    start = datetime.fromisoformat("2026-11-08T12:00+00:00")
    report = build_report(
        project="p",
        now=start + timedelta(days=2),
        table=table,
        quotas=quotas,
        snapshots=[(start, table), (start + timedelta(days=1), table)],
    )
    html = render_html(report)
    assert html.count("data:image/svg+xml;base64,") >= 2  # the quota chart and the burn-up
    # matplotlib's legend leaves out labels starting with "_": the class is still shown
    assert not charts._text("_hidden").startswith("_")
    assert charts._text("$x$") == "\\$x\\$"


def test_a_snapshot_stamped_after_now_is_left_out_not_an_error(
    traffic_counts: CountResult,
) -> None:
    now = datetime.fromisoformat("2026-11-08T12:00+00:00")
    table = traffic_counts.table
    report = build_report(
        project="p",
        now=now,
        table=table,
        quotas=QUOTAS,
        snapshots=[(now - timedelta(days=1), table), (now + timedelta(seconds=1), table)],
    )
    assert len(report.burnup) == 2, "yesterday's snapshot, then now"
