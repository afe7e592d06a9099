"""The dashboard as a person sees it: `planner serve` rendered by a real headless Chromium.

The store holds a labelled digits project; the daily report of two days and an emitted
artifact are written from it the way the daemon writes them. The browser checks that the
report page names the classes with the store's counts, that every chart image loaded, that
the report history and the artifact downloads work, and that the dashboard, exposed beyond
loopback, refuses a browser without the token.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from planner.artifacts import EmitReason
from planner.core.quotas import Quota
from planner.examples.digits import DIGITS
from planner.outputs import EmitOptions, ReportOptions, emit_artifacts, write_daily_report
from planner.store import Store, ensure_project, open_store
from planner.store.models import Task
from planner.store.snapshots import snapshot_counts
from planner.store.tasks import count_table
from tests.integration.daemon.processes import PLANNER

pytestmark = pytest.mark.integration
TOKEN = "browser-test-token-7c1e"
SPLITS = ("train", "val", "test")
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
QUOTAS = tuple(Quota(d, target=30) for d in DIGITS)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _label(store: Store, *, first_half: bool, at: datetime) -> None:
    """Digit ``d`` gets ``40 - 4d`` labelled tasks in all (splits 8:1:1 by position), the first
    half of them on one day and the rest the next; a count snapshot after each."""
    with store.session() as session:
        project = ensure_project(session, ls_project_id=7, title="Digits in the browser")
        project.classes = list(DIGITS)
        project.label_kinds = ["classification"]
        session.add(project)
        pid = int(project.id or 0)
        task = 0
        for digit in range(10):
            total = 40 - 4 * digit
            for k in range(total):
                task += 1
                if (k < total // 2) != first_half:
                    continue
                session.add(
                    Task(
                        project_id=pid,
                        ls_task_id=task,
                        image=f"/data/local-files/?d=digits/{task:04d}.png",
                        split=SPLITS[0] if k % 10 < 8 else SPLITS[1 + k % 2],
                        state="labelled",
                        labels=[str(digit)],
                        instances={str(digit): 1},
                        pixels={str(digit): 0},
                        labelled_at=at,
                    )
                )
        session.flush()
        table = count_table(session, pid, DIGITS, SPLITS)
        snapshot_counts(session, pid, table, annotations=task, at=at)


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, dict[str, dict[str, int]], str]]:
    """`planner serve` on 0.0.0.0 with a token; its URL, the store's image counts per split
    and class, the artifact version."""
    reports, artifacts = tmp_path / "reports", tmp_path / "artifacts"
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as store:
        options = ReportOptions(folder=reports, quotas=QUOTAS, splits=SPLITS)
        for day in (1, 0):
            _label(store, first_half=day == 1, at=NOW - timedelta(days=day))
            write_daily_report(store, 7, options, now=NOW - timedelta(days=day))
        written = emit_artifacts(
            store,
            7,
            EmitOptions(artifacts),
            splits=SPLITS,
            reason=EmitReason("on_demand", "the browser test"),
            now=NOW,
        )
        with store.session() as session:
            counts = count_table(session, 1, DIGITS, SPLITS).as_dict()["images"]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    env |= {
        "PLANNER_DASHBOARD__REPORTS_DIR": str(reports),
        "PLANNER_ARTIFACTS__DIR": str(artifacts),
        "PLANNER_DASHBOARD__TOKEN": TOKEN,
    }
    proc = subprocess.Popen(
        [PLANNER, "serve", "--host", "0.0.0.0", "--port", str(port)],  # noqa: S104 - exposed on purpose
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "planner serve exited"
                assert time.monotonic() < deadline, "planner serve did not start listening"
                time.sleep(0.2)
        yield url, counts, written.version
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail(
            "headless Chromium is missing: run `make browser` (apt chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(tmp_path / "downloads")}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _cells(driver: webdriver.Chrome, section: str) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{section} tbody tr")
    return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def test_a_person_sees_the_report_charts_history_and_downloads(
    dashboard: tuple[str, dict[str, dict[str, int]], str], browser: webdriver.Chrome
) -> None:
    url, counts, version = dashboard
    browser.get(f"{url}/")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "a token is needed" in body, "exposed, the dashboard refuses a browser without it"
    assert "Quota report" not in body

    browser.get(f"{url}/?token={TOKEN}")  # the link an annotation lead is sent, once
    assert browser.current_url == f"{url}/", "the token leaves the address bar"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Quota report: Digits in the browser"

    # Class, Kind, Split, Count, ...: every class with the store's count in each split
    shown = {(r[0], r[2]): r[3] for r in _cells(browser, "quotas") if r}
    expected = {(name, split): str(counts[split][name]) for split in SPLITS for name in DIGITS}
    expected |= {(name, "total"): str(sum(counts[s][name] for s in SPLITS)) for name in DIGITS}
    assert shown == expected
    assert shown[("0", "total")] == "40"
    assert shown[("9", "total")] == "4"

    charts = browser.find_elements(By.CSS_SELECTOR, "figure img")
    figures = [f.get_attribute("id") for f in browser.find_elements(By.TAG_NAME, "figure")]
    assert {"chart-quotas", "chart-burnup"} <= set(figures), figures
    for chart in charts:
        width = browser.execute_script(
            "return arguments[0].complete ? arguments[0].naturalWidth : 0;", chart
        )
        assert width > 0, f"chart {chart.get_attribute('alt')!r} did not load"

    history = browser.find_element(By.CSS_SELECTOR, 'nav[aria-label="Report history"]')
    days = [a.text for a in history.find_elements(By.CSS_SELECTOR, 'a[href^="/reports/"]')]
    assert days == ["2026-11-20", "2026-11-19"]
    history.find_element(By.LINK_TEXT, "2026-11-19").click()
    assert browser.current_url.endswith("/reports/2026-11-19/report.html")
    assert "Quota report" in browser.find_element(By.TAG_NAME, "h1").text
    older = {(r[0], r[2]): r[3] for r in _cells(browser, "quotas") if r}
    assert older[("0", "total")] == "20", "the day before: the first half of the labels"

    browser.get(f"{url}/artifacts/")
    links = browser.find_elements(By.CSS_SELECTOR, "li a")
    names = {a.text for a in links}
    assert f"{version}/artifact.json" in names
    target = next(a.get_attribute("href") for a in links if a.text == f"{version}/artifact.json")
    assert target is not None
    # the link as the browser follows it (with its cookie): a download of the artifact
    status, disposition, text = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(async r => done("
        "[r.status, r.headers.get('content-disposition'), await r.text()]));",
        target,
    )
    assert status == 200
    assert "attachment" in disposition
    assert json.loads(text)["counts"]["images"] == counts
    assert httpx.get(target, timeout=10).status_code == 401, "no token, no download"
